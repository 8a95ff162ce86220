"""AMQPConnection: one py-amqp connection, one channel, its declarations."""
from __future__ import annotations

import functools
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

import amqp
from amqp import exceptions as amqp_errors
from amqp.transport import to_host_port
from zope.interface import implementer

from zamqp import memory
from zamqp import tls
from zamqp import topology
from zamqp.exceptions import ConfigurationError
from zamqp.exceptions import ConnectionFailed
from zamqp.interfaces import IConnection
from zamqp.logtext import broker_closed
from zamqp.transport import PublisherConnection
from zamqp.transport import Readiness
from zamqp.transport import connection_class

if TYPE_CHECKING:
    from typing import Literal

    from zamqp.props import AMQPProps
    from zamqp.props import DeclareMode

logger = logging.getLogger(__name__)

#: Errors that end a connection's use: the socket or the protocol failed
#: (a consumer reconnects after them).
CONNECTION_LOST = (OSError, amqp_errors.AMQPError)
#: Errors after which the same call may work again (broker down, cut;
#: 541 INTERNAL_ERROR, as a cluster node answers for a moment after a
#: stream's or quorum queue's leader died).
RECOVERABLE = (OSError, amqp_errors.RecoverableConnectionError,
               amqp_errors.RecoverableChannelError,
               amqp_errors.InternalError)


def explain(exc, props, operation, address=None):
    """Return a ConnectionFailed that names the cause and the setting
    (and the broker at ``address``, for props with several)."""
    where = props.url(address)
    host = to_host_port(address or props.address)[0]
    diagnosis = tls.diagnose(exc, props, host)
    if diagnosis is not None:
        text, recoverable = diagnosis
        return ConnectionFailed(f"{operation}: {where}: {text}",
                                recoverable=recoverable)
    if isinstance(exc, amqp_errors.AccessRefused) and operation != 'connect':
        return ConnectionFailed(
            f"{operation}: {where} refused an operation to user "
            f"{props.user!r} ({exc.reply_text}): grant the permission with "
            f"rabbitmqctl set_permissions -p {props.virtual_host} "
            f"{props.user} '<configure>' '<write>' '<read>' (see "
            "docs/least-privilege.rst)", recoverable=False)
    if isinstance(exc, amqp_errors.AccessRefused):
        return ConnectionFailed(
            f"{operation}: {where} refused the login ({exc.reply_text}): "
            "check user and password (RabbitMQ's guest user may only "
            "connect from localhost)", recoverable=False)
    if isinstance(exc, (amqp_errors.NotAllowed, amqp_errors.InvalidPath)):
        return ConnectionFailed(
            f"{operation}: {where} refused virtual host "
            f"{props.virtual_host!r} ({exc.reply_text}): check "
            "virtual_host and the user's permissions", recoverable=False)
    if isinstance(exc, amqp_errors.PreconditionFailed) and \
            operation not in ('connect', 'declare'):
        return ConnectionFailed(f"{operation}: {where}: {broker_closed(exc)}")
    if isinstance(exc, amqp_errors.PreconditionFailed):
        return ConnectionFailed(
            f"{operation}: {where} refused the declaration "
            f"({exc.reply_text}): the exchange or queue exists with other "
            "settings; use another name or delete it on the broker",
            recoverable=False)
    if isinstance(exc, socket.gaierror):
        return ConnectionFailed(
            f"{operation}: cannot resolve host {host!r} ({exc}): "
            "check host")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return ConnectionFailed(
            f"{operation}: {where} did not answer in time: check host and "
            "port, or raise connect_timeout / timeout")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionFailed(
            f"{operation}: {where} refused the connection: is RabbitMQ "
            "running there? check host and port")
    recoverable = isinstance(exc, RECOVERABLE)
    closed = broker_closed(exc)
    if closed is not None:
        return ConnectionFailed(f"{operation}: {where}: {closed}",
                                recoverable=recoverable)
    return ConnectionFailed(
        f"{operation}: {where} failed: {type(exc).__name__}: {exc}"
        f"{_plain_hint(exc, props, operation)}", recoverable=recoverable)


def _plain_hint(exc, props, operation):
    """A hint for a connection without TLS that the broker dropped at
    once, as RabbitMQ's TLS listener does (after a TLS alert). It stays
    recoverable: a broker that is starting or stopping does the same."""
    dropped = isinstance(exc, ConnectionResetError) or \
        'unexpectedly closed' in str(exc)
    if operation != 'connect' or props.ssl or not dropped:
        return ''
    return ("; if that port is a TLS listener (RabbitMQ's default 5671), "
            "use amqps:// or ssl=True")


