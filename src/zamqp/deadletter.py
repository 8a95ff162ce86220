"""Retries and dead letters: copies of a failed message, with headers."""
import amqp

from zamqp.connection import AMQPConnection

#: Header counting the handler failures of a message (zamqp republishes).
RETRIES = 'x-zamqp-retries'
#: Headers of a dead letter: the error, the queue and the routing key.
ERROR = 'x-zamqp-error'
QUEUE = 'x-zamqp-queue'
ROUTING_KEY = 'x-zamqp-routing-key'
EXCHANGE = 'x-zamqp-exchange'
#: Characters of an error message kept in the ERROR header.
MAX_ERROR = 500


def retries(message):
    """How often handlers failed on ``message`` so far."""
    headers = message.headers or {}
    try:
        return max(int(headers.get(RETRIES, 0)), 0)
    except (TypeError, ValueError):
        return 0


def error_text(exc):
    """``Type: message``, truncated to MAX_ERROR characters."""
    text = f'{type(exc).__name__}: {exc}'
    return text if len(text) <= MAX_ERROR else text[:MAX_ERROR - 3] + '...'


def copy(message, **headers):
    """A new message with ``message``'s body and properties, and
    ``headers`` added to its application headers."""
    properties = dict(message.properties)
    properties['application_headers'] = dict(message.headers or {},
                                             **headers)
    return amqp.Message(message.body, **properties)


def retry_copy(message):
    """The copy to put back in the queue: its retry count raised."""
    return copy(message, **{RETRIES: retries(message) + 1})


def dead_letter(message, exc, queue):
    """The copy for the dead-letter exchange: what failed, and where."""
    info = message.delivery_info or {}
    return copy(message, **{
        ERROR: error_text(exc), QUEUE: queue,
        ROUTING_KEY: info.get('routing_key') or '',
        EXCHANGE: info.get('exchange') or ''})


class ConsumerConnection(AMQPConnection):
    """A read-mode AMQPConnection that also declares the queue's
    ``arguments`` (quorum queues) and a dead-letter exchange.

    The dead-letter exchange is a durable fanout exchange; a durable queue
    of the same name is bound to it, so dead letters wait there until
    someone looks at them.
    """

    def __init__(self, queue, props, arguments=None,
                 dead_letter_exchange=None, **kw):
        super().__init__(queue, props, mode='r', **kw)
        self.arguments = arguments
        self.dead_letter_exchange = dead_letter_exchange

    def declare(self, channel):
        dlx = self.dead_letter_exchange
        if dlx:
            channel.exchange_declare(dlx, 'fanout', durable=True,
                                     auto_delete=False)
            channel.queue_declare(dlx, durable=True, auto_delete=False)
            channel.queue_bind(dlx, dlx, '')
        if not self.arguments:
            return super().declare(channel)
        props = self.props
        channel.exchange_declare(props.exchange, props.type, durable=True,
                                 auto_delete=False)
        channel.queue_declare(self.queue, arguments=self.arguments,
                              **self.queue_flags)
        channel.queue_bind(self.queue, props.exchange, self.routing_key)
