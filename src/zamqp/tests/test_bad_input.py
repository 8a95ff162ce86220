"""Wrong settings, unreachable brokers and bad messages: clear errors,
log lines that name the setting to change, consumers that go on."""
import logging
import socket
import threading
import time
import warnings

import amqp
import pytest

from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import AMQPThread
from zamqp import ConfigurationError
from zamqp import ConnectionFailed
from zamqp.testhelpers import broker_props
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests.eventtypes import Marker
from zamqp.tests.eventtypes import NotAllowed
from zamqp.tests.eventtypes import Ping
from zamqp.testhelpers import free_port

SECRET = 'Sekr1t-pa55w0rd-xyzzy'
PICKLE = 'application/x-python-serialize'


def logged(caplog, *words):
    """Wait until one 'zamqp' log record contains all ``words``."""
    def found():
        return [r for r in list(caplog.records)
                if r.name.split('.')[0] == 'zamqp'
                and all(w in r.getMessage() for w in words)]
    assert wait_for(found, timeout=3), [r.getMessage()
                                        for r in caplog.records]
    return found()


@pytest.fixture
def quiet():
    """Give stray deliveries a moment to show up (to see none do)."""
    return lambda: time.sleep(0.3)


# unreachable or refusing brokers

BAD_SETTINGS = {
    'host': (dict(host='no-such-host.invalid'), ['host'], True),
    'port': (dict(host='127.0.0.1', port=None), ['port'], True),
    'password': (dict(password=SECRET), ['password'], False),
    'vhost': (dict(virtual_host='no-such-vhost-zamqp'),
              ['virtual_host', 'no-such-vhost-zamqp'], False),
}


def bad_props(case, **kw):
    settings, _, _ = BAD_SETTINGS[case]
    settings = dict(settings, **dict(dict(connect_timeout=2), **kw))
    if case == 'port':
        settings['port'] = free_port()
    return broker_props(**settings)


@pytest.mark.parametrize('case', sorted(BAD_SETTINGS))
def test_producer_raises_connection_failed(case):
    _, words, recoverable = BAD_SETTINGS[case]
    props = bad_props(case)
    producer = AMQPProducer('q', props)
    begin = time.monotonic()
    with pytest.raises(ConnectionFailed) as info:
        producer('message')
    assert time.monotonic() - begin < props.connect_timeout + 1
    for word in words:
        assert word in str(info.value)
    assert info.value.recoverable is recoverable
    assert SECRET not in str(info.value)
    assert producer.connection.connection is None
    # and again: no half-open state left behind
    with pytest.raises(ConnectionFailed):
        producer('message')


@pytest.mark.parametrize('case', ['password', 'vhost'])
def test_thread_start_raises_for_settings_to_change(case, caplog,
                                                    no_leaked_threads):
    _, words, _ = BAD_SETTINGS[case]
    thread = AMQPThread(AMQPConsumer('q', bad_props(case), print))
    with pytest.raises(ConnectionFailed) as info:
        thread.start()
    for word in words:
        assert word in str(info.value)
    assert not info.value.recoverable
    assert not thread.is_alive()
    assert thread.consumer.error is info.value
    logged(caplog, 'the consumer stops')
    assert SECRET not in caplog.text


@pytest.mark.parametrize('case', ['host', 'port'])
def test_thread_keeps_retrying_while_broker_is_down(case, caplog,
                                                    no_leaked_threads):
    attempts = []

    class Counting(AMQPConsumer):
        def _connect(self):
            attempts.append(time.monotonic())
            return super()._connect()

    props = bad_props(case, connect_timeout=1)
    thread = AMQPThread(Counting('q', props, print))
    begin = time.monotonic()
    thread.start()                      # does not raise: may work later
    assert time.monotonic() - begin < props.connect_timeout + 2
    assert thread.is_alive()
    assert thread.consumer.error is not None
    assert thread.consumer.error.recoverable
    assert wait_for(lambda: len(attempts) >= 3, timeout=4)
    assert thread.is_alive()
    # the same failure is logged once, not at every attempt
    assert len(logged(caplog, 'retrying in the background')) == 1
    begin = time.monotonic()
    assert thread.stop() is True
    assert time.monotonic() - begin < 2


class Proxy:
    """A TCP forwarder to the broker that can be started late."""

    def __init__(self, port, target):
        self.port, self.target = port, target
        self.server = None
        self.sockets = []

    def start(self):
        self.server = socket.create_server(('127.0.0.1', self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b),
                                 daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self):
        if self.server is not None:
            self.server.close()
        for sock in self.sockets:
            sock.close()


