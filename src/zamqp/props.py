"""AMQPProps: connection and exchange settings, from keywords or a URL."""
import warnings
from urllib.parse import parse_qsl
from urllib.parse import quote
from urllib.parse import unquote
from urllib.parse import urlsplit

from zope.interface import implementer

from zamqp import serializers
from zamqp.exceptions import ConfigurationError
from zamqp.interfaces import IAMQPProps
from zamqp.unpickling import AllowRules

EXCHANGE_TYPES = ('fanout', 'direct', 'topic', 'headers')
DEFAULTS = dict(
    host='localhost', port=None, user='guest', password='guest',
    virtual_host='/', ssl=False, heartbeat=60, connect_timeout=10.0,
    timeout=30.0,
)
URL_OPTIONS = {'heartbeat': int, 'connect_timeout': float, 'timeout': float}
_REALM_UNSET = object()


@implementer(IAMQPProps)
class AMQPProps:
    """Where the broker is, how to log in, and which exchange to use.

    Every connection setting may come from ``url``
    (``amqp://user:password@host:port/vhost?heartbeat=30``, or
    ``amqps://`` for TLS); keywords given explicitly win over the URL.
    ``realm`` is accepted for compatibility and ignored: AMQP 0-9-1 has no
    access realms.
    """

    def __init__(self, host=None, user=None, password=None, ssl=None,
                 exchange='zamqp.broadcast.fanout', type='fanout',
                 realm=_REALM_UNSET, port=None, virtual_host=None,
                 heartbeat=None, connect_timeout=None, timeout=None,
                 url=None, accept=('pickle', 'json'), allow=()):
        if realm is not _REALM_UNSET:
            warnings.warn(
                "AMQPProps(realm=...) is ignored: access realms were "
                "removed in AMQP 0-9-1; drop the argument.",
                DeprecationWarning, stacklevel=2)
        given = dict(host=host, user=user, password=password, ssl=ssl,
                     port=port, virtual_host=virtual_host,
                     heartbeat=heartbeat, connect_timeout=connect_timeout,
                     timeout=timeout)
        settings = dict(DEFAULTS, **parse_url(url) if url else {})
        settings.update((k, v) for k, v in given.items() if v is not None)
        self.__dict__.update(settings)
        if self.port is None:
            self.port = 5671 if self.ssl else 5672
        self.exchange = exchange
        self.type = type
        self.accept = serializers.names(accept)
        self.allow = AllowRules.from_spec(allow)
        self._validate()

    @classmethod
    def from_url(cls, url, **kw):
        """Props from an ``amqp://`` or ``amqps://`` URL (and keywords)."""
        return cls(url=url, **kw)

    def _validate(self):
        if self.type not in EXCHANGE_TYPES:
            raise ConfigurationError(
                f"exchange type {self.type!r} is not one of "
                f"{', '.join(EXCHANGE_TYPES)}: fix AMQPProps(type=...)")
        if not self.exchange or not isinstance(self.exchange, str):
            raise ConfigurationError(
                "AMQPProps(exchange=...) must be a non-empty name, "
                f"got {self.exchange!r}")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ConfigurationError(
                f"port {self.port!r} is not a TCP port (1-65535): "
                "fix AMQPProps(port=...) or the URL")
        for name in ('heartbeat', 'connect_timeout', 'timeout'):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(
                    f"{name} must be a number of seconds >= 0, "
                    f"got {value!r}: fix AMQPProps({name}=...)")
        serializers.check_names(self.accept, 'AMQPProps(accept=...)')

    def replace(self, **changes):
        """New props with the same settings but ``changes``."""
        settings = {name: getattr(self, name) for name in DEFAULTS}
        settings.update(exchange=self.exchange, type=self.type,
                        accept=self.accept, allow=self.allow)
        settings.update(changes)
        return AMQPProps(**settings)

    @property
    def address(self):
        """``host:port`` as py-amqp wants it."""
        host = f'[{self.host}]' if ':' in self.host else self.host
        return f'{host}:{self.port}'

    def url(self):
        """The URL of these props, with the password left out."""
        scheme = 'amqps' if self.ssl else 'amqp'
        vhost = quote(self.virtual_host, safe='')
        return f'{scheme}://{quote(self.user)}@{self.address}/{vhost}'

    def _key(self):
        return (self.host, self.port, self.user, self.password,
                self.virtual_host, repr(self.ssl), self.heartbeat,
                self.connect_timeout, self.timeout, self.exchange,
                self.type, self.accept, self.allow)

    def __eq__(self, other):
        if not isinstance(other, AMQPProps):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return (f'AMQPProps({self.url()!r}, exchange={self.exchange!r}, '
                f'type={self.type!r})')


def parse_url(url):
    """Return the connection settings an AMQP URL holds."""
    parts = urlsplit(url)
    if parts.scheme not in ('amqp', 'amqps'):
        raise ConfigurationError(
            f"URL scheme {parts.scheme!r} is not amqp or amqps: write the "
            "URL as amqp://user:password@host:port/vhost")
    settings = {'ssl': parts.scheme == 'amqps'}
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(
            "the URL's port is not a number between 1 and 65535") from None
    fields = dict(host=parts.hostname, port=port,
                  user=parts.username, password=parts.password)
    settings.update((k, unquote(v) if isinstance(v, str) else v)
                    for k, v in fields.items() if v is not None)
    if len(parts.path) > 1:
        settings['virtual_host'] = unquote(parts.path[1:])
    settings.update(_url_options(parts.query))
    return settings


def _url_options(query):
    options = {}
    for name, value in parse_qsl(query):
        if name not in URL_OPTIONS:
            raise ConfigurationError(
                f"unknown URL option {name!r}: use one of "
                f"{', '.join(sorted(URL_OPTIONS))}")
        try:
            options[name] = URL_OPTIONS[name](value)
        except ValueError:
            raise ConfigurationError(
                f"URL option {name}={value!r} is not a number") from None
    return options
