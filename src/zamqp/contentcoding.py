"""What a message says about its body: content type, charset, compression.

``parse_content_type`` splits ``application/json; charset=utf-8`` into
the media type (lower case) and its parameters; ``charset`` finds the
text encoding a message names (its content type's ``charset`` parameter
or its ``content_encoding`` property) among the few zamqp decodes;
``decompress`` undoes the compression named in the ``compression``
header (the header kombu writes), never producing more than
``max_size`` bytes: the output is produced in bounded steps and the
message refused as soon as it would grow beyond the limit, so a small
compressed body that expands to gigabytes allocates no more than
``max_size`` plus one step.
"""
import bz2
import codecs
import lzma
import zlib

from zamqp.exceptions import ConfigurationError
from zamqp.exceptions import MessageRefused

#: The application header naming a body's compression (as kombu does).
COMPRESSION_HEADER = 'compression'
#: content_encoding values that name no charset: the body is bytes.
BINARY_ENCODINGS = frozenset(('binary', '8bit', '7bit', 'identity'))
#: The charsets zamqp decodes text in (names as codecs.lookup gives them).
CHARSETS = frozenset(codecs.lookup(name).name for name in (
    'utf-8', 'utf-16', 'utf-16-le', 'utf-16-be', 'utf-32', 'utf-32-le',
    'utf-32-be', 'ascii', 'latin-1', 'iso-8859-15', 'cp1252'))
#: Bytes of output produced per step when decompressing.
STEP = 64 * 1024
#: Most memory the xz/lzma decoder may use (its dictionary): enough for
#: ``xz -9`` (64 MiB dictionary), refusing headers that ask for more.
LZMA_MEMLIMIT = 80 * 1024 * 1024

# compression header values -> method; the values kombu writes first
_METHODS = {
    'application/x-gzip': 'zlib', 'application/gzip': 'zlib',
    'gzip': 'zlib', 'zlib': 'zlib', 'deflate': 'zlib',
    'application/x-bz2': 'bz2', 'bzip2': 'bz2', 'bzip': 'bz2', 'bz2': 'bz2',
    'application/x-lzma': 'lzma', 'application/x-xz': 'lzma',
    'lzma': 'lzma', 'xz': 'lzma',
}
# method -> the header value written (kombu's names, so kombu reads it)
HEADER_VALUES = {'zlib': 'application/x-gzip', 'bz2': 'application/x-bz2',
                 'lzma': 'application/x-lzma'}
_COMPRESSORS = {'zlib': zlib.compress, 'bz2': bz2.compress,
                'lzma': lzma.compress}


def parse_content_type(value):
    """``(media_type, parameters)`` of a content type: the media type in
    lower case ('' for None or an empty value), parameter names in lower
    case, quoted values unquoted. MessageRefused for a parameter that is
    not ``name=value``."""
    if value is None:
        return '', {}
    if isinstance(value, bytes):
        value = value.decode('utf-8', 'replace')
    media, *rest = _split(str(value))
    parameters = {}
    for part in rest:
        if not part:
            continue
        name, equals, text = part.partition('=')
        name = name.strip().lower()
        if not equals or not name:
            raise MessageRefused(
                f'content type {value!r}: parameter {part!r} is not '
                'name=value')
        text = text.strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':
            text = _unquote(text[1:-1])
        parameters[name] = text
    return media.strip().lower(), parameters


def _split(value):
    """``value`` split at the semicolons outside quotes."""
    parts, current, quoted, escaped = [], [], False, False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == '\\':
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ';' and not quoted:
            parts.append(''.join(current))
            current = []
            continue
        current.append(char)
    parts.append(''.join(current))
    return parts


def _unquote(text):
    out, escaped = [], False
    for char in text:
        if char == '\\' and not escaped:
            escaped = True
            continue
        escaped = False
        out.append(char)
    return ''.join(out)


def media_type(value):
    """The media type of a content type, lower case, without parameters."""
    return parse_content_type(value)[0]


def known_charset(name, source):
    """The codec name for charset ``name``; MessageRefused naming
    ``source`` (where the message said it) if zamqp does not decode it."""
    try:
        codec = codecs.lookup(name).name
    except (LookupError, TypeError, ValueError):
        codec = None
    if codec not in CHARSETS:
        raise MessageRefused(
            f'unknown charset {name!r} in {source}: not decoded; zamqp '
            f"decodes text in {', '.join(sorted(CHARSETS))}")
    return codec


