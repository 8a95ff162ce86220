"""SLOW (about 30 s): SIGTERM reaches a real Zope instance while one of
its consumer handlers runs past the stop deadline.

alpha and beta (made with the machinery of ``test_zope_instances``) share
the work queue of the consumer ``addon.slow``, whose handler
(``zopeaddon.handlers.slow_store``) appends to the ZODB first and then
sleeps. The instance that took the message is sent SIGTERM: it must exit
with status 0 and no traceback, its ZODB must not have the write (seen
after a restart), and the message must come back to the queue, so the
other instance handles it (redelivered: it does not sleep then).
"""
import signal
import time
import unittest

import pytest

from zamqp import AMQPProducer
from zamqp.zope import lifecycle
from zamqp.testhelpers import broker_props
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests.test_zope_instances import CONSUMERS
from zamqp.tests.test_zope_instances import EXIT_TIMEOUT
from zamqp.tests.test_zope_instances import InstancesLayer
from zamqp.tests.test_zope_instances import show_logs_on_failure

pytestmark = pytest.mark.slow

#: Seconds the slow handler sleeps: longer than the whole shutdown.
SLEEP = 3 * lifecycle.EXIT_TIMEOUT


class SlowInstances(InstancesLayer):
    """alpha and beta share an exchange and the queue of ``addon.slow``."""

    def make_instances(self):
        exchange = self.exchange()
        self.slow_exchange = self.exchange()
        self.slow_queue = unique('zamqp.test.slow')
        for name in ('alpha', 'beta'):
            self.make(name, exchange, slow=(self.slow_exchange,
                                            self.slow_queue))

    def wait_for_consumers(self):
        for instance in self.instances:
            consumers = instance.get('@@zamqp-consumers')
            assert sorted(consumers) == sorted(
                CONSUMERS + ['zamqp-consumer-addon.slow']), consumers
            instance.queues = list(consumers.values())
        assert wait_for(
            lambda: all(self.admin.queue_exists(q)
                        for i in self.instances for q in i.queues),
            timeout=10)

    def tearDown(self):
        for instance in self.instances:
            instance.kill()
        self.admin.delete_queue(self.slow_queue)
        super().tearDown()


SLOW = SlowInstances(name='zamqp.tests:SlowInstances')


def began(instance, text):
    return f'slow handler began {text} (redelivered: False)' in \
        instance.log()


class SIGTERMWhileHandlingTests(unittest.TestCase):

    layer = SLOW

    def setUp(self):
        self.instances = (self.layer['alpha'], self.layer['beta'])

    def publish(self, **body):
        with AMQPProducer('test', broker_props(
                exchange=self.layer.slow_exchange)) as producer:
            producer(body)

    def assertGivenBack(self, write_first, until_given_back=False):
        """SIGTERM the instance whose handler sleeps: it exits 0 in about
        the stop deadline, without a traceback and without committing;
        the other instance handles the message. Return the log."""
        text = unique('slow')
        self.publish(text=text, seconds=SLEEP, write_first=write_first,
                     until_given_back=until_given_back)
        self.assertTrue(wait_for(
            lambda: any(began(i, text) for i in self.instances),
            timeout=10))
        [busy] = [i for i in self.instances if began(i, text)]
        [other] = [i for i in self.instances if i is not busy]
        took = busy.signal(signal.SIGTERM)
        print(f'\nSIGTERM of {busy.name} with a handler running '
              f'(write_first={write_first}, until_given_back='
              f'{until_given_back}) took {took:.2f} s (stop deadline '
              f'{lifecycle.EXIT_TIMEOUT} s)')
        log = busy.log()
        self.assertIsNotNone(busy.process.returncode, f'{busy.name} runs')
        self.assertEqual(busy.process.returncode, 0)
        self.assertLess(took, EXIT_TIMEOUT)
        self.assertGreater(took, lifecycle.EXIT_TIMEOUT - 1)
        self.assertNotIn('KeyError', log)
        self.assertNotIn('ConnectionStateError', log)
        if not until_given_back:
            self.assertNotIn('Traceback', log)
            self.assertNotIn('Error', log)
            self.assertNotIn(f'slow handler returns {text}', log)
        self.assertIn('SIGTERM: stopping consumers', log)
        # the message went back to the queue: the other instance has it
        self.assertTrue(wait_for(
            lambda: dict(text=text, redelivered=True) in other.get(
                '@@zamqp-slow'), timeout=10))
        # from a fresh start, the stopped instance's ZODB has no trace
        busy.start()
        busy.wait_until_serving()
        self.assertNotIn(text, [e['text'] for e in busy.get('@@zamqp-slow')])
        time.sleep(0.5)
        self.assertEqual(
            [e for e in other.get('@@zamqp-slow') if e['text'] == text],
            [dict(text=text, redelivered=True)])
        self.assertNotIn(text, [e['text'] for e in busy.get('@@zamqp-slow')])
        return log

    @show_logs_on_failure
    def test_1_handler_wrote_before_sigterm(self):
        # the connection has joined the transaction (ConnectionStateError
        # at DB.close() before the fix)
        self.assertGivenBack(write_first=True)

    @show_logs_on_failure
    def test_2_handler_writes_nothing_before_sigterm(self):
        # no transaction joined yet (KeyError in transaction/weakset.py
        # at DB.close() before the fix)
        self.assertGivenBack(write_first=False)

    @show_logs_on_failure
    def test_3_handler_returns_after_the_message_was_given_back(self):
        # the handler returns just after the stop deadline: InZope must
        # abort (MessageGivenBack) instead of committing
        log = self.assertGivenBack(write_first=True, until_given_back=True)
        self.assertRegex(log, r'slow handler sees \S+ given back')
        self.assertIn('MessageGivenBack', log)
        self.assertIn('the message was given back to the queue while its '
                      'handler ran', log)
