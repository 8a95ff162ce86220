"""One behaviour suite for RabbitMQ and the memory:// broker.

Every test runs twice through the ``transport`` fixture: on the shared
RabbitMQ ('rabbitmq') and on an in-process broker of its own ('memory').
The assertions are the same, so the memory broker cannot drift from
RabbitMQ where zamqp.memory claims to model it (docs/memory.rst).
"""
import json
import socket
import threading
import time

import amqp
import pytest
import zope.event
from amqp import exceptions as amqp_errors
from amqp import spec

from zamqp import AMQPConsumer
from zamqp import AMQPEvent
from zamqp import AMQPEventCallback
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import AMQPThread
from zamqp import deadletter
from zamqp import events
from zamqp import memory
from zamqp.demo import Greeting
from zamqp.exceptions import NotConfirmed
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for


def quiet(seconds=0.3):
    """Give stray deliveries the chance to arrive (to see none do)."""
    time.sleep(seconds)


def raw_connection(url):
    """A plain py-amqp connection to the broker of ``url``."""
    props = AMQPProps(url=url)
    factory = memory.Connection if props.memory else amqp.Connection
    connection = factory(props.address, userid=props.user,
                         password=props.password,
                         virtual_host=props.virtual_host, connect_timeout=5)
    connection.connect()
    return connection


class Env:
    """Props, consumers and a raw channel on one broker; what a test
    declares is deleted at teardown."""

    def __init__(self, transport):
        self.transport = transport
        if transport == 'memory':
            self.name = unique('behaviour')
            self.url = f'memory://{self.name}'
        else:
            self.url = broker_url()
        self.exchanges = []
        self.queues = []
        self.threads = []
        self.producers = []
        self.connection = raw_connection(self.url)
        self.channel = self.connection.channel()

    def props(self, **kw):
        props = AMQPProps(url=self.url, exchange=unique('behaviour'), **kw)
        self.exchanges += [props.exchange, f'{props.exchange}.dead']
        self.queues.append(f'{props.exchange}.dead')
        return props

    def start(self, consumer):
        if consumer.shared:
            self.queues.append(consumer.queue_name)
        thread = AMQPThread(consumer)
        self.threads.append(thread)
        thread.start()
        return thread

    def producer(self, *args, **kw):
        producer = AMQPProducer(*args, **kw)
        self.producers.append(producer)
        return producer

    def fresh_channel(self):
        """A new raw channel (after one the broker closed)."""
        self.channel = self.connection.channel()
        return self.channel

    def queue(self, **arguments):
        """An exclusive, server-named queue on the raw connection."""
        return self.channel.queue_declare(
            '', exclusive=True, arguments=arguments or None).queue

    def take(self, queue):
        """The bodies waiting in ``queue`` (taken, acknowledged)."""
        taken = []
        while (message := self.channel.basic_get(queue, no_ack=True)) \
                is not None:
            taken.append(message)
        return taken

    def depth(self, queue):
        return self.channel.queue_declare(queue, passive=True).message_count

    def close(self):
        for thread in self.threads:
            thread.consumer.stop()
        for thread in self.threads:
            thread.stop()
        for producer in self.producers:
            producer.close()
        channel = self.fresh_channel()
        for queue in self.queues:
            channel.queue_delete(queue)
        for exchange in self.exchanges:
            channel.exchange_delete(exchange)
        self.connection.close()
        if self.transport == 'memory':
            memory.reset(self.name)


@pytest.fixture(params=['rabbitmq', 'memory'])
def transport(request):
    return request.param


@pytest.fixture
def env(transport):
    env = Env(transport)
    yield env
    env.close()


# routing

def test_fanout_broadcasts_to_every_consumer(env):
    props = env.props()
    inboxes = [[], []]
    for inbox in inboxes:
        env.start(AMQPConsumer('news', props, inbox.append))
    producer = env.producer('whatever-key', props, confirm=True)
    for n in range(5):
        producer(n)
    assert wait_for(lambda: all(len(i) == 5 for i in inboxes))
    quiet()
    assert inboxes == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]


