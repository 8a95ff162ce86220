"""Named serializers with content types, and the consumer's decode path."""
import json
import pickle

from zope.interface import implementer

from zamqp import unpickling
from zamqp.exceptions import ConfigurationError
from zamqp.exceptions import MessageRefused
from zamqp.interfaces import IDecoder
from zamqp.interfaces import ISerializer

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
    """Decodes by content type, accepting only the serializers named.

    The steps of ``__call__`` are the receive path: checks that must run
    before any decoding (a signature check) go in front of ``decode``.
    """

    def __init__(self, accept, allow):
        self.accept = names(accept)
        check_names(self.accept, 'accept=')
        self.allow = allow
        self._serializers = {_by_name[n].content_type: _by_name[n]
                             for n in self.accept}

    def __call__(self, message):
        return self.decode(message.body, message.properties)

    def decode(self, body, properties):
        content_type = properties.get('content_type')
        serializer = self._serializers.get(content_type)
        if serializer is None:
            raise MessageRefused(self._not_accepted(content_type))
        try:
            return serializer.loads(body, self.allow)
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
