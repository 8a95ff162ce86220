"""An in-process AMQP 0-9-1 broker for tests: ``memory://`` URLs.

``AMQPProps(url='memory://')`` (or ``memory://NAME`` for a broker of its
own, ``memory://NAME/vhost`` for a virtual host in it) makes zamqp's
connections talk to a broker model in this process instead of RabbitMQ.
The client side stays py-amqp's: ``Connection`` is an ``amqp.Connection``
whose transport hands the frames py-amqp writes to the broker model and
gives py-amqp the frames the broker sends back, so zamqp's producers,
consumers and sessions run unchanged on it. Every message crosses as
bytes (the frames), never as a shared object.

The model follows RabbitMQ 3.x where it claims to (see docs/memory.rst):
fanout, direct, topic and headers exchanges, queues (durable, exclusive,
auto-delete), bindings with arguments, consumers with prefetch, acks,
nacks and rejects with requeue, basic.get, publisher confirms, mandatory
returns, ``x-dead-letter-exchange`` and ``x-dead-letter-routing-key``,
quorum queues (``x-delivery-count``, ``x-delivery-limit``), and the
channel and connection errors RabbitMQ raises for wrong
declarations. What it does not model (TTLs, length limits, priorities,
stream queues, transactions, exchange-to-exchange bindings,
alternate exchanges, plugins' exchange types, ...) raises
NotImplementedError naming the feature, in the calling thread.

Brokers live as long as the process; ``reset()`` forgets their exchanges
and queues and closes their connections (as a broker restart would).
"""
from __future__ import annotations

import collections
import datetime
import heapq
import itertools
import socket
import struct
import threading
import time
import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING
from typing import Any
from urllib.parse import unquote
from urllib.parse import urlsplit

from amqp import spec
from amqp.basic_message import Message
from amqp.serialization import dumps
from amqp.serialization import loads

from zamqp.transport import BlockAwareConnection

if TYPE_CHECKING:
    from typing import Callable
    from typing import Mapping

__all__ = ('Broker', 'Connection', 'broker', 'reset', 'DEFAULT_NAME')

#: The broker of ``memory://`` without a name.
DEFAULT_NAME = 'default'
#: The port memory props report (nothing listens on it).
PORT = 5672
SCHEME = 'memory'

_HEAD = struct.Struct('>BHI')
_FRAME_END = 0xCE
_METHOD, _HEADER, _BODY, _HEARTBEAT = 1, 2, 3, 8

#: Argument formats of the methods a client sends (AMQP 0-9-1).
CLIENT_METHODS = {
    spec.Connection.StartOk: 'FsSs', spec.Connection.SecureOk: 'S',
    spec.Connection.TuneOk: 'BlB', spec.Connection.Open: 'ssb',
    spec.Connection.Close: 'BsBB', spec.Connection.CloseOk: '',
    spec.Channel.Open: 's', spec.Channel.Flow: 'b',
    spec.Channel.FlowOk: 'b', spec.Channel.Close: 'BsBB',
    spec.Channel.CloseOk: '',
    spec.Exchange.Declare: 'BssbbbbbF', spec.Exchange.Delete: 'Bsbb',
    spec.Exchange.Bind: 'BsssbF', spec.Exchange.Unbind: 'BsssbF',
    spec.Queue.Declare: 'BsbbbbbF', spec.Queue.Bind: 'BsssbF',
    spec.Queue.Purge: 'Bsb', spec.Queue.Delete: 'Bsbbb',
    spec.Queue.Unbind: 'BsssF',
    spec.Basic.Qos: 'lBb', spec.Basic.Consume: 'BssbbbbF',
    spec.Basic.Cancel: 'sb', spec.Basic.Publish: 'Bssbb',
    spec.Basic.Get: 'Bsb', spec.Basic.Ack: 'Lb', spec.Basic.Reject: 'Lb',
    spec.Basic.RecoverAsync: 'b', spec.Basic.Recover: 'b',
    spec.Basic.Nack: 'Lbb', spec.Confirm.Select: 'b',
    spec.Tx.Select: '', spec.Tx.Commit: '', spec.Tx.Rollback: '',
}

#: What the methods the model refuses are, for NotImplementedError.
NOT_MODELLED = {
    spec.Exchange.Bind: 'exchange-to-exchange bindings (exchange.bind)',
    spec.Exchange.Unbind: 'exchange-to-exchange bindings (exchange.unbind)',
    spec.Basic.Recover: 'basic.recover',
    spec.Basic.RecoverAsync: 'basic.recover-async',
    spec.Channel.Flow: 'channel.flow',
    spec.Tx.Select: 'transactions (tx.select)',
    spec.Tx.Commit: 'transactions (tx.commit)',
    spec.Tx.Rollback: 'transactions (tx.rollback)',
    spec.Connection.SecureOk: 'SASL challenges (connection.secure-ok)',
}

EXCHANGE_TYPES = ('direct', 'fanout', 'topic', 'headers')
#: Queue arguments the model implements (x-delivery-limit: quorum).
QUEUE_ARGUMENTS = ('x-dead-letter-exchange', 'x-dead-letter-routing-key',
                   'x-queue-type', 'x-delivery-limit')
SERVER_PROPERTIES = {
    'product': 'zamqp memory broker',
    'platform': 'Python',
    'capabilities': {
        'publisher_confirms': True, 'basic.nack': True,
        'consumer_cancel_notify': True, 'connection.blocked': True,
        'authentication_failure_close': True, 'per_consumer_qos': True,
        'exchange_exchange_bindings': False,
    },
}

NOT_FOUND, ACCESS_REFUSED, RESOURCE_LOCKED, PRECONDITION_FAILED = \
    404, 403, 405, 406
CHANNEL_ERROR, NOT_ALLOWED, CONNECTION_FORCED, UNEXPECTED_FRAME = \
    504, 530, 320, 505
