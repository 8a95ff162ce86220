"""Fast recovery: consumers consume again soon after a restarted broker
listens.

A private node is restarted ten times in a row (``rabbitmqctl stop`` and
start, or kill -9 and start) under a broadcast consumer and a shared
acknowledging consumer. After each restart the test polls the AMQP port
until it accepts TCP connections, then measures for each consumer the
time until its ``status()['state']`` is 'consuming' again, and until a
message published at that moment has reached it. The figures (median,
max) are listed at the end of the run.
"""
import json
import socket
import statistics
import struct
import threading
import time

import amqp
import pytest

from zamqp import AMQPConsumer
from zamqp.testhelpers import unique
from zamqp.tests import brokers
from zamqp.tests.test_faults import private_props
from zamqp.tests.brokers import report

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    brokers.missing(), reason='RabbitMQ is not installed on this machine '
    '(ZAMQP_TEST_URL points elsewhere); CI requires it')]

RESTARTS = 10
LIMIT = 2.0         # seconds from listening to consuming and receiving


class Seen:
    def __init__(self):
        self.lock = threading.Lock()
        self.bodies = {}        # body -> when it was received

    def __call__(self, body):
        with self.lock:
            self.bodies.setdefault(body, time.monotonic())

    def get(self, body):
        with self.lock:
            return self.bodies.get(body)


class Publisher:
    """A raw py-amqp connection that publishes JSON to ``exchange``; it
    reconnects on any error (the broker restarts under it)."""

    def __init__(self, broker, exchange):
        self.broker, self.exchange = broker, exchange
        self.conn = self.channel = None

    def __call__(self, body):
        for _ in range(50):
            try:
                if self.conn is None:
                    self.conn = amqp.Connection(self.broker.address,
                                                connect_timeout=2)
                    self.conn.connect()
                    self.channel = self.conn.channel()
                self.channel.basic_publish(
                    amqp.Message(json.dumps(body),
                                 content_type='application/json'),
                    self.exchange, 'recovery')
                return
            except Exception:
                self.close()
                time.sleep(0.02)
        raise AssertionError(f'could not publish {body!r}')

    def close(self):
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.collect()
            except Exception:
                pass


def down(broker, how):
    if how == 'stop':
        broker.ctl('stop', check=False)
    broker.kill()       # after an orderly stop: waits until it is gone


def wait_listening(broker, timeout=brokers.START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if brokers.port_open(broker.port, timeout=0.05):
            return time.monotonic()
        time.sleep(0.005)
    raise AssertionError(f'{broker.node} did not listen again')


def back(consumers, publisher, listening, cycle, timeout=10.0):
    """For each consumer: seconds from ``listening`` until it was
    consuming, and until a message published then was received."""
    consuming, received, probes = {}, {}, {}
    deadline = listening + timeout
    while len(received) < len(consumers) and time.monotonic() < deadline:
        for name, (consumer, seen) in consumers.items():
            if name not in consuming and \
                    consumer.status()['state'] == 'consuming':
                consuming[name] = time.monotonic() - listening
                probes[name] = f'{cycle}-{name}'
                publisher(probes[name])
            if name in probes and name not in received:
                got = seen.get(probes[name])
                if got is not None:
                    received[name] = got - listening
        time.sleep(0.002)
    return consuming, received


@pytest.mark.parametrize('how', ['stop', 'kill'])
def test_consumers_consume_again_soon_after_every_restart(broker, start,
                                                          how):
    props = private_props(broker.address, unique(), type='direct')
    consumers = {}
    for name, shared in (('broadcast', False), ('shared', True)):
        seen = Seen()
        consumer = AMQPConsumer(unique(f'zamqp.recovery.{name}'), props,
                                seen, shared=shared, routing_key='recovery')
        start(consumer)
        consumers[name] = (consumer, seen)
    publisher = Publisher(broker, props.exchange)
    figures = {name: ([], []) for name in consumers}
    booted = []
    try:
        publisher('first')
        for consumer, seen in consumers.values():
            assert _wait(lambda: seen.get('first'), 5)
        for cycle in range(RESTARTS):
            down(broker, how)
            publisher.close()
            for consumer, _ in consumers.values():
                assert _wait(lambda: consumer.status()['state'] !=
                             'consuming', 5), 'the loss went unnoticed'
            began = time.monotonic()
            broker.launch()
            listening = wait_listening(broker)
            booted.append(listening - began)
            consuming, received = back(consumers, publisher, listening,
                                       cycle)
            for name in consumers:
                assert name in received, \
                    (cycle, name, consuming, received,
                     consumers[name][0].status())
                figures[name][0].append(consuming[name])
                figures[name][1].append(received[name])
        statuses = {name: c.status() for name, (c, _) in consumers.items()}
    finally:
        publisher.close()
    for name, (to_consume, to_receive) in figures.items():
        report(f'{RESTARTS} restarts ({how}), {name} consumer: seconds '
               f'from listening to consuming: {_spread(to_consume)}; to '
               f'receiving a message published then: {_spread(to_receive)}'
               f'; reconnects {statuses[name]["reconnects"]}')
    report(f'{RESTARTS} restarts ({how}): node start to listening '
           f'{_spread(booted)}')
    for name, (to_consume, to_receive) in figures.items():
        assert max(to_consume) < LIMIT and max(to_receive) < LIMIT, \
            (name, to_consume, to_receive)


class Resetter(threading.Thread):
    """A port that accepts TCP connections and resets each at once, as a
    broker that is starting or stopping does; records when each came."""

    def __init__(self):
        super().__init__(daemon=True)
        self.server = socket.create_server(('127.0.0.1', 0))
        self.server.settimeout(0.1)
        self.address = '127.0.0.1:%d' % self.server.getsockname()[1]
        self.arrivals, self.done = [], threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            self.arrivals.append(time.monotonic())
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            struct.pack('ii', 1, 0))
            conn.close()

    def stop(self):
        self.done.set()
        self.join()
        self.server.close()


def test_a_broker_that_resets_connections_is_asked_again_soon(start):
    """Resets in the handshake (a node starting or stopping) wait at
    most the refused cap between attempts, as refusals do, instead of
    doubling towards max_backoff: one CI run took 4 s to come back."""
    resetter = Resetter()
    resetter.start()
    try:
        consumer = AMQPConsumer(unique('zamqp.recovery.reset'),
                                private_props(resetter.address, unique()),
                                Seen(), routing_key='recovery')
        start(consumer)
        assert _wait(lambda: len(resetter.arrivals) >= 7, 8), \
            resetter.arrivals
    finally:
        resetter.stop()
    gaps = [b - a for a, b in zip(resetter.arrivals, resetter.arrivals[1:])]
    assert max(gaps) <= AMQPConsumer.refused_backoff + 0.3, gaps
    assert consumer.status()['state'] == 'reconnecting'


def _wait(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def _spread(values):
    ordered = sorted(values)
    return (f'min {ordered[0]:.2f}, median {statistics.median(ordered):.2f}'
            f', max {ordered[-1]:.2f} (all: '
            + ' '.join(f'{v:.2f}' for v in values) + ')')