def test_direct_routes_by_key(env):
    props = env.props(type='direct')
    orders, invoices = [], []
    env.start(AMQPConsumer('orders', props, orders.append))
    env.start(AMQPConsumer('invoices', props, invoices.append))
    producer = env.producer('orders', props, confirm=True)
    producer('o1')
    producer('i1', routing_key='invoices')
    producer('nobody', routing_key='other')
    assert wait_for(lambda: orders and invoices)
    quiet()
    assert (orders, invoices) == (['o1'], ['i1'])


#: Topic patterns and the keys (of KEYS) each one routes, by hand.
TOPIC = {
    'a.*': {'a.b', 'a.c', 'a.'},
    'a.#': {'a', 'a.b', 'a.c', 'a.b.c', 'a.b.b.c', 'a.'},
    '#': {'', 'a', 'b', 'c', 'a.b', 'a.c', 'a.b.c', 'a.b.b.c', 'a.'},
    '*': {'a', 'b', 'c'},
    '#.c': {'c', 'a.c', 'a.b.c', 'a.b.b.c'},
    '*.b.#': {'a.b', 'a.b.c', 'a.b.b.c'},
    'a.#.c': {'a.c', 'a.b.c', 'a.b.b.c'},
    '#.#': {'', 'a', 'b', 'c', 'a.b', 'a.c', 'a.b.c', 'a.b.b.c', 'a.'},
    'a.b': {'a.b'},
}
KEYS = ['', 'a', 'b', 'c', 'a.b', 'a.c', 'a.b.c', 'a.b.b.c', 'a.']


def test_topic_wildcards(env):
    props = env.props(type='topic')
    channel = env.channel
    channel.exchange_declare(props.exchange, 'topic', durable=True,
                             auto_delete=False)
    queues = {}
    for pattern in TOPIC:
        queues[pattern] = env.queue()
        channel.queue_bind(queues[pattern], props.exchange, pattern)
    producer = env.producer('x', props, serializer='json', confirm=True)
    for key in KEYS:
        producer(key, routing_key=key)
    routed = {pattern: {_text(m) for m in env.take(queue)}
              for pattern, queue in queues.items()}
    assert routed == TOPIC


def _text(message):
    """The text a JSON message carries."""
    return json.loads(message.body)


def test_topic_consumer_pattern(env):
    props = env.props(type='topic')
    got = []
    env.start(AMQPConsumer('orders', props, got.append,
                           routing_key='orders.*.eu'))
    producer = env.producer('orders', props, confirm=True)
    for key in ('orders.new.eu', 'orders.new.us', 'orders.eu',
                'orders.paid.eu'):
        producer(key, routing_key=key)
    assert wait_for(lambda: len(got) == 2)
    quiet()
    assert got == ['orders.new.eu', 'orders.paid.eu']


#: Binding arguments of a headers exchange, and the messages (by name,
#: of HEADERS) each routes, by hand.
BINDINGS = {
    'all-kind-region': ({'x-match': 'all', 'kind': 'order',
                         'region': 'eu'}, {'m1', 'm7'}),
    'any-kind-region': ({'x-match': 'any', 'kind': 'order',
                         'region': 'eu'}, {'m1', 'm2', 'm7'}),
    'default-is-all': ({'kind': 'order', 'region': 'eu'}, {'m1', 'm7'}),
    'all-nothing': ({'x-match': 'all'}, {'m1', 'm2', 'm3', 'm4', 'm5',
                                         'm6', 'm7', 'm8'}),
    'any-nothing': ({'x-match': 'any'}, set()),
    'int': ({'count': 1}, {'m5'}),
    'x-keys-ignored': ({'x-match': 'any', 'x-tag': 'yes'}, set()),
}
HEADERS = {
    'm1': {'kind': 'order', 'region': 'eu'},
    'm2': {'kind': 'order'},
    'm3': {'region': 'us'},
    'm4': {},
    'm5': {'count': 1},
    'm6': {'count': '1'},
    'm7': {'kind': 'order', 'region': 'eu', 'extra': 1},
    'm8': {'x-tag': 'yes'},
}


