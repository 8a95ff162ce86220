"""ZAMQP_MEMORY_FIXTURE: zamqp's plone.testing layer on a memory://
broker (no RabbitMQ), and zope.conf taking a memory:// URL."""
import transaction
import zope.component
from zope.configuration import xmlconfig

from zamqp import AMQPProps
from zamqp import memory
from zamqp.interfaces import IProducer
from zamqp.testhelpers import wait_for


def test_zope_conf_takes_a_memory_url():
    from zamqp.zope import settings
    given = settings.overrides('billing', {'billing.url': 'memory://bill/v'})
    props = AMQPProps(**given)
    assert (props.memory, props.virtual_host) == ('bill', 'v')


def test_memory_layer_runs_zcml_consumers_without_rabbitmq():
    from zamqp.testing import ZAMQPMemoryFixture
    from zamqp.tests import zcmltypes
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
