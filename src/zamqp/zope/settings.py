"""Settings from zope.conf's <product-config zamqp> and the environment."""
import os

from zamqp import serializers
from zamqp.producer import AMQPProducer
from zamqp.props import AMQPProps

#: Set to off (or 0, false, no) to keep configured consumers from starting.
CONSUMERS_VARIABLE = 'ZAMQP_CONSUMERS'
OFF = ('off', '0', 'false', 'no')
URL_PARTS = ('host', 'hosts', 'port', 'user', 'password', 'virtual_host',
             'ssl', 'ca_file', 'cert_file', 'key_file', 'server_hostname',
             'verify')


def _bool(value):
    return value.lower() not in OFF


def _limit(value):
    return int(value) or None


CONVERT = dict(port=int, heartbeat=int, connect_timeout=float,
               timeout=float, ssl=_bool, verify=_bool, hosts=str.split,
               accepted_secrets=str.split, accept_unsigned=_bool,
               signature_max_age=float, max_size=_limit, max_depth=_limit)
KEYS = ('url',) + URL_PARTS + (
    'heartbeat', 'connect_timeout', 'timeout', 'secret', 'secret_env',
    'accepted_secrets', 'accept_unsigned', 'signature_max_age', 'max_size',
    'max_depth')


def product_config():
    """The ``<product-config zamqp>`` mapping of zope.conf, or {}."""
    try:
        from App.config import getConfiguration
    except ImportError:
        return {}
    config = getattr(getConfiguration(), 'product_config', None) or {}
    return config.get('zamqp') or {}


def overrides(name, config=None):
    """Connection settings zope.conf gives for connection ``name``.

    Keys are ``url``, ``user``, ``password``, ... for the connection named
    ``default`` and ``<name>.url``, ``<name>.password``, ... for others.
    """
    config = product_config() if config is None else config
    prefixes = [f'{name.lower()}.'] + ([''] if name == 'default' else [])
    found = {}
    for prefix in prefixes:
        for key in KEYS:
            value = config.get(prefix + key)
            if value is not None:
                found[key] = CONVERT.get(key, str)(value)
    return found


def connection_props(name, given, with_overrides=False):
    """AMQPProps of a ZCML connection, zope.conf's settings winning."""
    settings = dict(given)
    if with_overrides:
        over = overrides(name)
        if 'url' in over:
            settings = {k: v for k, v in settings.items()
                        if k not in URL_PARTS}
        if {'secret', 'secret_env'} & set(over):
            settings.pop('secret', None)
            settings.pop('secret_env', None)
        settings.update(over)
    return AMQPProps(**settings)


_prefix = None


def set_prefix(prefix):
    """Prefix every configured exchange and shared queue name (tests);
    None gives the zope.conf setting ``prefix`` back its say."""
    global _prefix
    _prefix = prefix


def prefixed(name):
    """``name`` with the configured prefix (set_prefix, or zope.conf's
    ``prefix``), so several deployments or test runs can share a vhost."""
    prefix = _prefix if _prefix is not None else \
        product_config().get('prefix', '')
    return f'{prefix}{name}'


def consumers_enabled():
    """False when the environment or zope.conf keeps consumers off."""
    if os.environ.get(CONSUMERS_VARIABLE, 'on').lower() in OFF:
        return False
    return str(product_config().get('consumers', 'on')).lower() not in OFF


def check_serializers(names, attribute):
    serializers.check_names(names, f'the {attribute} attribute')


def make_producer(name, props, options):
    """The producer a ``<zamqp:producer>`` declares."""
    return AMQPProducer(
        name, props.replace(exchange=prefixed(options['exchange']),
                            type=options['type']),
        routing_key=options['routing_key'],
        serializer=options['serializer'],
        persistent=options['persistent'],
        transactional=options['transactional'],
        confirm=options.get('confirm', False),
        confirm_timeout=options.get('confirm_timeout'),
        mandatory=options.get('mandatory', False))
