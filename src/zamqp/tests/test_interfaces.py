"""The public names and the interfaces zamqp's components provide."""
import importlib

import pytest
from zope.interface.verify import verifyClass
from zope.interface.verify import verifyObject

import zamqp
from zamqp import interfaces
from zamqp import serializers
from zamqp.unpickling import AllowRules


@pytest.mark.parametrize('name', zamqp.__all__)
def test_public_name_importable(name):
    module = importlib.import_module('zamqp')
    assert getattr(module, name) is not None
    namespace = {}
    exec(f'from zamqp import {name}', namespace)
    assert namespace[name] is getattr(zamqp, name)


def test_all_lists_the_seed_api():
    seed = {'AMQPProps', 'AMQPConnection', 'AMQPProducer', 'AMQPConsumer',
            'AMQPThread', 'AMQPEventCallback', 'AMQPEvent'}
    assert seed <= set(zamqp.__all__)
    assert len(zamqp.__all__) == len(set(zamqp.__all__))


def test_errors_share_a_base():
    for name in ('ConfigurationError', 'ConnectionFailed', 'PublishFailed',
                 'MessageRefused'):
        assert issubclass(getattr(zamqp, name), zamqp.ZAMQPError)


def test_props(props):
    assert verifyClass(interfaces.IAMQPProps, zamqp.AMQPProps)
    assert verifyObject(interfaces.IAMQPProps, props)


def test_connection(props):
    assert verifyClass(interfaces.IConnection, zamqp.AMQPConnection)
    conn = zamqp.AMQPConnection('iface', props)
    with conn:
        # verifyObject reads ``channel``: a real connection is made
        assert verifyObject(interfaces.IConnection, conn)
        assert conn.connection is not None
    assert conn.connection is None


def test_producer(props):
    assert verifyClass(interfaces.IProducer, zamqp.AMQPProducer)
    with zamqp.AMQPProducer('iface', props) as producer:
        assert verifyObject(interfaces.IProducer, producer)


def test_consumer(props):
    assert verifyClass(interfaces.IConsumer, zamqp.AMQPConsumer)
    consumer = zamqp.AMQPConsumer('iface', props, lambda body: None)
    assert verifyObject(interfaces.IConsumer, consumer)


@pytest.mark.parametrize('name', ['pickle', 'json'])
def test_serializers(name):
    serializer = serializers.get(name)
    assert verifyObject(interfaces.ISerializer, serializer)
    assert verifyClass(interfaces.ISerializer, type(serializer))
    assert serializer.name == name


def test_decoder():
    assert verifyClass(interfaces.IDecoder, serializers.Decoder)
    decoder = serializers.Decoder(['json'], AllowRules())
    assert verifyObject(interfaces.IDecoder, decoder)


def test_allow_rules():
    assert verifyClass(interfaces.IAllowRules, AllowRules)
    assert verifyObject(interfaces.IAllowRules,
                        AllowRules.from_spec(['a.b', 'c.*']))


def test_event(props):
    assert verifyClass(interfaces.IAMQPEvent, zamqp.AMQPEvent)
    event = zamqp.AMQPEvent('iface', props, 'payload')
    assert verifyObject(interfaces.IAMQPEvent, event)
    assert interfaces.IAMQPEvent.providedBy(event)
