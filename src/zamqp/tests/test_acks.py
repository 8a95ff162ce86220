"""Acknowledgements, flow control, retries, dead letters, heartbeats while
a callback runs, and clean stops, against the real broker."""
import collections
import logging
import pickle
import socket
import threading
import time

import amqp
import pytest
from amqp import exceptions as amqp_errors

from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPThread
from zamqp import ConfigurationError
from zamqp import deadletter
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.testhelpers import zamqp_threads

PICKLE = 'application/x-python-serialize'


@pytest.fixture
def dead(props, admin):
    """The name of the default dead-letter exchange and queue of
    ``props``; both are deleted at teardown."""
    name = f'{props.exchange}.dead'
    yield name
    admin.delete_queue(name)
    admin.delete_exchange(name)


@pytest.fixture
def work(admin):
    """A shared queue name of this test's own, deleted at teardown."""
    name = unique('work')
    yield name
    try:
        admin.delete_queue(name)
    except amqp_errors.AMQPError:
        pass


def dead_letters(admin, queue):
    """Take every message waiting in ``queue``."""
    return admin.take(queue)


def zamqp_log(caplog, *words):
    return [r for r in caplog.records if r.name.split('.')[0] == 'zamqp'
            and all(w in r.getMessage() for w in words)]


# heartbeats while a callback runs

def test_long_callback_keeps_the_connection_alive(make_props, start, caplog):
    caplog.set_level(logging.DEBUG, 'zamqp')
    props = make_props(heartbeat=1)
    got, sent_during = [], []
    consumer = AMQPConsumer('hb', props, None)

    def callback(body):
        if body == 'slow':
            before = consumer.connection.connection.bytes_sent
            time.sleep(2.5)          # longer than two heartbeat intervals
            sent_during.append(
                consumer.connection.connection.bytes_sent - before)
        got.append(body)

    consumer.callback = callback
    start(consumer)
    connection = consumer.connection
    raw = connection.connection
    assert raw.heartbeat == 1
    producer = AMQPProducer('hb', props)
    producer('slow')
    assert wait_for(lambda: got == ['slow'], timeout=5)
    producer('next')
    assert wait_for(lambda: got == ['slow', 'next'])
    assert sent_during[0] > 0            # heartbeats went out meanwhile
    assert consumer.connection is connection
    assert connection.connection is raw and raw.connected
    assert consumer.error is None
    assert not zamqp_log(caplog, 'connected again')
    assert not [r for r in caplog.records
                if r.name.split('.')[0] == 'zamqp'
                and r.levelno >= logging.WARNING]
    producer.close()


# retries and dead letters

def test_failing_callback_retried_then_dead_lettered(props, work, dead,
                                                     start, admin, caplog):
    attempts = []

    def callback(body, message):
        attempts.append((body, message.headers or {}))
        if body == 'poison':
            raise RuntimeError('cannot digest ' + 'x' * 1000)

    consumer = AMQPConsumer(work, props, callback, shared=True,
                            pass_message=True)
    assert consumer.max_retries == 3 and consumer.dead_letter_exchange == dead
    start(consumer)
    producer = AMQPProducer(work, props)
    poison = producer('poison')
    assert wait_for(lambda: admin.queue_depth(dead) == 1)
    producer('fine')
    assert wait_for(lambda: attempts[-1][0] == 'fine')
    time.sleep(0.3)
    bodies = [body for body, _ in attempts]
    assert bodies == ['poison'] * 4 + ['fine']     # max_retries + 1 tries
    assert [h.get(deadletter.RETRIES, 0) for _, h in attempts[:4]] == \
        [0, 1, 2, 3]
    assert admin.queue_depth(work) == 0
    letter, = dead_letters(admin, dead)
    assert pickle.loads(letter.body) == 'poison'
    assert letter.properties['message_id'] == poison
    assert letter.properties['content_type'] == PICKLE
    headers = letter.headers
    assert headers[deadletter.ERROR].startswith(
        'RuntimeError: cannot digest xxx')
    assert len(headers[deadletter.ERROR]) <= deadletter.MAX_ERROR
    assert headers[deadletter.QUEUE] == work
    assert headers[deadletter.ROUTING_KEY] == work
    assert headers[deadletter.RETRIES] == 3
    assert len(zamqp_log(caplog, poison, 'is retried')) == 3
    assert len(zamqp_log(caplog, poison, 'is dead-lettered', dead)) == 1


