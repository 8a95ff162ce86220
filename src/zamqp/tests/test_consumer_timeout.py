"""A handler that outlives the broker's consumer_timeout.

RabbitMQ closes the channel of a delivery not acknowledged within
``consumer_timeout`` (PRECONDITION_FAILED "delivery acknowledgement on
channel N timed out"). It checks on the channel's tick, once a minute by
default; the private node of this module ticks every second
(advanced.config ``channel_tick_interval``), so the channel closes
between TIMEOUT and TIMEOUT + TICK after the delivery.

Each test prints one line of figures, listed again at the end of the run.
"""
import collections
import json
import logging
import threading
import time

import amqp
import pytest

from zamqp import AMQPConsumer
from zamqp import deadletter
from zamqp.testhelpers import Admin
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests import brokers
from zamqp.tests.test_faults import private_props
from zamqp.tests.brokers import report

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    brokers.missing(), reason='RabbitMQ is not installed on this machine '
    '(ZAMQP_TEST_URL points elsewhere); CI requires it')]

TIMEOUT = 3.0       # the node's consumer_timeout, seconds
TICK = 1.0          # its channel_tick_interval, seconds
SLOW = TIMEOUT + TICK + 1.5     # the slow handler: always times out


@pytest.fixture(scope='module')
def broker():
    node = brokers.PrivateBroker(
        config={'consumer_timeout': int(TIMEOUT * 1000)},
        advanced=f'[{{rabbit, [{{channel_tick_interval, '
                 f'{int(TICK * 1000)}}}]}}].')
    try:
        node.start()
        yield node
    finally:
        node.cleanup()


@pytest.fixture
def admin(broker):
    conn = Admin(broker.url)
    yield conn
    conn.close()


def test_the_node_closes_the_channel_soon_after_consumer_timeout(broker):
    """The private node's settings work: an unacknowledged delivery has
    its channel closed between TIMEOUT and TIMEOUT + TICK after it."""
    out = broker.ctl('eval', '{application:get_env(rabbit, consumer_timeout),'
                     ' application:get_env(rabbit, channel_tick_interval)}.')
    assert out.stdout.strip() == \
        f'{{{{ok,{int(TIMEOUT * 1000)}}},{{ok,{int(TICK * 1000)}}}}}'
    conn = amqp.Connection(broker.address, connect_timeout=5)
    conn.connect()
    try:
        channel = conn.channel()
        queue = unique('zamqp.timeout.raw')
        channel.queue_declare(queue, exclusive=True)
        delivered = []
        channel.basic_consume(
            queue, callback=lambda m: delivered.append(time.monotonic()))
        channel.basic_publish(amqp.Message('x'), '', queue)
        while not delivered:
            conn.drain_events(timeout=5)
        with pytest.raises(amqp.exceptions.PreconditionFailed) as info:
            conn.drain_events(timeout=TIMEOUT + TICK + 5)
        closed = time.monotonic() - delivered[0]
    finally:
        conn.close()
    assert 'delivery acknowledgement on channel' in str(info.value)
    report(f'consumer_timeout {TIMEOUT:g} s, channel_tick_interval '
           f'{TICK:g} s: channel closed {closed:.2f} s after the delivery')
    assert TIMEOUT - 0.1 <= closed <= TIMEOUT + TICK + 0.5


def publish(broker, props, bodies):
    """Publish ``bodies`` as persistent JSON messages to ``props``'s
    exchange, through a raw py-amqp connection (the consumer under test
    is all these tests look at)."""
    conn = amqp.Connection(broker.address, connect_timeout=5)
    conn.connect()
    try:
        channel = conn.channel()
        for body in bodies:
            channel.basic_publish(
                amqp.Message(json.dumps(body), delivery_mode=2,
                             content_type='application/json'),
                props.exchange, 'timeout')
    finally:
        conn.close()


class Handler:
    """Sleeps SLOW seconds on 'slow', returns at once otherwise; counts
    calls per body."""

    def __init__(self, slow=SLOW):
        self.slow = slow
        self.lock = threading.Lock()
        self.calls = collections.Counter()
        self.slow_started = []

    def __call__(self, body):
        with self.lock:
            self.calls[body] += 1
        if body == 'slow':
            self.slow_started.append(time.monotonic())
            time.sleep(self.slow)

    def handled(self, bodies):
        with self.lock:
            return all(self.calls[body] for body in bodies)


@pytest.mark.parametrize('queue_type,max_retries', [
    (None, 1), (None, 2),
    ('quorum', 1)],
    ids=['classic-1', 'classic-2', 'quorum-1'])
