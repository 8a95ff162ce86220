"""Starting and stopping consumers, opening and closing connections, and
zamqp.zope.lifecycle's supervisor restarting consumers that ended."""
import logging
import subprocess
import sys
import threading
import time

import amqp
import pytest
import zope.component
from amqp import exceptions as amqp_errors
from plone.testing import zca
from zope.interface import implementer

from zamqp import AMQPConnection
from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPThread
from zamqp.zope import lifecycle
from zamqp.exceptions import ConnectionFailed
from zamqp.interfaces import IConsumerSpec
from zamqp.testhelpers import broker_props
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.testhelpers import zamqp_threads


def test_stop_is_quick_while_idle(props, no_leaked_threads):
    thread = AMQPThread(AMQPConsumer('idle', props, print))
    thread.start()
    assert thread.is_alive()
    time.sleep(0.3)          # let it sit in drain_events with nothing to do
    begin = time.monotonic()
    assert thread.stop() is True
    assert time.monotonic() - begin < 2
    assert not thread.is_alive()


def test_thread_is_daemon_named_after_queue(props, start, no_leaked_threads):
    thread = start(AMQPConsumer('named-q', props, print))
    assert thread.daemon
    assert 'named-q' in thread.name
    assert thread.name.startswith('zamqp-')
    # callbacks run in a worker thread of its own, named after the queue
    assert thread.worker.daemon
    assert thread.worker.name == 'zamqp-worker-named-q'
    assert sorted(zamqp_threads(), key=lambda t: t.name) == [thread,
                                                             thread.worker]
    assert thread.stop()
    assert zamqp_threads() == []


def test_thread_name_can_be_given(props, no_leaked_threads):
    thread = AMQPThread(AMQPConsumer('q', props, print), name='zamqp-mine')
    thread.start()
    assert thread.name == 'zamqp-mine'
    assert thread.stop()


def test_stop_several_threads(props, no_leaked_threads):
    threads = [AMQPThread(AMQPConsumer(f'q{n}', props, print))
               for n in range(3)]
    for thread in threads:
        thread.start()
    assert len(zamqp_threads()) == 6       # each with its worker
    for thread in threads:
        thread.consumer.stop()
    assert all(thread.stop() for thread in threads)


def test_stop_before_start_and_twice(props, no_leaked_threads):
    thread = AMQPThread(AMQPConsumer('q', props, print))
    assert thread.stop() is True
    thread = AMQPThread(AMQPConsumer('q', props, print))
    thread.start()
    assert thread.stop() and thread.stop()


def test_stop_from_the_callback(props, no_leaked_threads):
    holder = []

    def callback(body):
        holder[0].stop()     # the thread's own stop: must not join itself

    thread = AMQPThread(AMQPConsumer('q', props, callback))
    holder.append(thread)
    thread.start()
    AMQPProducer('q', props)('stop!')
    assert wait_for(lambda: not thread.is_alive(), timeout=3)


def test_exclusive_queue_gone_after_stop(props, start, admin,
                                         no_leaked_threads):
    consumer = AMQPConsumer('excl', props, print)
    thread = start(consumer)
    assert admin.queue_exists(consumer.queue_name)
    with pytest.raises(amqp_errors.ResourceLocked):   # exclusive to it
        admin.channel.queue_declare(consumer.queue_name, passive=True)
    admin.channel = admin.connection.channel()
    assert thread.stop()
    assert wait_for(lambda: not admin.queue_exists(consumer.queue_name),
                    timeout=2)


def test_shared_queue_keeps_its_backlog_after_the_last_consumer(
        props, start, admin, no_leaked_threads):
    name = unique('shared')   # queue names are global on the broker
    first = start(AMQPConsumer(name, props, print, shared=True))
    second = start(AMQPConsumer(name, props, print, shared=True))
    try:
        assert admin.queue_exists(name)
        assert first.stop() and second.stop()
        time.sleep(0.2)
        assert admin.queue_exists(name)     # durable, not auto-deleted
        with AMQPProducer(name, props) as producer:
            producer('waits for a consumer')
        assert wait_for(lambda: admin.queue_depth(name) == 1)
    finally:
        admin.delete_queue(name)


