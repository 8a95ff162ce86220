"""A publish fast path: the frames of one Basic.Publish, built directly.

:class:`ChannelWriter` is what the producer publishes with: it sends a
message through :class:`PublishFrames` when that accepts it and through
py-amqp's ``basic_publish`` otherwise. :class:`PublishFrames` is made
for one (channel, exchange, routing key, mandatory, frame_max); it
packs the Basic.Publish method frame once and, for each message,
returns the bytes py-amqp's frame writer
(``amqp.method_framing.frame_writer``) would write for
``channel.basic_publish(amqp.Message(body, **properties), exchange,
routing_key, mandatory=mandatory)``: the method frame, the content header
frame and the body frames, joined, ready for one ``sendall``.

Contract: :meth:`PublishFrames.build` returns either exactly those bytes
or ``None``. ``None`` (a decline) means "use py-amqp's own path"; it is
returned for anything outside the common case, including every input on
which py-amqp would coerce a value or raise, so the caller's fallback
gives py-amqp's behaviour (its bytes or its exception) unchanged.
Accepted:

* the body: ``bytes`` (exactly; ``str`` bodies, which py-amqp encodes and
  for which it sets ``content_encoding``, are declined, and so are
  bytearray and memoryview);
* properties: a dict whose names are py-amqp's Basic properties
  (``amqp.Message.PROPERTIES``); a ``None`` value means absent, as for
  py-amqp. Short strings (``content_type``, ``content_encoding``,
  ``correlation_id``, ``reply_to``, ``expiration``, ``message_id``,
  ``type``, ``user_id``, ``app_id``, ``cluster_id``) must be ``str`` or
  ``bytes`` of at most 255 bytes (UTF-8, ``surrogatepass`` as py-amqp);
  octets (``delivery_mode``, ``priority``) ``int`` in 0..255, not bool;
  ``timestamp`` an ``int`` in 0..2**64-1 (py-amqp writes it as an
  unsigned 64-bit integer and raises for a datetime, so a datetime is
  declined); ``application_headers`` a ``dict`` (exactly) of ``str`` or
  ``bytes`` keys of at most 255 bytes and values of exactly the types
  ``str``, ``bytes``, ``bool``, ``int`` (signed 64-bit), ``float``,
  ``Decimal`` (finite, exponent -255..0, coefficient within signed
  32-bit), ``datetime`` (at or after the epoch), ``None``, ``dict``,
  ``list`` and ``tuple``, nested at most :data:`MAX_DEPTH` deep.
  Subclasses (IntEnum, OrderedDict, ...) are declined.
* an empty body is declined when the header is so large that py-amqp
  takes its "big body" branch, the one case in which py-amqp 5.3.1
  (writes no content header) and 5.4 differ.

The content header is cached: the properties other than
``application_headers``, ``message_id`` and ``timestamp`` (those that
change per message) are encoded once and kept, with the property flags,
for as long as the next message has the same names, values and value
types (types are compared before values, so a value of another type
never reaches an ``==`` with a cached one); only the per-message ones
are encoded for each message.

frame_max must be the connection's (py-amqp may change it at tune time:
build a new PublishFrames then).  An instance may be shared by threads:
its cache is replaced in one assignment and read once per message.
"""
from __future__ import annotations

import calendar
import socket
import struct
from datetime import datetime
from decimal import Decimal
from typing import Any

from amqp import VERSION as _AMQP_VERSION
from amqp.exceptions import RecoverableChannelError
from amqp.exceptions import RecoverableConnectionError

__all__ = ('ChannelWriter', 'PublishFrames', 'MAX_DEPTH', 'PROPERTY_NAMES')

#: py-amqp's Basic property names, in the order of their flag bits
#: (bit 15 first), with their types ('s' short string, 'F' table,
#: 'o' octet, 'L' unsigned 64-bit): amqp.Message.PROPERTIES.
_PROPERTIES = (
    ('content_type', 's'),
    ('content_encoding', 's'),
    ('application_headers', 'F'),
    ('delivery_mode', 'o'),
    ('priority', 'o'),
    ('correlation_id', 's'),
    ('reply_to', 's'),
    ('expiration', 's'),
    ('message_id', 's'),
    ('timestamp', 'L'),
    ('type', 's'),
    ('user_id', 's'),
    ('app_id', 's'),
    ('cluster_id', 's'),
)
PROPERTY_NAMES = frozenset(name for name, _ in _PROPERTIES)
#: name -> (position, flag bit, type)
_SLOT = {name: (i, 1 << (15 - i), kind)
         for i, (name, kind) in enumerate(_PROPERTIES)}