def test_headers_matching(env):
    props = env.props(type='headers')
    channel = env.channel
    channel.exchange_declare(props.exchange, 'headers', durable=True,
                             auto_delete=False)
    queues = {}
    for name, (arguments, _) in BINDINGS.items():
        queues[name] = env.queue()
        channel.queue_bind(queues[name], props.exchange, '',
                           arguments=arguments)
    producer = env.producer('x', props, serializer='json', confirm=True)
    for name, headers in HEADERS.items():
        producer(name, headers=headers)
    routed = {name: {_text(m) for m in env.take(queue)}
              for name, queue in queues.items()}
    assert routed == {name: expected
                      for name, (_, expected) in BINDINGS.items()}


def test_headers_consumer_binding_arguments(env):
    props = env.props(type='headers')
    got = []
    env.start(AMQPConsumer('eu-orders', props, got.append,
                           binding_arguments={'x-match': 'all',
                                              'kind': 'order',
                                              'region': 'eu'}))
    producer = env.producer('x', props, confirm=True)
    producer('yes', headers={'kind': 'order', 'region': 'eu'})
    producer('no', headers={'kind': 'order', 'region': 'us'})
    assert wait_for(lambda: got)
    quiet()
    assert got == ['yes']


# acknowledgements, redelivery, retries, dead letters

def test_unacknowledged_message_is_redelivered(env):
    queue = env.queue()
    env.channel.basic_publish(amqp.Message(b'once'), '', queue)
    other = env.connection.channel()
    first = wait_get(other, queue)
    assert (first.body, first.delivery_info['redelivered']) == \
        (b'once', False)
    other.close()                           # unacknowledged: back it goes
    again = wait_get(env.channel, queue)
    assert (again.body, again.delivery_info['redelivered']) == \
        (b'once', True)
    env.channel.basic_ack(again.delivery_tag)
    assert env.depth(queue) == 0