def connect(props, heartbeat, factory=amqp.Connection):
    """Open and return a logged-in py-amqp connection for ``props``.

    With several brokers, tries them in the order ``props.candidates()``
    gives and returns the first connection made; an error that a setting
    must fix (a refused login) is raised at once, and if every broker
    failed the ConnectionFailed names each one and why.
    """
    failures = []
    for address in props.candidates():
        try:
            conn = _connect_to(address, props, heartbeat, factory)
        except ConnectionFailed as exc:
            if not exc.recoverable:
                raise
            failures.append(exc)
            continue
        props.connected(address)
        return conn
    if len(failures) == 1:
        raise failures[0]
    reasons = '; '.join(str(exc).removeprefix('connect: ')
                        for exc in failures)
    raise ConnectionFailed(
        f"connect: none of the {len(failures)} brokers could be reached: "
        f"{reasons}") from failures[-1]


def _connect_to(address, props, heartbeat, factory):
    """A connection to the broker at ``address``; with TLS through
    zamqp.tls (py-amqp would ignore an SSLContext and check no host
    name), checking the name ``tls.server_hostname`` gives."""
    ssl = False
    if props.ssl:
        factory = tls.connection_class(factory)
        try:
            ssl = tls.options(props, address)
        except ConfigurationError as exc:
            raise ConnectionFailed(f"connect: {exc}",
                                   recoverable=False) from exc
    if props.channel_max is not None or props.frame_max is not None:
        factory = negotiating(factory)
    conn = factory(
        host=address, userid=props.user, password=props.password,
        virtual_host=props.virtual_host, ssl=ssl,
        heartbeat=heartbeat, connect_timeout=props.connect_timeout,
        read_timeout=props.timeout, write_timeout=props.timeout,
        **connection_options(props))
    try:
        conn.connect()
    except Exception as exc:
        _quietly(conn.collect)
        raise explain(exc, props, 'connect', address) from exc
    return conn


def connection_name(props):
    """The ``connection_name`` client property RabbitMQ shows for a
    connection of ``props``: its own, else ``zamqp <program> <pid>``."""
    if props.connection_name is not None:
        return props.connection_name
    path = sys.argv[0] if sys.argv and sys.argv[0] else sys.executable
    program = os.path.basename(path)
    if program == '__main__.py':        # python -m package: the package
        program = os.path.basename(os.path.dirname(path))
    return f'zamqp {program or "python"} {os.getpid()}'


@functools.lru_cache(maxsize=None)
def negotiating(factory):
    """``factory`` (a py-amqp connection class) answering the broker's
    connection.tune with the lower of its limits and ours: py-amqp
    answers with the broker's and drops channel_max and frame_max."""

    class Negotiating(factory):
        def _on_tune(self, channel_max, frame_max, server_heartbeat,
                     argsig='BlB'):
            super()._on_tune(_lower(channel_max, self.channel_max),
                             _lower(frame_max, self.frame_max),
                             server_heartbeat, argsig)

    Negotiating.__name__ = Negotiating.__qualname__ = factory.__name__
    return Negotiating


def _lower(offered, wanted):
    """The lower of a broker's limit and ours; 0 is no limit."""
    return min(offered, wanted) if offered and wanted else \
        (offered or wanted)


def connection_options(props):
    """py-amqp's keywords for the connection name, channel_max,
    frame_max and auth_mechanism of ``props`` (those that are set)."""
    options = {'client_properties': {
        'connection_name': connection_name(props)}}
    if props.channel_max is not None:
        options['channel_max'] = props.channel_max
    if props.frame_max is not None:
        options['frame_max'] = props.frame_max
    if props.auth_mechanism is not None:
        options['login_method'] = props.auth_mechanism
    return options


def _exclusive(exclusive, durable):
    """The exclusive flag of a queue: transient queues are exclusive."""
    if exclusive is None:
        return not durable
    if not exclusive and not durable:
        raise ConfigurationError(
            "exclusive=False with durable=False would declare a transient, "
            "shared queue, which RabbitMQ 4 refuses: give durable=True, or "
            "leave exclusive unset")
    return exclusive


def _quietly(func, *args):
    try:
        func(*args)
    except Exception:
        pass