_CODE_NAMES = {404: 'NOT_FOUND', 403: 'ACCESS_REFUSED',
               405: 'RESOURCE_LOCKED', 406: 'PRECONDITION_FAILED',
               504: 'CHANNEL_ERROR', 530: 'NOT_ALLOWED',
               320: 'CONNECTION_FORCED', 505: 'UNEXPECTED_FRAME',
               312: 'NO_ROUTE'}


def not_modelled(feature: str) -> NotImplementedError:
    """The error for a feature the memory broker does not model."""
    return NotImplementedError(
        f'the memory:// broker does not model {feature}: test this against '
        'RabbitMQ (amqp:// URL)')


class _ChannelError(Exception):
    """Closes the channel (``connection=True``: the connection) with a
    reply code, as RabbitMQ would."""

    def __init__(self, code, text, connection=False):
        super().__init__(text)
        self.code = code
        self.text = f'{_CODE_NAMES.get(code, code)} - {text}'
        self.connection = connection
        self.method = (0, 0)


def _vhost_text(vhost):
    return f"in vhost '{vhost}'"


def _flag(value):
    return 'true' if value else 'false'


# routing

def topic_words(key: str) -> list[str]:
    """The words of a topic routing key or pattern, as RabbitMQ splits
    them: ``''`` has none, ``'a.'`` has ``'a'`` and an empty word."""
    return key.split('.') if key else []


def topic_match(pattern: str, key: str) -> bool:
    """Whether the binding ``pattern`` matches the routing ``key``: ``*``
    stands for exactly one word, ``#`` for zero or more."""
    return _match(topic_words(pattern), topic_words(key))


def _match(pattern, words):
    # iterative with memo: patterns with several '#' stay linear-ish
    memo = {}

    def match(p, w):
        key = (p, w)
        if key in memo:
            return memo[key]
        if p == len(pattern):
            result = w == len(words)
        elif pattern[p] == '#':
            result = match(p + 1, w) or (w < len(words) and match(p, w + 1))
        elif w < len(words) and pattern[p] in ('*', words[w]):
            result = match(p + 1, w + 1)
        else:
            result = False
        memo[key] = result
        return result

    return match(0, 0)


def _same_value(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, bytes):
        a = a.decode('utf-8', 'surrogateescape')
    if isinstance(b, bytes):
        b = b.decode('utf-8', 'surrogateescape')
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
        and a == b)


def headers_match(arguments: Mapping[str, Any] | None,
                  headers: Mapping[str, Any] | None) -> bool:
    """Whether a headers exchange binding with ``arguments`` routes a
    message with ``headers``: ``x-match`` ``all`` (default) or ``any``
    (``all-with-x`` and ``any-with-x`` also compare ``x-`` keys)."""
    arguments = arguments or {}
    headers = headers or {}
    mode = arguments.get('x-match', 'all')
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode not in ('all', 'any', 'all-with-x', 'any-with-x'):
        raise _ChannelError(PRECONDITION_FAILED,
                            f"Invalid x-match field value {mode!r}; "
                            "expected all, any, all-with-x, or any-with-x")
    with_x = mode.endswith('-with-x')
    wanted = [(k, v) for k, v in arguments.items()
              if k != 'x-match' and (with_x or not k.startswith('x-'))]
    if mode.startswith('all'):
        return all(k in headers and (v is None or _same_value(v, headers[k]))
                   for k, v in wanted)
    return any(k in headers and (v is None or _same_value(v, headers[k]))
               for k, v in wanted)


class Exchange:
    def __init__(self, name, type, durable=True, auto_delete=False,
                 internal=False, arguments=None):
        self.name = name
        self.type = type
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = dict(arguments or {})
        self.bindings = []      # (queue name, routing key, arguments)

    def route(self, routing_key, headers):
        """The names of the queues a message goes to (each once)."""
        found = []
        for queue, key, arguments in self.bindings:
            if self.type == 'fanout':
                hit = True
            elif self.type == 'direct':
                hit = key == routing_key
            elif self.type == 'topic':
                hit = topic_match(key, routing_key)
            else:
                hit = headers_match(arguments, headers)
            if hit and queue not in found:
                found.append(queue)
        return found


class _Entry:
    """One message in one queue: the bytes of its content and where it
    came from."""

    __slots__ = ('seq', 'exchange', 'routing_key', 'properties', 'body',
                 'redelivered', 'returns')

    def __init__(self, seq, exchange, routing_key, properties, body,
                 redelivered=False):
        self.seq = seq
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties = properties    # the encoded property list
        self.body = body
        self.redelivered = redelivered
        self.returns = 0            # back in a quorum queue (returned)

    def __lt__(self, other):
        return self.seq < other.seq


class Queue:
    def __init__(self, name, durable, exclusive, auto_delete, arguments,
                 owner):
        self.name = name
        self.durable = durable
        self.exclusive = exclusive
        self.auto_delete = auto_delete
        self.arguments = dict(arguments or {})
        self.owner = owner          # the _Peer of an exclusive queue
        self.quorum = self.arguments.get('x-queue-type') == 'quorum'
        self.ready = []             # heap of _Entry, by seq
        self.consumers = []         # _Consumer, in round-robin order
        self.had_consumer = False

    def __len__(self):
        return len(self.ready)

    def properties(self, entry, get=False):
        """The encoded properties ``entry`` is delivered with: a quorum
        queue adds ``x-delivery-count``, how often it was returned (as
        RabbitMQ 3.10 does: to consumers once it is 1 or more, to
        ``basic.get`` always)."""
        if not self.quorum or not (get or entry.returns):
            return entry.properties
        message = Message()
        message._load_properties(60, entry.properties, 0)
        properties = message.properties
        properties['application_headers'] = dict(
            properties.get('application_headers') or {},
            **{'x-delivery-count': entry.returns})
        return Message(**properties)._serialize_properties()


class _Consumer:
    def __init__(self, tag, channel, queue, no_ack, exclusive, prefetch):
        self.tag = tag
        self.channel = channel
        self.queue = queue
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.prefetch = prefetch
        self.unacked = 0

    def has_room(self):
        channel = self.channel
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        return not channel.global_prefetch or \
            len(channel.unacked) < channel.global_prefetch