def test_undecodable_message_dead_lettered_at_once(props, work, dead,
                                                   start, admin, caplog):
    got = []
    start(AMQPConsumer(work, props, got.append, shared=True))
    admin.channel.basic_publish(
        amqp.Message(b'not a pickle', content_type=PICKLE,
                     message_id='garbage-1'), props.exchange, work)
    AMQPProducer(work, props)('good')
    assert wait_for(lambda: got == ['good'])
    assert wait_for(lambda: admin.queue_depth(dead) == 1)
    letter, = dead_letters(admin, dead)
    assert letter.body == b'not a pickle'
    assert letter.properties['message_id'] == 'garbage-1'
    assert 'cannot decode' in letter.headers[deadletter.ERROR]
    assert deadletter.RETRIES not in letter.headers     # no retry
    assert admin.queue_depth(work) == 0
    assert len(zamqp_log(caplog, 'garbage-1', 'dead-lettered')) == 1
    assert got == ['good']


def test_broadcast_without_dead_letter_exchange(props, admin):
    consumer = AMQPConsumer('b', props, print)
    assert not consumer.ack and consumer.dead_letter_exchange is None
    consumer = AMQPConsumer('b', props, print, dead_letter_exchange=None,
                            shared=True)
    assert consumer.ack and consumer.dead_letter_exchange is None


def test_no_dead_letter_exchange_rejects_and_logs(props, work, start, admin,
                                                  caplog):
    calls = []

    def callback(body):
        calls.append(body)
        raise ValueError('no')

    start(AMQPConsumer(work, props, callback, shared=True, max_retries=1,
                       dead_letter_exchange=None))
    bad = AMQPProducer(work, props)('bad')
    assert wait_for(lambda: zamqp_log(caplog, bad, 'is dropped'))
    time.sleep(0.3)
    assert calls == ['bad', 'bad']
    assert admin.queue_depth(work) == 0
    assert not admin.queue_exists(f'{props.exchange}.dead')


# flow control

def test_broadcast_flood_stays_within_prefetch(props, start):
    got = []

    def callback(body):
        got.append(body)
        if body % 100 == 0:
            time.sleep(0.02)        # a slow-ish callback now and then

    consumer = AMQPConsumer('flood', props, callback, prefetch=50)
    assert not consumer.ack
    start(consumer)
    producer = AMQPProducer('flood', props)
    sent = 5000
    for n in range(sent):
        producer(n)
    assert wait_for(lambda: len(got) >= sent, timeout=30)
    time.sleep(0.2)
    assert len(got) == sent and len(set(got)) == sent      # none lost, none
    assert got == list(range(sent))                        # twice, in order
    assert 10 < consumer.max_backlog <= consumer.prefetch  # behind, bounded
    producer.close()


def test_shared_ack_backlog_within_prefetch(props, work, start):
    got = []
    consumer = AMQPConsumer(work, props, lambda b: (got.append(b),
                                                    time.sleep(0.001)),
                            shared=True, prefetch=20)
    start(consumer)
    producer = AMQPProducer(work, props)
    for n in range(1000):
        producer(n)
    assert wait_for(lambda: len(got) >= 1000, timeout=20)
    assert got == list(range(1000))
    assert 0 < consumer.max_backlog <= 20


# stopping

def test_stop_lets_the_running_callback_finish(props, admin, work,
                                               no_leaked_threads):
    handled = collections.Counter()
    running = threading.Event()

    def slow(body):
        running.set()
        time.sleep(1.0)
        handled[body] += 1

    # durable: the queue outlives its only consumer
    first = AMQPThread(AMQPConsumer(work, props, slow, shared=True,
                                    durable=True, prefetch=10))
    first.start()
    producer = AMQPProducer(work, props)
    sent = list(range(6))
    for n in sent:
        producer(n)
    assert running.wait(5)
    assert wait_for(lambda: first.consumer.max_backlog >= 4)  # prefetched
    begin = time.monotonic()
    assert first.stop() is True
    took = time.monotonic() - begin
    assert 0.5 < took < 2.0           # waited for the callback, not more
    assert dict(handled) == {0: 1}    # it finished; nothing else started
    # the prefetched rest went back to the queue; 0 was acknowledged
    assert wait_for(lambda: admin.queue_depth(work) == len(sent) - 1)
    second_got = collections.Counter()
    second = AMQPThread(AMQPConsumer(work, props,
                                     lambda n: second_got.update([n]),
                                     shared=True, durable=True))
    second.start()
    assert wait_for(lambda: sum(second_got.values()) >= len(sent) - 1)
    time.sleep(0.3)
    total = handled + second_got
    assert sorted(total) == sent                           # 0 lost
    assert sum(total.values()) - len(total) == 0           # 0 duplicates
    assert 0 not in second_got
    assert second.stop()
    producer.close()


