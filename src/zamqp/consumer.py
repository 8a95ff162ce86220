"""AMQPConsumer and AMQPThread: a supervised consumer and its thread."""
from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING
from typing import Any

from amqp import exceptions as amqp_errors
from zope.interface import implementer

from zamqp.backoff import Backoff, broker_away
from zamqp.connection import CONNECTION_LOST
from zamqp.connection import explain
from zamqp.exceptions import ConfigurationError
from zamqp.exceptions import ConnectionFailed
from zamqp import metrics as _metrics
from zamqp import tracing as _tracing
from zamqp.exceptions import MessageRefused
from zamqp.exceptions import OffsetStoreError
from zamqp.interfaces import IConsumer
from zamqp.logtext import loggable
from zamqp.logtext import message_id as _message_id
from zamqp.policy import Redeliveries
from zamqp.policy import RetryPolicy
from zamqp.policy import Verdict
from zamqp.queues import ConsumerConnection
from zamqp.queues import QueueDeclaration
from zamqp.serializers import Decoder
from zamqp.session import Session
from zamqp.session import WorkerDied
from zamqp.status import ConsumerStatus
from zamqp import streams as _streams
from zamqp.status import State
from zamqp.unpickling import AllowRules
from zamqp.worker import Worker

if TYPE_CHECKING:
    from typing import Callable
    from typing import Iterable
    from typing import Literal
    from typing import Union

    import amqp

    from zamqp.props import AMQPProps
    from zamqp.props import AllowSpec
    from zamqp.props import DeclareMode

    # hints only: callback(body), or callback(body, message) with
    # pass_message=True
    Callback = Union[Callable[[Any], object],
                     Callable[[Any, amqp.Message], object]]

logger = logging.getLogger(__name__)

_DEFAULT = object()

# Default prefetch: acknowledging consumers hold few messages they may
# still have to give back; the others ack as they take, and a wider
# window keeps the broker sending while those acks travel.
ACK_PREFETCH, TAKE_PREFETCH = 100, 1000

__all__ = ['AMQPConsumer', 'AMQPThread', 'loggable']


