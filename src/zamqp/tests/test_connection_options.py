"""Connection interop: RabbitMQ's URI query options, kombu's failover
URLs, the connection name RabbitMQ shows, pathlib paths, plugin exchange
types, headers bindings and queues declared by kombu."""
import pathlib
import shutil
import ssl
import subprocess

import pytest

from zamqp import AMQPConnection
from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import AMQPThread
from zamqp import ConfigurationError
from zamqp import ConnectionFailed
from zamqp import tls
from zamqp.connection import connection_name
from zamqp.testhelpers import broker_props
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests.certs import Certificates


# --- URL parsing, no broker ------------------------------------------------

def test_rabbitmq_uri_query_options():
    props = AMQPProps(url='amqp://u:p@h/v?heartbeat=5&connection_timeout='
                      '2500&channel_max=16&frame_max=65536&auth_mechanism='
                      'amqplain')
    assert (props.heartbeat, props.connect_timeout, props.channel_max,
            props.frame_max, props.auth_mechanism) == \
        (5, 2.5, 16, 65536, 'AMQPLAIN')


def test_explicit_keywords_win_over_the_url():
    props = AMQPProps(url='amqp://h/?heartbeat=5&connection_timeout=2500&'
                      'channel_max=16&frame_max=65536&auth_mechanism=plain',
                      heartbeat=7, connect_timeout=1.0, channel_max=8,
                      frame_max=131072, auth_mechanism='AMQPLAIN')
    assert (props.heartbeat, props.connect_timeout, props.channel_max,
            props.frame_max, props.auth_mechanism) == \
        (7, 1.0, 8, 131072, 'AMQPLAIN')


@pytest.mark.parametrize('option, nearest', [
    ('heartbeet=5', 'heartbeat'), ('connection_timout=5',
                                   'connection_timeout'),
    ('channelmax=5', 'channel_max'), ('auth_mechanisms=plain',
                                      'auth_mechanism')])
def test_unknown_option_names_the_nearest(option, nearest):
    with pytest.raises(ConfigurationError) as info:
        AMQPProps(url=f'amqp://h/?{option}')
    assert f'did you mean {nearest!r}?' in str(info.value)


@pytest.mark.parametrize('query, words', [
    ('channel_max=70000', 'channel_max must be a whole number from 0 to '
     '65535'),
    ('frame_max=big', "frame_max='big' is not a number"),
    ('auth_mechanism=kerberos', 'is not PLAIN or AMQPLAIN or EXTERNAL'),
    ('connection_timeout=soon', 'is not a number')])
def test_bad_option_values(query, words):
    with pytest.raises(ConfigurationError) as info:
        AMQPProps(url=f'amqp://h/?{query}')
    assert words in str(info.value)


def test_failover_urls_are_several_brokers():
    props = AMQPProps(url='amqp://u:p@h1:5673/v;amqp://u:p@h2/v')
    assert props.hosts == (('h1', 5673), ('h2', 5672))
    assert (props.user, props.password, props.virtual_host) == \
        ('u', 'p', 'v')
    assert props.candidates() == ['h1:5673', 'h2:5672']
    tls = AMQPProps(url='amqps://h1;amqps://h2', verify=False)
    assert tls.hosts == (('h1', 5671), ('h2', 5671))


@pytest.mark.parametrize('url, words', [
    ('amqp://u:p@h1/v;amqp://u:other@h2/v', 'differ in password'),
    ('amqp://h1/v;amqp://h2/w', 'differ in virtual_host'),
    ('amqp://h1;amqps://h2', 'differ in ssl'),
    ('amqp://h1?heartbeat=5;amqp://h2', 'differ in heartbeat'),
    ('amqp://u:pa;ss@h1/', "';' that does not separate amqp:// URLs"),
    ('amqp://h1;', "';' that does not separate amqp:// URLs"),
    ('amqp://h1;redis://h2', "';' that does not separate amqp:// URLs")])
def test_failover_urls_that_cannot_be_one_set_of_settings(url, words):
    with pytest.raises(ConfigurationError) as info:
        AMQPProps(url=url)
    assert words in str(info.value)
    assert 'other' not in str(info.value).replace('another', '')