_HEADERS_POS = _SLOT['application_headers'][0]
_MESSAGE_ID_POS = _SLOT['message_id'][0]
_TIMESTAMP_POS = _SLOT['timestamp'][0]
_DYNAMIC = frozenset(('application_headers', 'message_id', 'timestamp'))

#: Deepest nesting of tables and arrays in application_headers accepted.
MAX_DEPTH = 32

BASIC_CLASS = 60
PUBLISH_METHOD = 40
FRAME_END = b'\xce'
#: py-amqp's FRAME_OVERHEAD (method_framing.py): the bytes of the three
#: frames besides method arguments, properties and body.
_FRAME_OVERHEAD = 40

_frame_head = struct.Struct('>BHI').pack
_header_head = struct.Struct('>BHIHHQH').pack
_octet = struct.Struct('B').pack
_long = struct.Struct('>I').pack
_longlong = struct.Struct('>Q').pack
_double = struct.Struct('>cd').pack
_int32 = struct.Struct('>ci').pack
_int64 = struct.Struct('>cq').pack
_decimal = struct.Struct('>cBi').pack
_stamp = struct.Struct('>cQ').pack
_TRUE = b't\x01'
_FALSE = b't\x00'
_VOID = b'V'

_U64 = 1 << 64
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1


def _shortstr(value: Any) -> bytes | None:
    """py-amqp's 's' encoding of a str or bytes, or None (decline)."""
    t = type(value)
    if t is str:
        value = value.encode('utf-8', 'surrogatepass')
    elif t is not bytes:
        return None
    if len(value) > 255:
        return None
    return _octet(len(value)) + value


def _table(table: dict, depth: int) -> bytes | None:
    """py-amqp's table encoding (serialization._write_table), or None."""
    if depth > MAX_DEPTH:
        return None
    parts = []
    append = parts.append
    for key, value in table.items():
        t = type(key)
        if t is str:
            key = key.encode('utf-8', 'surrogatepass')
        elif t is not bytes:
            return None
        if len(key) > 255:
            return None
        append(_octet(len(key)))
        append(key)
        item = _item(value, depth)
        if item is None:
            return None
        append(item)
    data = b''.join(parts)
    return _long(len(data)) + data


def _array(values: list | tuple, depth: int) -> bytes | None:
    """py-amqp's array encoding (serialization._write_array), or None."""
    if depth > MAX_DEPTH:
        return None
    parts = []
    for value in values:
        item = _item(value, depth)
        if item is None:
            return None
        parts.append(item)
    data = b''.join(parts)
    return _long(len(data)) + data


def _item(v: Any, depth: int) -> bytes | None:
    """py-amqp's encoding of a table value (serialization._write_item)
    for values of exactly the accepted types, or None."""
    t = type(v)
    if t is str:
        v = v.encode('utf-8', 'surrogatepass')
        return b'S' + _long(len(v)) + v
    if t is bytes:
        return b'S' + _long(len(v)) + v
    if t is bool:
        return _TRUE if v else _FALSE
    if t is float:
        return _double(b'd', v)
    if t is int:
        if v > 2147483647 or v < -2147483647:     # py-amqp's bounds
            if _I64_MIN <= v <= _I64_MAX:
                return _int64(b'L', v)
            return None
        return _int32(b'I', v)
    if v is None:
        return _VOID
    if t is dict:
        table = _table(v, depth + 1)
        return None if table is None else b'F' + table
    if t is list or t is tuple:
        array = _array(v, depth + 1)
        return None if array is None else b'A' + array
    if t is Decimal:
        sign, digits, exponent = v.as_tuple()
        if type(exponent) is not int or not -255 <= exponent <= 0 \
                or len(digits) > 10:
            return None
        n = 0
        for d in digits:
            n = n * 10 + d
        if sign:
            n = -n
        if not _I32_MIN <= n <= _I32_MAX:
            return None
        return _decimal(b'D', -exponent, n)
    if t is datetime:
        try:
            seconds = int(calendar.timegm(v.utctimetuple()))
        except Exception:       # py-amqp fails the same way: decline
            return None
        if not 0 <= seconds < _U64:
            return None
        return _stamp(b'T', seconds)
    return None


def _static(name: str, kind: str, value: Any) -> bytes | None:
    """The encoding of a cached (not per-message) property, or None."""
    if kind == 's':
        return _shortstr(value)
    # kind 'o': py-amqp writes pack('B', value)
    if type(value) is not int or not 0 <= value <= 255:
        return None
    return _octet(value)


