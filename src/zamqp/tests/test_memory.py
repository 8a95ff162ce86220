"""What only the memory:// broker has: URLs, separate brokers, reset,
refusals, threads, copies, its plone.testing layer. Its behaviour next to
RabbitMQ's is tested in test_behaviour."""
import queue
import threading
import time

import amqp
import pytest
from amqp import spec

from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import AMQPThread
from zamqp import ConfigurationError
from zamqp import memory
from zamqp.exceptions import ConnectionFailed
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for


@pytest.fixture
def url():
    """A memory:// broker of this test's own, reset afterwards."""
    name = unique('memtest')
    yield f'memory://{name}'
    memory.reset(name)


def connect(url):
    props = AMQPProps(url=url)
    connection = memory.Connection(props.address,
                                   virtual_host=props.virtual_host)
    connection.connect()
    return connection


# URLs

def test_urls():
    props = AMQPProps(url='memory://')
    assert (props.memory, props.virtual_host, props.url()) == \
        ('default', '/', 'memory://default/%2F')
    named = AMQPProps(url='memory://shop/test?heartbeat=5', exchange='e')
    assert (named.memory, named.virtual_host, named.heartbeat) == \
        ('shop', 'test', 5)
    assert AMQPProps(url=named.url()).memory == 'shop'
    assert named.replace(exchange='f').memory == 'shop'
    assert named.replace(exchange='f').virtual_host == 'test'
    network = AMQPProps(url='amqp://guest:guest@shop:5672/test',
                        exchange='e', heartbeat=5)
    assert network.memory is None and network != named
    with pytest.raises(ConfigurationError, match='broker name'):
        AMQPProps(url='memory://a:b@shop')


# brokers, virtual hosts, reset, durability

def test_brokers_and_virtual_hosts_are_separate(url, start):
    other_url = url + '.other'
    inboxes = {}
    for where in (url, other_url, url + '/vhost'):
        props = AMQPProps(url=where, exchange='same.name')
        inboxes[where] = []
        start(AMQPConsumer('news', props, inboxes[where].append))
    with AMQPProducer('news', AMQPProps(url=url, exchange='same.name'),
                      confirm=True) as producer:
        producer('only here')
    assert wait_for(lambda: inboxes[url])
    time.sleep(0.2)
    assert inboxes == {url: ['only here'], other_url: [], url + '/vhost': []}
    memory.reset(other_url.split('//')[1])


def test_durable_queue_outlives_connections_until_reset(url):
    props = AMQPProps(url=url, exchange=unique())
    work = unique('work')
    consumer = AMQPThread(AMQPConsumer(work, props, lambda b: None,
                                       shared=True))
    consumer.start()
    consumer.stop()
    with AMQPProducer(work, props, confirm=True) as producer:
        producer(1)
        producer(2)
    broker = memory.broker(props.memory)
    assert broker.connection_count() == 0
    assert broker.message_count(work) == 2
    assert work in broker.queue_names()
    memory.reset(props.memory)
    assert broker.queue_names() == [] and broker.exchange_names() == []
    brokers = [memory.broker(unique('memtest')) for _ in range(2)]
    for each in brokers:
        connection = connect(f'memory://{each.name}')
        connection.channel().queue_declare('kept', durable=True)
        connection.close()
    assert [b.queue_names() for b in brokers] == [['kept'], ['kept']]
    memory.reset()                      # every broker
    assert [b.queue_names() for b in brokers] == [[], []]


def test_reset_closes_connections_and_consumers_come_back(url, start):
    props = AMQPProps(url=url, exchange=unique())
    got = []
    consumer = AMQPConsumer('news', props, got.append)
    consumer.min_backoff = 0.05
    start(consumer)
    memory.reset(props.memory)
    assert wait_for(lambda: consumer.status()['reconnects'] == 1)
    assert wait_for(lambda: memory.broker(props.memory).consumer_count(
        consumer.queue_name) == 1)
    with AMQPProducer('news', props, confirm=True) as producer:
        producer('after reset')
    assert wait_for(lambda: got == ['after reset'])


def test_reset_closes_connections_as_a_broker_shutdown(url):
    connection = connect(url)
    channel = connection.channel()
    memory.reset(AMQPProps(url=url).memory)
    with pytest.raises(amqp.exceptions.ConnectionForced,
                       match="CONNECTION_FORCED - broker forced connection "
                             "closure with reason 'shutdown'"):
        channel.queue_declare('', exclusive=True)


# refusals

