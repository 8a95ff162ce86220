"""ConsumerStatus: what a consumer is doing, its last error and counts."""
import enum
import threading
import time


class State(enum.Enum):
    """The states of a consumer.

    STARTING: not connected yet; CONSUMING: connected, messages flow;
    RECONNECTING: the connection was lost or could not be made, the
    consumer tries again with backoff; STOPPED: stop() ended it; FAILED:
    it ended on an error that a setting must fix (``last_error`` says
    which).
    """

    STARTING = 'starting'
    CONSUMING = 'consuming'
    RECONNECTING = 'reconnecting'
    STOPPED = 'stopped'
    FAILED = 'failed'


#: The counters of a ConsumerStatus.
COUNTERS = ('handled', 'refused', 'failed', 'retried', 'dead_lettered',
            'dropped', 'reconnects', 'crashes', 'timeouts', 'skipped',
            'missed')


class ConsumerStatus:
    """A consumer's state, last error and counters.

    handled: handlers that returned; refused: messages not decoded
    (limits, signatures, content type, undecodable frames); failed:
    handlers that raised; retried, dead_lettered, dropped: copies put
    back, copies sent to the dead-letter exchange, messages rejected;
    reconnects: connections made after the first; crashes: unexpected
    errors in zamqp itself, each logged with its traceback; timeouts:
    channels the broker closed because a handler outlived its
    consumer_timeout; skipped: messages a stream reader had handled
    already, delivered again (not handed to the callback); missed:
    messages the stream's retention removed before the reader read
    them. Counters only grow. ``snapshot()`` returns them
    with ``state``, ``last_error`` and ``since`` (when the state began,
    ``time.time()``) as a plain dict.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.state = State.STARTING
        self.last_error = None
        self.since = time.time()
        self.counts = dict.fromkeys(COUNTERS, 0)

    def enter(self, state, error=None):
        with self._lock:
            if state is not self.state:
                self.state, self.since = state, time.time()
            if error is not None:
                self.last_error = str(error)

    def count(self, counter, n=1):
        with self._lock:
            self.counts[counter] += n

    def snapshot(self):
        with self._lock:
            return dict(self.counts, state=self.state.value,
                        last_error=self.last_error, since=self.since)

    def __repr__(self):
        return f'<ConsumerStatus {self.state.value} {self.counts}>'


#: The counters of a ProducerStats.
PRODUCER_COUNTERS = ('published', 'resent', 'confirmed', 'nacked',
                     'returned', 'given_up', 'reconnects')


class ProducerStats:
    """A producer's counters and last error.

    published: messages sent to the broker for the first time
    (``confirm=False`` included); resent: sent again on a new connection
    because the old one did not confirm them; confirmed: acked by the
    broker; nacked: nacked by the broker; returned: returned unroutable
    (``mandatory=True``); given_up: left unconfirmed by ``flush()``,
    ``close()`` or a ``confirm=True`` call that timed out; reconnects:
    connections opened after the first. Counters only grow.
    ``last_error``: the text of the last connection or publishing error.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.last_error = None
        self.counts = dict.fromkeys(PRODUCER_COUNTERS, 0)

    def count(self, counter, n=1):
        with self._lock:
            self.counts[counter] += n

    def error(self, error):
        self.last_error = str(error)

    def snapshot(self):
        with self._lock:
            return dict(self.counts, last_error=self.last_error)

    def __repr__(self):
        return f'<ProducerStats {self.counts}>'
