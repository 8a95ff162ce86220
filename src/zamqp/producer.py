"""AMQPProducer: publishes serialized messages on one reused connection."""
import itertools
import logging
import threading
import uuid

import amqp
from amqp import exceptions as amqp_errors
from zope.interface import implementer

from zamqp import serializers
from zamqp import transactional as _transactional
from zamqp.connection import AMQPConnection
from zamqp.exceptions import ConnectionFailed
from zamqp.exceptions import PublishFailed
from zamqp.interfaces import IProducer

logger = logging.getLogger('zamqp')

#: Publish failures after which a new connection may succeed.
RETRYABLE = (OSError, amqp_errors.AMQPError)


@implementer(IProducer)
class AMQPProducer:
    """Call it with any object to publish it to ``props.exchange``.

    The routing key is ``routing_key`` (default: ``queue``); fanout
    exchanges ignore it, direct and topic exchanges route by it.
    ``serializer`` names the serializer ('pickle' or 'json').
    ``persistent`` asks the broker to write messages to disk.

    The connection opens on the first call and is reused; calls from
    several threads are serialized by a lock. A call whose connection or
    channel died reconnects once and tries again, then raises
    PublishFailed; a broker that cannot be reached raises ConnectionFailed.

    With ``transactional=True`` a call made while the thread has an
    active transaction (the ``transaction`` package) builds the message
    and returns its id at once but publishes it only after a successful
    commit, and never on abort (see zamqp.transactional).
    """

    def __init__(self, queue, props, routing_key=None, serializer='pickle',
                 persistent=False, transactional=False):
        self.queue = queue
        self.props = props
        self.routing_key = queue if routing_key is None else routing_key
        self.serializer = serializers.get(serializer)
        self.delivery_mode = 2 if persistent else 1
        self.transactional = transactional
        self.connection = AMQPConnection(queue, props, mode='w',
                                         publisher=True)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._id_prefix = uuid.uuid4().hex[:12]

    def __call__(self, message, routing_key=None, headers=None):
        msg = self.message(message, headers)
        key = self.routing_key if routing_key is None else routing_key
        if not (self.transactional and _transactional.defer(self, msg, key)):
            self.publish_now(msg, key)
        return msg.properties['message_id']

    def publish_now(self, msg, routing_key):
        """Publish the amqp.Message ``msg`` (see ``message``) now."""
        with self._lock:
            self._publish(msg, routing_key)

    def message(self, obj, headers=None):
        """The py-amqp message that carries ``obj``."""
        extra = {} if headers is None else {'headers': headers}
        return amqp.Message(
            self.serializer.dumps(obj),
            content_type=self.serializer.content_type,
            delivery_mode=self.delivery_mode,
            message_id=f'{self._id_prefix}-{next(self._ids)}', **extra)

    def _publish(self, msg, key):
        for attempt in (1, 2):
            try:
                return self._send(msg, key)
            except ConnectionFailed:
                raise
            except RETRYABLE as exc:
                self.connection.close()
                if attempt == 2:
                    raise PublishFailed(
                        f"basic_publish: message "
                        f"{msg.properties['message_id']} to exchange "
                        f"{self.props.exchange!r} on {self.props.url()} "
                        f"failed twice: {exc}") from exc
                logger.warning('publish to %s on %s failed (%s); '
                               'reconnecting', self.props.exchange,
                               self.props.url(), exc)

    def _send(self, msg, key):
        channel = self.connection.channel
        self.connection.poll()
        channel.basic_publish(msg, self.props.exchange, key)

    def close(self):
        with self._lock:
            self.connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return (f'<AMQPProducer {self.props.exchange!r} key='
                f'{self.routing_key!r} {self.serializer.name} '
                f'{self.props.url()}>')
