"""AMQPProps: connection and exchange settings, from keywords or a URL."""
from __future__ import annotations

import difflib
import os
import warnings
from typing import TYPE_CHECKING
from typing import Any
from urllib.parse import parse_qsl
from urllib.parse import quote
from urllib.parse import unquote
from urllib.parse import urlsplit

from zope.interface import implementer

from zamqp import limits
from zamqp import serializers
from zamqp import tls
from zamqp import topology
from zamqp.exceptions import ConfigurationError
from zamqp.interfaces import IAMQPProps
from zamqp.signing import Signer
from zamqp.unpickling import AllowRules

if TYPE_CHECKING:
    from ssl import SSLContext
    from types import ModuleType
    from typing import Callable
    from typing import Iterable
    from typing import Literal
    from typing import Union

    # hints only: what allow=... and signed_allow=... take
    AllowItem = Union[str, type, ModuleType, Callable[..., Any]]
    AllowSpec = Union[AllowRules, AllowItem, Iterable[AllowItem]]
    DeclareMode = Union[bool, Literal['passive']]

EXCHANGE_TYPES = ('fanout', 'direct', 'topic', 'headers')
DEFAULTS = dict(
    host='localhost', port=None, user='guest', password='guest',
    virtual_host='/', ssl=False, heartbeat=60, connect_timeout=10.0,
    timeout=30.0, ca_file=None, cert_file=None, key_file=None,
    server_hostname=None, verify=True, connection_name=None,
    channel_max=None, frame_max=None, auth_mechanism=None,
)
#: Settings that are not the connection's: exchange, decoding, signing.
MESSAGE_SETTINGS = ('exchange', 'type', 'accept', 'allow', 'signed_allow',
                    'secret', 'accepted_secrets', 'accept_unsigned',
                    'signature_max_age', 'max_size', 'max_depth',
                    'declare', 'exchange_arguments')
#: Settings that name files (os.PathLike accepted, kept as text).
FILE_SETTINGS = ('ca_file', 'cert_file', 'key_file')
#: SASL mechanisms (RabbitMQ's auth_mechanism URI option, py-amqp's
#: login_method); EXTERNAL logs in with the TLS client certificate.
AUTH_MECHANISMS = ('PLAIN', 'AMQPLAIN', 'EXTERNAL')


def _verify_option(value):
    if value not in ('verify_peer', 'verify_none'):
        raise ValueError(value)
    return value == 'verify_peer'


def _milliseconds(value):
    return float(value) / 1000


def _auth_mechanism(value):
    if value.upper() not in AUTH_MECHANISMS:
        raise ValueError(value)
    return value.upper()


#: URL query options: name -> (attribute, conversion). The TLS ones and
#: connection_timeout (milliseconds), channel_max, frame_max and
#: auth_mechanism have the names of RabbitMQ's URI query parameters.
URL_OPTIONS = {
    'heartbeat': ('heartbeat', int),
    'connect_timeout': ('connect_timeout', float),
    'connection_timeout': ('connect_timeout', _milliseconds),
    'channel_max': ('channel_max', int), 'frame_max': ('frame_max', int),
    'auth_mechanism': ('auth_mechanism', _auth_mechanism),
    'timeout': ('timeout', float),
    'cacertfile': ('ca_file', str), 'certfile': ('cert_file', str),
    'keyfile': ('key_file', str),
    'server_name_indication': ('server_hostname', str),
    'verify': ('verify', _verify_option),
}
_REALM_UNSET = object()


