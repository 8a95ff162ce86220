"""The queue a consumer reads: its declaration, bindings and dead letters."""
from zamqp.connection import AMQPConnection
from zamqp.exceptions import ConfigurationError

QUEUE_TYPES = (None, 'classic', 'quorum')


def quorum_delivery_limit(max_retries):
    """The ``x-delivery-limit`` of a quorum queue: a safety net well
    above ``max_retries + 1``. The broker counts every return of a
    message, prefetched ones that a closed channel gave back unhandled
    included; zamqp counts the failures of handlers itself."""
    return max(20, 5 * (max_retries + 1))


class QueueDeclaration:
    """How a consumer's queue is declared.

    A broadcast queue (``shared=False``) is exclusive to its connection
    and deleted with it. A shared (work) queue is durable and never
    auto-deleted, so its backlog survives its consumers and broker
    restarts (``queue_type='quorum'`` replicates it). No queue is
    transient and non-exclusive: RabbitMQ 4 refuses those.
    """

    def __init__(self, name, shared, durable=None, queue_type=None,
                 max_retries=3, dead_letter_exchange=None):
        self.name = name
        self.shared = shared
        self.queue_type = _check_queue_type(queue_type, shared)
        self.durable = _check_durable(durable, shared, queue_type)
        self.exclusive = not shared
        self.auto_delete = not shared
        self.max_retries = max_retries
        self.dead_letter_exchange = dead_letter_exchange

    def flags(self):
        return dict(exclusive=self.exclusive, durable=self.durable,
                    auto_delete=self.auto_delete)

    def arguments(self):
        """The ``arguments`` of the queue declaration (or None)."""
        if self.queue_type is None:
            return None
        arguments = {'x-queue-type': self.queue_type}
        if self.queue_type == 'quorum':
            arguments['x-delivery-limit'] = \
                quorum_delivery_limit(self.max_retries)
            if self.dead_letter_exchange:
                arguments['x-dead-letter-exchange'] = \
                    self.dead_letter_exchange
        return arguments


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


def _check_durable(durable, shared, queue_type):
    if durable is None:
        return bool(shared)
    if shared and not durable:
        raise ConfigurationError(
            "durable=False with shared=True would declare a transient, "
            "shared queue, which loses its backlog and which RabbitMQ 4 "
            "refuses: leave durable unset (shared queues are durable)")
    return bool(durable or queue_type == 'quorum')


class ConsumerConnection(AMQPConnection):
    """A read-mode AMQPConnection for a QueueDeclaration: the queue, its
    binding, its arguments and its dead-letter exchange.

    The dead-letter exchange is a durable fanout exchange; a durable queue
    of the same name is bound to it, so dead letters wait there until
    someone looks at them.
    """

    def __init__(self, declaration, props, routing_key=None):
        super().__init__(declaration.name, props, mode='r',
                         routing_key=routing_key, **declaration.flags())
        self.declaration = declaration

    def declare(self, channel):
        dlx = self.declaration.dead_letter_exchange
        if dlx:
            channel.exchange_declare(dlx, 'fanout', durable=True,
                                     auto_delete=False)
            channel.queue_declare(dlx, durable=True, auto_delete=False)
            channel.queue_bind(dlx, dlx, '')
        props = self.props
        channel.exchange_declare(props.exchange, props.type, durable=True,
                                 auto_delete=False)
        channel.queue_declare(self.queue,
                              arguments=self.declaration.arguments(),
                              **self.queue_flags)
        channel.queue_bind(self.queue, props.exchange, self.routing_key)
