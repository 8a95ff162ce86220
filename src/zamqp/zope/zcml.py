"""ZCML directives: connections, producers, consumers, relays, allow rules.

The directives' options are declared once, in zamqp.zope.schemas.
Handlers only record configuration actions; no socket is opened while
ZCML is read. Settings are checked when the directive is read, so errors
carry the file and line; zope.conf's settings are applied and checked
when the actions run.
"""
import re

import zope.component
from zope.configuration.exceptions import ConfigurationError

from zamqp.exceptions import ZAMQPError
from zamqp.interfaces import IAllowRules
from zamqp.interfaces import IAMQPProps
from zamqp.interfaces import IConsumerSpec
from zamqp.interfaces import IProducer
from zamqp.interfaces import ISignedAllowRules
from zamqp.unpickling import AllowRules
from zamqp.zope import schemas
from zamqp.zope import settings
from zamqp.zope.delivery import Relay
from zamqp.zope.spec import ConsumerSpec
from zamqp.zope.spec import SignedAllowRules

# Connections are registered before what refers to them, producers
# before the relays that use them.
# zope.conf's section is checked once all of them are registered.
CONNECTION_ORDER, USER_ORDER, RELAY_ORDER, CHECK_ORDER = 0, 1, 2, 3


def _check(make, *args, **kw):
    """Build ``make(...)`` now, turning zamqp's errors into ZCML ones
    (which carry the file and line), in ZCML's terms."""
    try:
        return make(*args, **kw)
    except (ZAMQPError, TypeError) as exc:
        raise ConfigurationError(in_zcml_terms(str(exc))) from exc


_PYTHON_SETTING = re.compile(
    r'(?:AMQPProps|AMQPConsumer|AMQPProducer)\((\w+)=\.\.\.\)')


def in_zcml_terms(text):
    """``text`` with ``AMQPProps(port=...)`` and the like, the Python
    keywords the core's errors name, said as the ZCML attribute."""
    return _PYTHON_SETTING.sub(r'the \1 attribute', text)


def _options(schema, given, *left_out):
    """The directive's options: what ZCML gave, the schema's defaults for
    the rest (the schema is the one place an option is declared)."""
    options = {name: schema[name].default
               for name in schema.names(all=True) if name not in left_out}
    options.update((k, v) for k, v in given.items() if v is not None)
    return options


def connection(_context, name='default', **given):
    if name.lower() == settings.CONSUMER_PREFIX.rstrip('.'):
        raise ConfigurationError(
            f"a connection cannot be named {name!r}: zope.conf's "
            f"'{settings.CONSUMER_PREFIX}<name>.<key>' keys are the "
            "consumers'; choose another name")
    given = {k: v for k, v in given.items() if v is not None}
    _check(settings.connection_props, name, given, with_overrides=True)
    _context.action(discriminator=('zamqp:connection', name),
                    callable=register_connection, args=(name, given),
                    order=CONNECTION_ORDER)
    _check_product_config(_context)


def register_connection(name, given):
    props = settings.connection_props(name, given, with_overrides=True)
    _registry().registerUtility(props, IAMQPProps, name)


def producer(_context, name, **given):
    options = _options(schemas.IProducerDirective, given, 'name')
    connection = options.pop('connection') or 'default'
    _check(settings.check_serializers, [options['serializer']], 'serializer')
    _context.action(discriminator=('zamqp:producer', name),
                    callable=register_producer,
                    args=(name, connection, options), order=USER_ORDER)


def register_producer(name, connection, options):
    _registry().registerUtility(
        settings.make_producer(name, _connection(connection), options),
        IProducer, name)


def consumer(_context, name, **given):
    options = _options(schemas.IConsumerDirective, given, 'name')
    _check(consumer_options, name, options)
    _context.action(discriminator=('zamqp:consumer', name),
                    callable=register_consumer, args=(name, options),
                    order=USER_ORDER)
    _check_product_config(_context)


def consumer_options(name, options, with_overrides=False):
    """The keywords of ConsumerSpec for ``<zamqp:consumer name=name>``:
    its ``options``, zope.conf's ``consumer.<name>.*`` winning if
    ``with_overrides``; checked."""
    options = dict(options)
    for limit in settings.NO_LIMIT:         # unset: the default
        if options.get(limit) is None:
            options.pop(limit, None)
    if with_overrides:      # converted already: 0 is None (no limit)
        options.update(settings.consumer_overrides(name))
    options = settings.python_values(options)
    if options['handler'] is not None and options['events']:
        raise ZAMQPError(
            f"<zamqp:consumer name={name!r}>: give handler or "
            "events='true', not both")
    if options['accept']:
        settings.check_serializers(options['accept'], 'accept')
    options['queue'] = options['queue'] or name
    for rules in ('allow', 'signed_allow'):
        options[rules] = tuple(options[rules] or ())
        AllowRules.from_spec(options[rules])
    options['site'] = options['site'] or ''
    return options


def register_consumer(name, options):
    options = _check(consumer_options, name, options, with_overrides=True)
    connection = options.pop('connection') or 'default'
    spec = ConsumerSpec(name, _connection(connection), **options)
    _registry().registerUtility(spec, IConsumerSpec, name)


def _check_product_config(_context):
    """Check zope.conf's section once every directive is registered."""
    _context.action(discriminator=None, callable=check_product_config,
                    order=CHECK_ORDER)


def check_product_config():
    """Raise ProductConfigError (a ConfigurationError) for a key of
    ``<product-config zamqp>`` that is not understood."""
    registry = _registry()
    settings.check(
        [name for name, _ in registry.getUtilitiesFor(IAMQPProps)],
        [name for name, _ in registry.getUtilitiesFor(IConsumerSpec)])


def broadcast(_context, for_, producer):
    _context.action(discriminator=('zamqp:broadcast', for_, producer),
                    callable=register_relay, args=(for_, producer),
                    order=RELAY_ORDER)


def register_relay(for_, producer):
    if _registry().queryUtility(IProducer, producer) is None:
        raise ConfigurationError(
            f"no <zamqp:producer name={producer!r}> is declared: declare "
            "it or fix the producer attribute")
    _registry().registerHandler(Relay(producer, for_), (for_,))


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
