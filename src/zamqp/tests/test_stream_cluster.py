"""Stream readers and a quorum work queue on a private three-node cluster.

The cluster (never the shared broker) starts once for the module; each
test starts again any node a previous test left down. A node is killed
with kill -9 while messages flow: the stream's (or the quorum queue's)
leader, so a new leader is elected among the two others while producer
and readers fail over to them. Every message the producer saw confirmed
must reach every reader (at least once in plain Python: duplicates are
counted and reported, not refused; exactly once in Zope, where the
position is committed with the handler's changes).

Each test prints one line of figures, listed again at the end of the run.
"""
import json
import subprocess
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
from zamqp.tests.test_faults import Tally
from zamqp.tests.test_stream_faults import database
from zamqp.tests.test_stream_faults import note_offset
from zamqp.tests.test_stream_faults import notes
from zamqp.tests.test_stream_faults import zope_reader

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    brokers.missing(), reason='RabbitMQ is not installed on this machine '
    '(ZAMQP_TEST_URL points elsewhere); CI requires it')]

SIZE = 3
STREAM_COUNT, STREAM_KILL_AT = 2000, 500
QUORUM_COUNT, QUORUM_KILL_AT = 1000, 300
PUBLISH_TIMEOUT = 90.0      # seconds for all of a test's messages confirmed
RECEIVE_TIMEOUT = 60.0      # seconds for the readers to have them all


@pytest.fixture(scope='module')
def cluster():
    began = time.monotonic()
    nodes = brokers.Cluster(SIZE)
    nodes.start()           # cleans up itself if it fails
    try:
        assert wait_for(lambda: len(_running(nodes)) == SIZE, 30, 0.5)
        nodes.took = time.monotonic() - began
        yield nodes
    finally:
        nodes.cleanup()


@pytest.fixture
def nodes(cluster):
    """The cluster with all its nodes running (restarts killed ones)."""
    down = [node for node in cluster.nodes if not node.pids()]
    for node in down:
        node.start()
    if down:
        assert wait_for(lambda: len(_running(cluster)) == SIZE, 60, 0.5)
    return cluster


# helpers

def _alive(cluster):
    return [node for node in cluster.nodes if node.pids()]


def _running(cluster):
    """The running nodes as one live node sees them ([] if it cannot)."""
    for node in _alive(cluster):
        try:
            out = node.ctl('cluster_status', '--formatter', 'json',
                           check=False)
            return json.loads(out.stdout).get('running_nodes', [])
        except (ValueError, subprocess.TimeoutExpired):
            continue
    return []


def _queue(cluster, name):
    """``name``'s row in list_queues (type, members, leader, online), as a
    live node reports it; None if it is not (yet) listed."""
    for node in _alive(cluster):
        try:
            out = node.ctl('list_queues', 'name', 'type', 'members',
                           'leader', 'online', '--formatter', 'json',
                           check=False)
            rows = json.loads(out.stdout)
        except (ValueError, subprocess.TimeoutExpired):
            continue
        for row in rows:
            if row['name'] == name:
                return row
        return None
    return None


def _node(cluster, erlang_name):
    [node] = [node for node in cluster.nodes if node.node == erlang_name]
    return node


def _props(cluster, exchange, first=0):
    """Props with every node of the cluster, node ``first`` tried first."""
    addresses = cluster.addresses[first:] + cluster.addresses[:first]
    return AMQPProps(hosts=addresses, user='guest', password='guest',
                     exchange=exchange, type='fanout', connect_timeout=2,
                     timeout=5, heartbeat=2)


class Reader:
    """What a stream reader received: (number, offset, when), in order."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen = []

    def __call__(self, body, message):
        offset = message.headers['x-stream-offset']
        with self.lock:
            self.seen.append((body, offset, time.monotonic()))

    def received(self):
        with self.lock:
            return list(self.seen)

    @property
    def distinct(self):
        with self.lock:
            return {number for number, _, _ in self.seen}

    def first_receptions(self):
        """(number, offset) of each number's first reception, in order."""
        found, firsts = set(), []
        for number, offset, _ in self.received():
            if number not in found:
                found.add(number)
                firsts.append((number, offset))
        return firsts


