"""Faults: a private broker killed and restarted, a cut, stalled or slow
network (a TCP proxy), a consumer process killed mid-batch.

Each test prints one line of figures (sent, received, duplicates, lost);
they are listed again at the end of the run. The shared broker is never
touched: the tests use a private node (see brokers.py) and proxies.
"""
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp.exceptions import ConnectionFailed
from zamqp.exceptions import PublishFailed
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests import brokers
from zamqp.tests.brokers import report
from zamqp.tests.proxy import Proxy

pytestmark = pytest.mark.skipif(
    brokers.missing(), reason='RabbitMQ is not installed on this machine '
    '(ZAMQP_TEST_URL points elsewhere); CI requires it')


def private_props(address, exchange, **kw):
    kw.setdefault('connect_timeout', 2.0)
    kw.setdefault('timeout', 5.0)
    return AMQPProps(url=f'amqp://guest:guest@{address}/',
                     exchange=exchange, **kw)


class Tally:
    """What a consumer received, thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.bodies = []

    def __call__(self, body):
        with self.lock:
            self.bodies.append(body)

    @property
    def distinct(self):
        with self.lock:
            return set(self.bodies)

    @property
    def duplicates(self):
        with self.lock:
            return len(self.bodies) - len(set(self.bodies))


class Stream(threading.Thread):
    """Publish numbered messages until ``count`` were published without an
    error (or ``timeout``); a publish that raised counts as not sent."""

    def __init__(self, producer, count, pause=0.001, timeout=60.0):
        super().__init__(name='zamqp-test-stream', daemon=True)
        self.producer, self.count = producer, count
        self.pause, self.timeout = pause, timeout
        self.sent, self.failed = [], 0

    def run(self):
        deadline = time.monotonic() + self.timeout
        number = 0
        while len(self.sent) < self.count and time.monotonic() < deadline:
            number += 1
            try:
                self.producer(number)
            except (PublishFailed, ConnectionFailed):
                self.failed += 1
                time.sleep(0.05)
                continue
            self.sent.append(number)
            time.sleep(self.pause)

    def wait_sent(self, n, timeout=30.0):
        assert wait_for(lambda: len(self.sent) >= n, timeout), \
            f'only {len(self.sent)} of {n} messages were sent'


def figures_of(name, stream, tally, extra=''):
    sent = set(stream.sent)
    lost = sent - tally.distinct
    line = (f'{name}: sent {len(sent)}, publish errors {stream.failed}, '
            f'received {len(tally.distinct & sent)}, duplicates '
            f'{tally.duplicates}, lost {len(lost)}{extra}')
    report(line)
    return lost


@pytest.mark.slow
@pytest.mark.parametrize('confirm', [True, False],
                         ids=['confirmed', 'unconfirmed'])
def test_broker_killed_and_restarted_during_a_stream(broker, threads,
                                                     confirm):
    """Confirmed publishes are never lost; unconfirmed ones that were in
    flight when the broker died may be (the figure says how many)."""
    exchange, queue = unique(), unique('zamqp.faults.work')
    props = private_props(broker.address, exchange)
    work, everyone = Tally(), Tally()
    shared = AMQPConsumer(queue, props, work, shared=True, durable=True,
                          ack=True)
    broadcast = AMQPConsumer(queue + '.all', props, everyone)
    threads(shared)
    threads(broadcast)
    # mandatory: a message the broker would confirm although no queue took
    # it (published before the restarted node routes to the queue again)
    # raises for the caller instead
    producer = AMQPProducer(queue, props, persistent=True, confirm=confirm,
                            mandatory=confirm)
    stream = Stream(producer, 2000)
    stream.start()
    stream.wait_sent(600)
    began = time.monotonic()
    broker.kill()
    broker.start()
    restarted = time.monotonic() - began
    stream.join(60)
    sent = set(stream.sent)
    wait_for(lambda: sent <= work.distinct, 30 if confirm else 10)
    producer.close()
    lost = figures_of(f'broker kill -9 + restart ({restarted:.1f} s down), '
                      f'shared durable queue, persistent, acks, '
                      f'{"" if confirm else "no "}publisher confirms',
                      stream, work)
    missed = sent - everyone.distinct
    report(f'broker kill -9 + restart, broadcast consumer: received '
           f'{len(everyone.distinct & sent)} of {len(sent)}, lost '
           f'{len(missed)} (at-most-once while the broker was down)')
    assert shared.error is None and broadcast.error is None
    assert not lost or not confirm
    # the broadcast consumer re-declared its queue and receives again
    assert stream.sent[-1] in everyone.distinct


def test_proxy_cut_consumer_and_producer_reconnect(broker, threads):
    with Proxy(broker.port) as proxy:
        props = private_props(proxy.address, unique())
        queue = unique('zamqp.faults.cut')
        tally = Tally()
        consumer = AMQPConsumer(queue, props, tally, shared=True,
                                durable=True, ack=True)
        threads(consumer)
        producer = AMQPProducer(queue, props, persistent=True, confirm=True)
        stream = Stream(producer, 1500)
        stream.start()
        for n in (300, 700, 1100):
            stream.wait_sent(n)
            proxy.cut()
        stream.join(60)
        sent = set(stream.sent)
        wait_for(lambda: sent <= tally.distinct, 20)
        producer.close()
        lost = figures_of('proxy cut 3 times', stream, tally,
                          f', connections made {proxy.accepted}')
        assert len(sent) == 1500 and sent <= tally.distinct | lost
        assert proxy.accepted >= 5      # reconnected after every cut
        assert wait_for(lambda: consumer.error is None, 5)


def test_proxy_stall_heartbeat_detects_the_dead_peer(broker, threads):
    exchange, queue = unique(), unique('zamqp.faults.stall')
    direct = private_props(broker.address, exchange)
    with Proxy(broker.port) as proxy:
        props = private_props(proxy.address, exchange, heartbeat=1)
        tally = Tally()
        consumer = AMQPConsumer(queue, props, tally)
        threads(consumer)
        with AMQPProducer(queue, direct) as producer:
            producer('before')
            assert wait_for(lambda: 'before' in tally.distinct, 5)
            proxy.stall()
            stalled = time.monotonic()
            assert wait_for(lambda: consumer.error is not None, 10)
            detected = time.monotonic() - stalled
            time.sleep(1.0)
            proxy.resume()
            resumed = time.monotonic()

            def back():
                producer('after')
                return 'after' in tally.distinct
            assert wait_for(back, 20, interval=0.2)
            again = time.monotonic() - resumed
    report(f'proxy stall, heartbeat=1: dead peer detected after '
           f'{detected:.1f} s, receiving again {again:.1f} s after resume')
    assert detected < 4.0


def test_proxy_slow_messages_arrive_intact(broker, threads):
    exchange, queue = unique(), unique('zamqp.faults.slow')
    with Proxy(broker.port) as proxy:
        props = private_props(proxy.address, exchange)
        proxy.slow(delay=0.001, chunk=4096)
        tally = Tally()
        consumer = AMQPConsumer(queue, props, tally, shared=True, ack=True)
        threads(consumer)
        bodies = [os.urandom(size) for size in (1, 100, 5000, 20000) * 25]
        began = time.monotonic()
        with AMQPProducer(queue, props) as producer:
            for number, body in enumerate(bodies):
                producer((number, hashlib.sha256(body).hexdigest(), body))
        wait_for(lambda: len(tally.distinct) >= len(bodies), 60)

        took = time.monotonic() - began
    intact = sum(hashlib.sha256(body).hexdigest() == digest
                 and body == bodies[number]
                 for number, digest, body in tally.distinct)
    report(f'proxy slow (4 KiB per ms): {len(bodies)} messages of 1 B-20 KB, '
           f'received {len(tally.distinct)}, intact {intact}, '
           f'in {took:.1f} s')
    assert intact == len(bodies) == len(tally.distinct)


CONSUMER_PROCESS = textwrap.dedent('''
    import sys, time
    from zamqp import AMQPConsumer, AMQPProps, AMQPThread
    url, exchange, queue = sys.argv[1:4]
    def handle(body):
        print(body, flush=True)
        time.sleep(0.005)
    props = AMQPProps(url=url, exchange=exchange)
    AMQPThread(AMQPConsumer(queue, props, handle, shared=True, durable=True,
                            ack=True, prefetch=50)).start()
    time.sleep(60)
''')


def test_consumer_process_killed_mid_batch(broker, threads):
    exchange, queue, count = unique(), unique('zamqp.faults.worker'), 1000
    props = private_props(broker.address, exchange)
    # declare the queue first, so that nothing is published unrouted
    first = Tally()
    declarer = threads(AMQPConsumer(queue, props, first, shared=True,
                                    durable=True, ack=True))
    declarer.stop()
    with AMQPProducer(queue, props, persistent=True) as producer:
        for number in range(count):
            producer(number)
    process = subprocess.Popen(
        [sys.executable, '-c', CONSUMER_PROCESS, broker.url, exchange,
         queue], stdout=subprocess.PIPE, text=True)
    seen_by_killed = []
    try:
        for line in process.stdout:
            seen_by_killed.append(int(line))
            if len(seen_by_killed) >= 200:
                break
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(10)
    survivor = Tally()
    threads(AMQPConsumer(queue, props, survivor, shared=True, durable=True,
                         ack=True))
    everything = set(range(count))
    assert wait_for(
        lambda: everything <= survivor.distinct | set(seen_by_killed)
        | first.distinct, 30)
    got = survivor.distinct | first.distinct
    handled_twice = set(seen_by_killed) & got
    lost = everything - got - set(seen_by_killed)
    report(f'consumer process kill -9 mid-batch: sent {count}, handled by '
           f'the killed process {len(seen_by_killed)} (of which '
           f'{len(handled_twice)} unacked, redelivered to the survivor), '
           f'lost {len(lost)}')
    assert not lost
    # everything the killed process had not acked reached the survivor
    assert everything - set(seen_by_killed) <= got