def test_stop_gives_up_on_a_stuck_callback(props, work):
    release = threading.Event()
    running = threading.Event()

    def stuck(body):
        running.set()
        release.wait(10)

    thread = AMQPThread(AMQPConsumer(work, props, stuck, shared=True))
    thread.start()
    AMQPProducer(work, props)('x')
    assert running.wait(5)
    begin = time.monotonic()
    assert thread.stop(timeout=0.5) is False     # the worker still runs
    assert time.monotonic() - begin < 1.0
    release.set()
    assert wait_for(lambda: zamqp_threads() == [], timeout=3)


def test_stop_when_idle_is_quick(props, no_leaked_threads):
    thread = AMQPThread(AMQPConsumer('idle', props, print))
    thread.start()
    time.sleep(0.3)
    begin = time.monotonic()
    assert thread.stop() is True
    assert time.monotonic() - begin < 1.0
    assert zamqp_threads() == []


# reconnecting

def test_results_for_a_dead_channel_are_dropped(props, work, start, admin,
                                                caplog):
    caplog.set_level(logging.DEBUG, 'zamqp')
    calls = []
    consumer = AMQPConsumer(work, props, None, shared=True, durable=True,
                            pass_message=True)

    def callback(body, message):
        calls.append((body, message.delivery_info['redelivered']))
        if len(calls) == 1:        # cut the connection under the callback
            first = consumer.connection
            first.connection.transport.sock.shutdown(socket.SHUT_RDWR)
            assert wait_for(lambda: (now := consumer.connection) is not None
                            and now is not first and now.is_open,
                            timeout=10)

    consumer.callback = callback
    start(consumer)
    AMQPProducer(work, props)('once')
    assert wait_for(lambda: len(calls) == 2, timeout=10)
    time.sleep(0.3)
    # the broker delivered it again; the first handler's return, after
    # its message was given back with the channel, acked nothing
    assert calls == [('once', False), ('once', True)]
    assert admin.queue_depth(work) == 0
    assert zamqp_log(caplog, 'returned after the message was given back')
    assert consumer.status()['handled'] == 1
    assert consumer.error is None


# quorum queues

def test_quorum_queue(props, work, dead, start, admin):
    calls = []

    def callback(body):
        calls.append(body)
        if body == 'bad':
            raise RuntimeError('bad')

    consumer = AMQPConsumer(work, props, callback, shared=True,
                            queue_type='quorum', max_retries=1)
    assert consumer.durable
    assert consumer.queue_arguments() == {
        'x-queue-type': 'quorum', 'x-delivery-limit': 20,
        'x-dead-letter-exchange': dead}
    start(consumer)
    with pytest.raises(amqp_errors.PreconditionFailed) as info:
        admin.channel.queue_declare(work, durable=True, auto_delete=False,
                                    arguments=dict(
                                        consumer.queue_arguments(),
                                        **{'x-queue-type': 'classic'}))
    assert 'x-queue-type' in str(info.value)
    admin.channel = admin.connection.channel()
    admin.channel.queue_declare(work, durable=True, auto_delete=False,
                                arguments=consumer.queue_arguments())
    producer = AMQPProducer(work, props)
    producer('bad')
    producer('good')
    assert wait_for(lambda: admin.queue_depth(dead) == 1)
    assert wait_for(lambda: 'good' in calls)
    assert calls.count('bad') == 2


def test_queue_type_checked(props):
    with pytest.raises(ConfigurationError, match='quorum.*shared'):
        AMQPConsumer('q', props, print, queue_type='quorum')
    with pytest.raises(ConfigurationError, match='queue_type'):
        AMQPConsumer('q', props, print, shared=True, queue_type='stream')
