"""Named serializers with content types, and the consumer's decode path."""
import json
import pickle

from zope.interface import implementer

from zamqp import contentcoding
from zamqp import jsontypes
from zamqp import limits
from zamqp import signing
from zamqp import unpickling
from zamqp.exceptions import ConfigurationError
from zamqp.exceptions import MessageRefused
from zamqp.interfaces import IDecoder
from zamqp.interfaces import ISerializer

_PROPS = object()
_by_name = {}
_by_content_type = {}
#: What a consumer does with a message without a content type: refuse it
#: (the default), decode it as JSON, or deliver its body as bytes.
UNTYPED = ('refuse', 'json', 'bytes')


@implementer(ISerializer)
class PickleSerializer:
    """Any picklable object; decoded by the restricted unpickler."""

    name = 'pickle'
    content_type = 'application/x-python-serialize'
    content_encoding = 'binary'
    protocol = pickle.DEFAULT_PROTOCOL

    def dumps(self, obj):
        return pickle.dumps(obj, self.protocol)

    def loads(self, body, allow):
        return unpickling.loads(body, allow)


@implementer(ISerializer)
class JSONSerializer:
    """JSON values: dicts, lists, strings, numbers, booleans and None,
    and datetime, date, time, Decimal, UUID and bytes in the forms kombu
    uses (zamqp.jsontypes). ``loads`` takes bytes (UTF-8, -16 or -32) or
    text (decoded by the Decoder in the charset the message names)."""

    name = 'json'
    content_type = 'application/json'
    content_encoding = 'utf-8'

    def dumps(self, obj):
        return json.dumps(obj, separators=(',', ':'),
                          default=jsontypes.default).encode('utf-8')

    def loads(self, body, allow):
        return json.loads(body, object_hook=jsontypes.object_hook)


def register(serializer):
    """Make ``serializer`` (an ISerializer) available by name and type."""
    _by_name[serializer.name] = serializer
    _by_content_type[contentcoding.media_type(serializer.content_type)] = \
        serializer


def unregister(name):
    """Forget the serializer registered as ``name``."""
    serializer = _by_name.pop(name)
    del _by_content_type[contentcoding.media_type(serializer.content_type)]


def get(name):
    """The serializer registered as ``name``."""
    check_names([name], 'serializer=')
    return _by_name[name]


def names(value):
    """A tuple of serializer names from one name or an iterable of them."""
    return (value,) if isinstance(value, str) else tuple(value)


def check_names(names, setting):
    """Raise ConfigurationError naming ``setting`` for unknown names."""
    for name in names:
        if name not in _by_name:
            raise ConfigurationError(
                f"unknown serializer {name!r} in {setting}: use one of "
                f"{', '.join(sorted(_by_name))}, or register one with "
                "zamqp.serializers.register()")


def check_compression(value, setting='compression='):
    """The compression method ``value`` names ('zlib', 'bz2', 'lzma', or
    a name kombu uses for one), None for None; else ConfigurationError."""
    if value is None:
        return None
    return contentcoding.compression_method(value, setting)


def encode(serializer, obj, properties, compression=None):
    """The body for ``obj``, setting its content type, content encoding
    and, when ``compression`` names a method, the compression header in
    ``properties`` (the keywords of an amqp.Message)."""
    body = serializer.dumps(obj)
    properties['content_type'] = serializer.content_type
    encoding = getattr(serializer, 'content_encoding', None)
    if encoding is not None:
        properties['content_encoding'] = encoding
    if compression is not None:
        body, header = contentcoding.compress(body, compression)
        headers = dict(properties.get('application_headers') or {})
        headers[contentcoding.COMPRESSION_HEADER] = header
        properties['application_headers'] = headers
    return body


register(PickleSerializer())
register(JSONSerializer())


def check_untyped(value, setting='untyped='):
    """``value`` if it is one of UNTYPED (None: 'refuse'); else
    ConfigurationError naming ``setting``."""
    if value is None:
        return 'refuse'
    if value not in UNTYPED:
        raise ConfigurationError(
            f"{setting} must be one of {', '.join(UNTYPED)}, got {value!r}")
    return value


_PLAIN = (str, type(None))


