"""Several brokers: multi-host settings, failover, a real two-node cluster
with a quorum queue (private nodes, never the shared broker)."""
import inspect
import pickle
import time

import amqp
import pytest

from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import ConfigurationError
from zamqp.connection import connect
from zamqp.exceptions import ConnectionFailed
from zamqp.exceptions import PublishFailed
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests import brokers
from zamqp.tests.test_faults import Tally
from zamqp.tests.brokers import report


# multi-host settings

def test_hosts_keyword_and_url_list_are_the_same_settings():
    a = AMQPProps(hosts=['h1:5672', 'h2:5673'], user='u', password='p')
    b = AMQPProps(url='amqp://u:p@h1:5672,h2:5673/')
    assert a == b and a.hosts == (('h1', 5672), ('h2', 5673))
    assert (a.host, a.port, a.address) == ('h1', 5672, 'h1:5672')
    assert a.addresses == ['h1:5672', 'h2:5673']


def test_a_host_without_port_gets_the_default_port():
    assert AMQPProps(hosts='h1,h2:1', port=7).hosts == (('h1', 7), ('h2', 1))
    assert AMQPProps(url='amqps://h1,[::1]/').addresses == \
        ['h1:5671', '[::1]:5671']


def test_single_host_is_unchanged():
    props = AMQPProps(url='amqp://u:p@h:5673/v')
    assert props.hosts == (('h', 5673),)
    assert props.url() == 'amqp://u@h:5673/v'


def test_multi_host_url_options_and_password():
    props = AMQPProps(url='amqp://bob:Se%40cret@h1,h2:5673/prod?heartbeat=5')
    assert (props.user, props.password, props.virtual_host,
            props.heartbeat) == ('bob', 'Se@cret', 'prod', 5)
    assert 'Se' not in props.url() and 'cret' not in repr(props)
    assert props.url() == 'amqp://bob@h1:5672,h2:5673/prod'


@pytest.mark.parametrize('kw, words', [
    (dict(hosts=[]), 'empty'),
    (dict(hosts=['h:x']), "host 'h:x'"),
    (dict(hosts=['h:70000']), "host 'h:70000'"),
    (dict(hosts=['a'], host='b'), 'not both'),
])
def test_bad_hosts_name_the_setting(kw, words):
    with pytest.raises(ConfigurationError) as info:
        AMQPProps(**kw)
    assert words in str(info.value)


def test_replace_keeps_the_hosts_unless_a_host_is_given():
    props = AMQPProps(hosts=['h1', 'h2'])
    assert props.replace(exchange='x').hosts == props.hosts
    assert props.replace(host='h3').hosts == (('h3', 5672),)


def test_candidates_round_robin():
    props = AMQPProps(hosts=['a', 'b', 'c'])
    assert props.candidates() == ['a:5672', 'b:5672', 'c:5672']
    props.connected('b:5672')
    assert props.candidates() == ['c:5672', 'a:5672', 'b:5672']
    props.connected('c:5672')
    assert props.candidates() == ['a:5672', 'b:5672', 'c:5672']


def _up():
    return AMQPProps(url=broker_url()).address


def test_connect_fails_over_to_a_broker_that_is_up():
    down = f'127.0.0.1:{brokers.free_port()}'
    props = AMQPProps(url=broker_url(), hosts=[down, _up()])
    conn = connect(props, 0)
    try:
        assert conn.host == _up()
    finally:
        conn.close()


def test_connection_failed_names_every_broker_tried():
    down = [f'127.0.0.1:{brokers.free_port()}' for _ in range(3)]
    props = AMQPProps(hosts=down, password='Xy9secret')
    with pytest.raises(ConnectionFailed) as info:
        connect(props, 0)
    text = str(info.value)
    assert 'none of the 3 brokers' in text and info.value.recoverable
    assert all(address in text for address in down)
    assert 'Xy9secret' not in text


def test_a_refused_login_is_not_retried_on_other_hosts():
    down = f'127.0.0.1:{brokers.free_port()}'
    props = AMQPProps(url=broker_url(), hosts=[_up(), down],
                      password='wrong')
    with pytest.raises(ConnectionFailed) as info:
        connect(props, 0)
    assert not info.value.recoverable and down not in str(info.value)


def test_producer_and_consumer_fail_over(make_props, start):
    down = f'127.0.0.1:{brokers.free_port()}'
    props = make_props(hosts=[down, _up()])
    tally = Tally()
    start(AMQPConsumer('failover', props, tally))
    with AMQPProducer('failover', props.replace()) as producer:
        producer('hello')
        assert wait_for(lambda: 'hello' in tally.distinct)


# a real cluster

pytestmark_cluster = pytest.mark.skipif(
    brokers.missing(), reason='RabbitMQ is not installed on this machine '
    '(ZAMQP_TEST_URL points elsewhere); CI requires it')