def charset(parameters, content_encoding):
    """The charset a message's text is in, or None when it names none:
    the content type's ``charset`` parameter, else the message's
    ``content_encoding`` when that is not ``binary`` (or ``8bit``,
    ``7bit``, ``identity``). Both given and different: refused."""
    named = parameters.get('charset')
    from_type = None if named is None else \
        known_charset(named, 'the content type')
    encoding = content_encoding
    if isinstance(encoding, bytes):
        encoding = encoding.decode('utf-8', 'replace')
    if encoding is None or not str(encoding).strip() or \
            str(encoding).strip().lower() in BINARY_ENCODINGS:
        return from_type
    if str(encoding).strip().lower() in _METHODS:
        raise MessageRefused(
            f'content_encoding {encoding!r} is not a charset: not decoded; '
            'zamqp reads compression from the '
            f'{COMPRESSION_HEADER!r} header (as kombu writes it), not from '
            'content_encoding')
    from_encoding = known_charset(str(encoding).strip(), 'content_encoding')
    if from_type is not None and from_type != from_encoding:
        raise MessageRefused(
            f'the content type says charset {named!r}, content_encoding '
            f'says {encoding!r}: not decoded')
    return from_encoding


# compression

def compression_method(value, setting=None):
    """The method ('zlib', 'bz2' or 'lzma') a compression name or header
    value means. Unknown: ConfigurationError naming ``setting`` when
    given (a producer's option), else MessageRefused (a message)."""
    name = value.decode('utf-8', 'replace') if isinstance(value, bytes) \
        else value
    method = _METHODS.get(name.strip().lower()) \
        if isinstance(name, str) else None
    if method is None:
        known = ', '.join(sorted(_METHODS))
        if setting is not None:
            raise ConfigurationError(
                f'unknown compression {value!r} in {setting}: use one of '
                f'{known} (or None)')
        raise MessageRefused(
            f'unknown compression {value!r} in the {COMPRESSION_HEADER!r} '
            f'header: not decoded; zamqp decompresses {known}')
    return method


def compress(body, method):
    """``(compressed body, header value)`` for ``method``."""
    return _COMPRESSORS[method](body), HEADER_VALUES[method]


def compression_of(properties):
    """The value of a message's compression header, or None."""
    headers = properties.get('application_headers') or {}
    value = headers.get(COMPRESSION_HEADER)
    return None if value in (None, '', b'') else value


def decompress(body, compression, max_size):
    """``body`` decompressed by the method ``compression`` names, at most
    ``max_size`` bytes of it (None: no limit); MessageRefused if the
    output would be longer, if the data is not valid, is truncated or has
    data after its end."""
    method = compression_method(compression)
    decompressor = _decompressor(method)
    out = bytearray()
    data = bytes(body)
    try:
        while True:
            room = STEP if max_size is None else \
                min(STEP, max_size - len(out) + 1)
            chunk = decompressor.step(data, room)
            data = b''
            out += chunk
            if max_size is not None and len(out) > max_size:
                raise MessageRefused(
                    f'the body ({len(body)} bytes, {method}) decompresses '
                    f'to more than max_size={max_size} bytes: not '
                    'decompressed further, not decoded; raise max_size on '
                    'the consumer or props if such messages are expected')
            if decompressor.eof:
                break
            if not chunk and not decompressor.pending:
                raise MessageRefused(
                    f'the {method} body ({len(body)} bytes) is truncated: '
                    'not decoded')
    except MessageRefused:
        raise
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise MessageRefused(
            f'cannot decompress the {method} body ({len(body)} bytes): '
            f'{type(exc).__name__}: {exc}') from None
    if decompressor.unused:
        raise MessageRefused(
            f'the {method} body ({len(body)} bytes) has '
            f'{len(decompressor.unused)} bytes after its end: not decoded')
    return bytes(out)


def _decompressor(method):
    if method == 'zlib':
        return _Zlib()
    if method == 'bz2':
        return _Incremental(bz2.BZ2Decompressor())
    return _Incremental(lzma.LZMADecompressor(memlimit=LZMA_MEMLIMIT))


class _Incremental:
    """bz2 or lzma decompressors (they keep unread input themselves)."""

    def __init__(self, decompressor):
        self._d = decompressor

    def step(self, data, room):
        return self._d.decompress(data, room)

    @property
    def pending(self):
        return not self._d.needs_input

    @property
    def eof(self):
        return self._d.eof

    @property
    def unused(self):
        return self._d.unused_data


class _Zlib(_Incremental):
    """zlib or gzip data (the header tells which); zlib hands unread
    input back, so it is kept here."""

    def __init__(self):
        super().__init__(zlib.decompressobj(wbits=47))
        self._tail = b''

    def step(self, data, room):
        chunk = self._d.decompress(self._tail + data, room)
        self._tail = self._d.unconsumed_tail
        return chunk

    @property
    def pending(self):
        return bool(self._tail)
