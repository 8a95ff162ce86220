"""SLOW (about 40 s): two real Zope instances read one stream, each with
its own reader and its own FileStorage ZODB; each is stopped in the
middle of a transaction (beta with kill -9, alpha with SIGTERM after
the stop deadline) and started again while messages keep coming; both
end with every message applied exactly once, in order.

The instances (alpha and beta) are made and run as in
test_zope_instances.py (mkwsgiinstance, runwsgi). Each loads a stream
consumer, ``addon.stream``, of the run's own stream queue (bound to the
run's exchange, start="first"), with its reader name in zope.conf
(``consumer.addon.stream.reader alpha``); its handler
(``zopeaddon.streamhandlers.apply``) appends each message's number to a
PersistentList in the ZODB root, in the transaction zamqp commits the
reader's position with (zamqp.zope.offsets).

The test publishes COUNT numbered messages with confirms, BURST at a
time (several to a chunk: a broker that resumes a reader at the start
of its position's chunk sends some again, which are skipped). The
handler of message KILL_AT takes KILL_LONG seconds after its change
(uncommitted): beta is killed with SIGKILL then, so it dies in the
middle of that transaction, and is started again at once while the
publisher goes on. Once beta caught up, alpha gets SIGTERM in the
handler of STOP_AT, which outlasts the 5 s zamqp gives handlers on
SIGTERM: the consumer gives the message up and the process exits
without committing it; alpha is started again at once. (A long handler
is long the first time only: ``once``.) When both have all, they are
stopped with SIGTERM and their Data.fs are read: each holds
``list(range(COUNT))`` and its reader's position at the last message's
offset. The handler's journal (``var/stream-journal.log``, outside the
ZODB) shows that each instance began the message it was stopped in
twice (committed once) and every other message once.

The test prints one line of figures (downtime, messages published
meanwhile, time to catch up), listed again at the end of the run. Marked
``slow`` for pytest.
"""
import os
import signal
import sys
import threading
import time
import unittest
from xml.sax.saxutils import quoteattr

import pytest

from zamqp import AMQPProducer
from zamqp.testhelpers import broker_props
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests.brokers import report
from zamqp.tests.test_zope_instances import EXIT_TIMEOUT
from zamqp.tests.test_zope_instances import Instance
from zamqp.tests.test_zope_instances import InstancesLayer
from zamqp.tests.test_zope_instances import read
from zamqp.tests.test_zope_instances import show_logs_on_failure
from zamqp.zope.lifecycle import EXIT_TIMEOUT as STOP_DEADLINE

pytestmark = pytest.mark.slow

#: Messages published, in bursts of BURST (each confirmed as a whole,
#: so the broker writes several to a chunk), one burst each INTERVAL.
COUNT, BURST, INTERVAL = 1000, 10, 0.2
#: The seconds a handler takes for each message (after its change).
DELAY = 0.002
#: beta is killed with SIGKILL while it handles message KILL_AT, which
#: takes KILL_LONG seconds; alpha gets SIGTERM while it handles STOP_AT,
#: which takes STOP_LONG seconds, longer than the 5 s zamqp gives running
#: handlers on SIGTERM (zamqp.zope.lifecycle.EXIT_TIMEOUT): the consumer
#: gives the message up, so its transaction must not be committed.
KILL_AT, KILL_LONG = 205, 2.0
STOP_AT, STOP_LONG = 705, STOP_DEADLINE + 1.0
LONG = {KILL_AT: KILL_LONG, STOP_AT: STOP_LONG}
#: Seconds for the publisher to finish, and for the readers then.
PUBLISH_TIMEOUT, RECEIVE_TIMEOUT = 60, 60
CONSUMER = 'addon.stream'

ZCML = """\
<configure
    xmlns="http://namespaces.zope.org/zope"
    xmlns:zamqp="http://namespaces.zope.org/zamqp">
  <include package="zamqp" />
  <include package="zamqp.tests.zopeaddon" />
  <include package="zamqp.tests.zopeaddon" file="streams.zcml" />

  <zamqp:connection />
  <zamqp:consumer name={name} exchange={exchange} stream="true"
      queue={queue} start="first"
      handler="zamqp.tests.zopeaddon.streamhandlers.apply" />
</configure>
"""


