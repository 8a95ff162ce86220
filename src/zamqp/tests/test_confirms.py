"""Publisher confirms against the real broker: confirmed publishing,
nacks, returns, timeouts, batches, publish on commit and ZCML."""
import logging
import socket
import threading
import time

import amqp
import pytest
import transaction
import zope.component
from plone.testing import zca
from zope.configuration import xmlconfig

import zamqp
from zamqp import AMQPProducer
from zamqp.zope import settings
from zamqp.exceptions import PublishFailed
from zamqp.interfaces import IProducer
from zamqp import NotConfirmed
from zamqp.testhelpers import broker_props
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import wait_for


@pytest.fixture
def direct(make_props, admin):
    """Props of a direct exchange with queue ``<exchange>.q`` bound by
    key 'q' and queue ``<exchange>.full`` (x-max-length 1, overflow
    reject-publish, already full) bound by key 'full'."""
    props = make_props(type='direct')
    channel = admin.channel
    channel.exchange_declare(props.exchange, 'direct', durable=True,
                             auto_delete=False)
    queues = {'q': f'{props.exchange}.q', 'full': f'{props.exchange}.full'}
    channel.queue_declare(queues['q'], durable=True, auto_delete=False)
    channel.queue_declare(queues['full'], durable=True, auto_delete=False,
                          arguments={'x-max-length': 1,
                                     'x-overflow': 'reject-publish'})
    for key, queue in queues.items():
        channel.queue_bind(queue, props.exchange, key)
    channel.basic_publish(amqp.Message(b'filler'), props.exchange, 'full')
    assert wait_for(lambda: admin.queue_depth(queues['full']) == 1)
    props.queues = queues
    yield props
    for queue in queues.values():
        admin.delete_queue(queue)


@pytest.fixture
def confirming(direct):
    with AMQPProducer('q', direct, confirm=True, confirm_timeout=5,
                      mandatory=True) as producer:
        yield producer


def bodies(admin, queue):
    """Get and decode every message of ``queue``."""
    import pickle
    return [pickle.loads(message.body) for message in admin.take(queue)]


def test_confirmed_publish_returns_once_the_message_is_queued(
        confirming, direct, admin):
    for n in range(1, 21):
        confirming(n)
        # no waiting: the broker confirmed, so the queue holds it now
        assert admin.queue_depth(direct.queues['q']) == n


def test_unroutable_mandatory_message_raises_with_id_and_key(confirming):
    with pytest.raises(NotConfirmed) as info:
        confirming('lost', routing_key='nowhere')
    error = info.value
    assert isinstance(error, PublishFailed)
    [(message_id, key, reply)] = error.returned
    assert key == 'nowhere' and 'NO_ROUTE' in reply
    text = str(error)
    assert text.startswith('basic_publish: ')
    assert message_id in text and "'nowhere'" in text
    assert 'unroutable' in text
    assert error.nacked == [] and error.unconfirmed == []
    assert confirming('next') is not None     # the channel goes on


def test_without_mandatory_unroutable_message_is_confirmed(direct):
    with AMQPProducer('q', direct, confirm=True) as producer:
        assert producer('dropped', routing_key='nowhere')


def test_nacked_message_raises_with_its_id(confirming, direct, admin):
    with pytest.raises(NotConfirmed) as info:
        confirming('rejected', routing_key='full')
    error = info.value
    assert len(error.nacked) == 1
    assert error.nacked[0] in str(error) and 'nacked' in str(error)
    assert error.message_ids == error.nacked
    assert admin.queue_depth(direct.queues['full']) == 1
    confirming('fine')
    assert admin.queue_depth(direct.queues['q']) == 1


def test_batch_reports_exactly_the_nacked_message(confirming, direct,
                                                  admin):
    with pytest.raises(NotConfirmed) as info:
        with confirming.batch() as batch:
            for n in range(10):
                batch(n, routing_key='full' if n == 6 else None)
    error = info.value
    assert error.nacked == [batch.ids[6]]
    assert error.returned == [] and error.unconfirmed == []
    assert '1 of 10 messages' in str(error)
    assert bodies(admin, direct.queues['q']) == [0, 1, 2, 3, 4, 5, 7, 8, 9]


def test_batch_lists_nacked_and_returned_ids(confirming):
    with pytest.raises(NotConfirmed) as info:
        confirming.publish_many(['a', 'b'], routing_key='full')
    assert len(info.value.nacked) == 2
    with pytest.raises(NotConfirmed) as info:
        with confirming.batch() as batch:
            batch('x')
            batch('y', routing_key='nowhere')
            batch('z', routing_key='full')
    error = info.value
    assert error.nacked == [batch.ids[2]]
    assert [entry[:2] for entry in error.returned] == [
        (batch.ids[1], 'nowhere')]