def test_consumer_connects_once_broker_comes_up(props, caplog,
                                                no_leaked_threads):
    caplog.set_level(logging.INFO, logger='zamqp')
    real = AMQPProps(url=broker_url())
    proxy = Proxy(free_port(), (real.host, real.port))
    late = broker_props(exchange=props.exchange, port=proxy.port,
                        connect_timeout=1)
    got = []
    thread = AMQPThread(AMQPConsumer('late', late, got.append))
    try:
        thread.start()
        assert thread.consumer.error is not None
        proxy.start()
        assert wait_for(lambda: thread.consumer.error is None, timeout=5)
        logged(caplog, 'connected again')
        with AMQPProducer('late', props) as producer:
            producer('hello')
        assert wait_for(lambda: got == ['hello'])
    finally:
        assert thread.stop()
        proxy.stop()


def test_exchange_of_another_type(props, start, no_leaked_threads):
    with AMQPProducer('q', props) as producer:
        producer('declares a fanout exchange')
    other = broker_props(exchange=props.exchange, type='direct')
    with pytest.raises(ConnectionFailed) as info:
        AMQPProducer('q', other)('x')
    message = str(info.value)
    assert 'exchange' in message and props.exchange in message
    assert not info.value.recoverable
    thread = AMQPThread(AMQPConsumer('q', other, print))
    with pytest.raises(ConnectionFailed) as info:
        thread.start()
    assert props.exchange in str(info.value)
    assert not thread.is_alive()


def test_queue_of_other_settings(props, admin, no_leaked_threads):
    name = f'limited-{props.exchange}'
    admin.channel.queue_declare(name, durable=True, auto_delete=False,
                                arguments={'x-max-length': 10})
    try:
        thread = AMQPThread(AMQPConsumer(name, props, print, shared=True))
        with pytest.raises(ConnectionFailed) as info:
            thread.start()
        assert name in str(info.value) and 'x-max-length' in str(info.value)
        assert 'delete it on the broker' in str(info.value)
        assert not thread.is_alive()
        assert thread.consumer.status()['state'] == 'failed'
    finally:
        admin.delete_queue(name)


def test_shared_queues_cannot_be_transient(props):
    with pytest.raises(ConfigurationError) as info:
        AMQPConsumer('q', props, print, shared=True, durable=False)
    assert 'RabbitMQ 4' in str(info.value)
    assert AMQPConsumer('q', props, print, shared=True).durable
    assert not AMQPConsumer('q', props, print).durable


# callbacks and messages that fail

def test_failing_callback_is_logged_and_consumer_goes_on(props, start,
                                                         caplog):
    got = []

    def callback(body):
        if body == 'bad':
            raise RuntimeError('callback broke')
        got.append(body)

    consumer = AMQPConsumer('cb', props, callback)
    start(consumer)
    producer = AMQPProducer('cb', props)
    bad_id = producer('bad')
    producer('good')
    assert wait_for(lambda: got == ['good'])
    record, = logged(caplog, 'callback', bad_id)
    assert record.levelno == logging.ERROR
    assert record.exc_info and 'callback broke' in caplog.text
    assert consumer.queue_name in record.getMessage()


def raw_publish(admin, props, body, content_type, key='q'):
    admin.channel.basic_publish(
        amqp.Message(body, content_type=content_type,
                     message_id='raw-message'), props.exchange, key)


def test_undecodable_pickle(props, start, admin, caplog, quiet):
    got = []
    start(AMQPConsumer('q', props, got.append))
    raw_publish(admin, props, b'garbage', PICKLE)
    AMQPProducer('q', props)('good')
    assert wait_for(lambda: got == ['good'])
    logged(caplog, 'raw-message', 'cannot decode', 'pickle')
    quiet()
    assert got == ['good']


def test_undecodable_json(props, start, admin, caplog):
    got = []
    start(AMQPConsumer('q', props, got.append))
    raw_publish(admin, props, b'{not json', 'application/json')
    AMQPProducer('q', props, serializer='json')('good')
    assert wait_for(lambda: got == ['good'])
    logged(caplog, 'raw-message', 'cannot decode', 'json')