def test_paths_are_accepted_for_the_tls_files(tmp_path):
    certs = Certificates(str(tmp_path))
    props = AMQPProps(ssl=True, ca_file=pathlib.Path(certs.ca),
                      cert_file=pathlib.Path(certs.client_cert),
                      key_file=pathlib.Path(certs.client_key))
    assert (props.ca_file, props.cert_file, props.key_file) == \
        (certs.ca, certs.client_cert, certs.client_key)
    assert props == AMQPProps(ssl=True, ca_file=certs.ca,
                              cert_file=certs.client_cert,
                              key_file=certs.client_key)
    assert tls.context(props).verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ConfigurationError) as info:
        AMQPProps(ssl=True, ca_file=tmp_path / 'missing.pem')
    assert 'missing.pem' in str(info.value)


def test_plugin_exchange_types_and_arguments():
    props = AMQPProps(type='x-delayed-message',
                      exchange_arguments={'x-delayed-type': 'direct'})
    assert props.replace(exchange='e').exchange_arguments == \
        {'x-delayed-type': 'direct'}
    assert hash(props) == hash(props.replace())
    for wrong in ('fanoutt', 'x-', 'Fanout'):
        with pytest.raises(ConfigurationError) as info:
            AMQPProps(type=wrong)
        assert "plugin's type" in str(info.value)
    with pytest.raises(ConfigurationError):
        AMQPProps(exchange_arguments=['x-delayed-type'])


def test_default_connection_name():
    import os
    name = connection_name(AMQPProps())
    assert name.startswith('zamqp ') and name.endswith(f' {os.getpid()}')
    assert connection_name(AMQPProps(connection_name='shop web 1')) == \
        'shop web 1'
    with pytest.raises(ConfigurationError):
        AMQPProps(connection_name='')


@pytest.mark.zope
def test_connection_name_in_zcml_and_zope_conf():
    from zamqp.tests.test_zope_zcml import ProductConfig
    from zamqp.zope import settings
    given = {'url': 'amqp://h/', 'connection_name': 'shop web'}
    props = settings.connection_props('default', given)
    assert props.connection_name == 'shop web'
    with ProductConfig(**{'connection_name': 'shop web 2',
                          'billing.channel_max': '16',
                          'billing.auth_mechanism': 'EXTERNAL'}):
        assert settings.connection_props(
            'default', given, with_overrides=True).connection_name == \
            'shop web 2'
        billing = settings.connection_props(
            'billing', {'url': 'amqps://h/'}, with_overrides=True)
    assert (billing.channel_max, billing.auth_mechanism) == (16, 'EXTERNAL')


# --- against the broker ----------------------------------------------------

def client_properties_of(connection):
    """RabbitMQ's client_properties of the connection with our local
    port, as rabbitmqctl list_connections prints them."""
    if shutil.which('rabbitmqctl') is None or \
            '127.0.0.1:5672' not in broker_url():
        pytest.skip('rabbitmqctl of the test broker is not at hand')
    port = connection.connection.sock.getsockname()[1]
    listing = subprocess.run(
        ['rabbitmqctl', 'list_connections', 'name', 'client_properties'],
        capture_output=True, text=True, timeout=30, check=True).stdout
    for line in listing.splitlines():
        if line.startswith(f'127.0.0.1:{port} ->'):
            return line
    raise AssertionError(f'no connection from port {port} in {listing}')


def test_connection_name_in_rabbitmqctl(make_props):
    props = make_props(connection_name='zamqp-test shop worker 7')
    with AMQPConnection('q', props) as conn:
        conn.channel
        line = client_properties_of(conn)
    assert '{"connection_name","zamqp-test shop worker 7"}' in line
    with AMQPConnection('q', props.replace(connection_name=None)) as conn:
        conn.channel
        line = client_properties_of(conn)
    assert f'{{"connection_name","{connection_name(props.replace())}"}}' \
        in line or 'zamqp ' in line


def test_channel_max_and_frame_max_are_negotiated(make_props):
    props = make_props()
    url_props = AMQPProps(url=broker_url() + '?channel_max=7&frame_max='
                          '16384', exchange=props.exchange)
    with AMQPConnection('q', url_props) as conn:
        conn.channel
        assert conn.connection.channel_max == 7
        assert conn.connection.frame_max == 16384
    with AMQPConnection('q', props) as conn:
        conn.channel
        assert conn.connection.channel_max > 7
        assert conn.connection.frame_max > 16384


def test_auth_mechanism_plain_logs_in(make_props):
    with AMQPConnection('q', make_props(auth_mechanism='PLAIN')) as conn:
        conn.channel
        assert conn.is_open