class PublishFrames:
    """The frames of Basic.Publish for one channel, exchange, routing key,
    mandatory flag and frame_max (see the module docstring).

    ``exchange`` and ``routing_key`` are str (UTF-8 with surrogatepass,
    as py-amqp) or bytes; longer than 255 bytes they raise
    ``struct.error``, the exception py-amqp's basic_publish raises for
    them. ``channel_id`` is 1..65535, ``frame_max`` at least 4096 (the
    AMQP minimum); otherwise ValueError.
    """

    __slots__ = ('channel_id', 'exchange', 'routing_key', 'mandatory',
                 'frame_max', 'method_frame', '_args_len', '_chunk',
                 '_cache')

    def __init__(self, channel_id: int, exchange: str | bytes,
                 routing_key: str | bytes, mandatory: bool = False,
                 frame_max: int = 131072) -> None:
        if type(channel_id) is not int or not 1 <= channel_id <= 65535:
            raise ValueError(f'channel_id {channel_id!r} is not 1..65535')
        if type(frame_max) is not int or not 4096 <= frame_max < 1 << 32:
            raise ValueError(f'frame_max {frame_max!r} is below 4096')
        names = []
        for what, name in (('exchange', exchange),
                           ('routing_key', routing_key)):
            if isinstance(name, str):
                encoded = name.encode('utf-8', 'surrogatepass')
            elif isinstance(name, bytes):
                encoded = bytes(name)
            else:
                raise TypeError(f'{what} must be str or bytes, '
                                f'not {type(name).__name__}')
            if len(encoded) > 255:
                raise struct.error(
                    f'{what} is {len(encoded)} bytes long; an AMQP short '
                    f'string holds at most 255')
            names.append(_octet(len(encoded)) + encoded)
        self.channel_id = channel_id
        self.exchange = exchange
        self.routing_key = routing_key
        self.mandatory = bool(mandatory)
        self.frame_max = frame_max
        # py-amqp: dumps('Bssbb', (0, exchange, routing_key, mandatory,
        # immediate=False)); the two bits share one octet.
        args = (b'\x00\x00' + names[0] + names[1]
                + (b'\x01' if self.mandatory else b'\x00'))
        payload = struct.pack('>HH', BASIC_CLASS, PUBLISH_METHOD) + args
        #: The packed method frame, the same for every message.
        self.method_frame = (_frame_head(1, channel_id, len(payload))
                             + payload + FRAME_END)
        self._args_len = len(args)
        self._chunk = frame_max - 8
        self._cache = (None, None)

    def _parts(self, key, static):
        """(flags, before headers, between headers and message_id, after
        timestamp): the cached encoding of the static properties."""
        cached_key, parts = self._cache
        if cached_key == key:
            return parts
        flags = 0
        for name, _type, _value in static:
            flags |= _SLOT[name][1]
        for present, pos in zip(key[1:], (_HEADERS_POS, _MESSAGE_ID_POS,
                                          _TIMESTAMP_POS)):
            if present:
                flags |= 1 << (15 - pos)
        segments = ([], [], [])
        for name, _type, value in sorted(static,
                                        key=lambda s: _SLOT[s[0]]):
            pos, _bit, kind = _SLOT[name]
            encoded = _static(name, kind, value)
            if encoded is None:
                return None
            segments[0 if pos < _HEADERS_POS else
                     1 if pos < _MESSAGE_ID_POS else 2].append(encoded)
        parts = (flags, b''.join(segments[0]), b''.join(segments[1]),
                 b''.join(segments[2]))
        self._cache = (key, parts)
        return parts

    def build(self, properties: dict[str, Any], body: bytes) -> bytes | None:
        """The bytes py-amqp writes for this message, or None (decline:
        publish through py-amqp instead)."""
        if type(body) is not bytes:
            return None
        headers = message_id = timestamp = None
        static = []
        for name, value in properties.items():
            if name not in PROPERTY_NAMES:
                return None
            if value is None:
                continue
            if name in _DYNAMIC:
                if name == 'message_id':
                    message_id = value
                elif name == 'timestamp':
                    timestamp = value
                else:
                    headers = value
            else:
                static.append((name, type(value), value))   # type first
        key = (tuple(static), headers is not None, message_id is not None,
               timestamp is not None)
        parts = self._parts(key, static)
        if parts is None:
            return None
        flags, first, middle, last = parts
        values = [first]
        if headers is not None:
            if type(headers) is not dict:
                return None
            table = _table(headers, 1)
            if table is None:
                return None
            values.append(table)
        values.append(middle)
        if message_id is not None:
            encoded = _shortstr(message_id)
            if encoded is None:
                return None
            values.append(encoded)
        if timestamp is not None:
            if type(timestamp) is not int or not 0 <= timestamp < _U64:
                return None
            values.append(_longlong(timestamp))
        values.append(last)
        props = b''.join(values)
        bodylen = len(body)
        chunk = self._chunk
        if not bodylen and (self._args_len + 2 + len(props)
                            + _FRAME_OVERHEAD > chunk):
            return None     # py-amqp 5.3.1 writes no header here
        channel = self.channel_id
        out = [self.method_frame,
               _header_head(2, channel, 14 + len(props), BASIC_CLASS, 0,
                            bodylen, flags),
               props, FRAME_END]
        if bodylen <= chunk:
            if bodylen:
                out += (_frame_head(3, channel, bodylen), body, FRAME_END)
        else:
            for i in range(0, bodylen, chunk):
                piece = body[i:i + chunk]
                out += (_frame_head(3, channel, len(piece)), piece,
                        FRAME_END)
        return b''.join(out)

    def supports(self, properties: dict[str, Any], body: bytes) -> bool:
        """Whether :meth:`build` accepts this message (it builds it: for
        tests and diagnostics; a caller should call build and fall back
        on None)."""
        return self.build(properties, body) is not None


