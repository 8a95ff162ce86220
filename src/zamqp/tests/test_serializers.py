"""Serializers by name and content type, and the Decoder's refusals."""
import pickle

import amqp
import pytest

from zamqp import ConfigurationError
from zamqp import MessageRefused
from zamqp import serializers
from zamqp.unpickling import AllowRules

PICKLE = 'application/x-python-serialize'


def decode(body, content_type, accept=('pickle', 'json')):
    message = amqp.Message(body, content_type=content_type)
    return serializers.Decoder(accept, AllowRules())(message)


def test_round_trips():
    for name in ('pickle', 'json'):
        serializer = serializers.get(name)
        body = serializer.dumps({'a': [1, 'b']})
        assert isinstance(body, bytes)
        assert decode(body, serializer.content_type) == {'a': [1, 'b']}


def test_not_accepted_type_names_the_setting():
    with pytest.raises(MessageRefused) as info:
        decode(pickle.dumps(1), PICKLE, accept=['json'])
    assert "add 'pickle' to accept=" in str(info.value)


@pytest.mark.parametrize('content_type', [None, 'text/yaml'])
def test_unknown_or_missing_type_is_refused(content_type):
    with pytest.raises(MessageRefused, match='has no serializer'):
        decode(b'x: 1', content_type)


@pytest.mark.parametrize('body, content_type', [
    (b'garbage', PICKLE), (pickle.dumps([1])[:-3], PICKLE),
    (b'{"a": ', 'application/json'), (b'\xff', 'application/json'),
])
def test_undecodable_bodies_are_refused(body, content_type):
    with pytest.raises(MessageRefused, match='cannot decode'):
        decode(body, content_type)


def test_unknown_serializer_name():
    with pytest.raises(ConfigurationError, match='register'):
        serializers.Decoder(['yaml'], AllowRules())


def test_register_a_serializer():
    class Text:
        name = 'text-test'
        content_type = 'text/x-zamqp-test'

        def dumps(self, obj):
            return obj.encode()

        def loads(self, body, allow):
            return body.decode()

    serializers.register(Text())
    try:
        assert decode(b'hi', 'text/x-zamqp-test', ['text-test']) == 'hi'
    finally:
        serializers.unregister('text-test')