@implementer(IDecoder)
class Decoder:
    """The receive path of a consumer, up to the value for its callback.

    In this order, each step refusing with MessageRefused: the body's
    size (``max_size``); the signature, when a ``signer``
    (zamqp.signing.Signer) is given: unsigned messages are refused unless
    ``accept_unsigned``, badly signed ones always; decompression, when
    the ``compression`` header names one (at most ``max_size`` bytes of
    output); the content type (its media type, in any case), which must
    belong to a serializer named in ``accept``; the charset its
    ``charset`` parameter or the ``content_encoding`` names, which must
    be one zamqp knows; decoding, with the allow rules ``allow``, widened
    by ``signed_allow`` for messages whose signature was verified; the
    nesting of the value (``max_depth``). Nothing decodes a body before
    the checks in front of it passed. A message without a content type
    is refused, or with ``untyped='json'`` decoded as JSON, with
    ``untyped='bytes'`` delivered as its body (bytes).
    """

    def __init__(self, accept, allow, signed_allow=None, signer=None,
                 accept_unsigned=False, max_size=None, max_depth=None,
                 untyped=None):
        self.accept = names(accept)
        check_names(self.accept, 'accept=')
        self.untyped = check_untyped(untyped)
        if self.untyped == 'json' and 'json' not in self.accept:
            raise ConfigurationError(
                "untyped='json' decodes messages without a content type "
                "as JSON, but 'json' is not in accept=: add it, or choose "
                f"another untyped= ({', '.join(UNTYPED)})")
        self.allow = allow
        self.signed_allow = allow if signed_allow is None \
            else allow | signed_allow
        self.signer = signer
        self.accept_unsigned = accept_unsigned
        self.max_size = max_size
        self.max_depth = max_depth
        self._serializers = {
            contentcoding.media_type(_by_name[n].content_type): _by_name[n]
            for n in self.accept}
        #: (content_type, content_encoding) -> (media, charset) for the
        #: types read before: parsed once, not for every message
        self._types = {}

    @classmethod
    def for_props(cls, props, accept=None, allow=None, signed_allow=None,
                  max_size=_PROPS, max_depth=_PROPS, untyped=None):
        """The decoder for consumers of ``props``: ``accept`` replaces the
        props' serializers; ``allow`` and ``signed_allow`` (AllowRules)
        add to the props' rules; ``max_size`` and ``max_depth`` replace
        the props' limits; ``untyped`` (None: 'refuse') is what becomes of
        messages without a content type."""
        return cls(
            props.accept if accept is None else accept,
            props.allow if allow is None else props.allow | allow,
            props.signed_allow if signed_allow is None
            else props.signed_allow | signed_allow,
            signer=props.signer, accept_unsigned=props.accept_unsigned,
            max_size=props.max_size if max_size is _PROPS else max_size,
            max_depth=props.max_depth if max_depth is _PROPS else max_depth,
            untyped=untyped)

    def __call__(self, message):
        body, properties = message.body, message.properties
        limits.check_size(body, self.max_size)
        allow = self.allow
        if self.signer is not None and self._signed(body, properties):
            allow = self.signed_allow
        compression = contentcoding.compression_of(properties)
        if compression is not None:
            body = contentcoding.decompress(body, compression, self.max_size)
        value = self.decode(body, properties, allow)
        limits.check_depth(value, self.max_depth)
        return value

    def _signed(self, body, properties):
        """Whether the message's signature was verified; refuses badly
        signed messages, and unsigned ones unless accept_unsigned."""
        if self.accept_unsigned and signing.HEADER not in (
                properties.get('application_headers') or {}):
            return False
        self.signer.verify(body, properties)
        return True

    def decode(self, body, properties, allow=None):
        """The value of ``body`` (decompressed) by its content type and
        charset (no signature or limit checks: ``__call__`` makes them)."""
        content_type = properties.get('content_type')
        media, charset = self._content_type(
            content_type, properties.get('content_encoding'))
        if not media:
            if self.untyped == 'bytes':
                return bytes(body)
            if self.untyped == 'refuse':
                raise MessageRefused(self._untyped(content_type))
            serializer = _by_name['json']
        else:
            serializer = self._serializers.get(media)
        if serializer is None:
            raise MessageRefused(self._not_accepted(content_type, media))
        try:
            if charset is not None and getattr(
                    serializer, 'content_encoding', 'binary') != 'binary':
                body = bytes(body).decode(charset)
            return serializer.loads(
                body, self.allow if allow is None else allow)
        except MessageRefused:
            raise
        except Exception as exc:
            raise MessageRefused(
                f"cannot decode {serializer.name} body "
                f"({len(body)} bytes): {type(exc).__name__}: {exc}"
            ) from None

    #: Content types (with encodings) kept parsed, at most.
    TYPES_KEPT = 64

    def _content_type(self, content_type, content_encoding):
        """``(media type, charset)`` of a message; MessageRefused for
        content types and encodings that cannot be read. Parsed once per
        pair of str (or None) values; refusals are not kept."""
        key = (content_type, content_encoding)
        cacheable = type(content_type) in _PLAIN and \
            type(content_encoding) in _PLAIN
        if cacheable:
            known = self._types.get(key)
            if known is not None:
                return known
        media, parameters = contentcoding.parse_content_type(content_type)
        known = media, contentcoding.charset(parameters, content_encoding)
        if cacheable:
            if len(self._types) >= self.TYPES_KEPT:
                self._types.clear()
            self._types[key] = known
        return known

    def _untyped(self, content_type):
        return (f"content type {content_type!r} has no serializer "
                f"(accepted: {', '.join(self.accept)}): messages without "
                "a content type are refused (untyped='refuse'); to take "
                "them set untyped='json' or untyped='bytes' on the "
                "consumer")

    def _not_accepted(self, content_type, media):
        known = _by_content_type.get(media)
        accepted = ', '.join(self.accept)
        if known is None:
            return (f"content type {content_type!r} has no serializer "
                    f"(accepted: {accepted}); register one with "
                    "zamqp.serializers.register() and add it to accept=")
        return (f"content type {content_type!r} is not accepted "
                f"(accepted: {accepted}); to decode it add "
                f"{known.name!r} to accept= on the AMQPConsumer or "
                "AMQPProps")
