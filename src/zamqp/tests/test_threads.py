"""One producer used from many threads at once, with and without
confirms: every message arrives once and intact, and no channel is
used by two threads at the same time."""
import hashlib
import pickle
import socket
import threading

import amqp
import pytest

from zamqp import AMQPProducer
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import Admin

THREADS = 8
PER_THREAD = 500


@pytest.fixture
def queue(make_props, admin):
    """Props of a direct exchange and the queue its key 'q' routes to."""
    props = make_props(type='direct')
    admin.channel.exchange_declare(props.exchange, 'direct', durable=True,
                                   auto_delete=False)
    name = f'{props.exchange}.q'
    admin.channel.queue_declare(name, durable=True, auto_delete=False)
    admin.channel.queue_bind(name, props.exchange, 'q')
    props.queue = name
    yield props
    admin.delete_queue(name)


def body(thread, n):
    """Message ``n`` of ``thread``: sizes vary, a digest proves it whole."""
    text = f'{thread}:{n}:' + 'x' * ((thread * 131 + n * 17) % 3000)
    return {'thread': thread, 'n': n, 'text': text,
            'digest': hashlib.sha1(text.encode()).hexdigest()}


class Exclusive:
    """Wraps the producer's py-amqp calls and its fast path's writes:
    counts any call made while another thread is inside one on the same
    producer."""

    def __init__(self, producer, monkeypatch):
        self.producer = producer
        self.inside = 0
        self.overlaps = 0
        self.unlocked = 0
        self.threads = set()
        self._count_lock = threading.Lock()
        channel = producer.connection.channel    # connect now
        connection = producer.connection.connection
        # the producer's fast path writes through transport.write (py-amqp's
        # frame writer holds the original)
        for obj, name in ((channel, 'basic_publish'),
                          (connection.transport, 'write'),
                          (connection, 'drain_events')):
            monkeypatch.setattr(obj, name, self.wrap(getattr(obj, name)))

    def wrap(self, func):
        def wrapper(*args, **kw):
            with self._count_lock:
                self.inside += 1
                self.overlaps += self.inside > 1
                self.unlocked += not self.producer._lock.locked()
                self.threads.add(threading.get_ident())
            try:
                return func(*args, **kw)
            finally:
                with self._count_lock:
                    self.inside -= 1
        return wrapper


def run_threads(target, count=THREADS):
    errors = []
    start = threading.Barrier(count)

    def run(index):
        try:
            start.wait()
            target(index)
        except Exception as exc:    # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    return errors


def receive(queue, expected, idle=0.5):
    """Consume the queue until it is empty and quiet; return the bodies."""
    admin = Admin(broker_url())
    got = []
    try:
        admin.channel.basic_consume(
            queue, no_ack=True,
            callback=lambda message: got.append(message.body))
        while True:
            try:
                admin.connection.drain_events(
                    timeout=idle if len(got) >= expected else 10)
            except socket.timeout:
                return got
    finally:
        admin.close()


def check(bodies, threads, per_thread):
    decoded = [pickle.loads(raw) for raw in bodies]
    keys = [(b['thread'], b['n']) for b in decoded]
    expected = {(t, n) for t in range(threads) for n in range(per_thread)}
    assert all(b == body(*key) for key, b in zip(keys, decoded)), 'damaged'
    lost = expected - set(keys)
    duplicated = len(keys) - len(set(keys))
    assert (len(keys), len(lost), duplicated) == (len(expected), 0, 0)
    for t in range(threads):    # each thread's messages in its order
        mine = [n for thread, n in keys if thread == t]
        assert mine == list(range(per_thread))


@pytest.mark.parametrize('confirm', [False, True],
                         ids=['unconfirmed', 'confirmed'])
def test_many_threads_publish_every_message_once_and_intact(
        queue, monkeypatch, confirm):
    producer = AMQPProducer('q', queue, confirm=confirm, confirm_timeout=20)
    guard = Exclusive(producer, monkeypatch)
    try:
        errors = run_threads(lambda t: [producer(body(t, n))
                                        for n in range(PER_THREAD)])
        connection = producer.connection.connection
        threads = set(guard.threads)     # before close() adds ours
    finally:
        producer.close()
    assert errors == []
    assert connection is not None       # never reconnected
    assert guard.overlaps == 0 and guard.unlocked == 0
    assert len(threads) == THREADS
    check(receive(queue.queue, THREADS * PER_THREAD), THREADS, PER_THREAD)


def test_concurrent_batches_from_several_threads(queue, monkeypatch):
    producer = AMQPProducer('q', queue, confirm=True, confirm_timeout=20)
    guard = Exclusive(producer, monkeypatch)
    results = {}

    def batches(t):
        ids = []
        for first in range(0, PER_THREAD, 100):
            with producer.batch() as batch:
                for n in range(first, first + 100):
                    batch(body(t, n))
            ids += batch.ids
        results[t] = ids

    try:
        errors = run_threads(batches, count=6)
        threads = set(guard.threads)
    finally:
        producer.close()
    assert errors == []
    assert guard.overlaps == 0 and guard.unlocked == 0
    assert len(threads) == 6
    all_ids = [i for ids in results.values() for i in ids]
    assert len(all_ids) == len(set(all_ids)) == 6 * PER_THREAD
    check(receive(queue.queue, 6 * PER_THREAD), 6, PER_THREAD)


def test_threads_mixing_batches_and_single_confirmed_calls(queue):
    producer = AMQPProducer('q', queue, confirm=True, confirm_timeout=20)

    def work(t):
        if t % 2:
            producer.publish_many([body(t, n) for n in range(PER_THREAD)])
        else:
            for n in range(PER_THREAD):
                producer(body(t, n))

    try:
        errors = run_threads(work, count=4)
    finally:
        producer.close()
    assert errors == []
    check(receive(queue.queue, 4 * PER_THREAD), 4, PER_THREAD)


def test_raw_channel_sanity(queue, admin):
    # the helpers themselves: a message published raw is received whole
    admin.channel.basic_publish(amqp.Message(pickle.dumps(body(0, 0))),
                                queue.exchange, 'q')
    check(receive(queue.queue, 1), 1, 1)