class _VHost:
    def __init__(self, name):
        self.name = name
        self.exchanges = {'': Exchange('', 'direct')}
        for kind in EXCHANGE_TYPES:
            self.exchanges[f'amq.{kind}'] = Exchange(f'amq.{kind}', kind)
        self.exchanges['amq.match'] = Exchange('amq.match', 'headers')
        self.queues = {}


class Broker:
    """One in-process broker: its virtual hosts, exchanges, queues and
    connections. All state changes under ``lock``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.RLock()
        self.vhosts = {}
        self.peers = set()
        self._seq = itertools.count(1)

    def vhost(self, name='/'):
        found = self.vhosts.get(name)
        if found is None:
            found = self.vhosts[name] = _VHost(name)
        return found

    # inspection, for tests

    def queue_names(self, vhost: str = '/') -> list[str]:
        with self.lock:
            return sorted(self.vhost(vhost).queues)

    def exchange_names(self, vhost: str = '/') -> list[str]:
        """Declared exchanges (the predeclared '' and amq.* left out)."""
        with self.lock:
            return sorted(name for name in self.vhost(vhost).exchanges
                          if name and not name.startswith('amq.'))

    def message_count(self, queue: str, vhost: str = '/') -> int:
        """Messages ready in ``queue`` (not delivered or unacked)."""
        with self.lock:
            return len(self.vhost(vhost).queues[queue].ready)

    def consumer_count(self, queue: str, vhost: str = '/') -> int:
        with self.lock:
            return len(self.vhost(vhost).queues[queue].consumers)

    def connection_count(self) -> int:
        with self.lock:
            return len(self.peers)

    def reset(self) -> None:
        """Close every connection (``CONNECTION_FORCED``, as a broker
        shutdown does) and forget every exchange and queue."""
        with self.lock:
            for peer in list(self.peers):
                peer.force_close(CONNECTION_FORCED,
                                 "CONNECTION_FORCED - broker forced "
                                 "connection closure with reason "
                                 "'shutdown'")
            self.peers.clear()
            self.vhosts.clear()

    # routing and delivery (under the lock)

    def next_seq(self):
        return next(self._seq)

    def publish(self, vhost, exchange, routing_key, properties, body,
                headers):
        """Route a message; return the queues it went to."""
        queues = exchange.route(routing_key, headers) \
            if exchange.name else (
                [routing_key] if routing_key in vhost.queues else [])
        for name in queues:
            queue = vhost.queues.get(name)
            if queue is None:
                continue
            heapq.heappush(queue.ready, _Entry(
                self.next_seq(), exchange.name, routing_key, properties,
                body))
            self.dispatch(queue)
        return queues

    def dispatch(self, queue):
        """Deliver ready messages to consumers with room, round-robin."""
        consumers = queue.consumers
        while queue.ready and consumers:
            for index, consumer in enumerate(consumers):
                if consumer.has_room():
                    break
            else:
                return
            consumers.append(consumers.pop(index))     # to the back
            entry = heapq.heappop(queue.ready)
            consumer.channel.deliver(consumer, entry)

    def dead_letter(self, vhost, queue, entry, reason='rejected'):
        """A message rejected without requeue: to the queue's
        dead-letter exchange if it has one (with RabbitMQ's x-death
        headers), else dropped."""
        dlx_name = queue.arguments.get('x-dead-letter-exchange')
        if dlx_name is None:
            return
        dlx = vhost.exchanges.get(dlx_name)
        if dlx is None:
            return          # RabbitMQ drops it as well
        key = queue.arguments.get('x-dead-letter-routing-key',
                                  entry.routing_key)
        message = Message()
        message._load_properties(60, entry.properties, 0)
        properties = message.properties
        properties.pop('expiration', None)
        headers = dict(properties.get('application_headers') or {})
        deaths = list(headers.get('x-death') or [])
        for death in deaths:
            if death.get('queue') == queue.name and \
                    death.get('reason') == reason:
                deaths.remove(death)
                death = dict(death, count=death.get('count', 1) + 1)
                break
        else:
            death = {'count': 1, 'reason': reason, 'queue': queue.name,
                     'time': datetime.datetime.now(datetime.timezone.utc),
                     'exchange': entry.exchange,
                     'routing-keys': [entry.routing_key]}
        deaths.insert(0, death)
        headers['x-death'] = deaths
        headers.setdefault('x-first-death-exchange', entry.exchange)
        headers.setdefault('x-first-death-queue', queue.name)
        headers.setdefault('x-first-death-reason', reason)
        properties['application_headers'] = headers
        encoded = Message(**properties)._serialize_properties()
        self.publish(vhost, dlx, key, encoded, entry.body, headers)

    def requeue(self, vhost, queue_name, entry):
        queue = vhost.queues.get(queue_name)
        if queue is None:
            return None
        entry.redelivered = True
        if queue.quorum:
            entry.returns += 1
            limit = queue.arguments.get('x-delivery-limit')
            if limit is not None and entry.returns > limit:
                self.dead_letter(vhost, queue, entry, 'delivery_limit')
                return queue
        heapq.heappush(queue.ready, entry)
        return queue

    def delete_queue(self, vhost, queue):
        """Remove ``queue``, its bindings, and cancel its consumers."""
        vhost.queues.pop(queue.name, None)
        for consumer in list(queue.consumers):
            consumer.channel.cancelled_by_broker(consumer)
        queue.consumers = []
        for exchange in list(vhost.exchanges.values()):
            before = len(exchange.bindings)
            exchange.bindings = [b for b in exchange.bindings
                                 if b[0] != queue.name]
            if before and not exchange.bindings:
                self._unbound(vhost, exchange)
        return len(queue.ready)

    def _unbound(self, vhost, exchange):
        if exchange.auto_delete and not exchange.bindings:
            vhost.exchanges.pop(exchange.name, None)

    def consumer_gone(self, vhost, consumer):
        queue = consumer.queue
        if consumer in queue.consumers:
            queue.consumers.remove(consumer)
        if queue.auto_delete and queue.had_consumer and \
                not queue.consumers and \
                vhost.queues.get(queue.name) is queue:
            self.delete_queue(vhost, queue)


_brokers = {}
_brokers_lock = threading.Lock()


def broker(name: str = DEFAULT_NAME) -> Broker:
    """The broker of ``memory://NAME`` (made on first use)."""
    with _brokers_lock:
        found = _brokers.get(name)
        if found is None:
            found = _brokers[name] = Broker(name)
        return found


