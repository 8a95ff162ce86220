"""Settings from zope.conf's ``<product-config zamqp>`` and the environment.

Every key of the section is read through the field of the ZCML attribute
it sets (zamqp.zope.schemas), so it means and accepts exactly what the
attribute does. The keys are:

``<attribute>``
    an attribute of ``<zamqp:connection>`` for the connection ``default``
    (``url``, ``user``, ``password``, ``ssl``, ...);
``<connection>.<attribute>``
    the same for the connection named ``<connection>``;
``consumer.<name>.<attribute>``
    an attribute of ``<zamqp:consumer name="<name>">`` (``site``,
    ``user``, ``enabled``, ``prefetch``, ... all but ``name`` and
    ``handler``);
``prefix``, ``consumers``
    the section's own: a prefix for every configured exchange and shared
    queue name, and ``off`` to keep every consumer from starting.

A key that is none of these, or a value its field refuses, is an error
(ProductConfigError) naming the key, the section and the nearest known
key; ``check()`` raises it when zamqp's ZCML is executed and again when
the database opens, so the instance does not start with it.
"""
import difflib
import os

from zope.schema import TextLine
from zope.schema import ValidationError

from zamqp import serializers
from zamqp.exceptions import ConfigurationError
from zamqp.producer import AMQPProducer
from zamqp.props import AMQPProps
from zamqp.zope import schemas

SECTION = '<product-config zamqp>'
#: Set to off (or 0, false, no) to keep configured consumers from starting.
CONSUMERS_VARIABLE = 'ZAMQP_CONSUMERS'
#: Attributes of <zamqp:connection> that the url attribute also sets.
URL_PARTS = ('host', 'hosts', 'port', 'user', 'password', 'virtual_host',
             'ssl', 'ca_file', 'cert_file', 'key_file', 'server_hostname',
             'verify')
#: Options whose 0 means "no limit" (None for Python).
NO_LIMIT = ('max_size', 'max_depth', 'max_length_bytes',
            'max_segment_size_bytes')
#: Options of name=value words, a dict for Python.
ARGUMENTS = ('exchange_arguments', 'queue_arguments', 'binding_arguments')
CONSUMER_PREFIX = 'consumer.'


def _fields(schema, *left_out):
    return {name: schema[name] for name in schema.names(all=True)
            if name not in left_out}


CONNECTION_FIELDS = _fields(schemas.IConnectionDirective, 'name')
CONSUMER_FIELDS = _fields(schemas.IConsumerDirective, 'name', 'handler')
OWN_FIELDS = {
    'prefix': TextLine(title='Prefix of exchange and shared queue names',
                       required=False),
    'consumers': schemas.Bool(title='Start the configured consumers',
                              required=False),
}


class ProductConfigError(ConfigurationError):
    """A key of ``<product-config zamqp>`` that is not understood."""


def product_config():
    """The ``<product-config zamqp>`` mapping of zope.conf, or {}."""
    try:
        from App.config import getConfiguration
    except ImportError:
        return {}
    config = getattr(getConfiguration(), 'product_config', None) or {}
    return config.get('zamqp') or {}


def python_values(values):
    """``values`` (option name -> converted value) as Python keywords:
    a limit of 0 is None (no limit), name=value words a dict."""
    return {name: (None if name in NO_LIMIT and value == 0 else
                   arguments(name, value) if name in ARGUMENTS else value)
            for name, value in values.items()}


def arguments(option, words):
    """AMQP arguments from ``name=value`` words (a dict is kept): whole
    numbers become integers, true and false booleans, the rest text."""
    if words is None or isinstance(words, dict):
        return words
    found = {}
    for word in words:
        name, equals, value = word.partition('=')
        if not equals or not name:
            raise ConfigurationError(
                f'{option}: {word!r} is not name=value, e.g. '
                "x-max-priority=10 or x-match=all")
        if value.lstrip('-').isdigit():
            value = int(value)
        elif value.lower() in ('true', 'false'):
            value = value.lower() == 'true'
        found[name] = value
    return found


