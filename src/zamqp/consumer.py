"""AMQPConsumer and AMQPThread: receive, decode and hand over messages."""
import logging
import random
import socket
import threading
import time
import uuid

from amqp import exceptions as amqp_errors
from zope.interface import implementer

from zamqp.connection import AMQPConnection
from zamqp.connection import explain
from zamqp.exceptions import ConnectionFailed
from zamqp.exceptions import MessageRefused
from zamqp.interfaces import IConsumer
from zamqp.serializers import Decoder
from zamqp.unpickling import AllowRules

logger = logging.getLogger('zamqp')

#: Errors that end a consuming session; the consumer reconnects after them.
CONNECTION_LOST = (OSError, amqp_errors.AMQPError)


@implementer(IConsumer)
class AMQPConsumer:
    """Consumes ``queue`` and calls ``callback(body)`` for each message.

    Broadcast (default, ``shared=False``): the consumer gets a queue of
    its own, ``<queue>.<uuid>``, exclusive and deleted when it closes, so
    every consumer receives every message routed to it.
    Work queue (``shared=True``): all consumers of ``queue`` share that
    queue and each message goes to one of them.

    The queue is bound with ``routing_key`` (default: ``queue``; a pattern
    such as ``'orders.*'`` on topic exchanges; ignored by fanout).
    ``ack`` (default: ``shared``) acknowledges each message after the
    callback returned; a failing callback's message is requeued once and
    then dropped, with a log line each time. ``accept`` names the
    serializers decoded (default: ``props.accept``); ``allow`` adds
    classes to the unpickling allow rules of ``props.allow``. With
    ``pass_message=True`` the callback is called as
    ``callback(body, message)``, ``message`` being the py-amqp message
    (headers, properties, delivery info).

    Refused messages and callback errors are logged, never raised: the
    consumer goes on. A lost connection is re-established with backoff;
    a refused login or declaration stops the consumer with an error.
    """

    poll_interval = 0.2     # seconds between checks of the stop flag
    min_backoff = 0.5       # seconds before the first reconnect attempt
    max_backoff = 30.0      # seconds between reconnect attempts, at most

    def __init__(self, queue, props, callback, routing_key=None,
                 shared=False, durable=False, ack=None, prefetch=100,
                 accept=None, allow=(), pass_message=False):
        self.queue = queue
        self.props = props
        self.callback = callback
        self.shared = shared
        self.durable = durable
        self.queue_name = queue if shared else f'{queue}.{uuid.uuid4().hex}'
        self.routing_key = queue if routing_key is None else routing_key
        self.ack = shared if ack is None else ack
        self.prefetch = prefetch
        self.pass_message = pass_message
        accept = props.accept if accept is None else accept
        self.decoder = Decoder(accept, props.allow | AllowRules.from_spec(allow))
        self.connection = None
        self.error = None
        self.attempted = threading.Event()
        self._stopping = threading.Event()
        self._failing = None

    # consuming

    def run(self):
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
        conn = AMQPConnection(
            self.queue_name, self.props, mode='r',
            routing_key=self.routing_key, exclusive=not self.shared,
            durable=self.durable, auto_delete=not self.durable)
        try:
            channel = conn.channel
            if self.ack:
                channel.basic_qos(0, self.prefetch, False)
            channel.basic_consume(self.queue_name, callback=self.handle,
                                  no_ack=not self.ack)
        except ConnectionFailed:
            conn.close()
            raise
        except Exception as exc:
            conn.close()
            raise explain(exc, self.props, 'basic_consume') from exc
        return conn

    def _consume(self):
        self._connected()
        try:
            self._drain(self.connection.connection)
        except CONNECTION_LOST as exc:
            self._failed(explain(exc, self.props, 'consume'))
        finally:
            self.connection.close()

    def _drain(self, conn):
        tick = max(min(conn.heartbeat / 4.0, 1.0), 0.05) if conn.heartbeat \
            else None
        next_tick = time.monotonic()
        while not self._stopping.is_set():
            try:
                conn.drain_events(timeout=self.poll_interval)
            except socket.timeout:
                pass
            if tick and time.monotonic() >= next_tick:
                conn.heartbeat_tick()
                next_tick = time.monotonic() + tick

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

    def stop(self):
        self._stopping.set()

    # messages

    def handle(self, message):
        try:
            body = self.decoder(message)
        except MessageRefused as exc:
            logger.error('consumer %s: refused message %s: %s',
                         self.queue_name, _message_id(message), exc)
            self._settle(message, False, requeue=False)
            return
        try:
            if self.pass_message:
                self.callback(body, message)
            else:
                self.callback(body)
        except Exception:
            self._callback_failed(message)
            return
        self._settle(message, True)

    def _callback_failed(self, message):
        requeue = self.ack and not message.delivery_info.get('redelivered')
        fate = ('requeued once' if requeue else
                'dropped' if self.ack else 'lost (the consumer does not ack)')
        logger.exception('consumer %s: callback %r failed on message %s; '
                         'the message is %s, the consumer goes on',
                         self.queue_name, self.callback,
                         _message_id(message), fate)
        self._settle(message, False, requeue=requeue)

    def _settle(self, message, ok, requeue=False):
        if not self.ack:
            return
        if ok:
            message.channel.basic_ack(message.delivery_tag)
        else:
            message.channel.basic_reject(message.delivery_tag, requeue)

    def __repr__(self):
        return (f'<AMQPConsumer {self.queue_name!r} on '
                f'{self.props.exchange!r} {self.props.url()}>')


def _message_id(message):
    return message.properties.get('message_id') or \
        f"(delivery tag {message.delivery_info.get('delivery_tag')})"


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

    def run(self):
        self.consumer.run()

    def start(self, timeout=None):
        super().start()
        if timeout is None:
            timeout = self.consumer.props.connect_timeout + 2
        self.consumer.attempted.wait(timeout)
        error = self.consumer.error
        if error is not None and not error.recoverable:
            self.join(timeout)
            raise error

    def stop(self, timeout=2.0):
        """Stop the consumer; return True once the thread has ended."""
        self.consumer.stop()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
        return not self.is_alive()
