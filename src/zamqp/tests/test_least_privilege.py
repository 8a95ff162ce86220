"""Least privilege: a user who may write and read but configure nothing
(``rabbitmqctl set_permissions -p / USER '^$' '.*' '.*'``), on a private
node. With the default ``declare=True`` zamqp fails with a message that
names the exchange, the virtual host, the user and the fix; with
``declare=False`` (an administrator declared the topology) publishing,
consuming with acknowledgements and dead-lettering work; ``'passive'``
checks that the topology exists. The same through ZCML and zope.conf.
"""
import time
import uuid

import pytest

from zamqp import AMQPConnection
from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import AMQPThread
from zamqp import ConfigurationError
from zamqp import ConnectionFailed
from zamqp.exceptions import PublishFailed
from zamqp.deadletter import ERROR
from zamqp.testhelpers import Admin
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests import brokers

pytestmark = pytest.mark.skipif(
    brokers.missing(), reason='RabbitMQ is not installed on this machine '
    '(ZAMQP_TEST_URL points elsewhere); CI requires it')

USER = 'zamqp-writer'
#: May configure exchanges (zamqp.test.lp.*) but no queue.
EXCHANGER = 'zamqp-exchanger'
#: May configure everything but write nothing (queue.bind needs write).
BINDER = 'zamqp-binder'


class Node:
    """A private node with USER (configure '^$', write and read '.*')
    and an admin connection (guest) that declares the topology."""

    def __init__(self):
        self.broker = brokers.PrivateBroker()
        self.broker.start()
        self.password = f'pw-{uuid.uuid4().hex}'
        self.broker.ctl('add_user', USER, self.password)
        self.broker.ctl('set_permissions', '-p', '/', USER,
                        '^$', '.*', '.*')
        for user, configure, write in (
                (EXCHANGER, r'^zamqp\.test\.lp\.', '.*'),
                (BINDER, '.*', '^$')):
            self.broker.ctl('add_user', user, self.password)
            self.broker.ctl('set_permissions', '-p', '/', user,
                            configure, write, '.*')
        self.admin = Admin(self.broker.url)

    def url(self, user=USER):
        return (f'amqp://{user}:{self.password}@127.0.0.1:'
                f'{self.broker.port}/')

    def props(self, exchange, user=USER, **kw):
        kw.setdefault('connect_timeout', 3.0)
        return AMQPProps(url=self.url(user), exchange=exchange, **kw)

    def topology(self, exchange, queue=None, type='fanout',
                 dead_letters=False, routing_key=None, arguments=None):
        """What an administrator declares: the exchange, a durable queue
        bound to it, and a dead-letter exchange with its queue."""
        channel = self.admin.channel
        channel.exchange_declare(exchange, type, durable=True,
                                 auto_delete=False)
        if queue:
            channel.queue_declare(queue, durable=True, auto_delete=False)
            channel.queue_bind(queue, exchange,
                               queue if routing_key is None else routing_key,
                               arguments=arguments)
        if dead_letters:
            dead = f'{exchange}.dead'
            channel.exchange_declare(dead, 'fanout', durable=True,
                                     auto_delete=False)
            channel.queue_declare(dead, durable=True, auto_delete=False)
            channel.queue_bind(dead, dead, '')

    def cleanup(self):
        try:
            self.admin.close()
        finally:
            self.broker.cleanup()


@pytest.fixture(scope='module')
def node():
    made = Node()
    yield made
    made.cleanup()


def refusal(node, exc, user=USER):
    text = str(exc)
    assert 'refused the login' not in text
    assert 'check user and password' not in text
    assert f"user {user!r}" in text
    assert "virtual host '/'" in text
    assert f'rabbitmqctl set_permissions -p / {user}' in text
    assert 'declare=False' in text
    assert node.password not in text
    return text


def test_default_declare_is_refused_with_the_fix(node):
    exchange = unique('zamqp.test.lp')
    with pytest.raises(ConnectionFailed) as info:
        with AMQPConnection('q', node.props(exchange)) as conn:
            conn.channel
    text = refusal(node, info.value)
    assert f"may not configure (declare) exchange {exchange!r}" in text
    assert 'exchange.declare refused' in text
    assert info.value.recoverable is False


