"""ZCML directives: connections, producers, consumers, relays, allow rules.

Handlers only record configuration actions; no socket is opened while
ZCML is read. Settings are checked when the directive is read, so errors
carry the file and line.
"""
import zope.component
from zope.configuration.exceptions import ConfigurationError
from zope.configuration.fields import GlobalInterface
from zope.configuration.fields import GlobalObject
from zope.configuration.fields import Tokens
from zope.interface import Interface
from zope.schema import Bool
from zope.schema import Choice
from zope.schema import Float
from zope.schema import Int
from zope.schema import TextLine

from zamqp.zope import settings
from zamqp.zope.delivery import Relay
from zamqp.exceptions import ZAMQPError
from zamqp.interfaces import IAllowRules
from zamqp.interfaces import IAMQPProps
from zamqp.interfaces import IConsumerSpec
from zamqp.interfaces import IProducer
from zamqp.interfaces import ISignedAllowRules
from zamqp.props import EXCHANGE_TYPES
from zamqp.zope.spec import ConsumerSpec
from zamqp.zope.spec import SignedAllowRules
from zamqp.unpickling import AllowRules

# Connections are registered before what refers to them, producers
# before the relays that use them.
CONNECTION_ORDER, USER_ORDER, RELAY_ORDER = 0, 1, 2


class IConnectionDirective(Interface):
    """``<zamqp:connection>``: a named set of broker settings."""

    name = TextLine(title='Name', required=False, default='default',
                    description='Producers and consumers refer to it.')
    url = TextLine(title='URL', required=False,
                   description='amqp://user:password@host:port/vhost; '
                   'the attributes below win over it.')
    host = TextLine(title='Host', required=False)
    hosts = Tokens(title='Hosts', value_type=TextLine(), required=False,
                   description='Several brokers of a cluster, '
                   "'host:port host:port'; tried in turn.")
    port = Int(title='Port', required=False, min=1, max=65535)
    user = TextLine(title='User', required=False)
    password = TextLine(title='Password', required=False,
                        description='Better kept in zope.conf '
                        '(<product-config zamqp>) than in ZCML.')
    virtual_host = TextLine(title='Virtual host', required=False)
    ssl = Bool(title='Use TLS', required=False)
    heartbeat = Int(title='Heartbeat (seconds)', required=False, min=0)
    connect_timeout = Float(title='Connect timeout (seconds)',
                            required=False, min=0.0)
    timeout = Float(title='Network timeout (seconds)', required=False,
                    min=0.0)
    ca_file = TextLine(title='TLS: CA file', required=False,
                       description="PEM CAs of the broker's certificate; "
                       "default: the system's.")
    cert_file = TextLine(title='TLS: client certificate', required=False)
    key_file = TextLine(title='TLS: client key', required=False)
    server_hostname = TextLine(
        title='TLS: name to check', required=False,
        description="Default: the host connected to.")
    verify = Bool(title='TLS: verify the broker', required=False,
                  description="Default true; false only for tests.")
    secret = TextLine(title='Signing secret', required=False,
                      description='Better in zope.conf or the '
                      'environment (secret_env) than in ZCML.')
    secret_env = TextLine(title='Environment variable of the secret',
                          required=False,
                          description='Holds the secret, or several '
                          'separated by spaces: the first signs.')
    accepted_secrets = Tokens(title='Further accepted secrets',
                              value_type=TextLine(), required=False)
    accept_unsigned = Bool(title='Accept unsigned messages', required=False,
                           description='With a secret: decode unsigned '
                           'messages with the strict rules.')
    signature_max_age = Float(title='Maximum age of signed messages '
                              '(seconds)', required=False, min=0.001)
    max_size = Int(title='Largest body (bytes)', required=False, min=0,
                   description='Default 16 MiB; 0: no limit.')
    max_depth = Int(title='Deepest nesting', required=False, min=0,
                    description='Default 100; 0: no limit.')


class IExchangeFields(Interface):
    """What producers and consumers share: connection and exchange."""

    name = TextLine(title='Name', required=True)
    connection = TextLine(title='Connection name', required=False,
                          default='default')
    exchange = TextLine(title='Exchange', required=False,
                        default='zamqp.broadcast.fanout')
    type = Choice(title='Exchange type', values=EXCHANGE_TYPES,
                  required=False, default='fanout')
    routing_key = TextLine(title='Routing key', required=False,
                           description='Default: the queue (consumer) or '
                           'the name (producer).')