def convert(key, field, text):
    """``text`` of zope.conf's ``key`` read by ``field``, or an error that
    names key, section and what the field takes."""
    try:
        return field.bind(None).fromUnicode(str(text).strip())
    except (ValidationError, ValueError) as exc:
        raise ProductConfigError(
            f'{SECTION} in zope.conf: {key} {text!r} is not valid '
            f'({_reason(exc)}); expected: {_expected(field)}') from None


def _reason(exc):
    if isinstance(exc, schemas.NotABoolean) or not isinstance(
            exc, ValidationError):
        return str(exc)
    doc = exc.doc()
    return 'not a number' if doc.startswith('Raised by') else \
        doc.lower().rstrip('.')


def _expected(field):
    kind = type(field).__name__
    bounds = [f'{word} {value}' for word, value in
              (('at least', getattr(field, 'min', None)),
               ('at most', getattr(field, 'max', None))) if value is not None]
    vocabulary = getattr(field, 'vocabulary', None)
    values = [term.value for term in vocabulary] if vocabulary else ()
    if values:
        kind = 'one of ' + ', '.join(map(str, values))
    elif kind == 'Bool':
        kind = f'{"/".join(schemas.TRUE)} or {"/".join(schemas.FALSE)}'
    elif kind == 'Declare':
        kind = (f'{"/".join(schemas.TRUE)}, {"/".join(schemas.FALSE)} or '
                'passive')
    elif kind == 'ExchangeType':
        kind = "fanout, direct, topic, headers or a plugin's x-... type"
    elif kind == 'Tokens':
        kind = 'words separated by spaces'
    elif kind in ('Int', 'Float'):
        kind = 'a whole number' if kind == 'Int' else 'a number'
    else:
        kind = 'text'
    return ', '.join([f'{field.title}: {kind}'] + bounds)


def overrides(name, config=None):
    """Connection settings zope.conf gives for connection ``name``
    (converted: ``ssl`` a bool, ``port`` an int, ...).

    Keys are ``url``, ``user``, ``password``, ... for the connection named
    ``default`` and ``<name>.url``, ``<name>.password``, ... for others.
    """
    config = product_config() if config is None else config
    prefixes = [f'{name.lower()}.'] + ([''] if name == 'default' else [])
    found = {}
    for prefix in prefixes:
        for option, field in CONNECTION_FIELDS.items():
            key = prefix + option
            if config.get(key) is not None:
                found[option] = convert(key, field, config[key])
    return python_values(found)


def consumer_overrides(name, config=None):
    """Options zope.conf gives for the consumer ``name``
    (``consumer.<name>.<attribute>``), converted."""
    config = product_config() if config is None else config
    prefix = f'{CONSUMER_PREFIX}{name.lower()}.'
    found = {}
    for option, field in CONSUMER_FIELDS.items():
        key = prefix + option
        if config.get(key) is not None:
            found[option] = convert(key, field, config[key])
    return python_values(found)


def connection_props(name, given, with_overrides=False):
    """AMQPProps of a ZCML connection, zope.conf's settings winning."""
    settings = python_values(given)
    if with_overrides:
        over = overrides(name)
        if 'url' in over:
            settings = {k: v for k, v in settings.items()
                        if k not in URL_PARTS}
        if {'secret', 'secret_env'} & set(over):
            settings.pop('secret', None)
            settings.pop('secret_env', None)
        settings.update(over)
    if _test_url is not None:
        settings = {k: v for k, v in settings.items() if k not in URL_PARTS}
        settings['url'] = _test_url
    return AMQPProps(**settings)


_test_url = None


def set_test_url(url):
    """Connect every configured connection to ``url``, whatever ZCML and
    zope.conf say (test layers: their broker wins over an add-on's own
    ``<zamqp:connection>``); None: what they say again."""
    global _test_url
    _test_url = url


def check(connections, consumers, config=None):
    """Raise ProductConfigError for the first key of the section that is
    not understood or whose value is not valid, given the names of the
    declared connections and consumers."""
    config = product_config() if config is None else config
    known = known_keys(connections, consumers)
    for key in sorted(config):
        field = known.get(key.lower())
        if field is None:
            raise ProductConfigError(unknown(key, known, connections,
                                             consumers))
        convert(key, field, config[key])