@implementer(IAMQPProps)
class AMQPProps:
    """Where the broker is, how to log in, and which exchange to use.

    Every connection setting may come from ``url``
    (``amqp://user:password@host:port/vhost?heartbeat=30``, or
    ``amqps://`` for TLS); keywords given explicitly win over the URL.

    Several brokers (the nodes of a cluster) are given as
    ``hosts=['h1:5672', 'h2:5673']`` (a port left out is ``port``) or as
    comma-separated hosts in the URL,
    ``amqp://user:password@h1:5672,h2:5673/vhost``. ``host`` and
    ``port`` are then the first broker's; connections try the brokers in
    turn (see ``candidates``).
    ``realm`` is accepted for compatibility and ignored: AMQP 0-9-1 has no
    access realms.

    TLS (``ssl=True`` or ``amqps://``; see docs/tls.rst): ``ca_file``,
    ``cert_file``, ``key_file``, ``server_hostname`` and ``verify``
    (default True: the broker's certificate and name are checked);
    ``ssl`` may also be an ``ssl.SSLContext``, used as it is.

    Signing (see docs/security.rst): with ``secret`` (or ``secret_env``,
    the name of an environment variable holding one or more secrets
    separated by spaces, the first one signing) producers sign every
    message and consumers refuse messages without a valid signature by
    ``secret`` or one of ``accepted_secrets``, unless ``accept_unsigned``.
    ``signed_allow`` are allow rules that apply only to messages whose
    signature was verified; ``signature_max_age`` (seconds) refuses
    signed messages older than that.

    Limits of consumers: ``max_size`` (bytes of a body, checked before
    anything reads it) and ``max_depth`` (nesting of the decoded value);
    None for no limit.

    ``declare`` (True, 'passive' or False; see zamqp.topology and
    docs/least-privilege.rst): what producers and consumers declare.
    ``type`` may be a plugin's ``x-...`` exchange type, declared with
    ``exchange_arguments``. ``connection_name`` is the name RabbitMQ
    shows (default ``zamqp <program> <pid>``); ``channel_max``,
    ``frame_max`` and ``auth_mechanism`` (PLAIN, AMQPLAIN, EXTERNAL) are
    also RabbitMQ URI options (``connection_timeout`` there is
    ``connect_timeout`` in milliseconds). A URL of kombu's failover form,
    ``amqp://h1;amqp://h2``, gives several brokers.
    """

    #: The broker name of a ``memory://`` URL (zamqp.memory), else None.
    memory: str | None = None

    # hints only (no class attributes): settings __init__ sets from
    # DEFAULTS and the URL
    host: str
    port: int
    user: str
    password: str
    virtual_host: str
    ssl: bool | SSLContext
    heartbeat: float
    connect_timeout: float
    timeout: float
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    server_hostname: str | None
    verify: bool
    connection_name: str | None
    channel_max: int | None
    frame_max: int | None
    auth_mechanism: str | None

    def __init__(
            self, host: str | None = None, user: str | None = None,
            password: str | None = None,
            ssl: bool | SSLContext | None = None,
            exchange: str = 'zamqp.broadcast.fanout', type: str = 'fanout',
            realm: object = _REALM_UNSET, port: int | None = None,
            virtual_host: str | None = None,
            heartbeat: float | None = None,
            connect_timeout: float | None = None,
            timeout: float | None = None, url: str | None = None,
            accept: str | Iterable[str] = ('pickle', 'json'),
            allow: AllowSpec = (),
            hosts: str | Iterable[str | tuple[str, int]] | None = None,
            ca_file: str | os.PathLike[str] | None = None,
            cert_file: str | os.PathLike[str] | None = None,
            key_file: str | os.PathLike[str] | None = None,
            server_hostname: str | None = None, verify: bool | None = None,
            secret: str | bytes | None = None,
            accepted_secrets: str | bytes | Iterable[str | bytes] = (),
            secret_env: str | None = None, accept_unsigned: bool = False,
            signed_allow: AllowSpec = (),
            signature_max_age: float | None = None,
            max_size: int | None = limits.MAX_SIZE,
            max_depth: int | None = limits.MAX_DEPTH,
            declare: DeclareMode = True,
            exchange_arguments: dict[str, Any] | None = None,
            connection_name: str | None = None,
            channel_max: int | None = None, frame_max: int | None = None,
            auth_mechanism: str | None = None) -> None:
        if realm is not _REALM_UNSET:
            warnings.warn(
                "AMQPProps(realm=...) is ignored: access realms were "
                "removed in AMQP 0-9-1; drop the argument.",
                DeprecationWarning, stacklevel=2)
        given = dict(host=host, user=user, password=password, ssl=ssl,
                     port=port, virtual_host=virtual_host,
                     heartbeat=heartbeat, connect_timeout=connect_timeout,
                     timeout=timeout, ca_file=ca_file, cert_file=cert_file,
                     key_file=key_file, server_hostname=server_hostname,
                     verify=verify, connection_name=connection_name,
                     channel_max=channel_max, frame_max=frame_max,
                     auth_mechanism=auth_mechanism)
        settings = dict(DEFAULTS, **parse_url(url) if url else {})
        url_hosts = settings.pop('hosts', None)
        settings.update((k, v) for k, v in given.items() if v is not None)
        for name in FILE_SETTINGS:      # pathlib.Path and the like
            if isinstance(settings[name], os.PathLike):
                settings[name] = os.fspath(settings[name])
        self.__dict__.update(settings)
        if self.port is None:
            self.port = 5671 if self.ssl else 5672
        if hosts is not None and host is not None:
            raise ConfigurationError(
                "AMQPProps: give either host=... or hosts=[...], not both")
        if hosts is None and host is None:
            hosts = url_hosts
        self.hosts = parse_hosts(hosts, self.port) if hosts is not None \
            else \
            ((self.host, self.port),)
        self.host, self.port = self.hosts[0]
        self._next = 0
        self.exchange = exchange
        self.type = type
        self.declare = topology.check_mode(declare, 'AMQPProps')
        self.exchange_arguments = topology.check_arguments(
            exchange_arguments, 'exchange_arguments', 'AMQPProps')
        self.accept = serializers.names(accept)
        self.allow = AllowRules.from_spec(allow)
        self.signed_allow = AllowRules.from_spec(signed_allow)
        self.max_size = limits.check_limit(max_size, 'max_size')
        self.max_depth = limits.check_limit(max_depth, 'max_depth')
        self._set_secrets(secret, accepted_secrets, secret_env,
                          accept_unsigned, signature_max_age)
        self._validate()

    def _set_secrets(self, secret, accepted, variable, accept_unsigned,
                     max_age):
        accepted = (accepted,) if isinstance(accepted, (str, bytes)) \
            else tuple(accepted)
        if variable is not None:
            if secret is not None:
                raise ConfigurationError(
                    "give secret or secret_env, not both")
            found = os.environ.get(variable, '').split()
            if not found:
                raise ConfigurationError(
                    f"environment variable {variable} (secret_env) is not "
                    "set or empty: set it to the shared secret (several, "
                    "separated by spaces, while rotating: the first signs)")
            secret, accepted = found[0], tuple(found[1:]) + accepted
        if accepted and secret is None:
            raise ConfigurationError(
                "accepted_secrets needs a secret to sign with: set secret "
                "(or secret_env) too")
        if max_age is not None and (
                not isinstance(max_age, (int, float)) or max_age <= 0):
            raise ConfigurationError(
                f"signature_max_age must be a number of seconds > 0, got "
                f"{max_age!r}")
        self.secret = secret
        self.accepted_secrets = accepted
        self.accept_unsigned = bool(accept_unsigned)
        self.signature_max_age = max_age
        self.signer = None if secret is None else \
            Signer(secret, accepted, max_age)

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> AMQPProps:
        """Props from an ``amqp://`` or ``amqps://`` URL (and keywords)."""
        return cls(url=url, **kw)

    def _validate(self):
        if self.type not in EXCHANGE_TYPES and not (
                isinstance(self.type, str) and self.type.startswith('x-')
                and len(self.type) > 2):
            raise ConfigurationError(
                f"exchange type {self.type!r} is not one of "
                f"{', '.join(EXCHANGE_TYPES)} or a plugin's type "
                "('x-...', e.g. x-delayed-message): fix AMQPProps(type=...)")
        if not self.exchange or not isinstance(self.exchange, str):
            raise ConfigurationError(
                "AMQPProps(exchange=...) must be a non-empty name, "
                f"got {self.exchange!r}")
        for _, port in self.hosts:
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigurationError(
                    f"port {port!r} is not a TCP port (1-65535): "
                    "fix AMQPProps(port=...) or the URL")
        for name in ('heartbeat', 'connect_timeout', 'timeout'):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(
                    f"{name} must be a number of seconds >= 0, "
                    f"got {value!r}: fix AMQPProps({name}=...)")
        for name, maximum in (('channel_max', 65535),
                              ('frame_max', 2 ** 32 - 1)):
            value = getattr(self, name)
            if value is not None and (
                    isinstance(value, bool) or not isinstance(value, int)
                    or not 0 <= value <= maximum):
                raise ConfigurationError(
                    f"{name} must be a whole number from 0 to {maximum}, "
                    f"got {value!r}: fix AMQPProps({name}=...) or the URL")
        if self.auth_mechanism is not None and \
                self.auth_mechanism not in AUTH_MECHANISMS:
            raise ConfigurationError(
                f"auth_mechanism {self.auth_mechanism!r} is not one of "
                f"{', '.join(AUTH_MECHANISMS)}: fix "
                "AMQPProps(auth_mechanism=...) or the URL")
        if self.connection_name is not None and (
                not isinstance(self.connection_name, str)
                or not self.connection_name):
            raise ConfigurationError(
                "connection_name must be a non-empty text, got "
                f"{self.connection_name!r}: fix "
                "AMQPProps(connection_name=...)")
        serializers.check_names(self.accept, 'AMQPProps(accept=...)')
        tls.check(self)

    def replace(self, **changes: Any) -> AMQPProps:
        """New props with the same settings but ``changes``."""
        settings = {name: getattr(self, name)
                    for name in (*DEFAULTS, *MESSAGE_SETTINGS)}
        if len(self.hosts) > 1 and \
                not {'host', 'port', 'hosts'} & set(changes):
            del settings['host']
            settings['hosts'] = self.hosts
        settings.update(changes)
        if self.memory is not None:
            settings.setdefault('url', self.url())
        return AMQPProps(**settings)

    @property
    def address(self) -> str:
        """``host:port`` as py-amqp wants it (the first broker's)."""
        return self.addresses[0]

    @property
    def addresses(self) -> list[str]:
        """``host:port`` of every broker, in the configured order."""
        return [_address(host, port) for host, port in self.hosts]

    def candidates(self) -> list[str]:
        """The addresses to try for a new connection, in order.

        The first connection tries the brokers in the configured order;
        after ``connected(address)`` the next one starts with the broker
        after that one (round-robin), so reconnecting moves on from a
        broker that failed.
        """
        addresses = self.addresses
        start = self._next % len(addresses)
        return addresses[start:] + addresses[:start]

    def connected(self, address: str) -> None:
        """Record that a connection to ``address`` was made."""
        addresses = self.addresses
        if address in addresses:
            self._next = addresses.index(address) + 1

    def url(self, address: str | None = None) -> str:
        """The URL of these props (or of the broker at ``address``), with
        the password left out."""
        vhost = quote(self.virtual_host, safe='')
        if self.memory is not None:
            return f'memory://{quote(self.memory)}/{vhost}'
        scheme = 'amqps' if self.ssl else 'amqp'
        where = address or ','.join(self.addresses)
        return f'{scheme}://{quote(self.user)}@{where}/{vhost}'

    def _key(self):
        names = (*DEFAULTS, *MESSAGE_SETTINGS)
        values = [getattr(self, name) for name in names
                  if name not in ('host', 'port', 'ssl')]
        values = [tuple(sorted(v.items(), key=repr)) if isinstance(v, dict)
                  else v for v in values]
        return (self.hosts, repr(self.ssl), self.memory, *values)

    def __eq__(self, other):
        if not isinstance(other, AMQPProps):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return (f'AMQPProps({self.url()!r}, exchange={self.exchange!r}, '
                f'type={self.type!r})')


