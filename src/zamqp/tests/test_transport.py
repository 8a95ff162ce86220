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


def test_producer_connection_skips_blocked_capability(props):
    producer = AMQPProducer('pc', props)
    producer('x')
    py_amqp = producer.connection.connection
    assert isinstance(py_amqp, PublisherConnection)
    capabilities = py_amqp.client_properties['capabilities']
    assert capabilities['connection.blocked'] is False
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
    assert wait_for(lambda: got == ['after'])
    assert any('reconnecting' in r.getMessage() for r in caplog.records)
    producer.close()
