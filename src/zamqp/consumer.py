"""AMQPConsumer and AMQPThread: receive, decode and hand over messages."""
import collections
import logging
import os
import queue
import random
import select
import socket
import threading
import time
import uuid

from amqp import exceptions as amqp_errors
from zope.interface import implementer

from zamqp import deadletter
from zamqp.connection import explain
from zamqp.exceptions import ConfigurationError
from zamqp.exceptions import ConnectionFailed
from zamqp.exceptions import MessageRefused
from zamqp.interfaces import IConsumer
from zamqp.serializers import Decoder
from zamqp.unpickling import AllowRules

logger = logging.getLogger('zamqp')

#: Errors that end a consuming session; the consumer reconnects after them.
CONNECTION_LOST = (OSError, amqp_errors.AMQPError)
QUEUE_TYPES = (None, 'classic', 'quorum')
_DEFAULT = object()

# What the worker thread hands back to the consumer thread for a message:
# DONE acknowledges it (after its handler, or as taken when ack=False),
# RETRY puts a copy back in the queue, DEAD sends a copy to the dead-letter
# exchange, DROP rejects it without requeueing.
DONE, RETRY, DEAD, DROP = 'done', 'retry', 'dead', 'drop'

# Default prefetch: acknowledging consumers hold few messages they may
# still have to give back; the others ack as they take, and a wider
# window keeps the broker sending while those acks travel.
ACK_PREFETCH, TAKE_PREFETCH = 100, 1000