def test_broadcast_queue_removed_with_its_consumer(props, start, admin,
                                                   no_leaked_threads):
    thread = start(AMQPConsumer(unique('own'), props, print))
    name = thread.consumer.queue_name
    assert admin.queue_exists(name)
    assert thread.stop()
    assert wait_for(lambda: not admin.queue_exists(name), timeout=2)


def test_durable_shared_queue_stays(props, start, admin, no_leaked_threads):
    name = f'durable-{props.exchange}'
    try:
        thread = start(AMQPConsumer(name, props, print, shared=True,
                                    durable=True))
        assert thread.stop()
        time.sleep(0.2)
        assert admin.queue_exists(name)
    finally:
        admin.delete_queue(name)


def test_connection_context_manager_closes(props):
    with AMQPConnection('cm', props) as conn:
        assert conn.channel.is_open
        raw = conn.connection
        assert raw.connected
    assert conn.connection is None
    assert not conn.is_open
    assert not raw.connected
    conn.close()                               # twice is fine


def test_connection_closes_on_error_in_block(props):
    with pytest.raises(KeyError):
        with AMQPConnection('cm', props) as conn:
            raw = conn.connection if conn.channel else None
            raise KeyError('x')
    assert conn.connection is None
    assert not raw.connected


def _exchange_exists(admin, name):
    try:
        admin.channel.exchange_declare(name, 'fanout', passive=True)
    except amqp_errors.NotFound:
        admin.channel = admin.connection.channel()
        return False
    return True


def test_channel_is_lazy_write_mode(make_props, admin):
    props = make_props(type='direct')
    conn = AMQPConnection('lazy', props)
    assert conn.connection is None
    assert not conn.is_open
    assert not _exchange_exists(admin, props.exchange)
    with conn:
        channel = conn.channel
        assert conn.connection is not None
        assert conn.channel is channel         # opened once
        assert _exchange_exists(admin, props.exchange)
        assert not admin.queue_exists('lazy')  # 'w' declares no queue


def test_channel_is_lazy_read_mode(make_props, admin):
    props = make_props(type='direct')
    name = f'lazy-{props.exchange}'
    conn = AMQPConnection(name, props, mode='r', routing_key='key',
                          durable=True, auto_delete=False)
    assert conn.connection is None
    assert not admin.queue_exists(name)
    try:
        with conn:
            conn.channel
            assert _exchange_exists(admin, props.exchange)
            assert admin.queue_exists(name)
            # bound with routing_key: a message with that key lands there
            admin.channel.basic_publish(amqp.Message(b'x'), props.exchange,
                                        'other')
            admin.channel.basic_publish(amqp.Message(b'x'), props.exchange,
                                        'key')
            assert wait_for(lambda: admin.queue_depth(name) == 1)
    finally:
        admin.delete_queue(name)


def test_connection_bad_mode(props):
    with pytest.raises(ValueError):
        AMQPConnection('q', props, mode='x')


def test_producer_reuses_its_connection(props, start):
    got = []
    start(AMQPConsumer('reuse', props, got.append))
    producer = AMQPProducer('reuse', props)
    assert producer.connection.connection is None     # nothing yet
    producer(1)
    raw = producer.connection.connection
    for n in range(2, 6):
        producer(n)
        assert producer.connection.connection is raw
    assert wait_for(lambda: got == [1, 2, 3, 4, 5])
    producer.close()
    assert producer.connection.connection is None
    assert not raw.connected


