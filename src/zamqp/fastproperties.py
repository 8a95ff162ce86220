"""Basic content properties decoded as py-amqp decodes them, faster.

py-amqp's ``decode_properties_basic`` tests all fourteen property flags
of every content header and decodes each short string through a helper
call. :func:`decode` does the same work from a plan made once per
property-flags value (a consumer sees one or two such values): the list
of properties present, in order, with their kinds.

Contract: for a Basic content header payload ``buf`` (class id, weight,
body size, then flags and properties from offset 12), ``decode(buf)``
returns the dict py-amqp's ``decode_properties_basic(buf, 12)`` returns
(the same keys, values and value types, including a short string cut by
the end of the buffer, which py-amqp takes as it is), or ``None``, where
the caller must let py-amqp decode (it raises there, or nothing here
says what it would do): when py-amqp is older than 5.4 (it decodes in
another way), when the flags continue into a second word, and on every
error. An application headers table of flat fields (long strings, byte
arrays, numbers, booleans, void: what zamqp and most clients send) is
read here as py-amqp 5.4 reads it; any other table by py-amqp's own
``loads('F', ...)``, as ``decode_properties_basic`` does.
tests/test_fastproperties.py checks it against py-amqp on random and
hostile headers.
"""
from __future__ import annotations

from struct import Struct
from struct import unpack_from

from amqp import serialization

__all__ = ('AVAILABLE', 'decode')

_PY_AMQP = getattr(serialization, 'decode_properties_basic', None)
#: Whether py-amqp decodes as this module does (5.4 and later, and a
#: check at import agrees, see _agrees).
AVAILABLE = _PY_AMQP is not None and \
    serialization.PROPERTY_CLASSES.get(60) is _PY_AMQP

_SHORTSTR, _OCTET, _TABLE, _STAMP = range(4)
#: (flag bit, name, kind), in the order of the property list.
_PROPERTIES = (
    (0x8000, 'content_type', _SHORTSTR),
    (0x4000, 'content_encoding', _SHORTSTR),
    (0x2000, 'application_headers', _TABLE),
    (0x1000, 'delivery_mode', _OCTET),
    (0x0800, 'priority', _OCTET),
    (0x0400, 'correlation_id', _SHORTSTR),
    (0x0200, 'reply_to', _SHORTSTR),
    (0x0100, 'expiration', _SHORTSTR),
    (0x0080, 'message_id', _SHORTSTR),
    (0x0040, 'timestamp', _STAMP),
    (0x0020, 'type', _SHORTSTR),
    (0x0010, 'user_id', _SHORTSTR),
    (0x0008, 'app_id', _SHORTSTR),
    (0x0004, 'cluster_id', _SHORTSTR),
)
_plans: dict = {}


def _plan(flags):
    plan = _plans.get(flags)
    if plan is None:
        plan = _plans[flags] = tuple(
            (name, kind) for bit, name, kind in _PROPERTIES if flags & bit)
    return plan


def decode(buf, _loads=serialization.loads):
    """The properties of the content header payload ``buf``, or None
    (see the module docstring)."""
    if not AVAILABLE:
        return None
    try:
        flags, = unpack_from('>H', buf, 12)
        if flags & 1:
            return None
        offset = 14
        properties = {}
        for name, kind in _plans.get(flags) or _plan(flags):
            if kind == _SHORTSTR:
                start = offset + 1
                offset = start + buf[offset]
                properties[name] = buf[start:offset].decode(
                    'utf-8', 'surrogatepass')
            elif kind == _OCTET:
                properties[name] = buf[offset]
                offset += 1
            elif kind == _STAMP:
                properties[name], = unpack_from('>Q', buf, offset)
                offset += 8
            else:
                start = offset
                try:
                    properties[name], offset = _table(buf, offset)
                except _Other:
                    (properties[name],), offset = _loads('F', buf, start)
        return properties
    except Exception:       # noqa: BLE001 - py-amqp decides what it is
        return None


class _Other(Exception):
    """A table holds a field type _table leaves to py-amqp."""