@implementer(IConsumer)
class AMQPConsumer:
    """Consumes ``queue`` and calls ``callback(body)`` for each message.

    Broadcast (default, ``shared=False``): the consumer gets a queue of
    its own, ``<queue>.<uuid>``, exclusive and deleted when it closes, so
    every consumer receives every message routed to it.
    Work queue (``shared=True``): all consumers of ``queue`` share that
    queue and each message goes to one of them. Shared queues are
    durable and never auto-deleted (``durable=False`` is refused:
    RabbitMQ 4 refuses transient shared queues); ``queue_type='quorum'``
    makes it a replicated quorum queue.

    The queue is bound with ``routing_key`` (default: ``queue``; a pattern
    such as ``'orders.*'`` on topic exchanges; ignored by fanout).
    At most ``prefetch`` messages wait in the consumer (default: 100 with
    ``ack``, 1000 without). Callbacks run in a worker thread, one message
    at a time and in order, while the consumer thread keeps the
    connection (heartbeats, acknowledgements).

    ``ack`` (default: ``shared``) acknowledges each message after the
    callback returned: a failing callback's message is put back in the
    queue up to ``max_retries`` times (counted in its ``x-zamqp-retries``
    header, a quorum queue's ``x-delivery-count`` and the deliveries
    this consumer lost mid-handling, as when a handler outlives the
    broker's consumer_timeout), then sent to ``dead_letter_exchange``; a
    message that cannot be decoded goes there at once. The dead-letter
    exchange (default: ``<exchange>.dead`` for acknowledging consumers,
    None for the others; None drops such messages) is declared with a
    durable queue of the same name. Without ``ack`` (at most once) a
    message is acknowledged when its callback starts, and a failure
    loses it. Each retry, dead letter and drop is logged once with the
    message id.

    ``accept`` names the serializers decoded (default: ``props.accept``);
    ``allow`` adds classes to the unpickling allow rules of
    ``props.allow``, ``signed_allow`` to ``props.signed_allow`` (rules
    only for messages with a verified signature, see props.secret);
    ``max_size`` and ``max_depth`` replace the props' limits (None: no
    limit). ``untyped`` says what becomes of a message without a content
    type: 'refuse' (None, the default), 'json' (decoded as JSON) or
    'bytes' (its body delivered as bytes). Messages refused by a limit,
    a signature check, the content type, decompression, the decoder or
    because their frames cannot be decoded are handled like undecodable
    ones; a body larger than ``max_size`` is never assembled, nor
    decompressed to more than ``max_size`` bytes. With
    ``pass_message=True`` the callback is called as
    ``callback(body, message)``, ``message`` being the py-amqp message
    (headers, properties, delivery info).

    ``queue_arguments`` are further arguments of a shared queue's
    declaration (to match a queue others declared, e.g. with
    ``x-max-priority``), ``binding_arguments`` those of its binding (a
    headers exchange routes by them); ``declare`` (default: the props')
    is True, 'passive' or False (shared queues only; see
    docs/least-privilege.rst).

    Supervised: refused messages, callback errors, lost connections and
    zamqp's own errors are logged, never raised; the consumer reconnects
    with backoff and goes on. Only an error a setting must fix (a refused
    login, a declaration that conflicts) ends it, in state FAILED.
    ``status()`` tells its state, last error and counts.

    Stream reader (``stream=True``, see docs/streams.rst): ``queue`` is
    a durable stream queue (``x-queue-type: stream``) every reader of
    it reads in full, each from its own position, so a reader that was
    away receives everything published meanwhile, in order. ``reader``
    names the reader, the same across restarts (required); ``offsets``
    is a directory where its position is kept, or an IOffsetStore.
    ``start`` tells where a reader without a saved position begins:
    'next' (default), 'first', 'last', an offset, an interval such as
    '1h', or a timezone-aware datetime (or ISO text). The position
    advances after the callback returned, so after a crash a reader
    sees the messages since its last saved position again (at least
    once; positions are saved each second while messages flow, when
    the reader is idle and on stop). A failing callback is called again in the
    reader, ``max_retries`` times, then its message is dead-lettered
    (default exchange ``<exchange>.dead``) and the reader goes on; an
    undecodable message is dead-lettered at once; nothing is requeued.
    Retention of the stream: ``max_age`` (an interval, default '7D'),
    ``max_length_bytes`` (default 1 GB) and ``max_segment_size_bytes``
    (default 50 MB); None: no such limit. Every reader of a stream must
    give the same retention (the broker refuses a different one).
    """

    stop_timeout = 2.0      # seconds a running handler gets after stop()
    min_backoff = 0.25      # seconds before the first reconnect attempt
    max_backoff = 30.0      # seconds between reconnect attempts, at most
    refused_backoff = 1.0   # the same while the broker refuses connections

    def __init__(
            self, queue: str, props: AMQPProps, callback: Callback,
            routing_key: str | None = None, shared: bool = False,
            durable: bool | None = None, ack: bool | None = None,
            prefetch: int | None = None,
            accept: str | Iterable[str] | None = None,
            allow: AllowSpec = (), pass_message: bool = False,
            max_retries: int = 3,
            dead_letter_exchange: str | None = _DEFAULT,
            queue_type: Literal['classic', 'quorum'] | None = None,
            signed_allow: AllowSpec = (),
            max_size: int | None = _DEFAULT,
            max_depth: int | None = _DEFAULT,
            untyped: Literal['refuse', 'json', 'bytes'] | None = None,
            declare: DeclareMode | None = None,
            queue_arguments: dict[str, Any] | None = None,
            binding_arguments: dict[str, Any] | None = None,
            stream: bool = False, reader: str | None = None,
            offsets: object = None, start: _streams.Start = _DEFAULT,
            max_age: str | None = _DEFAULT,
            max_length_bytes: int | None = _DEFAULT,
            max_segment_size_bytes: int | None = _DEFAULT) -> None:
        self.queue = queue
        self.props = props
        self.callback = callback
        self.shared = shared
        stream_options = {
            name: value for name, value in (
                ('start', start), ('max_age', max_age),
                ('max_length_bytes', max_length_bytes),
                ('max_segment_size_bytes', max_segment_size_bytes))
            if value is not _DEFAULT}
        _check_stream(stream, shared, ack, durable, queue_type, reader,
                      offsets, stream_options)
        self.stream = stream
        self.queue_name = queue if shared or stream \
            else f'{queue}.{uuid.uuid4().hex}'
        self.routing_key = queue if routing_key is None else routing_key
        self.ack = bool(shared or stream) if ack is None else ack
        if prefetch is None:
            prefetch = ACK_PREFETCH if self.ack and not stream \
                else TAKE_PREFETCH
        self.prefetch = _count(prefetch, 'prefetch', 65535)
        if stream and not prefetch:
            raise ConfigurationError(
                'prefetch=0 does not go with stream=True: the broker '
                'needs a prefetch to send a stream; leave it out or give '
                'a whole number from 1')
        self.max_retries = _count(max_retries, 'max_retries')
        if dead_letter_exchange is _DEFAULT:
            dead_letter_exchange = f'{props.exchange}.dead' if self.ack \
                else None
        self.dead_letter_exchange = dead_letter_exchange
        self.reader = None
        if stream:
            start = stream_options.pop('start', 'next')
            self.declaration = _streams.StreamDeclaration(
                self.queue_name, dead_letter_exchange=dead_letter_exchange,
                queue_arguments=queue_arguments,
                binding_arguments=binding_arguments, declare=declare,
                **stream_options)
            self.reader = _streams.StreamReader(self.queue_name, reader,
                                                offsets, start)
        else:
            self.declaration = QueueDeclaration(
                self.queue_name, shared, durable, queue_type, max_retries,
                dead_letter_exchange, queue_arguments, binding_arguments,
                declare)
        self.policy = RetryPolicy(self.ack, max_retries, dead_letter_exchange,
                                  Redeliveries())
        self.ack_batch = max(1, prefetch // 10) if prefetch else 25
        self.pass_message = pass_message
        limits = {name: value for name, value in
                  (('max_size', max_size), ('max_depth', max_depth))
                  if value is not _DEFAULT}
        self.decoder = Decoder.for_props(
            props, accept, AllowRules.from_spec(allow),
            AllowRules.from_spec(signed_allow), untyped=untyped, **limits)
        self.stats = ConsumerStatus()
        self.connection = None
        self.session = None
        self.error = None
        self.worker = None
        self.max_backlog = 0    # most messages seen waiting for the worker
        self.delivered = 0      # messages delivered (consumer thread) ...
        self.started = 0        # ... and begun or skipped (worker thread)
        self.busy = False       # the worker runs a callback
        self.attempted = threading.Event()
        self._stopping = threading.Event()
        self._deadline = None
        self._failing = None
        self._lock = threading.Lock()
        self._sessions = 0
        _metrics.register(self)

    # settings kept as attributes of the consumer (1.0 API)

    @property
    def queue_type(self) -> str | None:
        return self.declaration.queue_type

    @property
    def durable(self) -> bool:
        return self.declaration.durable

    def queue_arguments(self) -> dict[str, Any] | None:
        """The ``arguments`` of the queue declaration."""
        return self.declaration.arguments()

    # state

    def status(self) -> dict[str, Any]:
        """A snapshot of the consumer's state, last error and counts (a
        dict, see zamqp.status.ConsumerStatus)."""
        status = self.stats.snapshot()
        if self.reader is not None:
            status.update(self.reader.status())
        return status

    @property
    def state(self) -> State:
        return self.stats.state

    @property
    def stop_requested(self) -> bool:
        """True once stop() was called."""
        return self._stopping.is_set()

    def healthy(self) -> bool:
        """True while the consumer runs and its worker can take messages
        (a dead worker is replaced at the consumer thread's next step)."""
        return self.state not in (State.STOPPED, State.FAILED)

    # the consumer thread: supervision and reconnects

    def start_worker(self) -> None:
        """Start the worker thread unless it runs (``run`` does it too;
        AMQPThread does it first, so ``run`` goes straight to connecting)."""
        if self.worker is not None and self.worker.is_alive():
            return
        old, self.worker = self.worker, Worker(
            self, f'zamqp-worker-{self.queue}')
        if old is not None:
            old.close()
        self.worker.start()

    def run(self) -> None:
        self.start_worker()
        try:
            self._supervise()
        finally:
            worker = self.worker
            worker.inbox.put(None)
            worker.join(self._remaining())
            worker.close()
            if self.reader is not None:
                self.reader.save()
                self.reader.release()
            if self.state is not State.FAILED:
                self.stats.enter(State.STOPPED)

    def _supervise(self):
        """Connect and consume, again and again, until stopped or a
        setting must change."""
        backoff = Backoff(self.min_backoff, self.max_backoff,
                          self.refused_backoff)
        if self.reader is not None:
            try:
                self.reader.acquire()
            except OffsetStoreError as exc:
                self._failed(exc)
                return
        while not self._stopping.is_set():
            refused = False
            try:
                self._consume_once(backoff)
            except OffsetStoreError as exc:
                self._end_session()
                self._failed(exc)
                return
            except ConnectionFailed as exc:
                if not self._failed(exc):
                    self.stats.enter(State.FAILED, exc)
                    return
                refused = broker_away(exc)
            except Exception as exc:
                self._crashed_session(exc)
            self._end_session()
            if self._stopping.is_set():
                return
            self.stats.enter(State.RECONNECTING)
            if self._stopping.wait(backoff.delay(refused)):
                return

    def _consume_once(self, backoff):
        """One connection: connect, consume until stop or an error."""
        self.connection = connection = self._connect()
        session = self.session = Session(self, connection)
        try:
            session.start()
        except OffsetStoreError:
            raise
        except Exception as exc:
            raise explain(exc, self.props, 'basic_consume') from exc
        self._connected()
        backoff.reset()
        try:
            session.run(self._stopping)
        except WorkerDied:
            logger.error('consumer %s: the worker thread ended unexpectedly; '
                         'starting a new one and reconnecting (unsettled '
                         'messages go back to the queue)', self.queue_name)
            self.stats.count('crashes')
            self.start_worker()
        except CONNECTION_LOST as exc:
            self._lost(exc)

    def _connect(self):
        connection = ConsumerConnection(self.declaration, self.props,
                                        routing_key=self.routing_key)
        try:
            connection.channel      # opens and declares
        except ConnectionFailed:
            connection.close()
            raise
        except Exception as exc:
            connection.close()
            raise explain(exc, self.props, 'connect') from exc
        return connection

    def _end_session(self):
        """Drop the connection; a handler still running on its channel
        has its message given back (ack mode)."""
        session, self.session = self.session, None
        if session is not None and self.ack and self.busy:
            self.worker.abandon()
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()
        if self.reader is not None:
            self.reader.save()      # what was settled before the loss

    def _connected(self):
        self.error = None
        self._sessions += 1
        if self._sessions > 1:
            self.stats.count('reconnects')
        if self._failing is not None:
            logger.info('consumer %s: connected again to %s',
                        self.queue_name, self.props.url())
        self._failing = None
        self.stats.enter(State.CONSUMING)
        self.attempted.set()

    def _lost(self, exc):
        """The session ended on a connection or channel error."""
        if _ack_timeout(exc):
            self._timed_out(exc)
            return
        error = explain(exc, self.props, 'consume')
        if self._stopping.is_set():
            logger.info('consumer %s: %s while stopping; it stops',
                        self.queue_name, error)
            return
        self.error = error
        self.stats.enter(State.RECONNECTING, error)
        if str(error) != self._failing:
            logger.error('consumer %s: %s; reconnecting', self.queue_name,
                         error)
        self._failing = str(error)

    def _timed_out(self, exc):
        """The broker closed the channel: a handler outlived the
        broker's consumer_timeout."""
        self.stats.count('timeouts')
        session = self.session
        delivery = self.worker.current
        if delivery is not None and (
                delivery.abandoned() or session is None
                or delivery.message.channel is not session.channel):
            delivery = None     # of an earlier channel: counted then
        what = 'the message in hand'
        if delivery is not None:
            delivery.abandon()  # before its handler can return
            lost = self.policy.redeliveries.lost(
                delivery.message, 'its handler outlived consumer_timeout')
            what = (f'message {_message_id(delivery.message)} (lost '
                    f'{lost} time(s); dead-lettered or dropped without '
                    f'handling after {self.max_retries})')
        self.error = ConnectionFailed(f'consume: {exc.reply_text}')
        self.stats.enter(State.RECONNECTING, self.error)
        logger.error(
            "consumer %s: the broker closed the channel because a handler "
            "ran longer than its consumer_timeout (%s); %s goes back to "
            "the queue; reconnecting. Make the handler faster, or raise "
            "consumer_timeout (rabbitmq.conf, milliseconds) above the "
            "longest handler time", self.queue_name, exc.reply_text, what)

    def _crashed_session(self, exc):
        """An error of zamqp itself ended the session: log it with its
        traceback, remember the deliveries in hand, reconnect."""
        self.stats.count('crashes')
        self.error = exc
        self.stats.enter(State.RECONNECTING, exc)
        session = self.session
        suspects = [d.message for d in (self.worker.current,) if d]
        if session is not None and session.settling is not None:
            suspects.append(session.settling)
        logger.exception('consumer %s: unexpected error (a bug in zamqp, '
                         'please report it); dropping the connection and '
                         'reconnecting', self.queue_name)
        for message in suspects:
            self.policy.redeliveries.lost(message, f'{type(exc).__name__} '
                                          'in the consumer')
        current = session.current() if session is not None else None
        if current is not None:
            self.policy.redeliveries.lost(_Fingerprint(current[2]),
                                          f'{type(exc).__name__} while '
                                          'reading it')

    def _failed(self, exc):
        """Log ``exc`` once; return whether to try again."""
        self.error = exc
        again = exc.recoverable
        if str(exc) != self._failing:
            logger.error('consumer %s: %s; %s', self.queue_name, exc,
                         'retrying in the background' if again else
                         'the consumer stops')
        self._failing = str(exc)
        self.stats.enter(State.RECONNECTING if again else State.FAILED,
                           exc)
        self.attempted.set()
        return again

    def stop(self, timeout: float | None = None) -> None:
        """Ask ``run`` to return; never blocks. A running callback gets
        ``timeout`` seconds (default: ``stop_timeout``) to finish."""
        if timeout is not None or self._deadline is None:
            self._deadline = time.monotonic() + (
                self.stop_timeout if timeout is None else timeout)
        self._stopping.set()

    def past_deadline(self):
        return self._deadline is not None and \
            time.monotonic() >= self._deadline

    def _remaining(self):
        if self._deadline is None:
            return self.stop_timeout
        return max(self._deadline - time.monotonic(), 0.0)

    def note_backlog(self):
        backlog = self.delivered - self.started
        if backlog > self.max_backlog:
            self.max_backlog = backlog

    def hold(self):
        """Wait until the worker is between messages (after stop it
        takes no new one)."""
        with self._lock:
            pass

    def wake(self, last):
        """Worker thread: wake the consumer thread for results to send."""
        self.worker.wake(last)

    # the worker thread: decoding and callbacks

    def begin(self, message):
        """Whether the worker is to handle ``message`` now."""
        self.started += 1
        session = self.session
        with self._lock:
            if self._stopping.is_set():
                return False        # back to the queue with the channel
            if session is None or message.channel is not session.channel:
                logger.debug('consumer %s: message %s came on a channel that '
                             'is gone; not handled', self.queue_name,
                             _message_id(message))
                return False
            self.busy = True
            return True

    def end(self):
        self.busy = False

    def handle(self, message: amqp.Message) -> None:
        """Decode ``message``, call the callback, record the verdict."""
        if self.reader is not None:
            self._read(message)
            return
        results = self.worker.results
        if not self.ack:
            results.append((Verdict.ACK, message, None))  # at most once
        try:
            body = self._decode(message)
        except MessageRefused as exc:
            self._refused(message, exc)
            return
        try:
            self._call(body, message)
        except MessageRefused as exc:   # the callback refused it: no retry
            if not self._given_back(message, exc):
                self._refused(message, exc)
            return
        except BaseException as exc:    # a handler's SystemExit too
            if self._given_back(message, exc):
                return
            self._callback_failed(message, exc)
            return
        delivery = self.worker.current
        if delivery is not None and delivery.abandoned():
            # returned after its delivery was lost (the broker's
            # consumer_timeout): not acknowledged, it comes again, and
            # the loss stays counted
            logger.info('consumer %s: the handler of message %s returned '
                        'after the message was given back; it is handled '
                        'again when redelivered', self.queue_name,
                        _message_id(message))
            return
        self.stats.count('handled')
        self.policy.redeliveries.forget(message)
        if self.ack:
            results.append((Verdict.ACK, message, None))

    def _read(self, message):
        """A stream reader's handle: skip what was handled before, call
        the callback (again, up to ``max_retries`` times, if it raises),
        then record the verdict; the position follows the verdicts."""
        results, reader = self.worker.results, self.reader
        try:
            offset = _streams.message_offset(message)
            if reader.seen(offset):
                self.stats.count('skipped')
                results.append((Verdict.ACK, message, None))
                return
            body = self._decode(message)
        except MessageRefused as exc:
            self._refused(message, exc)
            return
        attempt = 0
        while True:
            try:
                self._call(body, message)
            except MessageRefused as exc:
                if not self._given_back(message, exc):
                    self._refused(message, exc)
                return
            except BaseException as exc:    # a handler's SystemExit too
                if self._given_back(message, exc):
                    return
                attempt += 1
                if not self._try_again(message, exc, attempt):
                    return
                continue
            break
        reader.handled(offset)
        self.stats.count('handled')
        results.append((Verdict.ACK, message, None))

    def _call(self, body, message):
        with _tracing.receiving(message):
            if self.pass_message:
                self.callback(body, message)
            else:
                self.callback(body)

    def _try_again(self, message, exc, attempt):
        """After the callback failed ``attempt`` times: whether to call
        it again (after a pause); else its verdict is recorded (or, when
        stopping, the message is left for the next run)."""
        self.stats.count('failed')
        if attempt <= self.max_retries:
            logger.warning(
                'consumer %s: callback %r failed on message %s (%s: %s); '
                'calling it again (retry %d of %d)', self.queue_name,
                self.callback, _message_id(message), type(exc).__name__,
                loggable(exc, 200), attempt, self.max_retries)
            if not self._stopping.wait(_streams.retry_delay(attempt)):
                return True
            logger.warning('consumer %s: stopping; message %s is read '
                           'again when the reader starts again',
                           self.queue_name, _message_id(message))
            return False
        verdict, fate = self.policy.give_up()
        logger.error('consumer %s: callback %r failed on message %s %d '
                     'times; the message is %s, the reader goes on',
                     self.queue_name, self.callback, _message_id(message),
                     attempt, fate, exc_info=exc)
        self.worker.results.append((verdict, message, exc))
        return False

    def _decode(self, message):
        """The body's value; MessageRefused before decoding for frames
        that could not be read and for deliveries lost too often."""
        fault = getattr(message, 'zamqp_fault', None)
        if fault:
            raise MessageRefused(fault)
        exhausted = self.policy.exhausted(message)
        if exhausted:
            raise MessageRefused(f'not handled again: it {exhausted}')
        return self.decoder(message)

    def _given_back(self, message, exc):
        """Whether the consumer had given ``message`` back (stop deadline
        passed, channel lost) before its handler ended: then the handler's
        error is the consequence (zamqp.zope.context aborts), not a
        failure; the message comes again from the queue."""
        delivery = self.worker.current
        if delivery is None or not delivery.abandoned():
            return False
        logger.warning('consumer %s: the handler of message %s ended after '
                       'the message was given back (%s: %s); it is handled '
                       'again when redelivered', self.queue_name,
                       _message_id(message), type(exc).__name__,
                       loggable(exc, 200))
        return True

    def _refused(self, message, exc):
        verdict, fate = self.policy.on_refused()
        self.stats.count('refused')
        logger.error('consumer %s: refused message %s (%s): %s',
                     self.queue_name, _message_id(message), fate,
                     loggable(exc))
        self.worker.results.append((verdict, message, exc))

    def _callback_failed(self, message, exc):
        verdict, fate = self.policy.on_failure(message)
        self.stats.count('failed')
        logger.error('consumer %s: callback %r failed on message %s; '
                     'the message is %s, the consumer goes on',
                     self.queue_name, self.callback, _message_id(message),
                     fate, exc_info=exc)
        self.worker.results.append((verdict, message, exc))

    def crashed(self, message, exc):
        """Worker thread: zamqp itself failed on ``message``; give it up
        (never retried: it would fail again) and go on."""
        verdict, fate = self.policy.on_refused()
        self.stats.count('crashes')
        logger.error('consumer %s: unexpected error on message %s (a bug '
                     'in zamqp, please report it); the message is %s, the '
                     'consumer goes on', self.queue_name,
                     _message_id(message), fate, exc_info=exc)
        self.worker.results.append((verdict, message, exc))

    def __repr__(self):
        return (f'<AMQPConsumer {self.queue_name!r} on '
                f'{self.props.exchange!r} {self.props.url()}>')


class _Fingerprint:
    """Stands for a delivery known only by its frames' fingerprint."""

    properties = None

    def __init__(self, fingerprint):
        self.zamqp_key = fingerprint


def _count(value, setting, maximum=None):
    """``value`` if it is a whole number from 0 to ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 \
            or (maximum is not None and value > maximum):
        limit = f' to {maximum}' if maximum is not None else ' or more'
        raise ConfigurationError(
            f'{setting}={value!r} is not a whole number from 0{limit}: fix '
            f'AMQPConsumer({setting}=...)')
    return value


def _check_stream(stream, shared, ack, durable, queue_type, reader, offsets,
                  options):
    """Refuse stream settings without stream=True, and settings that do
    not apply to a stream reader."""
    if not stream:
        given = [name for name, value in (('reader', reader),
                                          ('offsets', offsets))
                 if value is not None] + sorted(options)
        if given:
            verb = 'applies' if len(given) == 1 else 'apply'
            raise ConfigurationError(
                f"{', '.join(given)} {verb} to stream readers only: give "
                "AMQPConsumer(..., stream=True, reader=..., offsets=...) "
                "or leave them out")
        return
    if stream is not True:
        raise ConfigurationError(f'stream={stream!r} is not True or False')
    for setting, value, wrong, why in (
            ('shared', shared, bool(shared), 'every reader of a stream '
             'reads all of it; for a work queue (one consumer per '
             'message) leave stream out'),
            ('ack', ack, ack is False, "a stream reader's position "
             'advances after its callback returned; leave ack out'),
            ('durable', durable, durable is False, 'streams are durable'),
            ('queue_type', queue_type, queue_type is not None,
             'stream=True declares a stream')):
        if wrong:
            raise ConfigurationError(
                f'{setting}={value!r} does not go with stream=True: {why}')


def _ack_timeout(exc):
    """Whether the broker closed the channel for an ack timeout."""
    text = getattr(exc, 'reply_text', '') or ''
    return (isinstance(exc, amqp_errors.PreconditionFailed)
            and 'acknowledgement' in text and 'timed out' in text)


class AMQPThread(threading.Thread):
    """A daemon thread that runs one consumer until ``stop()``.

    ``start()`` returns once the consumer is consuming, or once its first
    connection attempt failed (it then retries in the background; an
    error that needs a setting changed is raised instead).
    ``is_alive()`` is True while the consumer runs and handles messages
    (reconnecting included), False once it stopped or failed.
    """

    def __init__(self, consumer: AMQPConsumer,
                 name: str | None = None) -> None:
        super().__init__(name=name or f'zamqp-consumer-{consumer.queue}',
                         daemon=True)
        self.consumer = consumer

    @property
    def worker(self) -> Worker | None:
        """The thread that runs the callbacks (None before start)."""
        return self.consumer.worker

    def run(self) -> None:
        self.consumer.run()

    def is_alive(self) -> bool:
        return super().is_alive() and self.consumer.healthy()

    def start(self, timeout: float | None = None) -> None:
        self.consumer.start_worker()
        super().start()
        if timeout is None:
            timeout = self.consumer.props.connect_timeout + 2
        self.consumer.attempted.wait(timeout)
        error = self.consumer.error
        if error is not None and not getattr(error, 'recoverable', True):
            self.join(timeout)
            raise error

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the consumer: a running callback may finish, within
        ``timeout`` seconds in all; return True once the consumer thread
        and its worker have ended."""
        deadline = time.monotonic() + timeout
        # keep some of the time for acknowledging and closing
        self.consumer.stop(max(timeout - min(0.3, timeout / 4), 0.0))
        worker = self.worker
        if threading.current_thread() in (self, worker):
            return False            # called from a callback: cannot wait
        for thread in (self, worker):
            if thread is not None and threading.Thread.is_alive(thread):
                thread.join(max(deadline - time.monotonic(), 0.0))
        return not threading.Thread.is_alive(self) and not (
            worker and worker.is_alive())