def test_handler_outliving_consumer_timeout(broker, threads, admin, caplog,
                                            queue_type, max_retries):
    """The consumer survives the closed channel, says what to change,
    dead-letters the slow message after max_retries lost deliveries and
    handles every message behind it."""
    caplog.set_level(logging.INFO, 'zamqp')
    props = private_props(broker.address, unique())
    queue = unique('zamqp.timeout.work')
    dead = props.exchange + '.dead'
    handler = Handler()
    consumer = AMQPConsumer(queue, props, handler, shared=True,
                            queue_type=queue_type, max_retries=max_retries)
    thread = threads(consumer)
    before = [f'before-{n}' for n in range(5)]
    behind = [f'behind-{n}' for n in range(30)]
    try:
        publish(broker, props, before + ['slow'])
        published = time.monotonic()
        publish(broker, props, behind)
        letters = []
        deadline = 3 * (max_retries + 2) * (SLOW + TIMEOUT + TICK)
        assert wait_for(lambda: letters.extend(admin.take(dead)) or letters,
                        deadline, interval=0.1), \
            f'not dead-lettered within {deadline:.0f} s: {handler.calls}'
        to_dead_letter = time.monotonic() - published
        assert wait_for(lambda: handler.handled(before + behind), 20)
        # nothing comes again afterwards
        time.sleep(TIMEOUT + TICK + 0.5)
        letters.extend(admin.take(dead))
        assert wait_for(lambda: consumer.status()['state'] == 'consuming', 10)
        status = consumer.status()
        alive = thread.is_alive() and thread.worker.is_alive()
        assert admin.queue_depth(queue) == 0
    finally:
        thread.stop()
        admin.delete_queue(queue)
        admin.delete_queue(dead)
    # (1) the consumer never died
    assert alive
    assert status['timeouts'] >= 1
    assert status['state'] == 'consuming'
    # (2) the log says what happened and what to change
    lines = [r.getMessage() for r in caplog.records
             if r.levelno >= logging.WARNING]
    closed = [line for line in lines if 'closed the channel' in line]
    assert len(closed) == status['timeouts'], lines
    assert all('consumer_timeout (rabbitmq.conf, milliseconds)' in line
               and 'timed out' in line for line in closed), closed
    assert not [line for line in lines
                if 'conflict' in line or 'declar' in line], lines
    # (3) the slow message is dead-lettered once, after max_retries
    assert len(letters) == 1, [m.headers for m in letters]
    letter = letters[0]
    assert deadletter.ERROR in letter.headers, letter.headers
    assert 'consumer_timeout' in letter.headers[deadletter.ERROR]
    slow_calls = handler.calls['slow']
    assert slow_calls <= max_retries + 1
    # (4) every message behind it was handled
    assert handler.handled(before + behind)
    twice = sorted(b for b in before + behind if handler.calls[b] > 1)
    report(f'consumer_timeout {TIMEOUT:g} s, handler {SLOW:g} s, '
           f'{queue_type or "classic"} queue, max_retries {max_retries}: '
           f'dead-lettered {to_dead_letter:.1f} s after publishing, slow '
           f'handler ran {slow_calls} times, channel timeouts '
           f'{status["timeouts"]}, reconnects {status["reconnects"]}, '
           f'other messages handled twice {len(twice)}')


@pytest.mark.parametrize('prefetch', [10, 4])
def test_the_timer_runs_from_the_delivery_not_the_handler_start(
        broker, threads, admin, prefetch):
    """No handler comes near consumer_timeout (0.5 s of 3 s), yet with
    prefetch 10 the messages waiting behind the running handler time
    out: the broker times each delivery from when it sent it. Prefetch 4
    (4 x 0.5 s = 2 s < 3 s) never times out."""
    props = private_props(broker.address, unique())
    queue = unique('zamqp.timeout.prefetch')
    calls = collections.Counter()

    def handle(body):
        calls[body] += 1
        time.sleep(0.5)

    consumer = AMQPConsumer(queue, props, handle, shared=True,
                            prefetch=prefetch, max_retries=5)
    thread = threads(consumer)
    bodies = list(range(20))
    try:
        publish(broker, props, bodies)
        began = time.monotonic()
        assert wait_for(lambda: all(calls[b] for b in bodies), 60)
        took = time.monotonic() - began
        assert wait_for(lambda: admin.queue_depth(queue) == 0, 10)
        status = consumer.status()
    finally:
        thread.stop()
        admin.delete_queue(queue)
        admin.delete_queue(props.exchange + '.dead')
    twice = sum(1 for b in bodies if calls[b] > 1)
    report(f'consumer_timeout {TIMEOUT:g} s, 20 handlers of 0.5 s, '
           f'prefetch {prefetch}: channel timeouts {status["timeouts"]}, '
           f'handled twice {twice}, all handled in {took:.1f} s')
    if prefetch * 0.5 > TIMEOUT:
        assert status['timeouts'] >= 1
    else:
        assert status['timeouts'] == 0 and twice == 0


def test_quorum_queue_with_prefetch_1_keeps_the_messages_behind(
        broker, threads, admin):
    """With prefetch=1 nothing waits on the channel behind the slow
    handler: the slow message is dead-lettered by zamqp after
    max_retries lost deliveries, the ones behind are all handled."""
    props = private_props(broker.address, unique())
    queue = unique('zamqp.timeout.quorum1')
    dead = props.exchange + '.dead'
    handler = Handler()
    consumer = AMQPConsumer(queue, props, handler, shared=True,
                            queue_type='quorum', max_retries=1, prefetch=1)
    thread = threads(consumer)
    behind = [f'behind-{n}' for n in range(10)]
    try:
        publish(broker, props, ['slow'])
        published = time.monotonic()
        publish(broker, props, behind)
        letters = []
        assert wait_for(lambda: letters.extend(admin.take(dead)) or letters,
                        60, interval=0.1)
        to_dead_letter = time.monotonic() - published
        assert wait_for(lambda: handler.handled(behind), 30)
        time.sleep(TIMEOUT + TICK)
        letters.extend(admin.take(dead))
        status = consumer.status()
        alive = thread.is_alive()
    finally:
        thread.stop()
        admin.delete_queue(queue)
        admin.delete_queue(dead)
    assert alive and status['timeouts'] >= 1
    assert [m.headers['x-zamqp-error'] for m in letters] == [
        'MessageRefused: not handled again: it was lost mid-handling 2 '
        'times (its handler outlived consumer_timeout)']
    report(f'consumer_timeout {TIMEOUT:g} s, handler {SLOW:g} s, quorum '
           f'queue, max_retries 1, prefetch 1: dead-lettered by zamqp '
           f'{to_dead_letter:.1f} s after publishing, slow handler ran '
           f'{handler.calls["slow"]} times, channel timeouts '
           f'{status["timeouts"]}; all 10 messages behind it handled')
