"""ZAMQP_MEMORY_FIXTURE: zamqp's plone.testing layer on a memory://
broker (no RabbitMQ), and zope.conf taking a memory:// URL."""
import unittest

import transaction
import zope.component
from plone.testing import zope as zope_layers
from zope.configuration import xmlconfig

from zamqp import AMQPProps
from zamqp import memory
from zamqp.interfaces import IAMQPProps
from zamqp.interfaces import IProducer
from zamqp.testhelpers import wait_for
from zamqp.testing import ZAMQP_MEMORY_INTEGRATION_TESTING
from zamqp.testing import ConsumersPerTest
from zamqp.testing import ZAMQPMemoryFixture
from zamqp.testing import ZAMQPZopeFixture
from zamqp.tests import zcmltypes


def test_zope_conf_takes_a_memory_url():
    from zamqp.zope import settings
    given = settings.overrides('billing', {'billing.url': 'memory://bill/v'})
    props = AMQPProps(**given)
    assert (props.memory, props.virtual_host) == ('bill', 'v')


def test_memory_layer_runs_zcml_consumers_without_rabbitmq():
    from zamqp.zope import lifecycle
    layer = ZAMQPMemoryFixture(name='test:Memory')
    layer.setUp()
    try:
        url = layer['zamqpURL']
        xmlconfig.string(zcmltypes.ZCML,
                         context=layer['configurationContext'])
        producer = zope.component.getUtility(IProducer, 'now')
        props = producer.props
        assert props.memory == AMQPProps(url=url).memory
        assert props.memory.startswith('zamqp.layer.')
        lifecycle.start()
        lifecycle.wait()
        del zcmltypes.RECEIVED[:]
        producer({'n': 1})
        assert wait_for(lambda: zcmltypes.RECEIVED)
        received, = zcmltypes.RECEIVED
        broker = memory.broker(props.memory)
        assert broker.connection_count() >= 3
    finally:
        layer.tearDown()
        transaction.abort()
    assert broker.connection_count() == 0
    assert broker.queue_names() == []


# the layers as add-ons use them (zope.pytestlayer sets them up)


class TestMemoryIntegration(unittest.TestCase):

    layer = ZAMQP_MEMORY_INTEGRATION_TESTING

    def test_default_connection_is_the_layers_memory_broker(self):
        props = zope.component.getUtility(IAMQPProps, 'default')
        self.assertTrue(props.memory.startswith('zamqp.layer.'))
        self.assertEqual(props.memory,
                         AMQPProps(url=self.layer['zamqpURL']).memory)


class ZopeMemoryFixture(ZAMQPZopeFixture):
    """ZAMQPZopeFixture on a memory broker, as docs/memory.rst says."""

    def brokerURL(self):
        return 'memory://zamqp.tests.zope-memory'

    def setUpZAMQP(self, context):
        xmlconfig.string(zcmltypes.ZCML, context=context)


ZOPE_MEMORY_FIXTURE = ZopeMemoryFixture(name='zamqp.tests:ZopeMemory')
ZOPE_MEMORY_TESTING = ConsumersPerTest(
    bases=(zope_layers.IntegrationTesting(
        bases=(ZOPE_MEMORY_FIXTURE,),
        name='zamqp.tests:ZopeMemoryIntegrationBase'),),
    name='zamqp.tests:ZopeMemoryIntegration')


class TestZopeOnMemory(unittest.TestCase):

    layer = ZOPE_MEMORY_TESTING

    def test_zcml_consumer_handles_a_message_in_zope(self):
        del zcmltypes.RECEIVED[:]
        producer = zope.component.getUtility(IProducer, 'now')
        self.assertEqual(producer.props.memory, 'zamqp.tests.zope-memory')
        producer({'n': 2})
        self.assertTrue(wait_for(lambda: zcmltypes.RECEIVED))
        broker = memory.broker('zamqp.tests.zope-memory')
        self.assertGreaterEqual(broker.connection_count(), 3)