def test_producer_threads_share_one_connection(props, start):
    got = []
    start(AMQPConsumer('reuse', props, got.append))
    producer = AMQPProducer('reuse', props)
    producer(0)
    raw = producer.connection.connection

    def send(base):
        for n in range(20):
            producer(base + n)

    threads = [threading.Thread(target=send, args=(b,))
               for b in (100, 200, 300)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert producer.connection.connection is raw
    assert wait_for(lambda: len(got) == 61)
    assert sorted(got) == [0] + [b + n for b in (100, 200, 300)
                                 for n in range(20)]
    producer.close()


def test_producer_reconnects_after_close_under_it(props, start):
    got = []
    start(AMQPConsumer('reco', props, got.append))
    producer = AMQPProducer('reco', props)
    producer('before')
    producer.flush()        # confirmed: not sent again on the new one
    old = producer.connection.connection
    old.close()                        # closed behind the producer's back
    producer('after')
    assert producer.connection.connection is not old
    assert producer.connection.connection.connected
    assert wait_for(lambda: got == ['before', 'after'])
    producer.close()


def test_producer_reconnects_after_socket_dropped(props, start):
    got = []
    start(AMQPConsumer('reco', props, got.append))
    producer = AMQPProducer('reco', props)
    producer('before')
    old = producer.connection.connection
    old.transport.sock.shutdown(2)       # the network went away
    producer('after')
    assert wait_for(lambda: got[-1:] == ['after'])
    assert producer.connection.connection is not old
    producer.close()


def test_producer_close_then_call_reopens(props, start):
    got = []
    start(AMQPConsumer('reopen', props, got.append))
    producer = AMQPProducer('reopen', props)
    producer('a')
    producer.close()
    producer('b')
    assert wait_for(lambda: got == ['a', 'b'])
    producer.close()


def test_consumer_reconnects_after_its_socket_dies(props, start, caplog):
    import logging
    import socket
    caplog.set_level(logging.INFO, 'zamqp')
    got = []
    consumer = AMQPConsumer('rc', props, got.append)
    start(consumer)
    first = consumer.connection
    first.connection.transport.sock.shutdown(socket.SHUT_RDWR)
    assert wait_for(lambda: (now := consumer.connection) is not None
                    and now is not first and now.is_open, timeout=10)
    AMQPProducer('rc', props)('after the cut')
    assert wait_for(lambda: got == ['after the cut'])
    logged = [r.getMessage() for r in caplog.records]
    assert any('connected again' in line for line in logged)


# zamqp.zope.lifecycle's supervisor: consumers that end unexpectedly restart

class Ending(AMQPConsumer):
    """A consumer whose thread ends at once, with ``error`` set to the
    spec's ``error`` (None: it just returns): no broker, no worker."""

    def start_worker(self):
        pass

    def run(self):
        self.error = self.spec_error
        self.attempted.set()


class Idle(Ending):
    """A consumer whose thread runs until stop() (no broker either)."""

    def run(self):
        self.attempted.set()
        while not self.stop_requested:
            time.sleep(0.01)


@implementer(IConsumerSpec)
class Spec:
    """An IConsumerSpec making ``factory`` consumers; ``created`` lists
    the database of each create()."""

    enabled = True

    def __init__(self, factory, error=None):
        self.factory = factory
        self.error = error
        self.created = []

    def check(self, database=None):
        pass

    def create(self, database=None):
        self.created.append(database)
        consumer = self.factory('supervised', broker_props(), print)
        consumer.spec_error = self.error
        return consumer


@pytest.fixture
def supervised(monkeypatch):
    """Register specs by name (``supervised(name, spec)``) in a registry
    of the test's own, with a quick supervisor; all stopped at teardown."""
    monkeypatch.setattr(lifecycle, 'SUPERVISE_INTERVAL', 0.02)
    monkeypatch.setattr(lifecycle, 'RESTART_FIRST', 0.1)
    monkeypatch.setattr(lifecycle, 'RESTART_CAP', 0.1)
    zca.pushGlobalRegistry()

    def register(name, spec):
        zope.component.provideUtility(spec, IConsumerSpec, name)
        return spec

    yield register
    lifecycle.stop()
    lifecycle.restore_sigterm()
    zca.popGlobalRegistry()


def supervisors():
    return [t for t in threading.enumerate() if t.name == 'zamqp-supervisor']


def restarted_lines(caplog, name):
    return [r for r in caplog.records if r.getMessage().startswith(
        f'consumer {name} ended although no stop was requested')]


def test_supervisor_restarts_a_consumer_that_ended(supervised, caplog):
    caplog.set_level(logging.ERROR, 'zamqp')
    spec = supervised('ending', Spec(Ending, ConnectionFailed('boom')))
    database = object()
    assert lifecycle.start(database) == ['ending']
    assert wait_for(lambda: len(spec.created) >= 2, timeout=3)
    # made again from its spec, with the database given to start()
    assert spec.created[:2] == [database, database]
    first = restarted_lines(caplog, 'ending')[0]
    assert first.levelno == logging.ERROR
    assert first.getMessage() == (
        'consumer ending ended although no stop was requested (last error: '
        'ConnectionFailed: boom); restarting it (restart 1)')
    status = lifecycle.status()['ending']
    assert status['restarts'] >= 1
    assert status['restarted'] is not None


def test_log_says_when_there_was_no_error(supervised, caplog):
    caplog.set_level(logging.ERROR, 'zamqp')
    supervised('quiet', Spec(Ending))
    lifecycle.start()
    assert wait_for(lambda: restarted_lines(caplog, 'quiet'), timeout=3)
    assert '(last error: none); restarting it (restart 1)' in \
        restarted_lines(caplog, 'quiet')[0].getMessage()


def test_restarts_are_backed_off(supervised, monkeypatch):
    # 0.5 to 1 s between restarts; checked every 0.02 s
    monkeypatch.setattr(lifecycle, 'RESTART_FIRST', 1.0)
    monkeypatch.setattr(lifecycle, 'RESTART_CAP', 1.0)
    spec = supervised('ending', Spec(Ending))
    lifecycle.start()
    time.sleep(1.6)
    restarts = lifecycle.status()['ending']['restarts']
    # at once, then after 0.5 to 1 s, maybe once more: not 80 times
    assert 2 <= restarts <= 4, restarts
    assert len(spec.created) == restarts + 1


def test_backoff_grows_up_to_the_cap(supervised, monkeypatch):
    monkeypatch.setattr(lifecycle, 'RESTART_FIRST', 0.1)
    monkeypatch.setattr(lifecycle, 'RESTART_CAP', 10.0)
    spec = supervised('ending', Spec(Ending))
    lifecycle.start()
    time.sleep(1.6)
    # waits of 0.05-0.1, 0.1-0.2, 0.2-0.4, 0.4-0.8, 0.8-1.6 s ...
    assert 3 <= len(spec.created) - 1 <= 6, len(spec.created)


def test_stopped_consumer_is_not_restarted(supervised, caplog):
    caplog.set_level(logging.ERROR, 'zamqp')
    spec = supervised('idle', Spec(Idle))
    lifecycle.start()
    [thread] = [t for t in threading.enumerate()
                if t.name == 'zamqp-consumer-idle']
    time.sleep(0.2)
    assert lifecycle.running() == ['idle']
    assert lifecycle.status()['idle']['restarts'] == 0
    thread.consumer.stop()          # stopped, though not by lifecycle
    assert wait_for(lambda: not thread.is_alive(), timeout=2)
    time.sleep(0.3)
    assert lifecycle.running() == []
    assert spec.created == [None]
    assert restarted_lines(caplog, 'idle') == []
    assert lifecycle.status()['idle']['alive'] is False


def test_no_thread_at_import():
    code = ('import threading, zamqp.zope.lifecycle; '
            'print([t.name for t in threading.enumerate()])')
    out = subprocess.run([sys.executable, '-c', code], check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "['MainThread']"


def test_supervisor_thread_lives_from_start_to_stop(supervised):
    assert supervisors() == []
    supervised('idle', Spec(Idle))
    lifecycle.start()
    [supervisor] = supervisors()
    assert supervisor.daemon
    lifecycle.start()               # still one
    assert supervisors() == [supervisor]
    lifecycle.stop()
    assert not supervisor.is_alive()
    assert lifecycle.status() == {}


def test_status_of_a_running_consumer(supervised):
    supervised('idle', Spec(Idle))
    lifecycle.start()
    status = lifecycle.status()
    assert list(status) == ['idle']
    assert status['idle']['alive'] is True
    assert status['idle']['restarts'] == 0
    assert status['idle']['restarted'] is None
    assert status['idle']['state'] == 'starting'
    assert 'handled' in status['idle']