@implementer(IConnection)
class AMQPConnection:
    """A connection to ``props``' broker with one channel on its exchange.

    ``mode='w'`` only declares the exchange. ``mode='r'`` also declares
    the queue named ``queue`` and binds it to the exchange with
    ``routing_key`` (default: the queue name); ``exclusive``,
    ``durable`` and ``auto_delete`` are the queue's flags (a queue that
    is not durable is exclusive unless ``exclusive=False`` is given,
    which raises: RabbitMQ 4 refuses transient non-exclusive queues).
    Exchanges are
    declared durable and never auto-deleted, so a producer's exchange
    cannot vanish under it when the last consumer leaves.

    ``publisher=True`` is for a caller that calls ``poll()`` before each
    publish (AMQPProducer does): py-amqp's own, dearer check before each
    basic_publish is then switched off (see zamqp.transport).

    Not thread-safe: one thread uses a connection at a time.
    """

    def __init__(self, queue: str, props: AMQPProps,
                 mode: Literal['r', 'w'] = 'w',
                 routing_key: str | None = None,
                 exclusive: bool | None = None, durable: bool = False,
                 auto_delete: bool = True, heartbeat: float | None = None,
                 publisher: bool = False,
                 declare: DeclareMode | None = None) -> None:
        if mode not in ('r', 'w'):
            raise ValueError(f"mode must be 'r' or 'w', got {mode!r}")
        self.queue = queue
        self.props = props
        self.mode = mode
        self.routing_key = queue if routing_key is None else routing_key
        self.declare_mode = props.declare if declare is None else \
            topology.check_mode(declare, 'AMQPConnection')
        self.queue_flags = dict(exclusive=_exclusive(exclusive, durable),
                                durable=durable, auto_delete=auto_delete)
        if heartbeat is None:
            heartbeat = props.heartbeat if mode == 'r' else 0
        self.heartbeat = heartbeat
        self.factory = memory.Connection \
            if getattr(props, 'memory', None) is not None \
            else connection_class(mode, publisher, props.ssl)
        self.connection = None
        self._channel = None
        self._readiness = None

    @property
    def channel(self) -> amqp.Channel:
        if self._channel is None:
            self._open()
        return self._channel

    @property
    def is_open(self) -> bool:
        """True while a channel is open (no network call)."""
        return self._channel is not None and self._channel.is_open

    def _open(self):
        self.connection = connect(self.props, self.heartbeat, self.factory)
        try:
            channel = self.connection.channel()
            # bodies stay the bytes sent: py-amqp would otherwise decode
            # them with whatever codec content_encoding names
            channel.auto_decode = False
            self.declare(channel)
        except ConnectionFailed:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise explain(exc, self.props, 'declare') from exc
        if self.factory is PublisherConnection:
            self._readiness = Readiness(self.connection)
        self._channel = channel

    def new_channel(self) -> amqp.Channel:
        """Replace the channel with a new one on the same connection
        (the old one is closed; nothing is declared again)."""
        if self.connection is None:
            return self.channel
        old, channel = self._channel, self.connection.channel()
        channel.auto_decode = False
        self._channel = channel
        if old is not None:
            try:
                old.close()
            except Exception:       # noqa: BLE001 - it goes anyway
                logger.debug('closing the old channel failed')
        return channel

    def poll(self) -> None:
        """Handle what the broker sent, if anything, without waiting.

        A channel or connection the broker closed raises here. A no-op
        unless ``publisher=True`` (py-amqp then polls by itself).
        """
        if self._readiness is not None:
            self._readiness.poll()

    def declare(self, channel: amqp.Channel) -> None:
        """Declare the exchange, and in read mode the queue and binding
        (as ``declare`` says: all, only check them, or nothing)."""
        props = self.props
        declarer = topology.Declarer(channel, props, self.declare_mode)
        declarer.exchange(props.exchange, props.type,
                          props.exchange_arguments)
        if self.mode == 'r':
            declarer.queue(self.queue, **self.queue_flags)
            declarer.bind(self.queue, props.exchange, self.routing_key)

    def close(self) -> None:
        conn, self.connection, self._channel = self.connection, None, None
        self._readiness = None
        if conn is None:
            return
        try:
            conn.close()
        except Exception:
            logger.debug('closing %s failed; dropping the socket',
                         self.props.url(), exc_info=True)
            _quietly(conn.collect)

    def __enter__(self) -> AMQPConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self):
        state = 'open' if self.is_open else 'closed'
        return (f'<AMQPConnection {self.queue!r} mode={self.mode!r} '
                f'{self.props.url()} {state}>')