@implementer(IConsumer)
class AMQPConsumer:
    """Consumes ``queue`` and calls ``callback(body)`` for each message.

    Broadcast (default, ``shared=False``): the consumer gets a queue of
    its own, ``<queue>.<uuid>``, exclusive and deleted when it closes, so
    every consumer receives every message routed to it.
    Work queue (``shared=True``): all consumers of ``queue`` share that
    queue and each message goes to one of them. ``queue_type='quorum'``
    makes a shared queue a durable, replicated quorum queue.

    The queue is bound with ``routing_key`` (default: ``queue``; a pattern
    such as ``'orders.*'`` on topic exchanges; ignored by fanout).
    At most ``prefetch`` messages wait in the consumer (default: 100 with
    ``ack``, 1000 without). Callbacks run in a
    worker thread, one message at a time and in order, while the consumer
    thread keeps the connection (heartbeats, acknowledgements).

    ``ack`` (default: ``shared``) acknowledges each message after the
    callback returned: a failing callback's message is put back in the
    queue up to ``max_retries`` times (counted in its ``x-zamqp-retries``
    header), then sent to ``dead_letter_exchange``; a message that cannot
    be decoded goes there at once. The dead-letter exchange (default:
    ``<exchange>.dead`` for acknowledging consumers, None for the others;
    None drops such messages) is declared with a durable queue of the same
    name. Without ``ack`` (at most once) a message is acknowledged when
    its callback starts, and a failure loses it. Each retry, dead letter
    and drop is logged once with the message id.

    ``accept`` names the serializers decoded (default: ``props.accept``);
    ``allow`` adds classes to the unpickling allow rules of
    ``props.allow``, ``signed_allow`` to ``props.signed_allow`` (rules
    only for messages with a verified signature, see props.secret);
    ``max_size`` and ``max_depth`` replace the props' limits (None: no
    limit). Messages refused by a limit, a signature check, the content
    type or the decoder are handled like undecodable ones. With
    ``pass_message=True`` the callback is called as ``callback(body,
    message)``, ``message`` being the py-amqp message (headers,
    properties, delivery info).

    Refused messages and callback errors are logged, never raised: the
    consumer goes on. A lost connection is re-established with backoff;
    a refused login or declaration stops the consumer with an error.
    """

    poll_interval = 0.2     # seconds between checks of the stop flag
    busy_interval = 0.01    # the same while results of handlers may come
    stop_timeout = 2.0      # seconds a running handler gets after stop()
    min_backoff = 0.5       # seconds before the first reconnect attempt
    max_backoff = 30.0      # seconds between reconnect attempts, at most

    def __init__(self, queue, props, callback, routing_key=None,
                 shared=False, durable=False, ack=None, prefetch=None,
                 accept=None, allow=(), pass_message=False, max_retries=3,
                 dead_letter_exchange=_DEFAULT, queue_type=None,
                 signed_allow=(), max_size=_DEFAULT, max_depth=_DEFAULT):
        self.queue = queue
        self.props = props
        self.callback = callback
        self.shared = shared
        self.queue_type = _check_queue_type(queue_type, shared)
        self.durable = durable or queue_type == 'quorum'
        self.queue_name = queue if shared else f'{queue}.{uuid.uuid4().hex}'
        self.routing_key = queue if routing_key is None else routing_key
        self.ack = shared if ack is None else ack
        if prefetch is None:
            prefetch = ACK_PREFETCH if self.ack else TAKE_PREFETCH
        self.prefetch = prefetch
        self.max_retries = max_retries
        if dead_letter_exchange is _DEFAULT:
            dead_letter_exchange = f'{props.exchange}.dead' if self.ack \
                else None
        self.dead_letter_exchange = dead_letter_exchange
        self.ack_batch = max(1, prefetch // 10) if prefetch else 25
        self.pass_message = pass_message
        limits = {name: value for name, value in
                  (('max_size', max_size), ('max_depth', max_depth))
                  if value is not _DEFAULT}
        self.decoder = Decoder.for_props(
            props, accept, AllowRules.from_spec(allow),
            AllowRules.from_spec(signed_allow), **limits)
        self.connection = None
        self.error = None
        self.worker = None
        self.max_backlog = 0    # most messages seen waiting for the worker
        self._delivered = 0     # messages delivered (consumer thread) ...
        self._started = 0       # ... and begun or skipped (worker thread)
        self._batch = []        # delivered, not handed to the worker yet
        self.attempted = threading.Event()
        self._stopping = threading.Event()
        self._deadline = None
        self._failing = None
        self._lock = threading.Lock()
        self._busy = False      # the worker runs a callback
        self._channel = None    # the live channel, touched by run() only
        self._consumer_tag = None
        self._results = collections.deque()     # from the worker
        self._pending = 0       # messages to acknowledge with ...
        self._pending_tag = None    # ... one multiple ack of this tag
        self._tick = self._next_tick = None
        self._poller = None     # socket and wake-up pipe, when pollable
        self._sleeping = False  # the consumer thread waits in poll()
        self._wake_r = self._wake_w = None

    def queue_arguments(self):
        """The ``arguments`` of the queue declaration."""
        if self.queue_type is None:
            return None
        arguments = {'x-queue-type': self.queue_type}
        if self.queue_type == 'quorum':
            arguments['x-delivery-limit'] = self.max_retries + 1
            if self.dead_letter_exchange:
                arguments['x-dead-letter-exchange'] = \
                    self.dead_letter_exchange
        return arguments

    # the consumer thread: connection, acknowledgements, heartbeats

    def start_worker(self):
        """Start the worker thread unless it runs (``run`` does it too;
        AMQPThread does it first, so ``run`` goes straight to connecting)."""
        if self.worker is not None and self.worker.is_alive():
            return
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.worker = Worker(self)
        self.worker.start()

    def run(self):
        self.start_worker()
        try:
            self._run()
        finally:
            self.worker.inbox.put(None)
            self.worker.join(self._remaining())
            self._sleeping = False      # the worker writes no more
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _run(self):
        delay = self.min_backoff
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                self.connection = self._connect()
            except ConnectionFailed as exc:
                if not self._failed(exc):
                    return
            else:
                self._consume()
                if time.monotonic() - began > self.max_backoff:
                    delay = self.min_backoff    # a long session: start over
            if self._stopping.wait(delay * random.uniform(0.5, 1.0)):
                return
            delay = min(delay * 2, self.max_backoff)

    def _connect(self):
        conn = deadletter.ConsumerConnection(
            self.queue_name, self.props, routing_key=self.routing_key,
            exclusive=not self.shared, durable=self.durable,
            auto_delete=not self.durable, arguments=self.queue_arguments(),
            dead_letter_exchange=self.dead_letter_exchange)
        try:
            channel = self._channel = conn.channel
            if self.prefetch:
                channel.basic_qos(0, self.prefetch, False)
            self._consumer_tag = channel.basic_consume(
                self.queue_name, callback=self._take, no_ack=False)
        except ConnectionFailed:
            conn.close()
            raise
        except Exception as exc:
            conn.close()
            raise explain(exc, self.props, 'basic_consume') from exc
        return conn

    def _take(self, message):
        """Keep a delivered message for the worker (consumer thread)."""
        self._batch.append(message)
        self._delivered += 1

    def _hand_over(self):
        """Give the worker the messages delivered since the last time."""
        self.worker.inbox.put(self._batch)
        self._batch = []
        backlog = self._delivered - self._started
        if backlog > self.max_backlog:
            self.max_backlog = backlog

    def _consume(self):
        self._connected()
        conn = self.connection.connection
        self._pending, self._pending_tag = 0, None
        self._batch = []
        self._tick = max(min(conn.heartbeat / 4.0, 1.0), 0.05) \
            if conn.heartbeat else None
        self._next_tick = time.monotonic()
        self._poller = self._make_poller(conn)
        try:
            while not self._stopping.is_set():
                self._step(conn)
            self._finish(conn)
        except CONNECTION_LOST as exc:
            self._failed(explain(exc, self.props, 'consume'))
        finally:
            self._channel = None    # results for it are dropped from now
            self.connection.close()

    def _make_poller(self, conn):
        """A poll object for the socket and the worker's wake-up pipe, or
        None where a poll cannot see all the data (TLS buffers)."""
        if not getattr(conn.transport, 'reads_ahead', False):
            return None
        poller = select.poll()
        poller.register(conn.sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        return poller

    def _readable(self, conn, timeout):
        """Wait until the socket has data (True) or the worker has
        results or ``timeout`` passed (False)."""
        if self._poller is None or _buffered(conn):
            return True
        self._sleeping = True
        try:
            if self._results:
                return False
            events = self._poller.poll(timeout * 1000)
        finally:
            self._sleeping = False
        readable = False
        for fd, _ in events:
            if fd == self._wake_r:
                try:
                    os.read(fd, 4096)
                except BlockingIOError:
                    pass
            else:
                readable = True
        return readable

    def wake(self, last):
        """Worker thread: wake the consumer thread for results to send."""
        if self._sleeping and (last or len(self._results) >= self.ack_batch):
            try:
                os.write(self._wake_w, b'.')
            except OSError:
                return
            time.sleep(0)   # let the consumer thread have the GIL now

    def _step(self, conn):
        """Read a frame, pass on the worker's results, send heartbeats."""
        busy = (self._pending or self._results or self._busy
                or self._delivered != self._started)
        timeout = self.busy_interval if busy else self.poll_interval
        idle = True
        if self._readable(conn, timeout):
            try:
                conn.drain_events(timeout=timeout)
                idle = False
            except socket.timeout:
                pass
        # one hand-over per read from the socket, not one per message
        if self._batch and (idle or len(self._batch) >= 64
                            or not _buffered(conn)):
            self._hand_over()
        if self._results:
            self._settle()
        if self._pending and (idle or self._pending >= self.ack_batch):
            self._flush()
        if self._tick and time.monotonic() >= self._next_tick:
            conn.heartbeat_tick()
            self._next_tick = time.monotonic() + self._tick

    def _settle(self):
        """Carry out what the worker decided, in order."""
        results, channel = self._results, self._channel
        while results:
            kind, message, exc = results.popleft()
            if message.channel is not channel:
                logger.debug(
                    'consumer %s: the channel of message %s is gone, so is '
                    'its %r (the broker keeps or drops the message)',
                    self.queue_name, _message_id(message), kind)
                continue
            if kind is DONE:
                self._pending += 1
                self._pending_tag = message.delivery_tag
                continue
            self._flush()
            self._carry_out(channel, kind, message, exc)

    def _carry_out(self, channel, kind, message, exc):
        if kind is RETRY:
            channel.basic_publish(deadletter.retry_copy(message), '',
                                  self.queue_name)
        elif kind is DEAD:
            channel.basic_publish(
                deadletter.dead_letter(message, exc, self.queue),
                self.dead_letter_exchange, self.queue)
        if not self.ack:
            return                  # acknowledged when taken
        if kind is DROP:
            channel.basic_reject(message.delivery_tag, False)
        else:
            channel.basic_ack(message.delivery_tag)

    def _flush(self):
        """Acknowledge every message settled so far, at once."""
        if self._pending:
            self._channel.basic_ack(self._pending_tag, multiple=True)
            self._pending, self._pending_tag = 0, None

    def _finish(self, conn):
        """Cancel, let a running callback finish, acknowledge what was
        handled; messages not handled go back to the queue when the
        channel closes."""
        self._channel.basic_cancel(self._consumer_tag)
        with self._lock:
            pass                    # from here the worker takes no message
        while self._busy and time.monotonic() < self._deadline:
            self._step(conn)
        if self._busy:
            logger.warning('consumer %s: a callback still runs after stop; '
                           'its message goes back to the queue',
                           self.queue_name)
        self._settle()
        self._flush()

    def _connected(self):
        self.error = None
        if self._failing is not None:
            logger.info('consumer %s: connected again to %s',
                        self.queue_name, self.props.url())
        self._failing = None
        self.attempted.set()

    def _failed(self, exc):
        """Log ``exc`` once; return whether to try again."""
        self.error = exc
        again = exc.recoverable
        if str(exc) != self._failing:
            logger.error('consumer %s: %s; %s', self.queue_name, exc,
                         'retrying in the background' if again else
                         'the consumer stops')
        self._failing = str(exc)
        self.attempted.set()
        return again

    def stop(self, timeout=None):
        """Ask ``run`` to return; never blocks. A running callback gets
        ``timeout`` seconds (default: ``stop_timeout``) to finish."""
        if timeout is not None or self._deadline is None:
            self._deadline = time.monotonic() + (
                self.stop_timeout if timeout is None else timeout)
        self._stopping.set()

    def _remaining(self):
        if self._deadline is None:
            return self.stop_timeout
        return max(self._deadline - time.monotonic(), 0.0)

    # the worker thread: decoding and callbacks

    def begin(self, message):
        """Whether the worker is to handle ``message`` now."""
        self._started += 1
        with self._lock:
            if self._stopping.is_set():
                return False        # back to the queue with the channel
            if message.channel is not self._channel:
                logger.debug('consumer %s: message %s came on a channel that '
                             'is gone; not handled', self.queue_name,
                             _message_id(message))
                return False
            self._busy = True
            return True

    def end(self):
        self._busy = False

    def handle(self, message):
        if not self.ack:
            self._results.append((DONE, message, None))  # taken: at most once
        try:
            body = self.decoder(message)
        except MessageRefused as exc:
            kind, fate = self._give_up()
            logger.error('consumer %s: refused message %s (%s): %s',
                         self.queue_name, _message_id(message), fate,
                         loggable(exc))
            self._results.append((kind, message, exc))
            return
        try:
            if self.pass_message:
                self.callback(body, message)
            else:
                self.callback(body)
        except Exception as exc:
            self._callback_failed(message, exc)
            return
        if self.ack:
            self._results.append((DONE, message, None))

    def _callback_failed(self, message, exc):
        retries = deadletter.retries(message)
        if self.ack and retries < self.max_retries:
            kind, fate = RETRY, (f'retried (retry {retries + 1} of '
                                 f'{self.max_retries})')
        else:
            kind, fate = self._give_up()
            if self.ack:
                fate += f' after {retries + 1} attempts'
        logger.exception('consumer %s: callback %r failed on message %s; '
                         'the message is %s, the consumer goes on',
                         self.queue_name, self.callback,
                         _message_id(message), fate)
        self._results.append((kind, message, exc))

    def _give_up(self):
        if self.dead_letter_exchange:
            return DEAD, f'dead-lettered to {self.dead_letter_exchange!r}'
        if self.ack:
            return DROP, 'dropped'
        return DROP, 'lost (the consumer does not ack)'

    def __repr__(self):
        return (f'<AMQPConsumer {self.queue_name!r} on '
                f'{self.props.exchange!r} {self.props.url()}>')


def _check_queue_type(queue_type, shared):
    if queue_type not in QUEUE_TYPES:
        raise ConfigurationError(
            f"queue_type {queue_type!r} is not 'classic' or 'quorum': fix "
            "AMQPConsumer(queue_type=...)")
    if queue_type == 'quorum' and not shared:
        raise ConfigurationError(
            "queue_type='quorum' needs shared=True: quorum queues are "
            "durable and cannot be exclusive")
    return queue_type


def _buffered(conn):
    """Whether py-amqp holds bytes read from the socket but not parsed
    (zamqp.transport reads ahead); True if that cannot be told."""
    return len(getattr(conn.transport, '_read_buffer', b'x')) > 0


def _message_id(message):
    message_id = message.properties.get('message_id')
    if message_id:
        return loggable(message_id, 100)
    return f"(delivery tag {message.delivery_info.get('delivery_tag')})"


def loggable(value, limit=1000):
    """``str(value)`` made safe for a log line: control characters (a
    sender's newline could fake log lines) escaped, at most ``limit``
    characters kept."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + '...'
    if text.isprintable():
        return text
    return text.encode('unicode_escape').decode('ascii')


class Worker(threading.Thread):
    """Runs a consumer's callbacks, one message at a time, in order."""

    def __init__(self, consumer):
        super().__init__(name=f'zamqp-worker-{consumer.queue}', daemon=True)
        self.consumer = consumer
        self.inbox = queue.SimpleQueue()    # lists of messages

    def run(self):
        consumer, get = self.consumer, self.inbox.get
        while True:
            batch = get()
            if batch is None:
                return
            last = len(batch) - 1
            for n, message in enumerate(batch):
                if consumer.begin(message):
                    try:
                        consumer.handle(message)
                    finally:
                        consumer.end()
                consumer.wake(n == last)


class AMQPThread(threading.Thread):
    """A daemon thread that runs one consumer until ``stop()``.

    ``start()`` returns once the consumer is consuming, or once its first
    connection attempt failed (it then retries in the background; an
    error that needs a setting changed is raised instead).
    """

    def __init__(self, consumer, name=None):
        super().__init__(name=name or f'zamqp-consumer-{consumer.queue}',
                         daemon=True)
        self.consumer = consumer

    @property
    def worker(self):
        """The thread that runs the callbacks (None before start)."""
        return self.consumer.worker

    def run(self):
        self.consumer.run()

    def start(self, timeout=None):
        self.consumer.start_worker()
        super().start()
        if timeout is None:
            timeout = self.consumer.props.connect_timeout + 2
        self.consumer.attempted.wait(timeout)
        error = self.consumer.error
        if error is not None and not error.recoverable:
            self.join(timeout)
            raise error

    def stop(self, timeout=2.0):
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
            if thread is not None and thread.is_alive():
                thread.join(max(deadline - time.monotonic(), 0.0))
        return not self.is_alive() and not (worker and worker.is_alive())