class StreamInstances(InstancesLayer):
    """alpha and beta read the run's stream, bound to the run's
    exchange, as readers ``alpha`` and ``beta``. At tear-down the stream,
    the dead-letter queue and the exchanges are deleted too."""

    def make_instances(self):
        self.exchange_name = exchange = self.exchange()
        self.exchanges.append(f'{exchange}.dead')   # the consumer's default
        self.stream = unique('zamqp.test.stream')
        zcml = ZCML.format(name=quoteattr(CONSUMER),
                           exchange=quoteattr(exchange),
                           queue=quoteattr(self.stream))
        for name in ('alpha', 'beta'):
            instance = Instance(self.root, name)
            self.instances.append(instance)
            instance.create(zcml, broker_url(),
                            [f'consumer.{CONSUMER}.reader {name}'])
            instance.exchange = exchange
            self[name] = instance

    def wait_for_consumers(self):
        for instance in self.instances:
            consumers = instance.get('@@zamqp-consumers')
            assert consumers == {f'zamqp-consumer-{CONSUMER}': self.stream}, \
                consumers
        assert wait_for(lambda: self.admin.queue_exists(self.stream),
                        timeout=10), f'stream missing: {self.stream}'

    def tearDown(self):
        for instance in self.instances:
            instance.kill()
        for queue in (getattr(self, 'stream', None),
                      f'{getattr(self, "exchange_name", "")}.dead'):
            if queue and queue != '.dead':
                try:
                    self.admin.delete_queue(queue)
                except Exception as exc:    # noqa: BLE001 - report, go on
                    sys.stderr.write(f'cannot delete queue {queue}: {exc}\n')
                    self.admin.channel = self.admin.connection.channel()
        super().tearDown()


STREAM_INSTANCES = StreamInstances(name='zamqp.tests:StreamInstances')


class Publisher(threading.Thread):
    """Publishes COUNT numbered messages with confirms, in bursts;
    ``times[n]`` is when message ``n`` was confirmed."""

    def __init__(self, exchange, queue):
        super().__init__(name='test-stream-publisher')
        self.props = broker_props(exchange=exchange)
        self.queue = queue
        self.times = []
        self.error = None

    def run(self):
        try:
            with AMQPProducer(self.queue, self.props,
                              confirm=True) as producer:
                for first in range(0, COUNT, BURST):
                    burst = range(first, min(first + BURST, COUNT))
                    producer.publish_many(
                        dict(n=n, delay=LONG.get(n, DELAY), once=n in LONG)
                        for n in burst)
                    self.times.extend([time.monotonic()] * len(burst))
                    time.sleep(INTERVAL)
        except BaseException as exc:        # noqa: BLE001 - the test says
            self.error = exc

    def published(self):
        return len(self.times)

    def published_between(self, start, end):
        return sum(1 for t in self.times if start <= t < end)


def journal(instance):
    """The lines of the handler's journal: (word, number, offset, pid)."""
    path = os.path.join(instance.home, 'var', 'stream-journal.log')
    lines = []
    for line in read(path).splitlines():
        if not line.strip() or line.startswith('('):
            continue
        word, number, offset, pid = line.split()
        lines.append((word, int(number), int(offset), int(pid)))
    return lines


def applied(instance):
    return instance.get('@@zamqp-stream-state')['applied']


def counts(instance):
    """The counts of the instance's stream consumer (this process)."""
    return instance.get('@@zamqp-stream-state')['consumers'][CONSUMER]


def database_state(instance):
    """The numbers and the positions in the instance's Data.fs (read
    after it stopped)."""
    import ZODB
    from ZODB.FileStorage import FileStorage
    storage = FileStorage(os.path.join(instance.home, 'var', 'Data.fs'),
                          read_only=True)
    database = ZODB.DB(storage)
    try:
        connection = database.open()
        root = connection.root()
        numbers = list(root.get('zamqp.tests.stream') or ())
        positions = dict(root.get('zamqp.offsets') or {})
        connection.close()
    finally:
        database.close()
    return numbers, positions