# What py-amqp's basic_publish makes of a write timeout: 5.4 a connection
# error (for socket.timeout and TimeoutError), 5.3 a channel error (for
# socket.timeout, which is not TimeoutError before Python 3.10).
if _AMQP_VERSION[:2] >= (5, 4):
    _TIMEOUTS, _TIMED_OUT = (socket.timeout, TimeoutError), \
        RecoverableConnectionError
else:
    _TIMEOUTS, _TIMED_OUT = (socket.timeout,), RecoverableChannelError


class ChannelWriter:
    """Publishes ``amqp.Message`` objects on one py-amqp channel to one
    exchange: the frames of :class:`PublishFrames` where it accepts the
    message, ``channel.basic_publish`` (py-amqp's path) where it declines.

    Contract: ``publish(msg, routing_key)`` has the effect of
    ``channel.basic_publish(msg, exchange, routing_key,
    mandatory=mandatory)``: the same bytes on the socket, the same
    exceptions (``RecoverableConnectionError`` for a closed connection,
    the error py-amqp's version raises for a write timeout, the socket's
    ``OSError`` otherwise, with the
    transport marked disconnected as py-amqp's ``write`` does), and the
    same draining of the socket first when the connection negotiated
    ``connection.blocked`` in its ``client_properties`` (zamqp's
    PublisherConnection hides it and polls instead). The fast path writes
    all frames of a message in one ``write``; it is not under py-amqp's
    frame-writer lock, so the caller must serialize the writes on the
    connection (the producer's lock does: heartbeats are off on
    publishing connections).

    ``fast`` and ``declined`` count the messages of each path.
    """

    #: Routing keys whose method frames are kept (cleared when full).
    MAX_KEYS = 256

    def __init__(self, channel, exchange: str, mandatory: bool = False):
        self.channel = channel
        self.exchange = exchange
        self.mandatory = mandatory
        self.fast = 0
        self.declined = 0
        self._frames: dict = {}

    def _frames_for(self, routing_key, frame_max):
        frames = self._frames.get(routing_key)
        if frames is not None and frames.frame_max == frame_max:
            return frames
        try:
            frames = PublishFrames(self.channel.channel_id, self.exchange,
                                   routing_key, self.mandatory, frame_max)
        except (TypeError, ValueError, struct.error):
            return None         # py-amqp's path raises (or copes)
        if len(self._frames) >= self.MAX_KEYS:
            self._frames.clear()
        self._frames[routing_key] = frames
        return frames

    def publish(self, msg, routing_key: str) -> None:
        channel = self.channel
        conn = channel.connection
        data = None
        if conn is not None and conn.transport is not None:
            frames = self._frames_for(routing_key, conn.frame_max)
            if frames is not None:
                data = frames.build(msg.properties, msg.body)
        if data is None:
            self.declined += 1
            channel.basic_publish(msg, self.exchange, routing_key,
                                  mandatory=self.mandatory)
            return
        if conn.client_properties.get('capabilities', {}).get(
                'connection.blocked', False):
            try:        # as py-amqp: see what the broker sent first
                conn.drain_events(timeout=0)
            except socket.timeout:
                pass
            conn = channel.connection
            if conn is None or conn.transport is None:
                raise RecoverableConnectionError(
                    'connection already closed')
        try:
            conn.transport.write(data)
        except _TIMEOUTS:
            raise _TIMED_OUT('basic_publish: timed out') from None
        conn.bytes_sent += 1
        self.fast += 1