def wait_get(channel, queue, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = channel.basic_get(queue)
        if message is not None:
            return message
        time.sleep(0.01)
    raise AssertionError(f'nothing in {queue}')


def test_reject_and_nack_requeue_or_dead_letter(env):
    channel = env.channel
    dlx = unique('behaviour.dlx')
    env.exchanges.append(dlx)
    channel.exchange_declare(dlx, 'fanout', durable=True, auto_delete=False)
    dead = env.queue()
    channel.queue_bind(dead, dlx, '')
    queue = env.queue(**{'x-dead-letter-exchange': dlx})
    for body in (b'r1', b'r2', b'n1'):
        channel.basic_publish(amqp.Message(body), '', queue)
    assert wait_for(lambda: env.depth(queue) == 3)
    r1 = channel.basic_get(queue)
    channel.basic_reject(r1.delivery_tag, requeue=True)
    again = channel.basic_get(queue)
    assert (again.body, again.delivery_info['redelivered']) == (b'r1', True)
    channel.basic_reject(again.delivery_tag, requeue=False)
    r2, n1 = channel.basic_get(queue), channel.basic_get(queue)
    # py-amqp has no basic_nack: the method as RabbitMQ gets it
    channel.send_method(spec.Basic.Nack, 'Lbb',
                        (n1.delivery_tag, True, False))
    assert [r2.body, n1.body] == [b'r2', b'n1']
    assert wait_for(lambda: env.depth(dead) == 3)
    letters = env.take(dead)
    assert [m.body for m in letters] == [b'r1', b'r2', b'n1']
    death = letters[0].headers['x-death'][0]
    assert (death['reason'], death['queue'], death['count'],
            death['exchange'], death['routing-keys']) == \
        ('rejected', queue, 1, '', [queue])
    assert letters[0].headers['x-first-death-reason'] == 'rejected'
    assert env.depth(queue) == 0


def test_failed_callback_is_retried(env):
    props = env.props()
    calls = []

    def flaky(body, message):
        calls.append((body, deadletter.retries(message)))
        if len(calls) == 1:
            raise ValueError('first time')

    work = unique('behaviour.work')
    consumer = AMQPConsumer(work, props, flaky, shared=True,
                            pass_message=True)
    env.start(consumer)
    env.producer(work, props, confirm=True)('job')
    assert wait_for(lambda: len(calls) == 2)
    quiet()
    assert calls == [('job', 0), ('job', 1)]
    assert wait_for(lambda: env.depth(work) == 0)
    assert (consumer.status()['failed'], consumer.status()['retried'],
            consumer.status()['handled']) == (1, 1, 1)


def test_retries_then_dead_letter(env):
    props = env.props()
    calls = []

    def failing(body):
        calls.append(body)
        raise RuntimeError('always')

    work = unique('behaviour.work')
    env.start(AMQPConsumer(work, props, failing, shared=True,
                           max_retries=2))
    env.producer(work, props, confirm=True)('doomed')
    dead = f'{props.exchange}.dead'
    assert wait_for(lambda: env.depth(dead) == 1)
    assert calls == ['doomed'] * 3
    letter, = env.take(dead)
    headers = letter.headers
    assert headers[deadletter.RETRIES] == 2
    assert headers[deadletter.QUEUE] == work
    assert headers[deadletter.ERROR] == 'RuntimeError: always'
    assert env.depth(work) == 0


def test_callback_failure_without_ack_is_lost(env):
    props = env.props()
    calls = []

    def failing(body):
        calls.append(body)
        raise RuntimeError('lost')

    env.start(AMQPConsumer('news', props, failing))
    env.producer('news', props, confirm=True)('once')
    assert wait_for(lambda: calls)
    quiet()
    assert calls == ['once']


# confirms and returns

def test_confirms_and_mandatory_returns(env):
    props = env.props(type='direct')
    got = []
    env.start(AMQPConsumer('bound', props, got.append))
    producer = env.producer('bound', props, confirm=True, mandatory=True)
    producer('routed')
    with pytest.raises(NotConfirmed) as failure:
        producer('unroutable', routing_key='nobody')
    (message_id, key, reply), = failure.value.returned
    assert (key, reply) == ('nobody', '312 NO_ROUTE')
    producer('routed again')
    assert wait_for(lambda: len(got) == 2)
    assert got == ['routed', 'routed again']


def test_publish_many_confirmed(env):
    props = env.props()
    got = []
    env.start(AMQPConsumer('bulk', props, got.append))
    producer = env.producer('bulk', props)
    ids = producer.publish_many(range(200))
    assert len(set(ids)) == 200
    producer.flush()
    assert wait_for(lambda: len(got) == 200)
    assert got == list(range(200))


# queues shared and not, prefetch

def test_shared_queue_distributes_between_consumers(env):
    props = env.props()
    work = unique('behaviour.work')
    a, b = [], []
    env.start(AMQPConsumer(work, props, a.append, shared=True))
    env.start(AMQPConsumer(work, props, b.append, shared=True))
    producer = env.producer(work, props, confirm=True)
    for n in range(20):
        producer(n)
    assert wait_for(lambda: len(a) + len(b) == 20)
    quiet()
    assert sorted(a + b) == list(range(20))
    assert a and b


def test_shared_queue_keeps_its_backlog(env):
    props = env.props()
    work = unique('behaviour.work')
    first = env.start(AMQPConsumer(work, props, lambda body: None,
                                   shared=True))
    assert first.stop()
    producer = env.producer(work, props, confirm=True)
    for n in range(3):
        producer(n)
    assert env.depth(work) == 3
    got = []
    env.start(AMQPConsumer(work, props, got.append, shared=True))
    assert wait_for(lambda: len(got) == 3)
    assert got == [0, 1, 2]


def test_broadcast_queue_goes_with_its_consumer(env):
    props = env.props()
    consumer = AMQPConsumer('news', props, lambda body: None)
    thread = env.start(consumer)
    assert _exists(env, consumer.queue_name)
    other = raw_connection(env.url).channel()
    with pytest.raises(amqp_errors.ResourceLocked):
        other.queue_declare(consumer.queue_name, passive=False,
                            exclusive=False, auto_delete=True)
    other.connection.close()
    assert thread.stop()
    assert wait_for(lambda: not _exists(env, consumer.queue_name))


def _exists(env, queue):
    try:
        env.fresh_channel().queue_declare(queue, passive=True)
    except amqp_errors.NotFound:
        return False
    except amqp_errors.ResourceLocked:
        return True
    return True


def test_prefetch_limits_unacknowledged_messages(env):
    props = env.props()
    work = unique('behaviour.work')
    entered, release = threading.Event(), threading.Event()

    def slow(body):
        entered.set()
        release.wait(10)

    env.start(AMQPConsumer(work, props, slow, shared=True, prefetch=2))
    producer = env.producer(work, props, confirm=True)
    for n in range(6):
        producer(n)
    assert entered.wait(5)
    assert wait_for(lambda: env.depth(work) == 4)
    quiet()
    assert env.depth(work) == 4
    release.set()
    assert wait_for(lambda: env.depth(work) == 0)


# errors RabbitMQ raises

def test_declaration_errors(env):
    channel = env.channel
    name = unique('behaviour.x')
    env.exchanges.append(name)
    channel.exchange_declare(name, 'direct', durable=True,
                             auto_delete=False)
    with pytest.raises(amqp_errors.PreconditionFailed):
        channel.exchange_declare(name, 'fanout', durable=True,
                                 auto_delete=False)
    channel = env.fresh_channel()
    with pytest.raises(amqp_errors.NotFound):
        channel.queue_declare(unique('behaviour.none'), passive=True)
    channel = env.fresh_channel()
    with pytest.raises(amqp_errors.NotFound):
        channel.queue_bind(env.queue(), unique('behaviour.none'), 'k')
    channel = env.fresh_channel()
    with pytest.raises(amqp_errors.NotFound):
        channel.exchange_declare(unique('behaviour.none'), 'direct',
                                 passive=True)


# events

def test_amqp_event_round_trip(env):
    props = env.props()
    env.start(AMQPConsumer('greetings', props, AMQPEventCallback(),
                           allow=[Greeting]))
    received = []

    def subscriber(event):
        if isinstance(event, Greeting):
            received.append(event)

    zope.event.subscribers.append(subscriber)
    try:
        zope.event.notify(AMQPEvent('greetings', props,
                                    Greeting('behaviour', env.transport)))
        assert wait_for(lambda: received)
        quiet()
    finally:
        zope.event.subscribers.remove(subscriber)
        events.close_producers()
    assert received == [Greeting('behaviour', env.transport)]


# a queue deleted under its consumers

def test_deleting_a_queue_cancels_its_consumers(env):
    queue = env.queue()
    channel = env.connection.channel()
    cancelled = []
    tag = channel.basic_consume(queue, callback=print,
                                on_cancel=cancelled.append)
    env.channel.queue_delete(queue)
    deadline = time.monotonic() + 5
    while not cancelled and time.monotonic() < deadline:
        try:
            env.connection.drain_events(timeout=0.1)
        except socket.timeout:
            pass
    assert cancelled == [tag]


def test_consumer_comes_back_after_its_queue_was_deleted(env):
    props = env.props()
    work = unique('behaviour.work')
    got = []
    consumer = AMQPConsumer(work, props, got.append, shared=True)
    consumer.min_backoff = 0.05
    env.start(consumer)
    env.channel.queue_delete(work)
    assert wait_for(lambda: consumer.status()['reconnects'] == 1)
    assert wait_for(lambda: _exists(env, work))
    env.producer(work, props, confirm=True)('after')
    assert wait_for(lambda: got == ['after'])


# queue operations and the errors of the rest

def test_purge_delete_unbind(env):
    channel = env.channel
    exchange = unique('behaviour.x')
    env.exchanges.append(exchange)
    channel.exchange_declare(exchange, 'direct', durable=True,
                             auto_delete=False)
    queue = env.queue()
    channel.queue_bind(queue, exchange, 'k')
    for body in (b'1', b'2'):
        channel.basic_publish(amqp.Message(body), exchange, 'k')
    assert wait_for(lambda: env.depth(queue) == 2)
    channel.queue_unbind(queue, exchange, 'k')
    channel.basic_publish(amqp.Message(b'3'), exchange, 'k')
    with pytest.raises(amqp_errors.PreconditionFailed, match='not empty'):
        channel.queue_delete(queue, if_empty=True)
    channel = env.fresh_channel()
    assert channel.queue_purge(queue) == 2
    tag = channel.basic_consume(queue, callback=print)
    with pytest.raises(amqp_errors.PreconditionFailed, match='in use'):
        channel.queue_delete(queue, if_unused=True)
    channel = env.fresh_channel()
    assert channel.queue_delete(queue) == 0
    assert not _exists(env, queue)
    assert tag


def test_exclusive_consumer_and_channel_prefetch(env):
    channel = env.channel
    queue = env.queue()
    channel.basic_consume(queue, callback=print, exclusive=True)
    other = env.connection.channel()
    with pytest.raises(amqp_errors.AccessRefused, match='exclusive use'):
        other.basic_consume(queue, callback=print)
    channel = env.fresh_channel()
    queue = env.queue()
    for n in range(5):
        channel.basic_publish(amqp.Message(str(n)), '', queue)
    channel.basic_qos(0, 3, True)       # the channel's consumers together
    got = []
    channel.basic_consume(queue, callback=got.append)
    channel.basic_consume(queue, callback=got.append)
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        try:
            env.connection.drain_events(timeout=0.1)
        except socket.timeout:
            pass
    assert len(got) == 3 and env.depth(queue) == 2
    channel.basic_ack(got[-1].delivery_tag, multiple=True)
    assert wait_for(lambda: env.depth(queue) == 0)


@pytest.mark.parametrize('call, error, text', [
    (lambda ch: ch.exchange_declare('amq.mine', 'direct'),
     amqp_errors.AccessRefused, 'reserved'),
    (lambda ch: ch.queue_bind(ch.queue_declare('', exclusive=True).queue,
                              '', 'k'),
     amqp_errors.AccessRefused, 'default exchange'),
    (lambda ch: _then_declare(ch, ch.basic_publish(
        amqp.Message(b'x'), unique('behaviour.none'), 'k')),
     amqp_errors.NotFound, 'no exchange'),
    (lambda ch: _then_declare(ch, ch.basic_ack(42)),
     amqp_errors.PreconditionFailed, 'unknown delivery tag 42'),
    (lambda ch: ch.queue_declare(unique('amq.x')),
     amqp_errors.AccessRefused, 'reserved'),
])
def test_errors_close_the_channel(env, call, error, text):
    with pytest.raises(error, match=text):
        call(env.channel)
    assert env.fresh_channel().queue_declare('', exclusive=True).queue


def _then_declare(channel, _):
    """A method with a reply after one without: the broker's
    asynchronous channel error arrives while py-amqp waits for it."""
    return channel.queue_declare('', exclusive=True)


def test_heartbeats_keep_an_idle_consumer(env):
    props = AMQPProps(url=env.url, exchange=unique('behaviour'),
                      heartbeat=1)
    env.exchanges.append(props.exchange)
    got = []
    consumer = AMQPConsumer('news', props, got.append)
    env.start(consumer)
    time.sleep(3.5)
    assert consumer.connection.connection.heartbeat == 1
    assert consumer.status()['reconnects'] == 0
    env.producer('news', props, confirm=True)('still there')
    assert wait_for(lambda: got == ['still there'])


# quorum queues

def test_quorum_queue_counts_deliveries_and_limits_them(env):
    channel = env.channel
    dlx, dead, queue = (unique('behaviour.quorum') for _ in range(3))
    env.exchanges.append(dlx)
    env.queues += [dead, queue]
    channel.exchange_declare(dlx, 'fanout', durable=True, auto_delete=False)
    channel.queue_declare(dead, durable=True, auto_delete=False)
    channel.queue_bind(dead, dlx, '')
    with pytest.raises(amqp_errors.PreconditionFailed,
                       match="invalid property 'auto-delete'"):
        channel.queue_declare(queue, durable=True, auto_delete=True,
                              arguments={'x-queue-type': 'quorum'})
    channel = env.fresh_channel()
    channel.queue_declare(queue, durable=True, auto_delete=False,
                          arguments={'x-queue-type': 'quorum',
                                     'x-delivery-limit': 2,
                                     'x-dead-letter-exchange': dlx})
    for body in (b'a', b'b'):
        channel.basic_publish(amqp.Message(body), '', queue)
    assert wait_for(lambda: env.depth(queue) == 2)
    seen = []
    for _ in range(4):
        message = wait_get(channel, queue)
        seen.append((message.body, message.delivery_info['redelivered'],
                     message.headers.get('x-delivery-count')))
        channel.basic_reject(message.delivery_tag,
                             requeue=message.body == b'a')
    assert seen == [(b'a', False, 0), (b'a', True, 1), (b'a', True, 2),
                    (b'b', False, 0)]
    assert wait_for(lambda: env.depth(dead) == 2)
    letters = {m.body: m.headers for m in env.take(dead)}
    assert [letters[b]['x-death'][0]['reason'] for b in (b'a', b'b')] == \
        ['delivery_limit', 'rejected']
    assert 'x-delivery-count' not in letters[b'a']
    with pytest.raises(amqp_errors.PreconditionFailed,
                       match="inequivalent arg"):
        channel.queue_declare(queue, durable=True, auto_delete=False)


def test_consumer_on_a_quorum_queue(env):
    props = env.props()
    work = unique('behaviour.work')
    calls = []

    def flaky(body, message):
        calls.append((body, message.headers.get('x-delivery-count')))
        if len(calls) == 1:
            raise ValueError('first time')

    env.start(AMQPConsumer(work, props, flaky, shared=True,
                           queue_type='quorum', pass_message=True))
    env.producer(work, props, confirm=True)('job')
    assert wait_for(lambda: len(calls) == 2)
    quiet()
    # a consumer sees no x-delivery-count on a first delivery, and zamqp
    # retries with a copy, so the broker's count starts again
    assert calls == [('job', None), ('job', None)]


def test_quorum_delivery_count_to_consumers(env):
    queue = unique('behaviour.quorum')
    env.queues.append(queue)
    channel = env.channel
    channel.queue_declare(queue, durable=True, auto_delete=False,
                          arguments={'x-queue-type': 'quorum'})
    channel.basic_publish(amqp.Message(b'a'), '', queue)
    got = []

    def take(message):
        got.append((message.delivery_info['redelivered'],
                    (message.headers or {}).get('x-delivery-count')))
        if len(got) < 3:
            channel.basic_reject(message.delivery_tag, requeue=True)
        else:
            channel.basic_ack(message.delivery_tag)

    tag = channel.basic_consume(queue, callback=take)
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        try:
            env.connection.drain_events(timeout=0.1)
        except socket.timeout:
            pass
    channel.basic_cancel(tag)
    assert got == [(False, None), (True, 1), (True, 2)]


def test_closed_channel_requeues_in_the_original_order(env):
    queue = env.queue()
    for body in (b'1', b'2', b'3', b'4'):
        env.channel.basic_publish(amqp.Message(body), '', queue)
    assert wait_for(lambda: env.depth(queue) == 4)
    other = env.connection.channel()
    taken = [other.basic_get(queue) for _ in range(3)]
    assert [m.body for m in taken] == [b'1', b'2', b'3']
    other.basic_ack(taken[1].delivery_tag)
    other.close()
    again = env.take(queue)
    assert [(m.body, m.delivery_info['redelivered']) for m in again] == \
        [(b'1', True), (b'3', True), (b'4', False)]