@pytest.mark.parametrize('call, feature', [
    (lambda ch: ch.queue_declare('', exclusive=True,
                                 arguments={'x-message-ttl': 10}),
     'x-message-ttl'),
    (lambda ch: ch.queue_declare('q', durable=True, auto_delete=False,
                                 arguments={'x-queue-type': 'stream'}),
     'stream queues'),
    (lambda ch: ch.queue_declare('', exclusive=True,
                                 arguments={'x-delivery-limit': 3}),
     'x-delivery-limit'),
    (lambda ch: ch.exchange_declare('d', 'x-delayed-message'),
     'exchange type'),
    (lambda ch: ch.exchange_declare('d', 'direct',
                                    arguments={'alternate-exchange': 'a'}),
     'exchange arguments'),
    (lambda ch: ch.exchange_bind('amq.direct', 'amq.fanout', ''),
     'exchange-to-exchange'),
    (lambda ch: ch.tx_select(), 'transactions'),
    (lambda ch: ch.basic_qos(10, 0, False), 'prefetch_size'),
    (lambda ch: ch.basic_publish(amqp.Message(b'x', expiration='10'),
                                 'amq.direct', 'k'), 'per-message TTL'),
    (lambda ch: ch.basic_recover(requeue=True), 'basic.recover'),
])
def test_what_is_not_modelled_raises(url, call, feature):
    connection = connect(url)
    try:
        channel = connection.channel()
        with pytest.raises(NotImplementedError, match=feature):
            call(channel)
        # the channel is still usable afterwards
        assert channel.queue_declare('', exclusive=True).queue
    finally:
        connection.close()


def test_consumer_with_a_length_limit_fails_naming_it(url):
    props = AMQPProps(url=url, exchange=unique())
    thread = AMQPThread(AMQPConsumer(unique('work'), props, print,
                                     shared=True,
                                     queue_arguments={'x-max-length': 5}))
    with pytest.raises(ConnectionFailed, match='x-max-length') as info:
        thread.start()
    assert isinstance(info.value.__cause__, NotImplementedError)


def test_tls_is_refused(url):
    with pytest.raises(NotImplementedError, match='TLS'):
        memory.Connection('x', ssl=True).connect()


# threads and copies

def test_drain_events_wakes_on_delivery(url):
    connection = connect(url)
    channel = connection.channel()
    name = channel.queue_declare('', exclusive=True).queue
    got = []
    channel.basic_consume(name, callback=got.append, no_ack=True)
    publisher = connect(url)

    def publish():
        time.sleep(0.2)
        publisher.channel().basic_publish(amqp.Message(b'hi'), '', name)

    thread = threading.Thread(target=publish)
    began = time.monotonic()
    thread.start()
    connection.drain_events(timeout=5)
    waited = time.monotonic() - began
    thread.join()
    assert [m.body for m in got] == [b'hi']
    assert 0.19 < waited < 1.0
    began = time.monotonic()
    with pytest.raises(OSError):        # socket.timeout
        connection.drain_events(timeout=0.1)
    assert time.monotonic() - began >= 0.1
    publisher.close()
    connection.close()


def test_messages_are_copies(url):
    connection = connect(url)
    channel = connection.channel()
    channel.auto_decode = False
    name = channel.queue_declare('', exclusive=True).queue
    body = b'x' * 300000            # more than one frame (frame_max)
    headers = {'tag': 'before', 'list': [1, 2]}
    channel.basic_publish(amqp.Message(body, application_headers=headers),
                          '', name)
    headers['tag'] = 'after'
    headers['list'].append(3)
    message = channel.basic_get(name, no_ack=True)
    assert message.body == body and message.body is not body
    assert message.headers == {'tag': 'before', 'list': [1, 2]}
    connection.close()


def test_many_threads_one_work_queue(url, start):
    props = AMQPProps(url=url, exchange=unique())
    work = unique('work')
    got = queue.Queue()
    seen = []
    for _ in range(2):
        start(AMQPConsumer(work, props, got.put, shared=True))
    producer = AMQPProducer(work, props)

    def publish(n):
        for i in range(250):
            producer((n, i))

    threads = [threading.Thread(target=publish, args=(n,))
               for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    producer.close()
    for _ in range(1000):
        seen.append(got.get(timeout=10))
    assert sorted(seen) == [(n, i) for n in range(4) for i in range(250)]
    time.sleep(0.2)
    assert got.empty()


def test_oversized_message_is_refused_by_the_consumer(url, start):
    props = AMQPProps(url=url, exchange=unique(), max_size=1000)
    work = unique('work')
    got = []
    consumer = AMQPConsumer(work, props, got.append, shared=True)
    start(consumer)
    with AMQPProducer(work, props, confirm=True) as producer:
        producer(b'y' * 5000)
        producer('small')
    assert wait_for(lambda: got == ['small'])
    assert consumer.status()['refused'] == 1
    assert memory.broker(props.memory).message_count(
        f'{props.exchange}.dead') == 1


def test_basic_get_and_unknown_delivery_tag(url):
    connection = connect(url)
    channel = connection.channel()
    name = channel.queue_declare('', exclusive=True).queue
    assert channel.basic_get(name) is None
    channel.basic_publish(amqp.Message(b'a'), '', name)
    message = channel.basic_get(name)
    assert message.delivery_info['message_count'] == 0
    channel.basic_ack(message.delivery_tag)
    with pytest.raises(amqp.exceptions.PreconditionFailed,
                       match='unknown delivery tag'):
        channel.basic_ack(99)
        channel.basic_get(name)     # the channel error arrives here
    connection.close()


def test_client_methods_table_covers_what_py_amqp_sends():
    # formats as the AMQP 0-9-1 spec has them; a method missing here is
    # refused as an unexpected frame
    assert memory.CLIENT_METHODS[spec.Basic.Publish] == 'Bssbb'
    assert set(memory.NOT_MODELLED) <= set(memory.CLIENT_METHODS)