class IProducerDirective(IExchangeFields):
    """``<zamqp:producer>``: a named IProducer utility."""

    serializer = TextLine(title='Serializer', required=False,
                          default='pickle')
    persistent = Bool(title='Persistent messages', required=False,
                      default=False)
    transactional = Bool(title='Publish on commit', required=False,
                         default=True,
                         description='Inside a transaction, publish after '
                         'it committed; drop on abort.')
    confirm = Bool(title='Publisher confirms', required=False,
                   default=None,
                   description='true: return only once the broker '
                   'confirmed the message; false: fire and forget; '
                   'unset: keep a window of unconfirmed messages.')
    confirm_timeout = Float(title='Confirm timeout (seconds)',
                            required=False, min=0.0,
                            description="Default: the connection's "
                            'timeout.')
    mandatory = Bool(title='Mandatory', required=False, default=False,
                     description='With confirm: raise when no queue '
                     'takes the message.')


class IConsumerDirective(IExchangeFields):
    """``<zamqp:consumer>``: a consumer started with the instance."""

    queue = TextLine(title='Queue', required=False,
                     description='Default: the name.')
    handler = GlobalObject(title='Handler', required=False,
                           description='Called with an IMessageReceived '
                           'event; default: notify that event.')
    events = Bool(title='Remote zope events', required=False,
                  default=False,
                  description='Notify each received body as a zope event.')
    shared = Bool(title='Shared work queue', required=False, default=False)
    durable = Bool(title='Durable queue', required=False,
                   description='Default: true for shared queues (which '
                   'cannot be transient), false for broadcast queues.')
    ack = Bool(title='Acknowledge after handling', required=False)
    prefetch = Int(title='Prefetch', required=False, min=0,
                   description='Default: 100 with ack, 1000 without.')
    max_retries = Int(title='Retries of a failing message', required=False,
                      default=3, min=0)
    dead_letter_exchange = TextLine(
        title='Dead-letter exchange', required=False,
        description="Where failed messages go; default '<exchange>.dead' "
        "for acknowledging consumers; 'none' drops them.")
    queue_type = Choice(title='Queue type', values=('classic', 'quorum'),
                        required=False,
                        description="'quorum' for replicated shared queues.")
    accept = Tokens(title='Accepted serializers', value_type=TextLine(),
                    required=False)
    allow = Tokens(title='Allowed classes', value_type=TextLine(),
                   required=False,
                   description="Dotted names or patterns ('myapp.*').")
    signed_allow = Tokens(title='Allowed classes of signed messages',
                          value_type=TextLine(), required=False,
                          description='Only for messages whose signature '
                          'was verified.')
    max_size = Int(title='Largest body (bytes)', required=False, min=0,
                   description="Default: the connection's; 0: no limit.")
    max_depth = Int(title='Deepest nesting', required=False, min=0,
                    description="Default: the connection's; 0: no limit.")
    site = TextLine(title='Site path', required=False, default='',
                    description="Zope: the site handlers run in, e.g. "
                    "'/plone'; default: the application root.")
    user = TextLine(title='User id', required=False,
                    description='Zope: the user handlers run as; '
                    'default: anonymous.')


class IBroadcastDirective(Interface):
    """``<zamqp:broadcast>``: publish local events of an interface."""

    for_ = GlobalInterface(title='Event interface', required=True)
    producer = TextLine(title='Producer name', required=True)


class IAllowDirective(Interface):
    """``<zamqp:allow>``: classes every configured consumer may unpickle."""

    names = Tokens(title='Dotted names or patterns', value_type=TextLine(),
                   required=True)
    signed = Bool(title='Only for signed messages', required=False,
                  default=False,
                  description='Apply the names only to messages whose '
                  'signature was verified.')


def _check(make, *args, **kw):
    """Build ``make(...)`` now, turning zamqp's errors into ZCML ones."""
    try:
        return make(*args, **kw)
    except (ZAMQPError, TypeError) as exc:
        raise ConfigurationError(str(exc)) from exc


