"""A first message through the real broker."""
from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp.testhelpers import wait_for


def test_message_reaches_consumer(props, start):
    got = []
    start(AMQPConsumer('smoke', props, got.append))
    AMQPProducer('smoke', props)({'hello': 'world'})
    assert wait_for(lambda: got == [{'hello': 'world'}])
