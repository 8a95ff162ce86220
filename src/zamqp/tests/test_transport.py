"""The tuned py-amqp connections: read-ahead, and publishing without
py-amqp's per-message drain, still noticing what the broker closed."""
from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp.testhelpers import wait_for
from zamqp.transport import ConsumerConnection
from zamqp.transport import PublisherConnection


def test_consumer_connection_reads_ahead(props, start):
    got = []
    consumer = AMQPConsumer('ra', props, got.append)
    start(consumer)
    py_amqp = consumer.connection.connection
    assert isinstance(py_amqp, ConsumerConnection)
    # fails when a py-amqp upgrade no longer reads through _quick_recv
    assert py_amqp.transport.reads_ahead
    producer = AMQPProducer('ra', props)
    for n in range(500):
        producer(n)
    assert wait_for(lambda: len(got) == 500)
    assert got == list(range(500))


def test_producer_negotiates_blocked_without_py_amqp_draining(props):
    producer = AMQPProducer('pc', props)
    producer('x')
    py_amqp = producer.connection.connection
    assert isinstance(py_amqp, PublisherConnection)
    # the broker was told: it sends connection.blocked to this connection
    assert py_amqp.sent_capabilities['connection.blocked'] is True
    # py-amqp's basic_publish no longer sees it, so it does not drain
    capabilities = py_amqp.client_properties['capabilities']
    assert 'connection.blocked' not in capabilities
    producer.close()


def test_producer_notices_a_channel_the_broker_closed(props, start, admin,
                                                      caplog):
    got = []
    producer = AMQPProducer('gone', props)
    producer('before')
    admin.delete_exchange(props.exchange)
    producer('lost: the exchange is gone')   # broker closes the channel
    start(AMQPConsumer('gone', props, got.append))
    producer('after')       # the poll raises 404, the producer reconnects
    # and publishes the unconfirmed message again before the new one
    assert wait_for(lambda: got == ['lost: the exchange is gone', 'after'])
    assert any('reconnecting' in r.getMessage() for r in caplog.records)
    producer.close()
