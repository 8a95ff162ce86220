"""Exchange types and queue sharing, end to end through the real broker."""
import json
import time

from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for


def settle(seconds=0.3):
    """Give stray deliveries the chance to arrive (to see none do)."""
    time.sleep(seconds)


def test_fanout_every_consumer_gets_every_message(props, start):
    inboxes = [[], [], []]
    for inbox in inboxes:
        start(AMQPConsumer('fan', props, inbox.append))
    producer = AMQPProducer('fan', props)
    sent = [f'm{i}' for i in range(10)]
    for message in sent:
        producer(message)
    assert wait_for(lambda: all(len(i) >= len(sent) for i in inboxes))
    settle()
    for inbox in inboxes:
        assert inbox == sent


def test_fanout_ignores_routing_key(props, start):
    got = []
    start(AMQPConsumer('fan', props, got.append))
    AMQPProducer('something-else', props)('x')
    assert wait_for(lambda: got == ['x'])


def test_direct_default_routing_key_is_queue_name(make_props, start):
    props = make_props(type='direct')
    same, other = [], []
    start(AMQPConsumer('orders', props, same.append))
    start(AMQPConsumer('invoices', props, other.append))
    producer = AMQPProducer('orders', props)
    assert producer.routing_key == 'orders'
    producer('o1')
    assert wait_for(lambda: same == ['o1'])
    settle()
    assert other == []


def test_direct_explicit_routing_key(make_props, start):
    props = make_props(type='direct')
    orders, invoices = [], []
    start(AMQPConsumer('orders', props, orders.append))
    start(AMQPConsumer('invoices', props, invoices.append))
    producer = AMQPProducer('orders', props)
    producer('i1', routing_key='invoices')
    producer('o1')
    assert wait_for(lambda: invoices == ['i1'] and orders == ['o1'])
    settle()
    assert invoices == ['i1'] and orders == ['o1']


def test_direct_routing_key_in_constructor(make_props, start):
    props = make_props(type='direct')
    got = []
    start(AMQPConsumer('invoices', props, got.append))
    AMQPProducer('orders', props, routing_key='invoices')('i1')
    assert wait_for(lambda: got == ['i1'])


def test_consumer_routing_key_differs_from_queue(make_props, start):
    props = make_props(type='direct')
    got = []
    start(AMQPConsumer('mine', props, got.append, routing_key='theirs'))
    producer = AMQPProducer('x', props)
    producer('no', routing_key='mine')
    producer('yes', routing_key='theirs')
    assert wait_for(lambda: got == ['yes'])
    settle()
    assert got == ['yes']


def test_topic_patterns(make_props, start):
    props = make_props(type='topic')
    star, hash_, exact = [], [], []
    start(AMQPConsumer('a', props, star.append, routing_key='orders.*'))
    start(AMQPConsumer('b', props, hash_.append, routing_key='orders.#'))
    start(AMQPConsumer('c', props, exact.append,
                       routing_key='orders.eu.new'))
    producer = AMQPProducer('orders', props)
    for key in ('orders.new', 'orders.eu.new', 'orders', 'invoices.new'):
        producer(key, routing_key=key)
    assert wait_for(lambda: len(hash_) == 3 and len(star) == 1
                    and len(exact) == 1)
    settle()
    assert star == ['orders.new']
    assert hash_ == ['orders.new', 'orders.eu.new', 'orders']
    assert exact == ['orders.eu.new']


def test_competing_consumers_share_the_work(props, start):
    work = unique('work')     # queue names are global on the broker
    inboxes = [[], [], []]
    for inbox in inboxes:
        start(AMQPConsumer(work, props, inbox.append, shared=True))
    producer = AMQPProducer(work, props)
    sent = list(range(30))
    for n in sent:
        producer(n)
    assert wait_for(lambda: sum(map(len, inboxes)) >= len(sent))
    settle()
    received = [n for inbox in inboxes for n in inbox]
    assert sorted(received) == sent           # each exactly once in total
    assert all(inbox for inbox in inboxes)    # and every consumer got some


def test_shared_consumers_use_one_queue(props):
    first = AMQPConsumer('work', props, print, shared=True)
    second = AMQPConsumer('work', props, print, shared=True)
    assert first.queue_name == second.queue_name == 'work'
    mine = AMQPConsumer('work', props, print)
    assert mine.queue_name.startswith('work.')
    assert mine.queue_name != first.queue_name


def test_json_end_to_end(props, start):
    got, raw = [], []

    class Recorder(AMQPConsumer):
        def handle(self, message):
            raw.append((message.properties.get('content_type'),
                        message.body))
            super().handle(message)

    start(Recorder('json', props, got.append, accept=['json']))
    message = {'a': [1, 2.5, 'three', None, True], 'b': {'c': 'ü'}}
    AMQPProducer('json', props, serializer='json')(message)
    assert wait_for(lambda: got == [message])
    content_type, body = raw[0]
    assert content_type == 'application/json'
    assert json.loads(body) == message