def known_keys(connections, consumers):
    """Every key the section may hold, with the field reading it."""
    known = dict(OWN_FIELDS)
    for name in connections:
        prefixes = [f'{name.lower()}.'] + ([''] if name == 'default' else [])
        for prefix in prefixes:
            known.update((prefix + option, field)
                         for option, field in CONNECTION_FIELDS.items())
    if 'default' not in connections:     # keys may precede the ZCML
        known.update(CONNECTION_FIELDS)
    for name in consumers:
        known.update((f'{CONSUMER_PREFIX}{name.lower()}.{option}', field)
                     for option, field in CONSUMER_FIELDS.items())
    return known


def unknown(key, known, connections, consumers):
    """The message for an unknown key: what is wrong, the nearest key."""
    text = f'{SECTION} in zope.conf: unknown key {key!r}'
    nearest = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.6)
    owner, _, _ = key.lower().rpartition('.')
    if owner.startswith(CONSUMER_PREFIX):
        name = owner[len(CONSUMER_PREFIX):]
        if name not in {c.lower() for c in consumers}:
            text += (f': no <zamqp:consumer name={name!r}> is declared '
                     f'(declared: {_names(consumers)})')
    elif owner and owner not in {c.lower() for c in connections}:
        text += (f': no <zamqp:connection name={owner!r}> is declared '
                 f'(declared: {_names(connections)})')
    if nearest:
        text += f'; did you mean {nearest[0]!r}?'
    return text + " (see 'zope.conf' in zamqp's Zope documentation)"


def _names(names):
    return ', '.join(sorted(names)) or 'none'


_prefix = None
_prefixed_names = set()


def set_prefix(prefix):
    """Prefix every configured exchange and shared queue name (tests);
    None gives the zope.conf setting ``prefix`` back its say. Forgets the
    names ``prefixed_names()`` returned."""
    global _prefix
    _prefix = prefix
    _prefixed_names.clear()


def prefixed(name):
    """``name`` with the configured prefix (set_prefix, or zope.conf's
    ``prefix``), so several deployments or test runs can share a vhost."""
    if _prefix is not None:
        _prefixed_names.add(f'{_prefix}{name}')
        return f'{_prefix}{name}'
    return f'{product_config().get("prefix", "").strip()}{name}'


def prefixed_names():
    """Every name ``prefixed()`` made since ``set_prefix(prefix)``: the
    exchanges and shared queues a test run may have declared, whichever
    registry declared them."""
    return set(_prefixed_names)


def consumers_enabled():
    """False when the environment or zope.conf keeps consumers off.

    Raises ConfigurationError for a value that is not a boolean.
    """
    value = os.environ.get(CONSUMERS_VARIABLE)
    if value is not None:
        try:
            if not OWN_FIELDS['consumers'].fromUnicode(value):
                return False
        except ValidationError:
            raise ConfigurationError(
                f'environment variable {CONSUMERS_VARIABLE}={value!r} is not '
                f'a boolean: use on or off') from None
    value = product_config().get('consumers')
    if value is None:
        return True
    return convert('consumers', OWN_FIELDS['consumers'], value)


def check_serializers(names, attribute):
    serializers.check_names(names, f'the {attribute} attribute')


def make_producer(name, props, options):
    """The producer a ``<zamqp:producer>`` declares: a transactional one
    begins a transaction when there is none (a zconsole script), so that
    its messages wait for a commit as the script's ZODB changes do."""
    exchange = dict(exchange=prefixed(options['exchange']),
                    type=options['type'])
    if options.get('exchange_arguments'):
        exchange['exchange_arguments'] = arguments(
            'exchange_arguments', options['exchange_arguments'])
    producer = AMQPProducer(
        name, props.replace(**exchange), declare=options.get('declare'),
        routing_key=options['routing_key'],
        serializer=options['serializer'],
        persistent=options['persistent'],
        transactional=options['transactional'],
        confirm=options.get('confirm', False),
        confirm_timeout=options.get('confirm_timeout'),
        mandatory=options.get('mandatory', False))
    producer.begins_transaction = bool(options['transactional'])
    return producer
