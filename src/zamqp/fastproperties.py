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
error. The application headers table is decoded by py-amqp's own
``loads('F', ...)``, as ``decode_properties_basic`` does.
tests/test_fastproperties.py checks it against py-amqp on random and
hostile headers.
"""
from __future__ import annotations

from struct import unpack_from

from amqp import serialization

__all__ = ('AVAILABLE', 'decode')

_PY_AMQP = getattr(serialization, 'decode_properties_basic', None)
#: Whether py-amqp decodes as this module does (5.4 and later).
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
                (properties[name],), offset = _loads('F', buf, offset)
        return properties
    except Exception:       # noqa: BLE001 - py-amqp decides what it is
        return None
