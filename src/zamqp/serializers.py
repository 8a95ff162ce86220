"""Named serializers with content types, and the consumer's decode path."""
import json
import pickle

from zope.interface import implementer

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


@implementer(ISerializer)
class PickleSerializer:
    """Any picklable object; decoded by the restricted unpickler."""

    name = 'pickle'
    content_type = 'application/x-python-serialize'
    protocol = pickle.DEFAULT_PROTOCOL

    def dumps(self, obj):
        return pickle.dumps(obj, self.protocol)

    def loads(self, body, allow):
        return unpickling.loads(body, allow)


@implementer(ISerializer)
class JSONSerializer:
    """JSON values: dicts, lists, strings, numbers, booleans and None."""

    name = 'json'
    content_type = 'application/json'

    def dumps(self, obj):
        return json.dumps(obj, separators=(',', ':')).encode('utf-8')

    def loads(self, body, allow):
        return json.loads(body)


def register(serializer):
    """Make ``serializer`` (an ISerializer) available by name and type."""
    _by_name[serializer.name] = serializer
    _by_content_type[serializer.content_type] = serializer


def unregister(name):
    """Forget the serializer registered as ``name``."""
    serializer = _by_name.pop(name)
    del _by_content_type[serializer.content_type]


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


register(PickleSerializer())
register(JSONSerializer())


@implementer(IDecoder)
class Decoder:
    """The receive path of a consumer, up to the value for its callback.

    In this order, each step refusing with MessageRefused: the body's
    size (``max_size``); the signature, when a ``signer``
    (zamqp.signing.Signer) is given: unsigned messages are refused unless
    ``accept_unsigned``, badly signed ones always; the content type,
    which must belong to a serializer named in ``accept``; decoding, with
    the allow rules ``allow``, widened by ``signed_allow`` for messages
    whose signature was verified; the nesting of the value
    (``max_depth``). Nothing decodes a body before the checks in front
    of it passed.
    """

    def __init__(self, accept, allow, signed_allow=None, signer=None,
                 accept_unsigned=False, max_size=None, max_depth=None):
        self.accept = names(accept)
        check_names(self.accept, 'accept=')
        self.allow = allow
        self.signed_allow = allow if signed_allow is None \
            else allow | signed_allow
        self.signer = signer
        self.accept_unsigned = accept_unsigned
        self.max_size = max_size
        self.max_depth = max_depth
        self._serializers = {_by_name[n].content_type: _by_name[n]
                             for n in self.accept}

    @classmethod
    def for_props(cls, props, accept=None, allow=None, signed_allow=None,
                  max_size=_PROPS, max_depth=_PROPS):
        """The decoder for consumers of ``props``: ``accept`` replaces the
        props' serializers; ``allow`` and ``signed_allow`` (AllowRules)
        add to the props' rules; ``max_size`` and ``max_depth`` replace
        the props' limits."""
        return cls(
            props.accept if accept is None else accept,
            props.allow if allow is None else props.allow | allow,
            props.signed_allow if signed_allow is None
            else props.signed_allow | signed_allow,
            signer=props.signer, accept_unsigned=props.accept_unsigned,
            max_size=props.max_size if max_size is _PROPS else max_size,
            max_depth=props.max_depth if max_depth is _PROPS else max_depth)

    def __call__(self, message):
        body, properties = message.body, message.properties
        limits.check_size(body, self.max_size)
        allow = self.allow
        if self.signer is not None and self._signed(body, properties):
            allow = self.signed_allow
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
        """The value of ``body`` by its content type (no signature or
        limit checks: ``__call__`` makes them)."""
        content_type = properties.get('content_type')
        serializer = self._serializers.get(content_type)
        if serializer is None:
            raise MessageRefused(self._not_accepted(content_type))
        try:
            return serializer.loads(
                body, self.allow if allow is None else allow)
        except MessageRefused:
            raise
        except Exception as exc:
            raise MessageRefused(
                f"cannot decode {serializer.name} body "
                f"({len(body)} bytes): {type(exc).__name__}: {exc}"
            ) from None

    def _not_accepted(self, content_type):
        known = _by_content_type.get(content_type)
        accepted = ', '.join(self.accept)
        if known is None:
            return (f"content type {content_type!r} has no serializer "
                    f"(accepted: {accepted}); register one with "
                    "zamqp.serializers.register() and add it to accept=")
        return (f"content type {content_type!r} is not accepted "
                f"(accepted: {accepted}); to decode it add "
                f"{known.name!r} to accept= on the AMQPConsumer or "
                "AMQPProps")