def test_refused_even_if_the_topology_exists(node):
    """exchange.declare of an existing exchange still needs configure."""
    exchange, queue = unique('zamqp.test.lp'), unique('zamqp.test.lpq')
    node.topology(exchange, queue)
    producer = AMQPProducer('k', node.props(exchange), confirm=True)
    with pytest.raises(ConnectionFailed) as info:
        producer('x')
    producer.close()
    refusal(node, info.value)
    consumer = AMQPConsumer(queue, node.props(exchange), print,
                            shared=True, dead_letter_exchange=None)
    thread = AMQPThread(consumer)
    with pytest.raises(ConnectionFailed) as info:
        thread.start()
    thread.stop()
    text = refusal(node, info.value)
    assert f'exchange {exchange!r}' in text


def start_failing(consumer):
    thread = AMQPThread(consumer)
    with pytest.raises(ConnectionFailed) as info:
        thread.start()
    thread.stop()
    return info.value


def test_queue_declare_and_bind_refused_name_the_queue(node):
    exchange, queue = unique('zamqp.test.lp'), unique('zamqp.test.lpq')
    consumer = AMQPConsumer(queue, node.props(exchange, user=EXCHANGER),
                            print, shared=True, dead_letter_exchange=None)
    text = refusal(node, start_failing(consumer), EXCHANGER)
    assert f"may not configure (declare) queue {queue!r}" in text
    assert 'queue.declare refused' in text
    consumer = AMQPConsumer(queue, node.props(exchange, user=BINDER),
                            print, shared=True, dead_letter_exchange=None)
    text = refusal(node, start_failing(consumer), BINDER)
    assert 'queue.bind refused' in text
    assert (f"binding queue {queue!r} to exchange {exchange!r} needs write "
            "permission on the queue and read permission on the exchange"
            in text)
    node.admin.delete_queue(queue)
    node.admin.delete_exchange(exchange)


def test_declare_false_publish_consume_ack_and_dead_letters(node):
    exchange, queue = unique('zamqp.test.lp'), unique('zamqp.test.lpq')
    node.topology(exchange, queue, type='direct', dead_letters=True)
    props = node.props(exchange, type='direct', declare=False)
    received = []

    def handle(body):
        if body == 'poison':
            raise ValueError('poison')
        received.append(body)

    consumer = AMQPConsumer(queue, props, handle, shared=True,
                            max_retries=1)
    thread = AMQPThread(consumer)
    thread.start()
    producer = AMQPProducer(queue, props, confirm=True, persistent=True)
    try:
        for body in ('one', 'poison', 'two', 'three'):
            producer(body)
        assert wait_for(lambda: len(received) == 3, timeout=10)
        dead = f'{exchange}.dead'
        assert wait_for(lambda: node.admin.queue_depth(dead) == 1,
                        timeout=10)
        assert wait_for(lambda: node.admin.queue_depth(queue) == 0)
    finally:
        producer.close()
        assert thread.stop()
    assert received == ['one', 'two', 'three']
    [letter] = node.admin.take(dead)
    assert 'poison' in letter.headers[ERROR]
    status = consumer.status()
    assert status['state'] != 'failed', status


def test_passive_checks_and_names_what_is_missing(node):
    exchange, queue = unique('zamqp.test.lp'), unique('zamqp.test.lpq')
    with pytest.raises(ConnectionFailed) as info:
        with AMQPConnection('q', node.props(exchange,
                                            declare='passive')) as conn:
            conn.channel
    text = str(info.value)
    assert f"exchange {exchange!r} does not exist" in text
    assert 'set declare=True' in text
    node.topology(exchange)
    consumer = AMQPConsumer(queue, node.props(exchange, declare='passive'),
                            print, shared=True, dead_letter_exchange=None)
    thread = AMQPThread(consumer)
    with pytest.raises(ConnectionFailed) as info:
        thread.start()
    thread.stop()
    assert f"queue {queue!r} does not exist" in str(info.value)
    node.topology(exchange, queue)
    received = []
    consumer = AMQPConsumer(queue, node.props(exchange, declare='passive'),
                            received.append, shared=True,
                            dead_letter_exchange=None)
    thread = AMQPThread(consumer)
    thread.start()
    producer = AMQPProducer(queue, node.props(exchange, declare='passive'),
                            confirm=True)
    producer('checked')
    producer.close()
    try:
        assert wait_for(lambda: received == ['checked'], timeout=10)
    finally:
        assert thread.stop()


def test_producer_and_consumer_keywords_override_the_props(node):
    exchange, queue = unique('zamqp.test.lp'), unique('zamqp.test.lpq')
    node.topology(exchange, queue)
    props = node.props(exchange)            # declare=True
    received = []
    consumer = AMQPConsumer(queue, props, received.append, shared=True,
                            declare=False, dead_letter_exchange=None)
    thread = AMQPThread(consumer)
    thread.start()
    producer = AMQPProducer(queue, props, confirm=True, declare=False)
    producer('kw')
    producer.close()
    try:
        assert wait_for(lambda: received == ['kw'], timeout=10)
    finally:
        assert thread.stop()


