"""ConsumerSpec: a consumer declared in configuration, made at startup."""
import zope.component
from zope.interface import implementer

from zamqp import streams
from zamqp.exceptions import ConfigurationError
from zamqp.zope import settings
from zamqp.consumer import AMQPConsumer
from zamqp.zope.delivery import Delivery
from zamqp.interfaces import IAllowRules
from zamqp.interfaces import IConsumerSpec
from zamqp.interfaces import ISignedAllowRules
from zamqp.unpickling import AllowRules


#: What a refusal tells a ZCML user: the attribute or directive to add.
ZCML_HINT = ("add {dotted} to the allow attribute of <zamqp:consumer "
             "name={name!r}> (signed_allow: for signed messages only), or "
             'declare <zamqp:allow names="{dotted}"/> for every consumer')


@implementer(ISignedAllowRules)
class SignedAllowRules:
    """Allow rules for messages with a verified signature only."""

    def __init__(self, rules):
        self.rules = rules


@implementer(IConsumerSpec)
class ConsumerSpec:
    """What ``<zamqp:consumer>`` declares; ``create()`` makes the consumer.

    The allow rules are the consumer's own, those of its connection and
    every ``<zamqp:allow>`` registered when the consumer is created; the
    same for the rules of signed messages (``signed_allow``,
    ``<zamqp:allow signed="true">``). ``max_size`` and ``max_depth``,
    when given, replace the connection's.
    """

    def __init__(self, name, props, queue, exchange='zamqp.broadcast.fanout',
                 type='fanout', routing_key=None, handler=None, events=False,
                 shared=False, durable=None, ack=None, prefetch=None,
                 max_retries=3, dead_letter_exchange=None, queue_type=None,
                 accept=None, allow=(), signed_allow=(), site='', user=None,
                 enabled=True, exchange_arguments=None, stream=False,
                 **limits):
        self.name = name
        self.stream = stream
        self.stream_options = _stream_options(name, stream, limits)
        exchange_settings = dict(exchange=settings.prefixed(exchange),
                                 type=type)
        if exchange_arguments:
            exchange_settings['exchange_arguments'] = settings.arguments(
                'exchange_arguments', exchange_arguments)
        self.props = props.replace(**exchange_settings)
        for option in ('queue_arguments', 'binding_arguments'):
            if limits.get(option) is not None:
                limits[option] = settings.arguments(option, limits[option])
        self.queue = settings.prefixed(queue) if shared or stream else queue
        self.routing_key = routing_key
        self.handler = handler
        self.events = events
        self.options = dict(shared=shared, durable=durable, ack=ack,
                            prefetch=prefetch, max_retries=max_retries,
                            queue_type=queue_type, accept=accept, **limits)
        if dead_letter_exchange is not None:     # else the consumer's default
            self.options['dead_letter_exchange'] = (
                None if dead_letter_exchange.lower() == 'none'
                else settings.prefixed(dead_letter_exchange))
        hint = ZCML_HINT.format(name=name, dotted='{dotted}')
        self.allow = AllowRules.from_spec(allow).with_hint(hint)
        self.signed_allow = AllowRules.from_spec(signed_allow).with_hint(hint)
        self.site = site
        self.user = user
        self.enabled = enabled

    def create(self, database=None):
        options = dict(self.options)
        position = None
        if self.stream:
            options.update(self.stream_options, stream=True)
            if database is not None:
                from zamqp.zope.offsets import TransactionalPosition
                from zamqp.zope.offsets import ZODBOffsetStore
                store = options['offsets'] = ZODBOffsetStore(database)
                position = TransactionalPosition(store, self.queue,
                                                 options['reader'])
            elif options.get('offsets') is None:
                raise ConfigurationError(
                    f'<zamqp:consumer name={self.name!r} stream="true"> '
                    'runs without a Zope database here, so its position '
                    'needs a directory: give offsets="..."')
        return AMQPConsumer(
            self.queue, self.props, self.delivery(database, position),
            routing_key=self.routing_key, allow=self.allow_rules(),
            signed_allow=self.signed_allow_rules(), pass_message=True,
            **options)

    def delivery(self, database=None, position=None):
        in_context = None
        if database is not None:
            from zamqp.zope.context import InZope
            in_context = InZope(database, self.site, self.user,
                                position=position)
        return Delivery(self.name, self.handler, self.events, in_context)

    def check(self, database=None):
        """Raise ZopeContextError if the site or the user this consumer
        runs its handlers in is not found in ``database`` (None:
        handlers run without Zope, nothing to check)."""
        if database is None:
            return
        import transaction
        from zamqp.zope.context import InZope
        from zamqp.zope.context import ZopeContextError
        from zamqp.zope.context import find_user
        manager = transaction.TransactionManager()
        connection = database.open(transaction_manager=manager)
        try:
            site = InZope(database, self.site).traverse(
                connection.root()['Application'])
            if self.user:
                find_user(site, self.user)
        except ZopeContextError as exc:
            raise ZopeContextError(
                f'<zamqp:consumer name={self.name!r}>: {exc} (or its '
                f'consumer.{self.name}.site / .user in zope.conf)') from exc
        finally:
            manager.abort()
            connection.close()

    def allow_rules(self):
        return _merged(self.allow, _registered(IAllowRules))

    def signed_allow_rules(self):
        return _merged(self.signed_allow, (
            utility.rules for utility in _registered(ISignedAllowRules)))

    def __repr__(self):
        return f'<ConsumerSpec {self.name!r} queue={self.queue!r}>'


#: Options of stream readers only (unset: left out).
STREAM_OPTIONS = ('reader', 'offsets', 'start', 'max_age',
                  'max_length_bytes', 'max_segment_size_bytes')


def _stream_options(name, stream, options):
    """Take the stream options out of ``options``; check them."""
    found = {}
    for option in STREAM_OPTIONS:
        if option not in options:
            continue
        value = options.pop(option)
        if option in ('reader', 'offsets', 'start', 'max_age') and \
                value in (None, ''):
            continue
        found[option] = value
    if not stream:
        if found:
            verb = 'applies' if len(found) == 1 else 'apply'
            raise ConfigurationError(
                f'<zamqp:consumer name={name!r}>: {", ".join(found)} '
                f'{verb} to stream readers only: add stream="true" or '
                'leave them out')
        return found
    if isinstance(found.get('max_age'), str) and \
            found['max_age'].lower() == 'none':
        found['max_age'] = None
    where = (f'(<zamqp:consumer name={name!r}>, or consumer.{name}.'
             '<option> in zope.conf)')
    if 'reader' not in found:
        raise ConfigurationError(
            f'<zamqp:consumer name={name!r} stream="true"> needs a '
            'reader: a name per instance that stays the same across '
            f'restarts, as consumer.{name}.reader in zope.conf (e.g. '
            f'consumer.{name}.reader instance1, a different name in each '
            "instance's zope.conf) or reader=\"...\"")
    try:
        streams.check_reader(found['reader'])
        streams.start_argument(found.get('start', 'next'))
        if found.get('max_age') is not None:
            streams.check_interval(found['max_age'], 'max_age')
    except ConfigurationError as exc:
        raise ConfigurationError(f'{exc} {where}') from exc
    return found


def _registered(interface):
    return zope.component.getAllUtilitiesRegisteredFor(interface)


def _merged(rules, others):
    """``rules`` widened by each of ``others``."""
    for other in others:
        rules = rules | other
    return rules