_UNPACK = {ord(k): (Struct(f'>{fmt}').unpack_from, size) for k, fmt, size in (
    ('b', 'b', 1), ('B', 'B', 1), ('U', 'h', 2), ('u', 'H', 2),
    ('I', 'i', 4), ('i', 'I', 4), ('L', 'q', 8), ('l', 'q', 8),
    ('f', 'f', 4), ('d', 'd', 8))}
_S, _X, _BOOL, _VOID = (ord(k) for k in 'SxtV')
_LONG = Struct('>I').unpack_from


def _table(buf, offset):
    """A headers table of flat fields (long strings, byte arrays,
    numbers, booleans, void), read as py-amqp 5.4's ``_read_item``
    reads it; _Other for nested tables, arrays, timestamps, decimals
    and RabbitMQ's 's', which py-amqp reads."""
    size, = _LONG(buf, offset)
    offset += 4
    limit = offset + size
    table = {}
    while offset < limit:
        start = offset + 1
        offset = start + buf[offset]
        key = buf[start:offset]
        try:
            key = key.decode('utf-8', 'surrogatepass')
        except UnicodeDecodeError:
            pass
        kind = buf[offset]
        offset += 1
        if kind == _S or kind == _X:
            length, = _LONG(buf, offset)
            offset += 4
            value = buf[offset:offset + length]
            offset += length
            if kind == _S:
                try:
                    value = value.decode('utf-8', 'surrogatepass')
                except UnicodeDecodeError:
                    pass
        elif kind == _BOOL:
            value = bool(buf[offset])
            offset += 1
        elif kind == _VOID:
            value = None
        else:
            unpack = _UNPACK.get(kind)
            if unpack is None:
                raise _Other(kind)
            value, = unpack[0](buf, offset)
            offset += unpack[1]
        table[key] = value
    return table, offset


def _agrees():
    """Whether this module reads, here, what the installed py-amqp reads
    (checked once at import on a header with every property and every
    flat field type, edge values and bytes that are not UTF-8 included;
    if not, ``AVAILABLE`` is False and py-amqp decodes everything)."""
    def short(raw):
        return bytes([len(raw)]) + raw

    def long(raw):
        return _LONG_PACK(len(raw)) + raw

    fields = b''.join((
        short(b'S') + b'S' + long('caf\xe9'.encode()),
        short(b'bad\xff') + b'S' + long(b'\xff\xfe'),
        short(b'x') + b'x' + long(b'\x00\xff'),
        short(b'b') + b'b\x80', short(b'B') + b'B\xff',
        short(b'U') + b'U\x80\x00', short(b'u') + b'u\xff\xff',
        short(b'I') + b'I\x80\x00\x00\x00',
        short(b'i') + b'i\xff\xff\xff\xff',
        short(b'L') + b'L' + b'\xff' * 8,
        short(b'l') + b'l' + b'\x80' + 7 * b'\0',
        short(b'f') + b'f\xbf\x80\x00\x00', short(b'd') + b'd' + 8 * b'\x01',
        short(b't') + b't\x02', short(b'V') + b'V'))
    props = (short(b'text/plain') + short(b'utf-8') + long(fields)
             + b'\x02\x09' + short(b'c') + short(b'r') + short(b'e')
             + short(b'm') + b'\0' * 7 + b'\x01' + short(b't')
             + short(b'u') + short(b'a') + short('cl\xe9'.encode()))
    header = b'\x00\x3c\x00\x00' + b'\0' * 8 + b'\xff\xfc' + props
    try:
        theirs = _PY_AMQP(header, 12)[0]
    except Exception:       # noqa: BLE001 - then do not take over
        return False
    ours = decode(header)
    return ours is not None and repr(ours) == repr(theirs) and \
        [type(v) for v in ours['application_headers'].values()] == \
        [type(v) for v in theirs['application_headers'].values()]


_LONG_PACK = Struct('>I').pack
if AVAILABLE and not _agrees():
    AVAILABLE = False