def test_absent_plugin_type_is_refused_clearly(make_props):
    props = make_props(type='x-no-such-plugin-type')
    with pytest.raises(ConnectionFailed) as info:
        with AMQPConnection('q', props) as conn:
            conn.channel
    text = str(info.value)
    assert "the broker refused the type of exchange" in text
    assert 'x-no-such-plugin-type' in text
    assert 'rabbitmq-plugins enable' in text
    assert info.value.recoverable is False
    props = make_props(type='x-delayed-message',
                       exchange_arguments={'x-delayed-type': 'direct'})
    with pytest.raises(ConnectionFailed) as info:
        with AMQPConnection('q', props) as conn:
            conn.channel
    assert ("unknown exchange type 'x-delayed-message'" in str(info.value))
    assert 'enable rabbitmq_delayed_message_exchange' in str(info.value)


def test_headers_exchange_routes_by_binding_arguments(make_props, admin,
                                                      start):
    props = make_props(type='headers')
    received = {'red': [], 'blue': []}
    queues = []
    for color in received:
        queue = unique('zamqp.test.headers')
        queues.append(queue)
        start(AMQPConsumer(queue, props, received[color].append,
                           shared=True, dead_letter_exchange=None,
                           binding_arguments={'x-match': 'all',
                                              'color': color}))
    producer = AMQPProducer('any', props, confirm=True)
    try:
        producer('red 1', headers={'color': 'red'})
        producer('blue 1', headers={'color': 'blue'})
        producer('green 1', headers={'color': 'green'})
        producer('red 2', headers={'color': 'red', 'size': 'xl'})
        assert wait_for(lambda: len(received['red']) == 2
                        and len(received['blue']) == 1)
    finally:
        producer.close()
    assert received == {'red': ['red 1', 'red 2'], 'blue': ['blue 1']}
    for queue in queues:
        admin.delete_queue(queue)


@pytest.fixture
def kombu_queue(admin):
    """A durable queue with x-max-priority declared by real kombu, on a
    direct exchange; deleted afterwards."""
    kombu = pytest.importorskip('kombu')
    exchange = kombu.Exchange(unique('zamqp.test.kombu'), 'direct',
                              durable=True)
    queue = kombu.Queue(unique('zamqp.test.kombuq'), exchange,
                        routing_key='jobs', durable=True,
                        queue_arguments={'x-max-priority': 10})
    with kombu.Connection(broker_url()) as conn:
        queue(conn.default_channel).declare()
        producer = conn.Producer(serializer='json')
        producer.publish({'job': 1}, exchange=exchange, routing_key='jobs',
                         declare=[queue], priority=5)
    yield queue
    admin.delete_queue(queue.name)
    admin.delete_exchange(exchange.name)


def test_inequivalent_queue_argument_is_explained(kombu_queue):
    props = broker_props(exchange=kombu_queue.exchange.name, type='direct')
    consumer = AMQPConsumer(kombu_queue.name, props, print, shared=True,
                            routing_key='jobs', dead_letter_exchange=None)
    thread = AMQPThread(consumer)
    with pytest.raises(ConnectionFailed) as info:
        thread.start()
    thread.stop()
    text = str(info.value)
    assert f"queue {kombu_queue.name!r} exists with other settings" in text
    assert "its argument 'x-max-priority' differs" in text
    assert "queue_arguments={'x-max-priority': ...}" in text
    assert 'declare=False' in text


def test_shared_consumer_attaches_to_a_kombu_queue(kombu_queue):
    props = broker_props(exchange=kombu_queue.exchange.name, type='direct')
    received = []
    consumer = AMQPConsumer(kombu_queue.name, props, received.append,
                            shared=True, routing_key='jobs',
                            dead_letter_exchange=None,
                            queue_arguments={'x-max-priority': 10},
                            accept=('json',))
    thread = AMQPThread(consumer)
    thread.start()
    producer = AMQPProducer('jobs', props, serializer='json', confirm=True)
    try:
        producer({'job': 2})
        assert wait_for(lambda: len(received) == 2), received
    finally:
        producer.close()
        assert thread.stop()
    assert received == [{'job': 1}, {'job': 2}]