class Publisher:
    """Publish 0 .. count-1 with confirms, in order, retrying a number whose
    publish raised (it may be in the queue all the same: a duplicate)."""

    def __init__(self, producer, reopen=False):
        self.producer = producer
        self.reopen = reopen        # close the producer after a failure
        self.confirmed = []         # numbers, in order
        self.failed = 0             # publishes that raised
        self.times = []             # when each number was confirmed

    def run(self, count, timeout=PUBLISH_TIMEOUT, until=None, pause=0.001):
        """Publish until ``count`` numbers are confirmed (or ``until``
        are, if given); False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        stop = count if until is None else until
        while len(self.confirmed) < stop:
            if time.monotonic() > deadline:
                return False
            number = len(self.confirmed)
            try:
                self.producer(number)
            except (PublishFailed, ConnectionFailed):
                self.failed += 1
                if self.reopen:
                    self.producer.close()
                time.sleep(0.1)
                continue
            self.confirmed.append(number)
            self.times.append(time.monotonic())
            time.sleep(pause)
        return True

    def first_confirm_after(self, moment):
        for number, when in zip(self.confirmed, self.times):
            if when > moment:
                return number, when
        return None, None


def _require(condition, what):
    """Fail a test with the precondition it needs when ``condition`` is
    false (not with the assertion it is about)."""
    if not condition:
        pytest.fail(f'precondition: {what}')


def _stream_reader(queue, props, callback, name, directory, start='first',
                   **kw):
    return AMQPConsumer(queue, props, callback, stream=True, reader=name,
                        offsets=str(directory), start=start,
                        pass_message=True, **kw)


# 1. a stream replicated on three nodes

def test_a_stream_is_replicated_on_the_three_nodes(nodes, threads,
                                                   tmp_path):
    queue, exchange = unique('zamqp.stream.replicated'), unique()
    assert sorted(_running(nodes)) == sorted(n.node for n in nodes.nodes)
    reader = Reader()
    consumer = _stream_reader(queue, _props(nodes, exchange), reader, 'r1',
                              tmp_path / 'r1')
    threads(consumer)
    assert wait_for(lambda: _queue(nodes, queue) is not None, 20, 0.5)
    row = _queue(nodes, queue)
    names = sorted(n.node for n in nodes.nodes)
    assert row['type'] == 'stream'
    assert sorted(row['members']) == names
    assert wait_for(lambda: sorted(_queue(nodes, queue)['online']) == names,
                    20, 0.5)
    assert row['leader'] in names
    with AMQPProducer(queue, _props(nodes, exchange, 1),
                      confirm=True) as producer:
        for number in range(10):
            producer(number)
    assert wait_for(lambda: len(reader.received()) >= 10, 20, 0.1)
    time.sleep(0.5)             # and nothing more
    assert [(n, o) for n, o, _ in reader.received()] == \
        [(n, n) for n in range(10)]
    assert wait_for(lambda: consumer.status()['position'] == 9, 5)
    report(f'three-node cluster up in {nodes.took:.1f} s; stream {queue} '
           f'members {len(row["members"])}, leader {row["leader"]}; '
           f'10 of 10 read at offsets 0-9')


# 2. two readers and a producer while the stream's leader is killed

def test_readers_get_every_confirmed_message_when_the_leader_dies(
        nodes, threads, tmp_path):
    began = time.monotonic()
    queue, exchange = unique('zamqp.stream.failover'), unique()
    readers = {'r1': Reader(), 'r2': Reader()}
    consumers = {}
    # r1 declares the stream (its leader: r1's node); r2 reads from a
    # follower; the producer publishes on the leader; a Zope reader (its
    # position in a ZODB, exactly once) reads from the third node
    for first, name in enumerate(readers):
        consumers[name] = _stream_reader(
            queue, _props(nodes, exchange, first), readers[name], name,
            tmp_path / name)
        threads(consumers[name])
        assert wait_for(lambda: _queue(nodes, queue) is not None, 20, 0.2)
    db = database()
    zope = zope_reader(queue, _props(nodes, exchange, 2), db, 'instance1',
                       handler=note_offset)
    threads(zope)
    row = _queue(nodes, queue)
    assert len(row['members']) == SIZE
    leader = _node(nodes, row['leader'])
    producer = AMQPProducer(queue, _props(nodes, exchange,
                                          nodes.nodes.index(leader)),
                            confirm=True, mandatory=True)
    publisher = Publisher(producer)
    try:
        assert publisher.run(STREAM_COUNT, until=STREAM_KILL_AT)
        # both readers are reading while it dies
        assert wait_for(lambda: all(r.received() for r in readers.values()),
                        10)
        leader.kill()
        killed = time.monotonic()
        next_number = len(publisher.confirmed)
        assert publisher.run(STREAM_COUNT), \
            f'{len(publisher.confirmed)} confirmed in {PUBLISH_TIMEOUT} s'
        published = time.monotonic()
    finally:
        producer.close()
    confirmed = set(publisher.confirmed)
    assert confirmed == set(range(STREAM_COUNT))

    survivors = sorted(n.node for n in nodes.nodes if n is not leader)
    after = _queue(nodes, queue)
    assert after['leader'] in survivors
    assert sorted(after['online']) == survivors

    for name, reader in readers.items():
        wait_for(lambda: confirmed <= reader.distinct, RECEIVE_TIMEOUT, 0.2)
    # the Zope reader applied every message once: each offset once, every
    # confirmed number
    assert wait_for(lambda: confirmed <= {n for n, _ in notes(db)},
                    RECEIVE_TIMEOUT, 0.2), zope.status()
    time.sleep(0.5)
    applied = notes(db)
    applied_offsets = [offset for _, offset in applied]
    assert len(applied_offsets) == len(set(applied_offsets)), \
        'a message was applied twice in Zope'
    assert applied_offsets == sorted(applied_offsets)
    assert {n for n, _ in applied} == confirmed
    figures = [f'Zope reader applied {len(applied)} messages, each once '
               f'({zope.status()["reconnects"]} reconnects)']
    db.close()
    for name, reader in readers.items():
        received = reader.received()
        status = consumers[name].status()
        missing = confirmed - reader.distinct
        assert not missing, f'{name} lacks {len(missing)} confirmed ' \
            f'numbers, e.g. {sorted(missing)[:10]}; status {status}'
        assert reader.distinct == confirmed     # nothing else either
        firsts = reader.first_receptions()
        offsets = [offset for _, offset in firsts]
        assert all(a < b for a, b in zip(offsets, offsets[1:])), \
            f'{name}: offsets of first receptions not increasing'
        numbers = [number for number, _ in firsts]
        duplicates = len(received) - len(reader.distinct)
        # a number at two offsets: published twice (a publish that raised
        # was retried); at one offset twice: delivered again after the
        # reader reconnected, which the reader skips (status 'skipped')
        reread = len(received) - len({o for _, o, _ in received})
        republished = len({o for _, o, _ in received}) - len(confirmed)
        assert reread == 0, f'{name} handled {reread} offsets twice'
        recovered = [when for number, _, when in received
                     if number >= next_number]
        assert wait_for(lambda: consumers[name].status()['position'] ==
                        max(offsets), 5), consumers[name].status()
        status = consumers[name].status()
        assert status['missed'] == 0 and status['state'] == 'consuming', \
            status
        figures.append(
            f'{name} {len(received)} received, {duplicates} duplicates '
            f'({republished} published twice, {status["skipped"]} '
            f'delivered again and skipped, {status["reconnects"]} '
            f'reconnects), reading again {recovered[0] - killed:.1f} s '
            f'after the kill, numbers in order: {numbers == sorted(numbers)}')

    # the killed node returns: its replica catches up, and a reader on it
    # reads the stream as r1 did
    leader.start()
    returned = time.monotonic()
    names = sorted(n.node for n in nodes.nodes)
    assert wait_for(lambda: sorted((_queue(nodes, queue) or {}).get(
        'online', [])) == names, 60, 0.5)
    caught_up = time.monotonic() - returned
    late = Reader()
    threads(_stream_reader(queue, _props(nodes, exchange,
                                         nodes.nodes.index(leader)),
                           late, 'r3', tmp_path / 'r3'))
    expected = [(n, o) for n, o, _ in readers['r1'].received()]
    assert wait_for(lambda: len(late.received()) >= len(expected), 30, 0.1)
    time.sleep(0.5)             # and nothing more
    assert [(n, o) for n, o, _ in late.received()] == expected

    _, first_after = publisher.first_confirm_after(killed)
    report(f'stream on 3 nodes, leader {leader.name} killed -9 after '
           f'{next_number} confirmed: {len(confirmed)} of {STREAM_COUNT} '
           f'confirmed ({publisher.failed} publishes raised, the producer '
           f'confirming again {first_after - killed:.1f} s after the '
           f'kill, all in {published - killed:.1f} s), new leader '
           f'{after["leader"].split("@")[0]}; ' + '; '.join(figures)
           + f'; the node back, its replica online in {caught_up:.1f} s, '
           f'r3 read {len(expected)} from it as r1 did; '
           f'test took {time.monotonic() - began:.0f} s')


# 3. a quorum work queue while its leader is killed

def test_a_quorum_queue_loses_no_confirmed_message_when_its_leader_dies(
        nodes, threads):
    began = time.monotonic()
    queue, exchange = unique('zamqp.cluster.quorum3'), unique()
    work = Tally()
    # its dead-letter queue is a quorum queue too: it lives on when the
    # node the consumer declared it on dies
    consumer = AMQPConsumer(queue, _props(nodes, exchange), work,
                            shared=True, queue_type='quorum')
    threads(consumer)
    assert wait_for(lambda: _queue(nodes, queue) is not None, 20, 0.2)
    row = _queue(nodes, queue)
    assert row['type'] == 'quorum' and len(row['members']) == SIZE
    leader = _node(nodes, row['leader'])
    producer = AMQPProducer(queue, _props(nodes, exchange,
                                          nodes.nodes.index(leader)),
                            persistent=True, confirm=True, mandatory=True)
    publisher = Publisher(producer)
    try:
        assert publisher.run(QUORUM_COUNT, until=QUORUM_KILL_AT)
        assert wait_for(lambda: work.bodies, 10)
        leader.kill()
        killed = time.monotonic()
        next_number = len(publisher.confirmed)
        assert publisher.run(QUORUM_COUNT), \
            f'{len(publisher.confirmed)} confirmed in {PUBLISH_TIMEOUT} s'
        published = time.monotonic()
    finally:
        producer.close()
    confirmed = set(publisher.confirmed)
    assert confirmed == set(range(QUORUM_COUNT))
    survivors = sorted(n.node for n in nodes.nodes if n is not leader)
    after = _queue(nodes, queue)
    assert after['leader'] in survivors
    assert sorted(after['online']) == survivors

    wait_for(lambda: confirmed <= work.distinct, RECEIVE_TIMEOUT, 0.2)
    missing = confirmed - work.distinct
    assert not missing, f'{len(missing)} confirmed messages lost, e.g. ' \
        f'{sorted(missing)[:10]}'
    assert work.distinct == confirmed
    with work.lock:
        later = [body for body in work.bodies if body >= next_number]
    _, first_after = publisher.first_confirm_after(killed)
    report(f'quorum queue on 3 nodes, leader {leader.name} killed -9 after '
           f'{next_number} confirmed: {len(confirmed)} of {QUORUM_COUNT} '
           f'confirmed ({publisher.failed} publishes raised, confirming '
           f'again {first_after - killed:.1f} s after the kill, all in '
           f'{published - killed:.1f} s), new leader '
           f'{after["leader"].split("@")[0]}; consumed '
           f'{len(work.distinct)}, lost 0, {work.duplicates} duplicates, '
           f'{len(later)} consumed after the kill; '
           f'test took {time.monotonic() - began:.0f} s')


# 4. a producer nacked while a quorum queue had no leader

def test_a_producer_nacked_while_the_quorum_leader_was_down_goes_on(
        nodes, threads):
    """RabbitMQ 3.10 nacks a publish to a quorum queue whose leader just
    died, and then every later publish on the same channel, though a new
    leader was elected within a second (a new channel's publishes are
    confirmed): the producer must not keep that channel."""
    queue, exchange = unique('zamqp.cluster.nacked'), unique()
    threads(AMQPConsumer(queue, _props(nodes, exchange), Tally(),
                         shared=True, queue_type='quorum',
                         dead_letter_exchange=None))
    _require(wait_for(lambda: _queue(nodes, queue) is not None, 20, 0.2),
             'no queue')
    row = _queue(nodes, queue)
    _require(row['type'] == 'quorum' and len(row['members']) == SIZE, row)
    leader = _node(nodes, row['leader'])
    producer = AMQPProducer(queue, _props(nodes, exchange,
                                          nodes.nodes.index(leader)),
                            persistent=True, confirm=True, mandatory=True)
    publisher = Publisher(producer)
    try:
        _require(publisher.run(20), 'not confirmed before the kill')
        leader.kill()
        killed = time.monotonic()
        went_on = publisher.run(40, timeout=20)
    finally:
        producer.close()
    _, first_after = publisher.first_confirm_after(killed)
    report('quorum queue, leader killed -9: the producer '
           + (f'confirmed again {first_after - killed:.1f} s after the '
              f'kill ({publisher.failed} publishes raised)' if went_on else
              f'had {publisher.failed} publishes raised and '
              f'{len(publisher.confirmed) - 20} confirmed in the 20 s after '
              f'the kill'))
    assert went_on, f'{len(publisher.confirmed)} of 40 confirmed, ' \
        f'{publisher.failed} publishes raised in the 20 s after the kill'
    assert publisher.confirmed == list(range(40))


# 5. a stream reader whose dead-letter queue's node dies

def test_a_reader_goes_on_when_its_dead_letter_queue_node_dies(
        nodes, threads, tmp_path):
    queue, exchange = unique('zamqp.stream.deadletters'), unique()
    # r0 declares the stream on node 0 (its leader, never killed here);
    # r1, with the default dead letters, declares <exchange>.dead on node 1
    control, reader = Reader(), Reader()
    threads(_stream_reader(queue, _props(nodes, exchange, 0), control, 'r0',
                           tmp_path / 'r0', dead_letter_exchange=None))
    _require(wait_for(lambda: _queue(nodes, queue) is not None, 20, 0.2),
             'no stream')
    consumer = _stream_reader(queue, _props(nodes, exchange, 1), reader,
                              'r1', tmp_path / 'r1')
    threads(consumer)
    _require(wait_for(lambda: _queue(nodes, exchange + '.dead') is not None,
                      20, 0.2), 'no dead-letter queue')
    home = nodes.nodes[1]
    _require(_queue(nodes, queue)['leader'] != home.node, 'leader on node 1')
    producer = AMQPProducer(queue, _props(nodes, exchange, 0), confirm=True)
    publisher = Publisher(producer)
    try:
        _require(publisher.run(10), 'not confirmed before the kill')
        _require(wait_for(lambda: len(reader.received()) == 10, 20, 0.1),
                 'r1 did not read 10 before the kill')
        home.kill()
        killed = time.monotonic()
        _require(publisher.run(50), 'not confirmed after the kill')
    finally:
        producer.close()
    everything = set(range(50))
    _require(wait_for(lambda: control.distinct == everything, 20, 0.1),
             f'r0 read {len(control.distinct)} of 50')
    went_on = wait_for(lambda: reader.distinct == everything, 20, 0.2)
    status = consumer.status()
    report(f'stream reader whose dead-letter queue was on the node killed: '
           f'{len(reader.distinct)} of 50 read in the '
           f'{time.monotonic() - killed:.0f} s after the kill, state '
           f'{status["state"]}')
    assert went_on, status