def connection(_context, name='default', **given):
    given = {k: v for k, v in given.items() if v is not None}
    for limit in ('max_size', 'max_depth'):
        if given.get(limit) == 0:
            given[limit] = None
    _check(settings.connection_props, name, given, with_overrides=True)
    _context.action(discriminator=('zamqp:connection', name),
                    callable=register_connection, args=(name, given),
                    order=CONNECTION_ORDER)


def register_connection(name, given):
    props = settings.connection_props(name, given, with_overrides=True)
    _registry().registerUtility(props, IAMQPProps, name)


def producer(_context, name, connection='default',
             exchange='zamqp.broadcast.fanout', type='fanout',
             routing_key=None, serializer='pickle', persistent=False,
             transactional=True, confirm=None, confirm_timeout=None,
             mandatory=False):
    options = dict(exchange=exchange, type=type, routing_key=routing_key,
                   serializer=serializer, persistent=persistent,
                   transactional=transactional, confirm=confirm,
                   confirm_timeout=confirm_timeout, mandatory=mandatory)
    _check(settings.check_serializers, [serializer], 'serializer')
    _context.action(discriminator=('zamqp:producer', name),
                    callable=register_producer,
                    args=(name, connection, options), order=USER_ORDER)


def register_producer(name, connection, options):
    _registry().registerUtility(
        settings.make_producer(name, _connection(connection), options),
        IProducer, name)


def consumer(_context, name, connection='default', queue=None,
             exchange='zamqp.broadcast.fanout', type='fanout',
             routing_key=None, handler=None, events=False, shared=False,
             durable=None, ack=None, prefetch=None, max_retries=3,
             dead_letter_exchange=None, queue_type=None, accept=None,
             allow=None, signed_allow=None, max_size=None, max_depth=None,
             site='', user=None):
    if handler is not None and events:
        raise ConfigurationError(
            f"consumer {name!r}: give handler or events='true', not both")
    if accept:
        _check(settings.check_serializers, accept, 'accept')
    options = dict(
        queue=queue or name, exchange=exchange, type=type,
        routing_key=routing_key, handler=handler, events=events,
        shared=shared, durable=durable, ack=ack, prefetch=prefetch,
        max_retries=max_retries, dead_letter_exchange=dead_letter_exchange,
        queue_type=queue_type, accept=accept, allow=tuple(allow or ()),
        signed_allow=tuple(signed_allow or ()), site=site, user=user)
    for limit, value in (('max_size', max_size), ('max_depth', max_depth)):
        if value is not None:
            options[limit] = value or None
    _check(AllowRules.from_spec, options['allow'])
    _check(AllowRules.from_spec, options['signed_allow'])
    _context.action(discriminator=('zamqp:consumer', name),
                    callable=register_consumer,
                    args=(name, connection, options), order=USER_ORDER)


def register_consumer(name, connection, options):
    spec = ConsumerSpec(name, _connection(connection), **options)
    _registry().registerUtility(spec, IConsumerSpec, name)


def broadcast(_context, for_, producer):
    _context.action(discriminator=('zamqp:broadcast', for_, producer),
                    callable=register_relay, args=(for_, producer),
                    order=RELAY_ORDER)


def register_relay(for_, producer):
    if _registry().queryUtility(IProducer, producer) is None:
        raise ConfigurationError(
            f"no <zamqp:producer name={producer!r}> is declared: declare "
            "it or fix the producer attribute")
    _registry().registerHandler(Relay(producer), (for_,))


def allow(_context, names, signed=False):
    _check(AllowRules.from_spec, names)
    _context.action(discriminator=None, callable=register_allow,
                    args=(tuple(names), signed), order=CONNECTION_ORDER)


def register_allow(names, signed=False):
    rules = AllowRules.from_spec(names)
    if signed:
        _registry().registerUtility(SignedAllowRules(rules),
                                    ISignedAllowRules, ' '.join(names))
    else:
        _registry().registerUtility(rules, IAllowRules, ' '.join(names))


def _registry():
    return zope.component.getSiteManager()


def _connection(name):
    props = _registry().queryUtility(IAMQPProps, name)
    if props is None:
        raise ConfigurationError(
            f"no <zamqp:connection name={name!r}> is declared: declare it "
            "or fix the connection attribute")
    return props