def test_attach_to_a_kombu_quorum_queue(admin):
    kombu = pytest.importorskip('kombu')
    exchange = kombu.Exchange(unique('zamqp.test.kombu'), 'direct',
                              durable=True)
    queue = kombu.Queue(unique('zamqp.test.kombuq'), exchange,
                        routing_key='jobs', durable=True,
                        queue_arguments={'x-queue-type': 'quorum'})
    with kombu.Connection(broker_url()) as conn:
        queue(conn.default_channel).declare()
    try:
        props = broker_props(exchange=exchange.name, type='direct')
        consumer = AMQPConsumer(queue.name, props, print, shared=True,
                                routing_key='jobs', queue_type='quorum',
                                dead_letter_exchange=None)
        thread = AMQPThread(consumer)
        with pytest.raises(ConnectionFailed) as info:
            thread.start()
        thread.stop()
        assert "inequivalent arg 'x-delivery-limit'" in str(info.value)
        assert ("give queue_arguments={'x-queue-type': 'quorum'} instead "
                "of queue_type" in str(info.value))
        received = []
        thread = AMQPThread(AMQPConsumer(
            queue.name, props, received.append, shared=True,
            routing_key='jobs', dead_letter_exchange=None,
            queue_arguments={'x-queue-type': 'quorum'}))
        thread.start()
        producer = AMQPProducer('jobs', props, confirm=True)
        producer('to the quorum queue')
        producer.close()
        assert wait_for(lambda: received == ['to the quorum queue'])
        assert thread.stop()
    finally:
        admin.delete_queue(queue.name)
        admin.delete_exchange(exchange.name)


def test_a_plugin_exchange_type_on_a_node_with_the_plugin():
    """x-consistent-hash (a plugin that ships with RabbitMQ, enabled on a
    private node): two shared consumers bound with weight '1' each share
    the messages by routing key."""
    from zamqp.tests import brokers
    if brokers.missing():
        pytest.skip('RabbitMQ is not installed on this machine')
    broker = brokers.PrivateBroker()
    broker._write('enabled_plugins',
                  '[rabbitmq_consistent_hash_exchange].\n')
    try:
        broker.start()
        props = AMQPProps(url=broker.url, exchange=unique('zamqp.test.hash'),
                          type='x-consistent-hash', connect_timeout=3.0)
        received = [[], []]
        threads = [AMQPThread(AMQPConsumer(
            unique('zamqp.test.hashq'), props, received[i].append,
            shared=True, routing_key='1', dead_letter_exchange=None))
            for i in range(2)]
        for thread in threads:
            thread.start()
        producer = AMQPProducer('any', props, confirm=True)
        for number in range(200):
            producer(number, routing_key=f'order-{number}')
        producer.close()
        assert wait_for(lambda: sum(map(len, received)) == 200, timeout=10)
        for thread in threads:
            assert thread.stop()
        print(f'x-consistent-hash: 200 messages, {len(received[0])} and '
              f'{len(received[1])} per queue')
        assert sorted(received[0] + received[1]) == list(range(200))
        assert all(len(part) > 20 for part in received), \
            [len(part) for part in received]
    finally:
        broker.cleanup()


@pytest.mark.zope
def test_exchange_queue_and_binding_arguments_in_zcml():
    import zope.component
    from zope.component.testing import setUp
    from zope.component.testing import tearDown
    from zope.configuration import xmlconfig
    from zamqp.interfaces import IConsumerSpec
    from zamqp.interfaces import IProducer
    from zamqp.tests.test_zope_zcml import ProductConfig
    setUp()
    try:
        with ProductConfig(**{'consumer.c.queue_arguments':
                              'x-max-priority=10 x-message-ttl=60000 '
                              'x-single-active-consumer=true'}):
            xmlconfig.string('''
<configure xmlns="http://namespaces.zope.org/zope"
    xmlns:zamqp="http://namespaces.zope.org/zamqp">
  <include package="zamqp" file="meta.zcml" />
  <zamqp:connection url="amqp://h/" />
  <zamqp:producer name="p" exchange="later" type="x-delayed-message"
      exchange_arguments="x-delayed-type=direct" />
  <zamqp:consumer name="c" exchange="paint" type="headers" shared="true"
      binding_arguments="x-match=any color=red size=10" />
</configure>''')
        producer = zope.component.getUtility(IProducer, 'p')
        consumer = zope.component.getUtility(IConsumerSpec, 'c').create()
    finally:
        tearDown()
    assert producer.props.type == 'x-delayed-message'
    assert producer.props.exchange_arguments == {'x-delayed-type': 'direct'}
    declaration = consumer.declaration
    assert declaration.binding_arguments == {
        'x-match': 'any', 'color': 'red', 'size': 10}
    assert declaration.arguments() == {
        'x-max-priority': 10, 'x-message-ttl': 60000,
        'x-single-active-consumer': True}