def test_publish_many_waits_once_for_all_confirms(confirming, direct,
                                                  admin, monkeypatch):
    waits = []
    real = confirming._await

    def counting(records, *args):
        waits.append(len(records))
        return real(records, *args)

    monkeypatch.setattr(confirming, '_await', counting)
    ids = confirming.publish_many(range(500))
    assert len(ids) == len(set(ids)) == 500
    assert waits == [500]
    assert admin.queue_depth(direct.queues['q']) == 500
    assert bodies(admin, direct.queues['q']) == list(range(500))


def test_batch_inside_sees_producer_calls_too(confirming, direct, admin):
    with confirming.batch():
        for n in range(50):
            confirming(n)
    assert admin.queue_depth(direct.queues['q']) == 50


def test_batch_without_confirm_publishes(direct, admin):
    with AMQPProducer('q', direct) as producer:
        ids = producer.publish_many(range(100))
    assert len(ids) == 100
    assert wait_for(lambda: admin.queue_depth(direct.queues['q']) == 100)


class StallingProxy:
    """A TCP proxy to the broker whose broker-to-client direction can be
    stopped: the broker then seems not to answer (its confirms never
    arrive), while everything the client sends still reaches it."""

    def __init__(self, target):
        self.target = target
        self.server = socket.create_server(('127.0.0.1', 0))
        self.port = self.server.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.sockets = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        try:
            client, _ = self.server.accept()
        except OSError:
            return
        upstream = socket.create_connection(self.target)
        self.sockets += [client, upstream]
        for src, dst, gate in ((client, upstream, None),
                               (upstream, client, self.flowing)):
            threading.Thread(target=self._pipe, args=(src, dst, gate),
                             daemon=True).start()

    def _pipe(self, src, dst, gate):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    return
                if gate is not None:
                    gate.wait()
                dst.sendall(data)
        except OSError:
            return

    def close(self):
        self.flowing.set()
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass


def test_confirm_timeout_when_the_broker_does_not_answer(direct, admin):
    # A real stall, deterministic: the proxy holds back everything the
    # broker sends once the channel is open, so no confirm can arrive.
    proxy = StallingProxy(('127.0.0.1', direct.port))
    stalled = direct.replace(host='127.0.0.1', port=proxy.port)
    producer = AMQPProducer('q', stalled, confirm=True, confirm_timeout=0.5)
    try:
        producer('before')      # connects, confirm mode on, confirmed
        proxy.flowing.clear()
        start = time.monotonic()
        with pytest.raises(NotConfirmed) as info:
            producer('stalled')
        elapsed = time.monotonic() - start
        assert 0.45 <= elapsed < 3
        error = info.value
        assert len(error.unconfirmed) == 1
        assert error.unconfirmed[0] in str(error)
        assert 'not confirmed within 0.5 s' in str(error)
        # the broker got it nevertheless: the confirm is what is missing
        assert wait_for(lambda: admin.queue_depth(direct.queues['q']) == 2)
        with pytest.raises(NotConfirmed) as info:
            producer.publish_many(range(5))
        assert len(info.value.unconfirmed) == 5
        proxy.flowing.set()     # late confirms are ignored; it goes on
        producer('after')
        assert admin.queue_depth(direct.queues['q']) == 8
    finally:
        proxy.close()
        producer.close()


def test_confirm_timeout_default_is_the_props_timeout(direct):
    producer = AMQPProducer('q', direct.replace(timeout=7.5), confirm=True)
    assert producer.confirm_timeout == 7.5


def test_lost_connection_in_a_batch_resends_the_unconfirmed(
        confirming, direct, admin):
    with confirming.batch() as batch:
        for n in range(20):
            batch(n)
        # cut the connection under the producer: what was not confirmed
        # yet goes again on a new connection
        confirming.connection.connection.sock.shutdown(socket.SHUT_RDWR)
        for n in range(20, 40):
            batch(n)
    got = bodies(admin, direct.queues['q'])
    assert set(got) == set(range(40))     # at least once


# publish on commit

@pytest.fixture
def tm():
    manager = transaction.manager
    explicit = manager.explicit
    manager.explicit = False
    manager.abort()
    manager.explicit = True
    yield manager
    manager.explicit = False
    manager.abort()
    manager.explicit = explicit


@pytest.fixture
def committing(direct):
    with AMQPProducer('q', direct, confirm=True, confirm_timeout=5,
                      mandatory=True, transactional=True) as producer:
        yield producer