def reset(name: str | None = None) -> None:
    """Reset the broker ``name`` (every broker if None): its connections
    are closed, its exchanges and queues forgotten."""
    with _brokers_lock:
        targets = list(_brokers.values()) if name is None else \
            [b for n, b in _brokers.items() if n == name]
    for target in targets:
        target.reset()


# the server side of one connection

class _Channel:
    """The broker's state of one open channel."""

    def __init__(self, peer, channel_id):
        self.peer = peer
        self.id = channel_id
        self.closing = False
        self.confirm = False
        self.published = 0          # publish sequence (confirm mode)
        self.tags = itertools.count(1)
        self.unacked = collections.OrderedDict()  # tag -> (queue, entry, c)
        self.consumers = {}
        self.prefetch = 0           # for consumers made from now on
        self.global_prefetch = 0
        self.content = None         # [publish args, size, props, chunks]

    def deliver(self, consumer, entry):
        tag = next(self.tags)
        if not consumer.no_ack:
            self.unacked[tag] = (consumer.queue.name, entry, consumer)
            consumer.unacked += 1
        self.peer.send_content(
            self.id, spec.Basic.Deliver, 'sLbss',
            (consumer.tag, tag, entry.redelivered, entry.exchange,
             entry.routing_key), entry, consumer.queue.properties(entry))

    def cancelled_by_broker(self, consumer):
        self.consumers.pop(consumer.tag, None)
        if not self.closing:
            self.peer.send(self.id, spec.Basic.Cancel, 'sb',
                           (consumer.tag, False))

    def close(self, broker, vhost):
        """Cancel the consumers, requeue what is unacknowledged."""
        consumers, self.consumers = list(self.consumers.values()), {}
        for consumer in consumers:
            broker.consumer_gone(vhost, consumer)
        unacked, self.unacked = self.unacked, collections.OrderedDict()
        touched = []
        for queue_name, entry, _ in unacked.values():
            queue = broker.requeue(vhost, queue_name, entry)
            if queue is not None and queue not in touched:
                touched.append(queue)
        for queue in touched:
            broker.dispatch(queue)


