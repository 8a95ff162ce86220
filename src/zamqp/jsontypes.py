"""JSON forms of a few Python types, the ones kombu's JSON reads and writes.

A value of one of these types is written as an object of exactly two
keys, ``{"__type__": <name>, "__value__": <value>}``:

==================  ============  ==========================================
Python              ``__type__``  ``__value__``
==================  ============  ==========================================
datetime.datetime   ``datetime``  ``isoformat()``:
                                  ``2024-05-01T12:30:00+00:00``
datetime.date       ``date``      ``isoformat()``: ``2024-05-01``
datetime.time       ``time``      ``isoformat()``: ``12:30:00.250000``
decimal.Decimal     ``decimal``   ``str()``: ``"12.50"``
uuid.UUID           ``uuid``      ``{"hex": "<32 hex digits>"}``
bytes (UTF-8 text)  ``bytes``     the text
bytes (other)       ``base64``    the bytes in base64
==================  ============  ==========================================

Reading, an object of exactly those two keys becomes the value its
``__type__`` names, and only one of the types above: any other
``__type__`` (or a ``__value__`` of the wrong form) refuses the message,
so nothing but these values is ever constructed.
"""
import base64
import binascii
import datetime
import decimal
import uuid

TYPE = '__type__'
VALUE = '__value__'
_KEYS = frozenset((TYPE, VALUE))


def _typed(name, value):
    return {TYPE: name, VALUE: value}


def default(obj):
    """The JSON form of ``obj`` (for ``json.dumps(default=...)``);
    TypeError for types without one."""
    if isinstance(obj, datetime.datetime):
        return _typed('datetime', obj.isoformat())
    if isinstance(obj, datetime.date):
        return _typed('date', obj.isoformat())
    if isinstance(obj, datetime.time):
        return _typed('time', obj.isoformat())
    if isinstance(obj, decimal.Decimal):
        return _typed('decimal', str(obj))
    if isinstance(obj, uuid.UUID):
        return _typed('uuid', {'hex': obj.hex})
    if isinstance(obj, bytes):
        try:
            return _typed('bytes', obj.decode('utf-8'))
        except UnicodeDecodeError:
            return _typed('base64', base64.b64encode(obj).decode('ascii'))
    raise TypeError(
        f'Object of type {type(obj).__name__} is not JSON serializable '
        '(zamqp writes JSON values, datetime, date, time, Decimal, UUID '
        'and bytes; use the pickle serializer for other objects)')


def _text(value, name):
    if not isinstance(value, str):
        raise ValueError(f'a {name} value must be a string, got '
                         f'{type(value).__name__}')
    return value


def _uuid(value):
    if not isinstance(value, dict) or set(value) != {'hex'}:
        raise ValueError('a uuid value must be {"hex": "..."}')
    return uuid.UUID(hex=_text(value['hex'], 'uuid'))


def _base64(value):
    try:
        return base64.b64decode(_text(value, 'base64').encode('ascii'),
                                validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f'a base64 value is not base64: {exc}') from None


def _decimal(value):
    try:
        return decimal.Decimal(_text(value, 'decimal'))
    except decimal.InvalidOperation:
        raise ValueError(f'{value[:40]!r} is not a decimal') from None


_DECODERS = {
    'datetime': lambda v: datetime.datetime.fromisoformat(
        _text(v, 'datetime')),
    'date': lambda v: datetime.date.fromisoformat(_text(v, 'date')),
    'time': lambda v: datetime.time.fromisoformat(_text(v, 'time')),
    'decimal': _decimal,
    'uuid': _uuid,
    'bytes': lambda v: _text(v, 'bytes').encode('utf-8'),
    'base64': _base64,
}
#: The ``__type__`` names read.
NAMES = tuple(_DECODERS)


def object_hook(obj):
    """``obj`` (a decoded JSON object), or the value its typed form
    names; ValueError for a typed form zamqp does not read."""
    if len(obj) != 2 or obj.keys() != _KEYS:
        return obj
    name = obj[TYPE]
    decoder = _DECODERS.get(name) if isinstance(name, str) else None
    if decoder is None:
        raise ValueError(
            f'unknown JSON type {repr(name)[:60]} in {{"__type__": ..., '
            f'"__value__": ...}}: zamqp reads only {", ".join(NAMES)}')
    return decoder(obj[VALUE])
