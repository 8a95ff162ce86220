"""The options of zamqp's ZCML directives: the one description of each.

Each field below is an attribute of a ``<zamqp:...>`` directive, and the
same field converts the text of that option wherever else it is given:
``<product-config zamqp>`` in zope.conf (zamqp.zope.settings) reads
every key through these fields, so an option is named, typed, bounded
and documented once. The ZCML handlers (zamqp.zope.zcml) take the
converted values as the Python keywords of AMQPProps, AMQPProducer and
AMQPConsumer, which check them again for Python callers.
"""
from zope.configuration.fields import Bool as _ConfigurationBool
from zope.configuration.fields import GlobalInterface
from zope.configuration.fields import GlobalObject
from zope.configuration.fields import Tokens
from zope.interface import Interface
from zope.schema import Choice
from zope.schema import Float
from zope.schema import Int
from zope.schema import TextLine
from zope.schema.interfaces import InvalidValue

from zamqp.props import AUTH_MECHANISMS
from zamqp.props import EXCHANGE_TYPES

TRUE = ('true', 'yes', 'on', '1')
FALSE = ('false', 'no', 'off', '0')


class NotABoolean(InvalidValue):
    __doc__ = InvalidValue.__doc__

    def __str__(self):
        return (f'{self.value!r} is not a boolean: use one of '
                f'{"/".join(TRUE)} or {"/".join(FALSE)}')


class Bool(_ConfigurationBool):
    """A boolean option: true/yes/on/1 or false/no/off/0, in any case.

    Anything else is an error (zope.schema's Bool reads every unknown
    word as False, which turned ``ssl="yes"`` into a plain-text
    connection).
    """

    def fromUnicode(self, value):
        word = value.strip().lower()
        if word in TRUE:
            return True
        if word in FALSE:
            return False
        raise NotABoolean().with_field_and_value(self, value)


class Declare(Bool):
    """What zamqp declares: a boolean (true: declare what it uses, false:
    nothing) or ``passive`` (only check that it exists)."""

    _type = None

    def fromUnicode(self, value):
        if value.strip().lower() == 'passive':
            return 'passive'
        try:
            return super().fromUnicode(value)
        except NotABoolean as exc:
            raise InvalidValue(
                f'{value!r} is not a boolean or passive: use one of '
                f'{"/".join(TRUE)}, {"/".join(FALSE)} or passive'
            ).with_field_and_value(self, value) from exc


class ExchangeType(TextLine):
    """fanout, direct, topic, headers or a plugin's type (``x-...``)."""

    def fromUnicode(self, value):
        value = value.strip()
        if value not in EXCHANGE_TYPES and not (
                value.startswith('x-') and len(value) > 2):
            raise InvalidValue(
                f'{value!r} is not one of {", ".join(EXCHANGE_TYPES)} '
                "or a plugin's type (x-...)").with_field_and_value(
                    self, value)
        return value


def _arguments_field(title, example):
    return Tokens(title=title, value_type=TextLine(), required=False,
                  description=f"name=value words, e.g. '{example}'; "
                  'whole numbers are integers, true/false booleans.')


DECLARE_DESCRIPTION = ('true (default): declare the exchange (consumers: '
                       'queue, binding, dead-letter exchange); passive: '
                       'only check they exist; false: declare nothing, '
                       'use what an administrator declared.')


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
    declare = Declare(title='Declare the topology', required=False,
                      description=DECLARE_DESCRIPTION)
    connection_name = TextLine(
        title='Connection name', required=False,
        description="Shown by RabbitMQ (rabbitmqctl list_connections "
        "client_properties); default 'zamqp <program> <pid>'.")
    channel_max = Int(title='Most channels', required=False, min=0,
                      max=65535)
    frame_max = Int(title='Largest frame (bytes)', required=False, min=0)
    auth_mechanism = Choice(title='SASL mechanism', required=False,
                            values=AUTH_MECHANISMS,
                            description='EXTERNAL: log in with the TLS '
                            'client certificate.')


class IExchangeFields(Interface):
    """What producers and consumers share: connection and exchange."""

    name = TextLine(title='Name', required=True)
    connection = TextLine(title='Connection name', required=False,
                          default='default')
    exchange = TextLine(title='Exchange', required=False,
                        default='zamqp.broadcast.fanout')
    type = ExchangeType(title='Exchange type', required=False,
                        default='fanout',
                        description='fanout, direct, topic, headers or a '
                        "plugin's x-... type.")
    exchange_arguments = _arguments_field('Exchange arguments',
                                          'x-delayed-type=direct')
    declare = Declare(title='Declare the topology', required=False,
                      description="Default: the connection's. "
                      + DECLARE_DESCRIPTION)
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
    queue_arguments = _arguments_field('Queue arguments',
                                       'x-max-priority=10')
    binding_arguments = _arguments_field('Binding arguments',
                                         'x-match=all color=red')
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
    untyped = Choice(title='Messages without a content type',
                     values=('refuse', 'json', 'bytes'), required=False,
                     description="'refuse' (default), 'json': decode "
                     "as JSON, 'bytes': deliver the body.")
    stream = Bool(title='Stream reader', required=False, default=False,
                  description='true: read the durable stream queue from '
                  "this reader's position, kept in the ZODB with the "
                  "handler's changes (exactly once); see docs/streams.rst.")
    reader = TextLine(title='Reader name', required=False,
                      description='Stream readers: a name per instance, '
                      'the same across restarts (zope.conf: '
                      'consumer.<name>.reader instance1).')
    offsets = TextLine(title='Offsets directory', required=False,
                       description='Stream readers without a Zope '
                       "database: where positions are kept (with one, "
                       'they are in the ZODB).')
    start = TextLine(title='Start of a new reader', required=False,
                     description="next (default), first, last, an "
                     "offset, an interval such as 1h, or an ISO "
                     'timestamp with a timezone.')
    max_age = TextLine(title='Stream retention: age', required=False,
                       description="An interval such as 7D (default) or "
                       "12h; 'none': no limit.")
    max_length_bytes = Int(title='Stream retention: bytes',
                           required=False, min=0,
                           description='Default 1000000000; 0: no limit.')
    max_segment_size_bytes = Int(title='Stream segment size (bytes)',
                                 required=False, min=0,
                                 description='Default 50000000; 0: the '
                                 "broker's.")
    site = TextLine(title='Site path', required=False, default='',
                    description="Zope: the site handlers run in, e.g. "
                    "'/plone'; default: the application root.")
    user = TextLine(title='User id', required=False,
                    description='Zope: the user handlers run as; '
                    'default: anonymous.')
    enabled = Bool(title='Start with the instance', required=False,
                   default=True,
                   description='false: declared, but not started (e.g. '
                   'per instance in zope.conf: consumer.<name>.enabled '
                   'off).')


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