class StreamInstancesTests(unittest.TestCase):

    layer = STREAM_INSTANCES

    def setUp(self):
        self.alpha = self.layer['alpha']
        self.beta = self.layer['beta']
        self.instances = (self.alpha, self.beta)

    @show_logs_on_failure
    def test_restarts_mid_transaction_neither_lose_nor_duplicate(self):
        layer = self.layer
        began = time.monotonic()
        publisher = Publisher(layer.exchange_name, layer.stream)
        publisher.start()
        try:
            kill = self.restart(self.beta, KILL_AT, signal.SIGKILL,
                                publisher)
            stop = self.restart(self.alpha, STOP_AT, signal.SIGTERM,
                                publisher)
        finally:
            publisher.join(PUBLISH_TIMEOUT)
        self.assertFalse(publisher.is_alive(), 'the publisher still runs')
        self.assertIsNone(publisher.error)
        self.assertEqual(publisher.published(), COUNT)
        for instance in self.instances:
            self.assertTrue(wait_for(
                lambda: len(applied(instance)) >= COUNT,
                timeout=RECEIVE_TIMEOUT, interval=0.1),
                f'{instance.name} applied {len(applied(instance))}')
        total = time.monotonic() - began
        time.sleep(0.5)         # nothing more comes, nothing twice
        for instance in self.instances:
            self.assertEqual(applied(instance), list(range(COUNT)),
                             instance.name)
        # the processes that run now: each read from the position it
        # found; what the broker sent again was skipped, nothing failed
        skipped = {}
        for instance, since in ((self.alpha, STOP_AT), (self.beta, KILL_AT)):
            status = counts(instance)
            self.assertEqual(status['handled'], COUNT - since, status)
            for counter in ('refused', 'failed', 'retried', 'dead_lettered',
                            'dropped', 'crashes', 'missed'):
                self.assertEqual(status[counter], 0, (counter, status))
            skipped[instance.name] = status['skipped']
        # stopped cleanly: the committed state of each Data.fs
        for instance in self.instances:
            self.assertStopped(instance)
        states = {instance.name: database_state(instance)
                  for instance in self.instances}
        offsets = {}
        for name, (numbers, positions) in states.items():
            self.assertEqual(numbers, list(range(COUNT)), name)
            offsets[name] = positions
        self.assertEqual(states['alpha'][0], states['beta'][0])
        # the journals: each message committed once, in order; begun
        # once, but for the one each instance was stopped in
        for instance, again in ((self.alpha, STOP_AT),
                                (self.beta, KILL_AT)):
            lines = journal(instance)
            begun = [n for word, n, _, _ in lines if word == 'began']
            committed = [n for word, n, _, _ in lines if word == 'committed']
            self.assertEqual(committed, list(range(COUNT)), instance.name)
            self.assertNotIn('aborted', [line[0] for line in lines])
            self.assertEqual(sorted(begun), sorted([*range(COUNT), again]),
                             instance.name)
            # the position is the offset of the last message (offsets
            # grow with the numbers, not always by one)
            offset_of = {n: offset for _, n, offset, _ in lines}
            self.assertEqual(offsets[instance.name],
                             {(layer.stream, instance.name):
                              offset_of[COUNT - 1]})
            ordered = [offset_of[n] for n in range(COUNT)]
            self.assertEqual(ordered, sorted(set(ordered)))
        report(f'stream instances: beta {kill}; alpha {stop}; all {COUNT} '
               f'applied exactly once, in order, by both after '
               f'{total:.1f} s (delivered again after the restart and '
               f'skipped: alpha {skipped["alpha"]}, beta {skipped["beta"]})')

    def restart(self, instance, at, signum, publisher):
        """Stop ``instance`` with ``signum`` while the handler of message
        ``at`` runs (its change not committed), start it again at once
        while the publisher goes on, wait until it caught up; return
        the figures as text."""
        first_pid = instance.process.pid
        self.assertTrue(wait_for(
            lambda: ('began', at) in [line[:2] for line in journal(instance)],
            timeout=PUBLISH_TIMEOUT, interval=0.01),
            f'{instance.name} never began message {at}')
        stopped = time.monotonic()
        published_at_stop = publisher.published()
        took = instance.signal(signum)
        self.assertIsNotNone(instance.process.returncode,
                             f'{instance.name} still runs')
        lines = journal(instance)
        self.assertEqual(lines[-1][:2], ('began', at),
                         f'{instance.name} did not stop in the middle of '
                         f'message {at}: {lines[-3:]}')
        self.assertEqual([n for word, n, _, _ in lines
                          if word == 'committed'], list(range(at)))
        if signum != signal.SIGKILL:
            # zamqp waits its deadline for the handler, then Zope exits
            self.assertLess(took, STOP_DEADLINE + EXIT_TIMEOUT - 1)
            self.assertEqual(instance.process.returncode, 0)
            log = instance.log()
            self.assertIn('SIGTERM: stopping consumers', log)
            self.assertIn('a handler still runs after stop', log)
            self.assertNotIn('Traceback', log)
        os.replace(instance.stdout, f'{instance.stdout}.{first_pid}')
        instance.start()
        relaunched = time.monotonic()
        instance.wait_until_serving()
        serving = time.monotonic()
        backlog = publisher.published()
        self.assertTrue(wait_for(
            lambda: len(applied(instance)) >= backlog,
            timeout=RECEIVE_TIMEOUT, interval=0.05),
            f'{instance.name} did not catch up: '
            f'{len(applied(instance))} of {backlog}')
        caught_up = time.monotonic()
        resumed = [line for line in journal(instance)
                   if line[3] != first_pid]
        self.assertEqual(resumed[0][:2], ('began', at))
        how = 'kill -9' if signum == signal.SIGKILL else \
            signal.Signals(signum).name
        return (f'{how} in the middle of message {at} after '
                f'{published_at_stop} were published (exit took '
                f'{took:.1f} s), serving again {serving - relaunched:.1f} s '
                f'after the relaunch, down {serving - stopped:.1f} s in all '
                f'while {publisher.published_between(stopped, serving)} '
                f'were published; its backlog of {backlog - at} caught up '
                f'in {caught_up - serving:.1f} s')

    def assertStopped(self, instance):
        took = instance.signal(signal.SIGTERM)
        self.assertLess(took, EXIT_TIMEOUT, instance.name)
        self.assertEqual(instance.process.returncode, 0, instance.name)