def test_content_type_not_accepted(props, start, caplog, quiet):
    got = []
    start(AMQPConsumer('q', props, got.append, accept=['json']))
    refused = AMQPProducer('q', props)({'pickled': True})
    AMQPProducer('q', props, serializer='json')('good')
    assert wait_for(lambda: got == ['good'])
    logged(caplog, refused, PICKLE, 'accept', "'pickle'")
    quiet()
    assert got == ['good']


def test_content_type_not_accepted_by_props(make_props, start, caplog):
    props = make_props(accept=['json'])
    got = []
    start(AMQPConsumer('q', props, got.append))
    AMQPProducer('q', props)('pickled')
    AMQPProducer('q', props, serializer='json')('good')
    assert wait_for(lambda: got == ['good'])
    logged(caplog, PICKLE, 'accept')


@pytest.mark.parametrize('content_type', ['text/plain', None])
def test_unknown_content_type(content_type, props, start, admin, caplog):
    got = []
    start(AMQPConsumer('q', props, got.append))
    raw_publish(admin, props, b'hello', content_type)
    AMQPProducer('q', props)('good')
    assert wait_for(lambda: got == ['good'])
    logged(caplog, 'raw-message', repr(content_type), 'no serializer',
           'accept')


def test_pickle_calling_os_system_is_refused(props, start, caplog, tmp_path,
                                             quiet):
    marker = tmp_path / 'MARKER'
    got = []
    consumer = AMQPConsumer('q', props, got.append)
    thread = start(consumer)
    refused = AMQPProducer('q', props)(Marker(marker))
    AMQPProducer('q', props)('good')
    assert wait_for(lambda: got == ['good'])
    record, = logged(caplog, refused, 'system', 'allow=')
    assert ('os.system' in record.getMessage()
            or 'posix.system' in record.getMessage())
    quiet()
    assert not marker.exists()
    assert got == ['good']
    assert thread.is_alive() and consumer.error is None


def test_class_not_allowed_is_refused(props, start, caplog):
    got = []
    start(AMQPConsumer('q', props, got.append))
    refused = AMQPProducer('q', props)(NotAllowed(1))
    AMQPProducer('q', props)('good')
    assert wait_for(lambda: got == ['good'])
    logged(caplog, refused, 'zamqp.tests.eventtypes.NotAllowed', 'allow=')


def test_class_allowed_by_consumer(props, start):
    got = []
    start(AMQPConsumer('q', props, got.append, allow=[Ping]))
    AMQPProducer('q', props)(Ping('ok'))
    assert wait_for(lambda: got == [Ping('ok')])


def test_class_allowed_by_dotted_name(props, start):
    got = []
    start(AMQPConsumer('q', props, got.append,
                       allow=['zamqp.tests.eventtypes.Ping']))
    AMQPProducer('q', props)(Ping('ok'))
    assert wait_for(lambda: got == [Ping('ok')])


def test_class_allowed_by_props(make_props, start, caplog):
    props = make_props(allow=[Ping])
    got = []
    start(AMQPConsumer('q', props, got.append))
    producer = AMQPProducer('q', props)
    refused = producer(NotAllowed(2))       # allowing one allows no other
    producer(Ping('ok'))
    assert wait_for(lambda: got == [Ping('ok')])
    logged(caplog, refused, 'zamqp.tests.eventtypes.NotAllowed')


def test_allow_one_class_does_not_allow_os_system(props, start, caplog,
                                                  tmp_path, quiet):
    marker = tmp_path / 'MARKER'
    got = []
    start(AMQPConsumer('q', props, got.append, allow=[Ping, Marker]))
    AMQPProducer('q', props)(Marker(marker))
    AMQPProducer('q', props)(Ping('ok'))
    assert wait_for(lambda: got == [Ping('ok')])
    logged(caplog, 'system', 'allow=')
    quiet()
    assert not marker.exists()


def test_shared_ack_failing_message_retried_then_dead_lettered(
        props, start, admin, caplog, quiet):
    calls = []

    def callback(body):
        calls.append(body)
        if body == 'bad':
            raise RuntimeError('always fails')

    work = unique('work')     # queue names are global on the broker
    consumer = AMQPConsumer(work, props, callback, shared=True,
                            max_retries=2)
    assert consumer.ack
    dead = consumer.dead_letter_exchange
    assert dead == f'{props.exchange}.dead'
    try:
        start(consumer)
        bad_id = AMQPProducer(work, props)('bad')
        assert wait_for(lambda: calls.count('bad') >= 3)
        AMQPProducer(work, props)('good')
        assert wait_for(lambda: 'good' in calls)
        quiet()
        assert calls.count('bad') == 3      # the first try and 2 retries
        assert calls.count('good') == 1
        assert len(logged(caplog, bad_id, 'is retried')) == 2
        assert len(logged(caplog, bad_id, 'is dead-lettered', dead)) == 1
        assert admin.queue_depth(work) == 0
        assert wait_for(lambda: admin.queue_depth(dead) == 1)
    finally:
        admin.delete_queue(dead)
        admin.delete_exchange(dead)