def _address(host, port):
    host = f'[{host}]' if ':' in host else host
    return f'{host}:{port}'


def parse_hosts(hosts, default_port):
    """Return ``((host, port), ...)`` from ``'h1:5672,h2'``, a list of
    such strings or a list of ``(host, port)`` pairs."""
    if isinstance(hosts, str):
        hosts = hosts.split(',')
    parsed = tuple(_host_port(entry, default_port) for entry in hosts)
    if not parsed:
        raise ConfigurationError(
            "AMQPProps(hosts=...) is empty: name at least one host:port")
    return parsed


def _host_port(entry, default_port):
    if not isinstance(entry, str):
        host, port = entry
        return str(host), int(port)
    parts = urlsplit('//' + entry.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1:
        raise ConfigurationError(
            f"host {entry!r} is not host or host:port (port 1-65535): fix "
            "AMQPProps(hosts=...) or the URL")
    return parts.hostname, port or default_port


def parse_url(url):
    """Return the connection settings an AMQP URL holds."""
    if ';' in url:
        return _parse_failover_url(url)
    parts = urlsplit(url)
    if parts.scheme == 'memory':    # a broker in this process (tests)
        from zamqp import memory
        return memory.parse_url(url, _url_options)
    if parts.scheme not in ('amqp', 'amqps'):
        raise ConfigurationError(
            f"URL scheme {parts.scheme!r} is not amqp, amqps or memory: "
            "write the URL as amqp://user:password@host:port/vhost (or "
            "memory:// for a broker in this process, in tests)")
    settings = {'ssl': parts.scheme == 'amqps'}
    if '@' in parts.path or '@' in parts.query:
        raise ConfigurationError(
            "the URL has an '@' after the host: a password with '/', '?' "
            "or '#' must be quoted, e.g. with urllib.parse.quote(password, "
            "safe='')")
    userinfo, _, hostlist = parts.netloc.rpartition('@')
    if ',' in hostlist:
        return _parse_multi_host_url(parts, userinfo, hostlist, settings)
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(
            "the URL's port is not a number between 1 and 65535") from None
    fields = dict(host=parts.hostname, port=port,
                  user=parts.username, password=parts.password)
    settings.update((k, unquote(v) if isinstance(v, str) else v)
                    for k, v in fields.items() if v is not None)
    return _url_path_and_query(parts, settings)


def _parse_failover_url(url):
    """kombu's failover form, ``amqp://h1;amqp://h2``: the brokers of
    one set of settings (user, password, virtual host, options), tried in
    turn like ``amqp://h1,h2``. URLs that differ in anything but host and
    port are refused: zamqp has one set of settings for all brokers."""
    urls = [part.strip() for part in url.split(';')]
    if not all(urls) or not all(
            urlsplit(part).scheme in ('amqp', 'amqps') for part in urls):
        raise ConfigurationError(
            "the URL has a ';' that does not separate amqp:// URLs "
            "(kombu's failover form, amqp://h1;amqp://h2): a ';' in a "
            "password must be quoted as %3B")
    parsed = [parse_url(part) for part in urls]
    hosts = []
    for settings in parsed:
        if 'hosts' in settings:
            hosts.extend(parse_hosts(settings.pop('hosts'), None))
        else:
            hosts.append((settings.pop('host', 'localhost'),
                          settings.pop('port', None)))
    for settings, other in zip(parsed[1:], urls[1:]):
        if settings != parsed[0]:
            differ = sorted(name for name in {*settings, *parsed[0]}
                            if settings.get(name) != parsed[0].get(name))
            raise ConfigurationError(
                f"the failover URLs differ in {', '.join(differ)} "
                f"({_hide_password(other)} against the first): zamqp "
                "uses one user, password, virtual host and options for "
                "every broker; write amqp://user:password@h1:5672,"
                "h2:5672/vhost")
    settings = parsed[0]
    default_port = 5671 if settings['ssl'] else 5672
    settings['hosts'] = [(host, port or default_port)
                         for host, port in hosts]
    return settings


def _hide_password(url):
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f':{parts.password}@', ':...@', 1)
    return parts._replace(netloc=netloc).geturl()