class _Peer:
    """The broker's side of one connection."""

    def __init__(self, broker, transport):
        self.broker = broker
        self.transport = transport
        self.vhost = None
        self.channels = {}
        self.frame_max = 131072
        self.closing = False
        self.closed = False

    # sending

    def send(self, channel, method, fmt='', args=()):
        payload = struct.pack('>HH', *method) + \
            (dumps(fmt, args) if fmt else b'')
        self.transport.put([(_METHOD, channel, payload)])

    def send_content(self, channel, method, fmt, args, entry,
                     properties=None):
        if properties is None:
            properties = entry.properties
        frames = [(_METHOD, channel,
                   struct.pack('>HH', *method) + dumps(fmt, args)),
                  (_HEADER, channel,
                   struct.pack('>HHQ', 60, 0, len(entry.body))
                   + properties)]
        body, size = entry.body, max(self.frame_max - 8, 1)
        for start in range(0, len(body), size):
            frames.append((_BODY, channel, body[start:start + size]))
        self.transport.put(frames)

    # receiving (under the broker's lock)

    def receive(self, frame_type, channel_id, payload):
        if self.closed:
            return
        if frame_type == _HEARTBEAT:
            self.transport.put([(_HEARTBEAT, 0, b'')])
            return
        try:
            if channel_id == 0:
                if frame_type != _METHOD:
                    raise _ChannelError(UNEXPECTED_FRAME,
                                        'content frame on channel 0', True)
                self._connection_method(payload)
                return
            channel = self.channels.get(channel_id)
            if frame_type == _METHOD:
                self._channel_method(channel_id, channel, payload)
            elif channel is None:
                raise _ChannelError(CHANNEL_ERROR,
                                    f'expected channel.open for channel '
                                    f'{channel_id}', True)
            elif not channel.closing:
                self._content_frame(channel, frame_type, payload)
        except _ChannelError as exc:
            if exc.connection or channel_id == 0:
                self.force_close(exc.code, exc.text, exc.method)
            else:
                self.channel_error(channel_id, exc)

    def _connection_method(self, payload):
        method = struct.unpack_from('>HH', payload)
        if method in NOT_MODELLED:
            raise not_modelled(NOT_MODELLED[method])
        args = _args(method, payload)
        if self.closing and method not in (spec.Connection.Close,
                                           spec.Connection.CloseOk):
            return
        if method == spec.Connection.StartOk:
            self.send(0, spec.Connection.Tune, 'BlB', (2047, 131072, 0))
        elif method == spec.Connection.TuneOk:
            self.frame_max = args[1] or 131072
        elif method == spec.Connection.Open:
            self.vhost = self.broker.vhost(args[0])
            self.send(0, spec.Connection.OpenOk, 's', ('',))
        elif method == spec.Connection.Close:
            self.cleanup(keep_transport=True)
            self.send(0, spec.Connection.CloseOk)
            self.transport.put(None)
        elif method == spec.Connection.CloseOk:
            self.cleanup()
        else:
            raise _ChannelError(UNEXPECTED_FRAME,
                                f'unexpected method {method}', True)

    def _channel_method(self, channel_id, channel, payload):
        method = struct.unpack_from('>HH', payload)
        if method not in CLIENT_METHODS:
            raise _ChannelError(UNEXPECTED_FRAME,
                                f'unknown method {method}', True)
        if method in NOT_MODELLED:
            raise not_modelled(NOT_MODELLED[method])
        args = _args(method, payload)
        if method == spec.Channel.Open:
            if channel is not None:
                raise _ChannelError(CHANNEL_ERROR,
                                    f'second channel.open on channel '
                                    f'{channel_id}', True)
            if self.vhost is None:
                raise _ChannelError(CHANNEL_ERROR,
                                    'channel.open before connection.open',
                                    True)
            self.channels[channel_id] = _Channel(self, channel_id)
            self.send(channel_id, spec.Channel.OpenOk, 'S', ('',))
            return
        if channel is None:
            raise _ChannelError(CHANNEL_ERROR,
                                f'expected channel.open for channel '
                                f'{channel_id}', True)
        if method == spec.Channel.CloseOk:
            if channel.closing:
                del self.channels[channel_id]
            return
        if method == spec.Channel.Close:
            self.channels.pop(channel_id, None)
            if not channel.closing:
                channel.close(self.broker, self.vhost)
            self.send(channel_id, spec.Channel.CloseOk)
            return
        if channel.closing:
            return          # RabbitMQ ignores all until close-ok
        if channel.content is not None:
            raise _ChannelError(UNEXPECTED_FRAME,
                                'method frame while expecting content',
                                True)
        handler = _HANDLERS.get(method)
        if handler is None:
            raise _ChannelError(UNEXPECTED_FRAME,
                                f'unexpected method {method}', True)
        try:
            handler(self, channel, *args)
        except _ChannelError as exc:
            exc.method = method
            raise

    def _content_frame(self, channel, frame_type, payload):
        content = channel.content
        if content is None:
            raise _ChannelError(UNEXPECTED_FRAME,
                                'content frame without basic.publish', True)
        if frame_type == _HEADER:
            if content[2] is not None:
                raise _ChannelError(UNEXPECTED_FRAME,
                                    'second content header', True)
            _, _, size = struct.unpack_from('>HHQ', payload)
            content[1] = size
            content[2] = bytes(payload[12:])
        elif frame_type == _BODY and content[2] is not None:
            content[3].append(bytes(payload))
        else:
            raise _ChannelError(UNEXPECTED_FRAME,
                                'content body before its header', True)
        if sum(len(chunk) for chunk in content[3]) >= content[1]:
            channel.content = None
            self._publish(channel, content[0], content[2],
                          b''.join(content[3]))

    # errors and closing

    def channel_error(self, channel_id, exc):
        channel = self.channels.get(channel_id)
        if channel is None or channel.closing:
            return
        channel.closing = True
        channel.content = None
        channel.close(self.broker, self.vhost)
        self.send(channel_id, spec.Channel.Close, 'BsBB',
                  (exc.code, exc.text, *exc.method))

    def force_close(self, code, text, method=(0, 0)):
        """Close the connection from the broker's side."""
        if self.closing or self.closed:
            return
        self.send(0, spec.Connection.Close, 'BsBB', (code, text, *method))
        self.cleanup(keep_transport=True)

    def cleanup(self, keep_transport=False):
        """The connection is gone: its channels close, its exclusive
        queues are deleted."""
        if self.closed:
            return
        self.closing = True
        broker, vhost = self.broker, self.vhost
        channels, self.channels = list(self.channels.values()), {}
        if vhost is not None:
            for channel in channels:
                channel.closing = True
                channel.close(broker, vhost)
            for queue in list(vhost.queues.values()):
                if queue.owner is self:
                    broker.delete_queue(vhost, queue)
        broker.peers.discard(self)
        self.closed = True
        if not keep_transport:
            self.transport.put(None)

    # publishing

    def _publish(self, channel, args, properties, body):
        _, exchange_name, routing_key, mandatory, immediate = args
        vhost = self.vhost
        exchange = vhost.exchanges.get(exchange_name)
        if exchange is None:
            raise _ChannelError(NOT_FOUND, f"no exchange '{exchange_name}' "
                                f"{_vhost_text(vhost.name)}")
        if exchange.internal:
            raise _ChannelError(ACCESS_REFUSED,
                                f"cannot publish to internal exchange "
                                f"'{exchange_name}' "
                                f"{_vhost_text(vhost.name)}")
        message = Message()
        message._load_properties(60, properties, 0)
        props = message.properties
        if props.get('expiration') is not None:
            raise not_modelled('per-message TTL (the expiration property)')
        headers = props.get('application_headers') or {}
        for name in ('CC', 'BCC'):
            if name in headers:
                raise not_modelled(
                    f'sender-selected distribution (the {name} header)')
        entry = _Entry(0, exchange_name, routing_key, properties, body)
        queues = self.broker.publish(vhost, exchange, routing_key,
                                     properties, body, headers)
        if channel.confirm:
            channel.published += 1
        if mandatory and not queues:
            self.send_content(channel.id, spec.Basic.Return, 'Bsss',
                              (312, 'NO_ROUTE', exchange_name, routing_key),
                              entry)
        if channel.confirm:
            self.send(channel.id, spec.Basic.Ack, 'Lb',
                      (channel.published, False))


def _args(method, payload):
    fmt = CLIENT_METHODS.get(method)
    if not fmt:
        return ()
    try:
        return loads(fmt, payload, 4)[0]
    except Exception as exc:
        raise _ChannelError(502, f'cannot decode {method}: {exc}',
                            True) from None


# the methods of channels

def _queue(peer, name, exclusive_check=True):
    vhost = peer.vhost
    queue = vhost.queues.get(name)
    if queue is None:
        raise _ChannelError(NOT_FOUND,
                            f"no queue '{name}' {_vhost_text(vhost.name)}")
    if exclusive_check and queue.owner is not None and queue.owner is not peer:
        raise _ChannelError(RESOURCE_LOCKED,
                            f"cannot obtain exclusive access to locked "
                            f"queue '{name}' {_vhost_text(vhost.name)}. It "
                            "could be originally declared on another "
                            "connection or the exclusive property value "
                            "does not match that of the original "
                            "declaration.")
    return queue