@pytest.mark.parametrize('confirm', [True, False])
def test_publishing_to_a_missing_exchange_it_may_not_declare_raises(
        node, confirm):
    """A 404 comes back on every connection: no retrying until
    confirm_timeout (it took 30 s), a PublishFailed naming the fix."""
    exchange = unique('zamqp.test.lp')
    producer = AMQPProducer(unique(), node.props(exchange), confirm=confirm,
                            declare=False, confirm_timeout=30)
    began = time.monotonic()
    try:
        with pytest.raises(PublishFailed) as raised:
            for number in range(100):   # unconfirmed: a later call sees it
                producer(number)
                time.sleep(0.02)
    finally:
        producer.close()
    assert time.monotonic() - began < 5
    text = str(raised.value)
    assert f'exchange {exchange!r} does not exist' in text
    assert 'NOT_FOUND' in text and 'declare=False' in text


def test_broadcast_consumer_needs_declare():
    props = AMQPProps(declare=False)
    with pytest.raises(ConfigurationError) as info:
        AMQPConsumer('q', props, print)._connect()
    assert 'needs shared=True' in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        AMQPConsumer('q', AMQPProps(), print, declare='passive')
    assert 'needs shared=True' in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        AMQPProps(declare='no')
    assert "declare='no' is not True, False or 'passive'" in str(info.value)


ZCML = """<configure xmlns="http://namespaces.zope.org/zope"
    xmlns:zamqp="http://namespaces.zope.org/zamqp">
  <include package="zamqp" file="meta.zcml" />
  <zamqp:connection name="lp" url="{url}" />
  <zamqp:producer name="lp-producer" connection="lp" exchange="{exchange}"
      type="direct" routing_key="{queue}" confirm="true"
      transactional="false" {producer} />
  <zamqp:consumer name="lp-consumer" connection="lp" exchange="{exchange}"
      type="direct" queue="{queue}" shared="true" {consumer} />
</configure>
"""


def zcml(node, exchange, queue, producer='', consumer=''):
    import zope.component
    from zope.configuration import xmlconfig
    from zamqp.interfaces import IConsumerSpec
    from zamqp.interfaces import IProducer
    from zope.component.testing import setUp
    from zope.component.testing import tearDown
    setUp()
    try:
        xmlconfig.string(ZCML.format(
            url=node.url(), exchange=exchange, queue=queue,
            producer=producer, consumer=consumer))
        return (zope.component.getUtility(IProducer, 'lp-producer'),
                zope.component.getUtility(IConsumerSpec, 'lp-consumer'))
    finally:
        tearDown()


@pytest.mark.zope
def test_zcml_and_zope_conf(node):
    from zamqp.tests.test_zope_zcml import ProductConfig
    exchange, queue = unique('zamqp.test.lp'), unique('zamqp.test.lpq')
    node.topology(exchange, queue, type='direct', dead_letters=True)
    # the default: refused, with the fix
    producer, spec = zcml(node, exchange, queue)
    with pytest.raises(ConnectionFailed) as info:
        producer('x')
    producer.close()
    refusal(node, info.value)
    # declare="false" on the producer and the consumer
    producer, spec = zcml(node, exchange, queue, 'declare="false"',
                          'declare="false"')
    assert spec.create().declaration.declare is False
    check_works(producer, spec, 'zcml')
    # declare off for the connection in zope.conf
    with ProductConfig(**{'lp.declare': 'off'}):
        producer, spec = zcml(node, exchange, queue)
    assert producer.props.declare is False
    check_works(producer, spec, 'zope.conf')
    # passive for the consumer in zope.conf
    with ProductConfig(**{'consumer.lp-consumer.declare': 'passive'}):
        producer, spec = zcml(node, exchange, queue, 'declare="false"')
    assert spec.create().declaration.declare == 'passive'
    check_works(producer, spec, 'passive')


def check_works(producer, spec, body):
    received = []
    consumer = spec.create()
    consumer.callback = lambda body, message: received.append(body)
    thread = AMQPThread(consumer)
    thread.start()
    try:
        producer(body)
        assert wait_for(lambda: received == [body], timeout=10), received
    finally:
        producer.close()
        assert thread.stop()