def test_commit_publishes_one_confirmed_batch(tm, committing, direct, admin,
                                              monkeypatch):
    waits = []
    real = committing._await

    def counting(records, *args):
        waits.append(len(records))
        return real(records, *args)

    monkeypatch.setattr(committing, '_await', counting)
    tm.begin()
    for n in range(100):
        committing(n)
    assert admin.queue_depth(direct.queues['q']) == 0
    tm.commit()
    # confirmed by the time commit() returned: no waiting here
    assert admin.queue_depth(direct.queues['q']) == 100
    assert waits == [100]
    assert bodies(admin, direct.queues['q']) == list(range(100))


def test_unconfirmed_messages_after_commit_are_logged_not_raised(
        tm, committing, direct, admin, caplog):
    tm.begin()
    ok = committing('ok')
    nacked = committing('nacked', routing_key='full')
    returned = committing('returned', routing_key='nowhere')
    tm.commit()     # does not raise
    errors = [r.getMessage() for r in caplog.records
              if r.name.split('.')[0] == 'zamqp'
              and r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert nacked in errors[0] and returned in errors[0]
    assert ok not in errors[0]
    assert repr(direct.exchange) in errors[0]
    assert bodies(admin, direct.queues['q']) == ['ok']


def test_several_producers_each_get_one_batch(tm, committing, direct,
                                              admin):
    with AMQPProducer('q', direct, confirm=True,
                      transactional=True) as other:
        tm.begin()
        for n in range(20):
            (committing if n % 2 else other)(n)
        tm.commit()
        assert admin.queue_depth(direct.queues['q']) == 20


# ZCML

ZCML = '''
<configure xmlns:zamqp="http://namespaces.zope.org/zamqp">
  <zamqp:connection url="{url}" />
  <zamqp:producer name="confirmed" exchange="{exchange}" type="direct"
                  routing_key="q" confirm="true" confirm_timeout="4"
                  mandatory="true" transactional="false" />
</configure>'''


@pytest.fixture
def registry():
    zca.pushGlobalRegistry()
    yield
    zca.popGlobalRegistry()


def test_zcml_producer_with_confirms(registry, direct, admin):
    settings.set_prefix('')
    try:
        context = xmlconfig.file('meta.zcml', zamqp)
        xmlconfig.string(ZCML.format(url=broker_url(),
                                     exchange=direct.exchange),
                         context=context)
    finally:
        settings.set_prefix(None)
    producer = zope.component.getUtility(IProducer, 'confirmed')
    try:
        assert producer.confirm and producer.mandatory
        assert producer.confirm_timeout == 4.0
        producer('hello')
        assert admin.queue_depth(direct.queues['q']) == 1
        with pytest.raises(NotConfirmed) as info:
            producer('lost', routing_key='nowhere')
        assert "'nowhere'" in str(info.value)
    finally:
        producer.close()


def test_zcml_producer_confirm_defaults_to_the_window(registry):
    context = xmlconfig.file('meta.zcml', zamqp)
    xmlconfig.string('''
<configure xmlns:zamqp="http://namespaces.zope.org/zamqp">
  <zamqp:connection url="{url}" />
  <zamqp:producer name="plain" exchange="{exchange}" />
</configure>'''.format(url=broker_url(),
                       exchange=broker_props().exchange), context=context)
    producer = zope.component.getUtility(IProducer, 'plain')
    assert producer.confirm is None and not producer.mandatory


def test_after_a_nack_the_producer_publishes_on_a_new_channel(
        confirming, direct, admin):
    """RabbitMQ 3.10 nacks every publish on a channel that published to
    a quorum queue while it had no leader (test_stream_cluster): after
    a nack the producer goes on on a new channel of the same
    connection, and what the old one confirmed is not sent again."""
    confirming('before')
    connection = confirming.connection.connection
    old = confirming.connection.channel
    with pytest.raises(NotConfirmed):
        confirming('rejected', routing_key='full')
    confirming('after')
    assert confirming.connection.channel is not old
    assert confirming.connection.connection is connection
    assert confirming.status()['reconnects'] == 0
    assert bodies(admin, direct.queues['q']) == ['before', 'after']


def test_a_nack_in_the_window_sends_nothing_twice(direct, admin, caplog):
    with AMQPProducer('q', direct) as producer:     # the confirm window
        for n in range(50):
            producer(n, routing_key='full' if n == 20 else None)
        try:
            producer.flush()
        except NotConfirmed as exc:     # the nack came while it waited
            assert len(exc.nacked) == 1
        else:                           # ... or before: logged then
            assert 'nacked by the broker' in caplog.text
        producer('last')
        producer.flush()
    assert bodies(admin, direct.queues['q']) == \
        [n for n in range(50) if n != 20] + ['last']