def _exchange(peer, name):
    vhost = peer.vhost
    exchange = vhost.exchanges.get(name)
    if exchange is None:
        raise _ChannelError(NOT_FOUND, f"no exchange '{name}' "
                            f"{_vhost_text(vhost.name)}")
    return exchange


def _exchange_declare(peer, channel, _, name, type, passive, durable,
                      auto_delete, internal, nowait, arguments):
    vhost = peer.vhost
    where = _vhost_text(vhost.name)
    if passive:
        _exchange(peer, name)
    else:
        if name.startswith('amq.') or not name:
            raise _ChannelError(ACCESS_REFUSED,
                                f"exchange name '{name}' contains reserved "
                                "prefix 'amq.*'" if name else
                                "operation not permitted on the default "
                                "exchange")
        if type not in EXCHANGE_TYPES:
            raise not_modelled(f'exchange type {type!r}')
        if arguments:
            raise not_modelled(
                f"exchange arguments ({', '.join(sorted(arguments))})")
        found = vhost.exchanges.get(name)
        if found is None:
            vhost.exchanges[name] = Exchange(name, type, durable,
                                             auto_delete, internal)
        else:
            for what, received, current in (
                    ('type', type, found.type),
                    ('durable', durable, found.durable),
                    ('auto_delete', auto_delete, found.auto_delete),
                    ('internal', internal, found.internal)):
                if received != current:
                    show = (lambda v: v) if what == 'type' else _flag
                    raise _ChannelError(
                        PRECONDITION_FAILED,
                        f"inequivalent arg '{what}' for exchange '{name}' "
                        f"{where}: received '{show(received)}' but current "
                        f"is '{show(current)}'")
    if not nowait:
        peer.send(channel.id, spec.Exchange.DeclareOk)


def _exchange_delete(peer, channel, _, name, if_unused, nowait):
    vhost = peer.vhost
    if not name or name.startswith('amq.'):
        raise _ChannelError(ACCESS_REFUSED,
                            f"operation not permitted on exchange '{name}'")
    exchange = vhost.exchanges.get(name)
    if exchange is not None:
        if if_unused and exchange.bindings:
            raise _ChannelError(PRECONDITION_FAILED,
                                f"exchange '{name}' "
                                f"{_vhost_text(vhost.name)} in use")
        del vhost.exchanges[name]
    if not nowait:
        peer.send(channel.id, spec.Exchange.DeleteOk)


def _check_queue_arguments(arguments, name, where, durable, exclusive,
                           auto_delete, new):
    kind = (arguments or {}).get('x-queue-type', 'classic')
    if kind not in ('classic', 'quorum'):
        raise not_modelled(f'{kind} queues (x-queue-type)')
    for argument in arguments or {}:
        if argument not in QUEUE_ARGUMENTS or (
                argument == 'x-delivery-limit' and kind != 'quorum'):
            raise not_modelled(f'the queue argument {argument!r} on '
                               f'{kind} queues')
    if kind == 'quorum' and new:
        for wrong, what in ((auto_delete, 'auto-delete'),
                            (exclusive, 'exclusive-owner'),
                            (not durable, 'non-durable')):
            if wrong:
                raise _ChannelError(PRECONDITION_FAILED,
                                    f"invalid property '{what}' for queue "
                                    f"'{name}' {where}")


def _queue_declare(peer, channel, _, name, passive, durable, exclusive,
                   auto_delete, nowait, arguments):
    vhost = peer.vhost
    where = _vhost_text(vhost.name)
    if passive:
        queue = _queue(peer, name)
    else:
        if name.startswith('amq.'):
            raise _ChannelError(ACCESS_REFUSED,
                                f"queue name '{name}' contains reserved "
                                "prefix 'amq.*'")
        if not name:
            name = f'amq.gen-{uuid.uuid4().hex[:22]}'
        _check_queue_arguments(arguments, name, where, durable,
                               exclusive, auto_delete,
                               name not in vhost.queues)
        queue = vhost.queues.get(name)
        if queue is None:
            queue = vhost.queues[name] = Queue(
                name, durable, exclusive, auto_delete, arguments,
                peer if exclusive else None)
        else:
            _queue(peer, name)          # locked by another connection?
            for what, received, current in (
                    ('durable', durable, queue.durable),
                    ('exclusive', exclusive, queue.exclusive),
                    ('auto_delete', auto_delete, queue.auto_delete)):
                if bool(received) != bool(current):
                    raise _ChannelError(
                        PRECONDITION_FAILED,
                        f"inequivalent arg '{what}' for queue '{name}' "
                        f"{where}: received '{_flag(received)}' but "
                        f"current is '{_flag(current)}'")
            for what in QUEUE_ARGUMENTS:
                received = (arguments or {}).get(what)
                current = queue.arguments.get(what)
                if what == 'x-queue-type':
                    received, current = received or 'classic', \
                        current or 'classic'
                if received != current:
                    raise _ChannelError(
                        PRECONDITION_FAILED,
                        f"inequivalent arg '{what}' for queue '{name}' "
                        f"{where}: received {_show(received)} but current "
                        f"is {_show(current)}")
    if not nowait:
        peer.send(channel.id, spec.Queue.DeclareOk, 'sll',
                  (queue.name, len(queue.ready), len(queue.consumers)))


def _show(value):
    return 'none' if value is None else f"the value '{value}' of type " \
        "'longstr'"


def _queue_bind(peer, channel, _, name, exchange_name, routing_key, nowait,
                arguments):
    queue = _queue(peer, name)
    if not exchange_name:
        raise _ChannelError(ACCESS_REFUSED, "operation not permitted on "
                            "the default exchange")
    exchange = _exchange(peer, exchange_name)
    if exchange.type == 'headers':
        headers_match(arguments, {})    # an x-match RabbitMQ refuses
    binding = (queue.name, routing_key, dict(arguments or {}))
    if binding not in exchange.bindings:
        exchange.bindings.append(binding)
    if not nowait:
        peer.send(channel.id, spec.Queue.BindOk)


