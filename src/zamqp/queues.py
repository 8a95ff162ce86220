"""The queue a consumer reads: its declaration, bindings and dead letters."""
import logging

from amqp import exceptions as amqp_errors

from zamqp import topology
from zamqp.connection import AMQPConnection
from zamqp.exceptions import ConfigurationError

QUEUE_TYPES = (None, 'classic', 'quorum')
#: Queue types replicated across a cluster's nodes.
REPLICATED = ('quorum', 'stream')

logger = logging.getLogger(__name__)


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

    ``queue_arguments`` are further arguments of the queue declaration
    (``x-max-priority``, ``x-message-ttl``, ... to match a queue others
    declared); ``binding_arguments`` those of its binding (a headers
    exchange routes by them: ``{'x-match': 'all', 'color': 'red'}``).
    ``declare`` (None: the props') is True, 'passive' or False (see
    zamqp.topology); a broadcast queue is its connection's own, so it
    needs True.
    """

    def __init__(self, name, shared, durable=None, queue_type=None,
                 max_retries=3, dead_letter_exchange=None,
                 queue_arguments=None, binding_arguments=None,
                 declare=None):
        self.name = name
        self.shared = shared
        self.queue_type = _check_queue_type(queue_type, shared)
        self.durable = _check_durable(durable, shared, queue_type)
        self.exclusive = not shared
        self.auto_delete = not shared
        self.max_retries = max_retries
        self.dead_letter_exchange = dead_letter_exchange
        self.queue_arguments = topology.check_arguments(
            queue_arguments, 'queue_arguments', 'AMQPConsumer')
        self.binding_arguments = topology.check_arguments(
            binding_arguments, 'binding_arguments', 'AMQPConsumer')
        if declare is not None:
            topology.check_mode(declare, 'AMQPConsumer')
        if declare not in (None, True) and not shared:
            raise ConfigurationError(
                f"declare={declare!r} needs shared=True: a broadcast "
                "consumer's queue is exclusive to its connection, made "
                "anew by each one, so nobody can declare it beforehand; "
                "grant configure permission on its name instead (see "
                "docs/least-privilege.rst)")
        self.declare = declare
        if queue_arguments and queue_type and \
                queue_arguments.get('x-queue-type', queue_type) \
                != queue_type:
            raise ConfigurationError(
                f"queue_type={queue_type!r} and queue_arguments "
                f"{{'x-queue-type': {queue_arguments['x-queue-type']!r}}} "
                "differ: give one of them")

    def flags(self):
        return dict(exclusive=self.exclusive, durable=self.durable,
                    auto_delete=self.auto_delete)

    def arguments(self):
        """The ``arguments`` of the queue declaration (or None)."""
        if self.queue_type is None:
            return self.queue_arguments
        arguments = dict(self.queue_arguments or {})
        arguments['x-queue-type'] = self.queue_type
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
    someone looks at them. That queue is declared only where it does not
    exist yet (whoever declares it first chooses its type): a quorum
    queue for consumers of quorum queues and streams, so that it lives
    on when a node of a cluster is down, else a classic one.
    """

    def __init__(self, declaration, props, routing_key=None):
        if declaration.declare is None and props.declare is not True and \
                not declaration.shared:
            raise ConfigurationError(
                f"declare={props.declare!r} (of the props) needs "
                "shared=True for a consumer: a broadcast consumer's queue "
                "is exclusive to its connection, so nobody can declare it "
                "beforehand; give the consumer declare=True and grant "
                "configure permission on its name (see "
                "docs/least-privilege.rst)")
        super().__init__(declaration.name, props, mode='r',
                         routing_key=routing_key, declare=declaration.declare,
                         **declaration.flags())
        self.declaration = declaration

    def declare(self, channel):
        """Declare the dead-letter exchange and its queue, the exchange,
        the queue and its binding, as ``declare`` says (with 'passive'
        the dead-letter exchange, the exchange and the queue are checked;
        False declares and checks nothing)."""
        declarer = topology.Declarer(channel, self.props, self.declare_mode)
        dlx = self.declaration.dead_letter_exchange
        if dlx:
            declarer.exchange(dlx, 'fanout')
            if self.declare_mode is True and \
                    not _queue_exists(channel.connection, dlx):
                arguments = {'x-queue-type': 'quorum'} if \
                    self.declaration.queue_type in REPLICATED else None
                declarer.queue(dlx, durable=True, auto_delete=False,
                               arguments=arguments)
                declarer.bind(dlx, dlx, '')
        props = self.props
        declarer.exchange(props.exchange, props.type,
                          props.exchange_arguments)
        declarer.queue(self.queue, arguments=self.declaration.arguments(),
                       **self.queue_flags)
        declarer.bind(self.queue, props.exchange, self.routing_key,
                      self.declaration.binding_arguments)


def _queue_exists(connection, name):
    """Whether queue ``name`` exists (on a channel of its own, which a
    missing queue closes); a queue on a node that is down exists."""
    channel = connection.channel()
    try:
        channel.queue_declare(name, passive=True)
    except amqp_errors.NotFound as exc:
        if 'down or inaccessible' not in (exc.reply_text or ''):
            return False
        logger.warning('queue %r is on a node that is down (%s): what is '
                       'routed to it may not be kept until that node is '
                       'back', name, exc.reply_text)
        return True
    except amqp_errors.ResourceLocked:
        return True
    try:
        channel.close()
    except Exception:       # noqa: BLE001 - only a check
        pass
    return True