def _parse_multi_host_url(parts, userinfo, hostlist, settings):
    settings['hosts'] = hostlist
    user, colon, password = userinfo.partition(':')
    if user:
        settings['user'] = unquote(user)
    if colon:
        settings['password'] = unquote(password)
    return _url_path_and_query(parts, settings)


def _url_path_and_query(parts, settings):
    if len(parts.path) > 1:
        settings['virtual_host'] = unquote(parts.path[1:])
    settings.update(_url_options(parts.query))
    return settings


def _url_options(query):
    options = {}
    for name, value in parse_qsl(query):
        if name not in URL_OPTIONS:
            nearest = difflib.get_close_matches(name, URL_OPTIONS, n=1)
            hint = f"did you mean {nearest[0]!r}? " if nearest else ''
            raise ConfigurationError(
                f"unknown URL option {name!r}: {hint}zamqp knows "
                f"{', '.join(sorted(URL_OPTIONS))}")
        attribute, convert = URL_OPTIONS[name]
        try:
            options[attribute] = convert(value)
        except ValueError:
            expected = {'verify': 'verify_peer or verify_none',
                        'auth_mechanism': ' or '.join(AUTH_MECHANISMS)}.get(
                name, 'a number')
            raise ConfigurationError(
                f"URL option {name}={value!r} is not {expected}") from None
    return options