def _queue_unbind(peer, channel, _, name, exchange_name, routing_key,
                  arguments):
    queue = _queue(peer, name)
    if not exchange_name:
        raise _ChannelError(ACCESS_REFUSED, "operation not permitted on "
                            "the default exchange")
    exchange = _exchange(peer, exchange_name)
    binding = (queue.name, routing_key, dict(arguments or {}))
    if binding in exchange.bindings:
        exchange.bindings.remove(binding)
        peer.broker._unbound(peer.vhost, exchange)
    peer.send(channel.id, spec.Queue.UnbindOk)


def _queue_purge(peer, channel, _, name, nowait):
    queue = _queue(peer, name)
    count = len(queue.ready)
    queue.ready = []
    if not nowait:
        peer.send(channel.id, spec.Queue.PurgeOk, 'l', (count,))


def _queue_delete(peer, channel, _, name, if_unused, if_empty, nowait):
    vhost = peer.vhost
    queue = vhost.queues.get(name)
    count = 0
    if queue is not None:
        _queue(peer, name)
        if if_unused and queue.consumers:
            raise _ChannelError(PRECONDITION_FAILED,
                                f"queue '{name}' {_vhost_text(vhost.name)} "
                                "in use")
        if if_empty and queue.ready:
            raise _ChannelError(PRECONDITION_FAILED,
                                f"queue '{name}' {_vhost_text(vhost.name)} "
                                "not empty")
        count = peer.broker.delete_queue(vhost, queue)
    if not nowait:
        peer.send(channel.id, spec.Queue.DeleteOk, 'l', (count,))


def _basic_qos(peer, channel, size, count, global_):
    if size:
        raise not_modelled('prefetch_size (basic.qos)')
    if global_:
        channel.global_prefetch = count
    else:
        channel.prefetch = count
    peer.send(channel.id, spec.Basic.QosOk)
    for consumer in channel.consumers.values():
        peer.broker.dispatch(consumer.queue)


def _basic_consume(peer, channel, _, name, tag, no_local, no_ack,
                   exclusive, nowait, arguments):
    if arguments:
        raise not_modelled(
            f"consumer arguments ({', '.join(sorted(arguments))})")
    queue = _queue(peer, name)
    if not tag:
        tag = f'amq.ctag-{uuid.uuid4().hex[:22]}'
    if tag in channel.consumers:
        raise _ChannelError(NOT_ALLOWED, f"attempt to reuse consumer tag "
                            f"'{tag}'", True)
    where = _vhost_text(peer.vhost.name)
    if any(c.exclusive for c in queue.consumers) or \
            (exclusive and queue.consumers):
        raise _ChannelError(ACCESS_REFUSED, f"queue '{name}' {where} in "
                            "exclusive use")
    consumer = _Consumer(tag, channel, queue, no_ack, exclusive,
                         channel.prefetch)
    channel.consumers[tag] = consumer
    queue.consumers.append(consumer)
    queue.had_consumer = True
    if not nowait:
        peer.send(channel.id, spec.Basic.ConsumeOk, 's', (tag,))
    peer.broker.dispatch(queue)


def _basic_cancel(peer, channel, tag, nowait):
    consumer = channel.consumers.pop(tag, None)
    if consumer is not None:
        peer.broker.consumer_gone(peer.vhost, consumer)
    if not nowait:
        peer.send(channel.id, spec.Basic.CancelOk, 's', (tag,))


def _basic_publish(peer, channel, *args):
    if args[4]:
        raise not_modelled('immediate publishing (RabbitMQ refuses it too)')
    channel.content = [args, 0, None, []]


def _basic_get(peer, channel, _, name, no_ack):
    queue = _queue(peer, name)
    if not queue.ready:
        peer.send(channel.id, spec.Basic.GetEmpty, 's', ('',))
        return
    entry = heapq.heappop(queue.ready)
    tag = next(channel.tags)
    if not no_ack:
        channel.unacked[tag] = (queue.name, entry, None)
    peer.send_content(channel.id, spec.Basic.GetOk, 'LbssL',
                      (tag, entry.redelivered, entry.exchange,
                       entry.routing_key, len(queue.ready)), entry,
                      queue.properties(entry, get=True))


def _settled(channel, tag, multiple):
    """Remove and return the deliveries ``tag`` settles."""
    unacked = channel.unacked
    if multiple:
        tags = [t for t in unacked if t <= tag or tag == 0]
    elif tag in unacked:
        tags = [tag]
    else:
        tags = []
    if not tags and (tag or not multiple):
        raise _ChannelError(PRECONDITION_FAILED,
                            f'unknown delivery tag {tag}')
    settled = []
    for t in tags:
        queue_name, entry, consumer = unacked.pop(t)
        if consumer is not None:
            consumer.unacked -= 1
        settled.append((queue_name, entry, consumer))
    return settled


def _redispatch(peer, settled):
    """Deliver again from the queues settled messages came from (their
    consumers have room now)."""
    queues = peer.vhost.queues
    done = set()
    for queue_name, _, _ in settled:
        queue = queues.get(queue_name)
        if queue is not None and queue_name not in done:
            done.add(queue_name)
            peer.broker.dispatch(queue)


def _basic_ack(peer, channel, tag, multiple):
    _redispatch(peer, _settled(channel, tag, multiple))


def _give_back(peer, channel, tag, multiple, requeue):
    settled = _settled(channel, tag, multiple)
    broker, vhost = peer.broker, peer.vhost
    for queue_name, entry, _ in settled:
        if requeue:
            broker.requeue(vhost, queue_name, entry)
        else:
            queue = vhost.queues.get(queue_name)
            if queue is not None:
                broker.dead_letter(vhost, queue, entry)
    _redispatch(peer, settled)