def test_broadcast_failing_message_not_redelivered(props, start, caplog,
                                                   quiet):
    calls = []

    def callback(body):
        calls.append(body)
        raise RuntimeError('always fails')

    start(AMQPConsumer('q', props, callback))
    bad_id = AMQPProducer('q', props)('bad')
    logged(caplog, bad_id, 'lost')
    quiet()
    assert calls == ['bad']


# settings

@pytest.mark.parametrize('kw, words', [
    (dict(type='fanot'), ['type', 'fanot']),
    (dict(exchange=''), ['exchange']),
    (dict(port=70000), ['port', '70000']),
    (dict(port='5672'), ['port']),
    (dict(url='amqp://guest@localhost:99999/'), ['port']),
    (dict(url='http://guest:guest@localhost/'), ['scheme', 'http', 'amqp']),
    (dict(url='amqp://localhost/?frobnicate=1'), ['frobnicate']),
    (dict(url='amqp://localhost/?heartbeat=soon'), ['heartbeat']),
    (dict(timeout=-1), ['timeout']),
    (dict(heartbeat='x'), ['heartbeat']),
    (dict(accept=['yaml']), ['yaml', 'accept']),
])
def test_props_errors(kw, words):
    with pytest.raises(ConfigurationError) as info:
        AMQPProps(**kw)
    for word in words:
        assert word in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_serializer_for_producer_and_consumer(props):
    with pytest.raises(ConfigurationError, match="'yaml'.*serializer="):
        AMQPProducer('q', props, serializer='yaml')
    with pytest.raises(ConfigurationError, match="'yaml'.*accept="):
        AMQPConsumer('q', props, print, accept=['yaml'])


def test_bad_allow_item(props):
    with pytest.raises(TypeError, match='allow'):
        AMQPConsumer('q', props, print, allow=[42])


def test_realm_warns():
    with pytest.warns(DeprecationWarning, match='realm') as record:
        props = AMQPProps(realm='/data')
    assert record[0].filename == __file__     # points at the caller
    assert props == AMQPProps()


def test_no_realm_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        AMQPProps()
        AMQPProps(url='amqp://u:p@localhost/')


def test_password_never_shown(caplog):
    props = broker_props(password=SECRET, connect_timeout=2)
    url_props = AMQPProps(url=f'amqp://guest:{SECRET}@localhost:5672/')
    for each in (props, url_props):
        assert SECRET not in repr(each)
        assert SECRET not in each.url()
        assert SECRET not in repr(AMQPProducer('q', each))
        assert SECRET not in repr(AMQPConsumer('q', each, print))
    assert url_props.password == SECRET
    with pytest.raises(ConnectionFailed) as info:
        AMQPProducer('q', props)('x')
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)
    thread = AMQPThread(AMQPConsumer('q', props, print))
    with pytest.raises(ConnectionFailed) as info:
        thread.start()
    assert SECRET not in str(info.value)
    assert SECRET not in caplog.text


def test_read_connections_declare_no_transient_shared_queue(props):
    from zamqp import AMQPConnection
    assert AMQPConnection('q', props, mode='r').queue_flags['exclusive']
    durable = AMQPConnection('q', props, mode='r', durable=True)
    assert not durable.queue_flags['exclusive']
    with pytest.raises(ConfigurationError) as info:
        AMQPConnection('q', props, mode='r', exclusive=False)
    assert 'RabbitMQ 4' in str(info.value) and 'durable=True' in \
        str(info.value)


@pytest.mark.parametrize('setting,value', [
    ('prefetch', -1), ('prefetch', '10'), ('prefetch', 70000),
    ('prefetch', True), ('max_retries', '3'), ('max_retries', -2),
    ('max_retries', 1.5)])
def test_consumer_counts_are_checked(props, setting, value):
    with pytest.raises(ConfigurationError) as info:
        AMQPConsumer('q', props, print, shared=True, **{setting: value})
    assert f'{setting}={value!r}' in str(info.value)
    assert f'AMQPConsumer({setting}=...)' in str(info.value)
