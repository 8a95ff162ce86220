"""Session: the loop of one consuming connection, from consume to close."""
import logging
import select
import socket
import time

from zamqp import frames
from zamqp.fastconsume import BufferReader
from zamqp import streams
from zamqp.logtext import message_id
from zamqp.settlement import Settlement

logger = logging.getLogger(__name__)

#: Messages handed to the worker at once, at most.
HAND_OVER = 64


class WorkerDied(RuntimeError):
    """The worker thread ended although it was not told to."""


class Session:
    """Consumes on one open ConsumerConnection until stop or an error.

    The consumer thread runs it: it reads frames (waiting in poll() on
    the socket and the worker's wake-up pipe), hands delivered messages
    to the worker in batches, carries out the worker's verdicts through
    a Settlement, and sends heartbeats. Errors are raised to the
    consumer, which drops the connection and makes a new one; what was
    delivered and not settled goes back to the queue with the channel.
    """

    poll_interval = 0.2     # seconds between checks of the stop flag
    busy_interval = 0.01    # the same while results of handlers may come

    def __init__(self, consumer, connection):
        self.consumer = consumer
        self.connection = connection            # queues.ConsumerConnection
        self.conn = connection.connection       # the py-amqp connection
        self.channel = connection.channel
        self.worker = consumer.worker
        self.reader = reader = consumer.reader
        self.settlement = Settlement(
            self.channel, consumer.queue, consumer.queue_name,
            consumer.ack, consumer.stats,
            consumer.dead_letter_exchange, self.conn.frame_max,
            consumer.ack_batch, stream=reader is not None,
            confirm_timeout=consumer.props.timeout,
            settled=reader.settled if reader is not None else None)
        self.frames = None
        self.settling = None    # the message being settled
        self.consumer_tag = None
        self.batch = []         # delivered, not handed to the worker yet
        self.tick = self.next_tick = None
        self.poller = None
        self.fast = None        # the BufferReader, on plain TCP

    def start(self):
        """Set the prefetch, install the frame handler, start consuming."""
        consumer, channel = self.consumer, self.channel
        if consumer.prefetch:
            channel.basic_qos(0, consumer.prefetch, False)
        self.frames = frames.install(self.conn, consumer.decoder.max_size)
        arguments = None
        if self.reader is not None:     # on from its position
            arguments = self.reader.consume_arguments()
            if self.reader.position is not None:
                self.check_position()
        self.consumer_tag = channel.basic_consume(
            consumer.queue_name, callback=self.take, no_ack=False,
            arguments=arguments)
        heartbeat = self.conn.heartbeat
        self.tick = max(min(heartbeat / 4.0, 1.0), 0.05) if heartbeat \
            else None
        self.next_tick = time.monotonic()
        self.next_probe = time.monotonic() + self.lag_interval
        self.poller = self._make_poller()
        if self.poller is not None:
            self.fast = BufferReader(self.conn, self.frames)

    def current(self):
        """The delivery the frame handler works on, or None."""
        return self.frames.current if self.frames is not None else None

    def run(self, stopping):
        """Consume until ``stopping`` is set, then finish cleanly."""
        while not stopping.is_set():
            self.step()
        self.finish()

    def take(self, message):
        """Keep a delivered message for the worker (consumer thread)."""
        self.batch.append(message)
        self.consumer.delivered += 1
        if self.reader is not None:
            self.reader.delivered(message)

    def hand_over(self):
        """Give the worker the messages delivered since the last time."""
        self.worker.inbox.put(self.batch)
        self.batch = []
        self.consumer.note_backlog()

    def _make_poller(self):
        """A poll object for the socket and the worker's wake-up pipe, or
        None where a poll cannot see all the data (TLS buffers)."""
        if not getattr(self.conn.transport, 'reads_ahead', False):
            return None
        poller = select.poll()
        poller.register(self.conn.sock, select.POLLIN)
        poller.register(self.worker.wake_r, select.POLLIN)
        return poller

    def readable(self, timeout):
        """Wait until the socket has data (True) or the worker has
        results or ``timeout`` passed (False)."""
        if self.poller is None or self.waiting():
            return True
        worker = self.worker
        worker.sleeping = True
        try:
            if worker.results:
                return False
            events = self.poller.poll(timeout * 1000)
        finally:
            worker.sleeping = False
        readable = False
        for fd, _ in events:
            if fd == worker.wake_r:
                worker.drain_wakeups()
            else:
                readable = True
        return readable

    def waiting(self):
        """Whether frames read from the socket wait to be handled."""
        if self.fast is not None:
            return self.fast.has_frame()
        return buffered(self.conn)

    def busy(self):
        consumer = self.consumer
        return bool(self.settlement.pending or self.worker.results
                    or consumer.busy or consumer.delivered != consumer.started)

    def step(self):
        """Read a frame, pass on the worker's results, send heartbeats."""
        if not self.worker.is_alive():
            raise WorkerDied('the worker thread ended')
        conn = self.conn
        timeout = self.busy_interval if self.busy() else self.poll_interval
        idle = True
        if self.readable(timeout):
            if self.fast is not None:
                idle = not self.fast.read()
            else:
                try:
                    conn.drain_events(timeout=timeout)
                    idle = False
                except socket.timeout:
                    pass
        reader = self.reader
        if reader is not None:
            if reader.gap is not None:
                self.check_gap()
            if time.monotonic() >= self.next_probe:
                self.probe_tail()
        # one hand-over per read from the socket, not one per message
        if self.batch and (idle or len(self.batch) >= HAND_OVER
                           or not self.waiting()):
            self.hand_over()
        if self.worker.results:
            self.settle()
        settlement = self.settlement
        if self.reader is not None and self.reader.save_due(idle):
            settlement.flush()
            self.reader.save()
        elif settlement.due(idle):
            settlement.flush()
        if self.tick and time.monotonic() >= self.next_tick:
            conn.heartbeat_tick()
            self.next_tick = time.monotonic() + self.tick

    def check_gap(self):
        """The first delivery came after the offset asked for: count and
        warn what retention removed (the stream's first offset tells)."""
        reader = self.reader
        (expected, _), reader.gap = reader.gap, None
        missed = reader.removed(expected, self.first_offset())
        if missed:
            self.consumer.stats.count('missed', missed)

    #: Seconds the stream has to show the reader's position.
    probe_timeout = 1.0
    #: Seconds between looks at the stream's newest offset (for lag).
    lag_interval = 10.0

    def probe_tail(self):
        """Note where the stream's last chunk begins, for the reader's
        lag (once something was delivered: an empty stream would make
        the probe wait)."""
        self.next_probe = time.monotonic() + self.lag_interval
        if self.reader.last_offset is not None:
            self.reader.seen_tail(self.first_offset('last',
                                                    self.probe_timeout))

    def check_position(self):
        """Log an error if the stream holds no offset at or after the
        reader's position: it was deleted and declared again (or the
        position belongs to another stream), and the reader would wait
        for offsets it passed long ago."""
        reader = self.reader
        if self.first_offset(reader.position, self.probe_timeout) \
                is not None:
            return
        logger.error(
            'reader %r of stream %r: the stream holds nothing at or after '
            "the reader's position %d: it was deleted and declared again, "
            'or the position is of another stream; the reader only gets '
            'messages after offset %d. To read this stream from its '
            'start, stop the reader and delete its saved position (%r)',
            reader.reader, reader.stream, reader.position, reader.position,
            reader.store)

    def first_offset(self, start='first', timeout=None):
        """The offset of the first message the stream holds from
        ``start`` on (None if none came within ``timeout``, default the
        props' timeout), read on a channel of its own, closed
        afterwards."""
        if timeout is None:
            timeout = self.consumer.props.timeout
        found = []
        channel = self.conn.channel()
        try:
            channel.basic_qos(0, 1, False)
            channel.basic_consume(
                self.consumer.queue_name, callback=found.append,
                arguments={streams.OFFSET_HEADER: start})
            deadline = time.monotonic() + timeout
            while not found and time.monotonic() < deadline:
                try:
                    self.conn.drain_events(
                        timeout=max(deadline - time.monotonic(), 0.01))
                except socket.timeout:
                    pass
        finally:
            channel.close()
        try:
            return streams.message_offset(found[0]) if found else None
        except Exception:       # noqa: BLE001 - cannot tell
            return None

    def settle(self):
        """Carry out what the worker decided, in order."""
        results, channel = self.worker.results, self.channel
        settle = self.settlement.settle
        while results:
            verdict, message, error = results.popleft()
            self.settling = message     # for the consumer, if it raises
            if message.channel is not channel:
                logger.debug(
                    'consumer %s: the channel of message %s is gone, so is '
                    'its %s (the broker keeps or drops the message)',
                    self.consumer.queue_name, message_id(message),
                    verdict.value)
                continue
            settle(verdict, message, error)
        self.settling = None

    def finish(self):
        """Cancel, let a running handler finish until the deadline,
        acknowledge what was handled; messages not handled go back to
        the queue when the channel closes."""
        consumer = self.consumer
        self.channel.basic_cancel(self.consumer_tag)
        consumer.hold()     # from here the worker takes no message
        while consumer.busy and not consumer.past_deadline():
            self.step()
        if consumer.busy and self.worker.abandon() is not None:
            logger.warning('consumer %s: a handler still runs after stop; '
                           'its message %s', consumer.queue_name,
                           'is read again from the saved position when '
                           'the reader starts again' if self.reader
                           is not None else 'goes back to the queue')
        self.settle()
        self.settlement.flush()
        if self.reader is not None:
            self.reader.save()


def buffered(conn):
    """Whether py-amqp holds bytes read from the socket but not parsed
    (zamqp.transport reads ahead); True if that cannot be told."""
    return len(getattr(conn.transport, '_read_buffer', b'x')) > 0