def _basic_reject(peer, channel, tag, requeue):
    _give_back(peer, channel, tag, False, requeue)


def _basic_nack(peer, channel, tag, multiple, requeue):
    _give_back(peer, channel, tag, multiple, requeue)


def _confirm_select(peer, channel, nowait):
    channel.confirm = True
    if not nowait:
        peer.send(channel.id, spec.Confirm.SelectOk)


_HANDLERS = {
    spec.Exchange.Declare: _exchange_declare,
    spec.Exchange.Delete: _exchange_delete,
    spec.Queue.Declare: _queue_declare, spec.Queue.Bind: _queue_bind,
    spec.Queue.Unbind: _queue_unbind, spec.Queue.Purge: _queue_purge,
    spec.Queue.Delete: _queue_delete,
    spec.Basic.Qos: _basic_qos, spec.Basic.Consume: _basic_consume,
    spec.Basic.Cancel: _basic_cancel, spec.Basic.Publish: _basic_publish,
    spec.Basic.Get: _basic_get, spec.Basic.Ack: _basic_ack,
    spec.Basic.Reject: _basic_reject, spec.Basic.Nack: _basic_nack,
    spec.Confirm.Select: _confirm_select,
}


# the client side: py-amqp's Connection on a transport in memory

class _NoSocket:
    """Stands for the socket py-amqp and zamqp set options on."""

    def setsockopt(self, *args):
        pass

    def getsockopt(self, *args):
        return 0

    def settimeout(self, timeout):
        pass

    def gettimeout(self):
        return None

    def close(self):
        pass


class MemoryTransport:
    """A py-amqp transport whose frames go to and come from a Broker."""

    reads_ahead = False

    def __init__(self, broker, connection=None):
        self.broker = broker
        self.sock = _NoSocket()
        self.connected = False
        self._inbound = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._out = bytearray()
        self._timeout = None
        self._ended = False
        self.peer = None

    def __repr__(self):
        return f'<MemoryTransport memory://{self.broker.name}>'

    @property
    def _read_buffer(self):
        """Non-empty while frames wait (zamqp.session asks)."""
        return b'x' if self._inbound else b''

    def connect(self):
        with self.broker.lock:
            self.peer = _Peer(self.broker, self)
            self.broker.peers.add(self.peer)
            self.connected = True
            self.peer.send(0, spec.Connection.Start, 'ooFSS', (
                0, 9, SERVER_PROPERTIES, 'PLAIN AMQPLAIN', 'en_US'))

    @contextmanager
    def having_timeout(self, timeout):
        previous, self._timeout = self._timeout, timeout
        try:
            yield self.sock
        finally:
            self._timeout = previous

    def put(self, frames):
        """Broker side: frames for the client (None: the end)."""
        with self._ready:
            if frames is None:
                self._ended = True
            elif not self._ended:
                self._inbound.extend(frames)
            self._ready.notify_all()

    def read_frame(self, unpack=None):
        timeout = self._timeout
        with self._ready:
            if not self._inbound and not self._ended:
                if timeout is None:
                    while not self._inbound and not self._ended:
                        self._ready.wait()
                else:
                    deadline = time.monotonic() + timeout
                    while not self._inbound and not self._ended:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise socket.timeout('timed out')
                        self._ready.wait(remaining)
            if self._inbound:
                return self._inbound.popleft()
        self.connected = False
        raise ConnectionResetError(
            f'memory://{self.broker.name} closed the connection')

    def write(self, data):
        if not self.connected or self.peer is None or self._ended:
            self.connected = False
            raise ConnectionResetError(
                f'memory://{self.broker.name}: the connection is closed')
        if self.peer.closed:
            return      # the broker closed it: its connection.close waits
        out = self._out
        out += data
        frames = []
        while len(out) >= 7:
            frame_type, channel, size = _HEAD.unpack_from(out)
            if len(out) < size + 8:
                break
            if out[size + 7] != _FRAME_END:
                raise ConnectionResetError('frame end missing')
            frames.append((frame_type, channel, bytes(out[7:size + 7])))
            del out[:size + 8]
        with self.broker.lock:
            for frame in frames:
                self.peer.receive(*frame)

    def close(self):
        peer = self.peer
        if peer is not None:
            with self.broker.lock:
                peer.cleanup(keep_transport=True)
        self.connected = False
        self.put(None)


class Connection(BlockAwareConnection):
    """py-amqp's Connection, to the in-process broker of ``host``
    (``NAME`` or ``NAME:port``; the port is ignored). Credentials are
    accepted whatever they are; the virtual host is made on first use."""

    def Transport(self, host, connect_timeout=None, ssl=False,
                  read_timeout=None, write_timeout=None, **kwargs):
        if ssl:
            raise not_modelled('TLS')
        return MemoryTransport(broker(broker_name(host)), self)


def broker_name(host: str | None) -> str:
    name = host or DEFAULT_NAME
    if name.startswith(f'{SCHEME}://'):
        name = name[len(SCHEME) + 3:].split('/')[0]
    head, colon, port = name.rpartition(':')
    if colon and port.isdigit():
        name = head
    return name or DEFAULT_NAME


def parse_url(url: str,
              options: Callable[[str], Mapping[str, Any]] | None = None
              ) -> dict[str, Any]:
    """The settings of a ``memory://NAME/vhost?option=...`` URL, for
    zamqp.props (``options`` parses the query)."""
    parts = urlsplit(url)
    name = unquote(parts.netloc) or DEFAULT_NAME
    if any(c in name for c in '@:,[]'):
        from zamqp.exceptions import ConfigurationError
        raise ConfigurationError(
            f"memory:// broker name {name!r} has one of '@:,[]': name it "
            "with letters, digits, '.', '-' and '_' only")
    settings = {'memory': name, 'host': name, 'port': PORT, 'ssl': False}
    if len(parts.path) > 1:
        settings['virtual_host'] = unquote(parts.path[1:])
    if options is not None:
        settings.update(options(parts.query))
    return settings