def _declare_quorum(address, exchange, queue):
    conn = amqp.Connection(address, connect_timeout=5)
    conn.connect()
    try:
        channel = conn.channel()
        channel.exchange_declare(exchange, 'fanout', durable=True,
                                 auto_delete=False)
        channel.queue_declare(queue, durable=True, auto_delete=False,
                              arguments={'x-queue-type': 'quorum'})
        channel.queue_bind(queue, exchange, queue)
    finally:
        conn.close()


def _depth(address, queue):
    conn = amqp.Connection(address, connect_timeout=5)
    conn.connect()
    try:
        return conn.channel().queue_declare(queue, passive=True).message_count
    finally:
        conn.close()


def _quorum_consumer(queue, props, callback):
    """A zamqp consumer of a quorum queue, if AMQPConsumer has queue_type."""
    if 'queue_type' not in inspect.signature(AMQPConsumer).parameters:
        return None
    return AMQPConsumer(queue, props, callback, shared=True, durable=True,
                        ack=True, queue_type='quorum')


def _drain(address, queue):
    """The bodies in ``queue``, fetched with basic_get and acked."""
    conn = amqp.Connection(address, connect_timeout=5)
    conn.connect()
    bodies = []
    try:
        channel = conn.channel()
        while (message := channel.basic_get(queue)) is not None:
            bodies.append(pickle.loads(message.body))
            channel.basic_ack(message.delivery_tag)
    finally:
        conn.close()
    return bodies


@pytestmark_cluster
@pytest.mark.slow
def test_two_node_cluster_failover_and_quorum_queue(start):
    began = time.monotonic()
    cluster = brokers.Cluster(2)
    try:
        cluster.start()
        _cluster_scenario(cluster, start, began)
    finally:
        cluster.cleanup()


def _cluster_scenario(cluster, start, began):
    a, b = cluster.nodes
    assert sorted(cluster.running_nodes()) == sorted([a.node, b.node])
    started = time.monotonic() - began
    broadcast, durable = unique(), unique()
    quorum = unique('zamqp.cluster.quorum')

    def props(exchange):
        return AMQPProps(url=f'amqp://guest:guest@{a.address},{b.address}/',
                         exchange=exchange, connect_timeout=2, timeout=5,
                         heartbeat=2)

    work = Tally()
    declarer = _quorum_consumer(quorum, props(durable), work)
    if declarer is None:
        _declare_quorum(a.address, durable, quorum)
    else:
        start(declarer).stop()

    with AMQPProducer(quorum, props(durable), persistent=True,
                      confirm=True) as producer:
        for n in range(100):
            producer(n)
    everyone = Tally()
    listener = AMQPConsumer('cluster', props(broadcast), everyone)
    listener.max_backoff = 1.0
    start(listener)
    producer = AMQPProducer('cluster', props(broadcast), confirm=True)
    producer('before')
    assert wait_for(lambda: 'before' in everyone.distinct, 10)
    assert producer.connection.connection.host == a.address

    # node a dies: the clients move to b and go on
    a.kill()
    killed = time.monotonic()
    sent, failed = [], 0
    while len(sent) < 200 and time.monotonic() - killed < 30:
        try:
            producer(len(sent))
        except (PublishFailed, ConnectionFailed):
            failed += 1
            time.sleep(0.1)
            continue
        sent.append(len(sent))
        time.sleep(0.01)
    assert producer.connection.connection.host == b.address

    def listening():
        producer('probe')
        return 'probe' in everyone.distinct
    assert wait_for(listening, 20, interval=0.2)
    failover = time.monotonic() - killed
    received_on_b = len(set(sent) & everyone.distinct)

    # a returns: the quorum queue lost nothing, and the clients use a again
    a.start()
    assert wait_for(lambda: len(cluster.running_nodes()) == 2, 20)
    assert wait_for(lambda: _depth(b.address, quorum) == 100, 20)
    producer.close()            # round-robin: the next connection is to a
    producer('back on a')
    assert producer.connection.connection.host == a.address
    assert wait_for(lambda: 'back on a' in everyone.distinct, 10)
    producer.close()
    worker = _quorum_consumer(quorum, props(durable), work)
    if worker is None:
        work(None)
        for body in _drain(b.address, quorum):
            work(body)
    else:
        start(worker)
    assert wait_for(lambda: set(range(100)) <= work.distinct, 20)
    report(f'two-node cluster (up in {started:.1f} s): node 1 killed -9, '
           f'both clients on node 2 {failover:.1f} s later; {failed} '
           f'publish errors, {len(sent)} broadcasts sent, {received_on_b} '
           f'received (at-most-once while the listener reconnected); '
           f'quorum queue after node 1 returned: '
           f'{len(work.distinct & set(range(100)))} of 100, lost 0; '
           f'test took {time.monotonic() - began:.0f} s')
