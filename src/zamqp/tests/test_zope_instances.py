"""SLOW (about 15 s): real Zope instances, made with mkwsgiinstance and run
with runwsgi, relay events to each other over the real broker, stop
their consumers cleanly on SIGTERM and SIGINT, and start serving while
the broker is down.

Each instance loads zamqp and the test add-on (``zamqp.tests.zopeaddon``)
from ``etc/package-includes``, on an exchange of the run's own; the
broker URL comes from ``<product-config zamqp>`` in its zope.conf. When
a test fails, the tails of the instances' logs are printed. Marked
``slow`` for pytest (``-m "not slow"`` leaves them out).
"""
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

import pytest
from plone.testing import Layer

from zamqp import AMQPProducer
from zamqp.testhelpers import Admin
from zamqp.testhelpers import broker_props
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests.zopeaddon import amqp_zcml
from zamqp.tests.zopeaddon.events import Noted
from zamqp.testhelpers import free_port

pytestmark = pytest.mark.slow

#: Seconds an instance may take to answer HTTP after it was launched.
START_TIMEOUT = 60
#: Seconds a signalled instance may take to exit.
EXIT_TIMEOUT = 10
CONSUMERS = ['zamqp-consumer-addon.events', 'zamqp-consumer-addon.store']


def command(script, module):
    """The venv's console script, or ``python -m module`` (buildout)."""
    path = os.path.join(os.path.dirname(sys.executable), script)
    if os.path.exists(path):
        return [path]
    return [sys.executable, '-m', module]


def environment():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop('ZAMQP_CONSUMERS', None)
    return env


class Instance:
    """A Zope instance in ``root/name``, run with runwsgi."""

    def __init__(self, root, name):
        self.name = name
        self.home = os.path.join(root, name)
        self.port = None
        self.process = None
        self.launched = None
        self.stdout = os.path.join(self.home, 'var', 'log', 'stdout.log')
        self.event_log = os.path.join(self.home, 'var', 'log', 'event.log')

    def create(self, zcml, url, settings=()):
        """mkwsgiinstance, then zamqp's ZCML, the broker URL (and the
        further ``<product-config zamqp>`` lines ``settings``) and a
        port."""
        subprocess.run(
            command('mkwsgiinstance', 'Zope2.utilities.mkwsgiinstance')
            + ['-d', self.home, '-u', 'admin:admin'],
            check=True, env=environment(), timeout=60,
            stdout=subprocess.DEVNULL)
        includes = os.path.join(self.home, 'etc', 'package-includes')
        os.makedirs(includes, exist_ok=True)
        write(os.path.join(includes, 'zamqp-configure.zcml'), zcml)
        with open(self.etc('zope.conf'), 'a') as conf:
            lines = ''.join(f'  {line}\n' for line in settings)
            conf.write(f'\n<product-config zamqp>\n  url {url}\n{lines}'
                       '</product-config>\n')
        self.port = free_port()
        self.rewrite_ini()

    def rewrite_ini(self):
        """Our port; no Paste translogger (Paste is not installed)."""
        with open(self.etc('zope.ini')) as ini:
            text = ini.read()
        text, ports = re.subn(r'(?m)^port = \d+$', f'port = {self.port}',
                              text)
        text, loggers = re.subn(r'(?m)^\s+translogger\n', '', text)
        assert (ports, loggers) == (1, 1), \
            f'unexpected etc/zope.ini from mkwsgiinstance: {text}'
        write(self.etc('zope.ini'), text)

    def etc(self, name):
        return os.path.join(self.home, 'etc', name)

    def start(self):
        self.launched = time.monotonic()
        with open(self.stdout, 'w') as out:
            self.process = subprocess.Popen(
                command('runwsgi', 'Zope2.Startup.serve')
                + [self.etc('zope.ini')],
                stdout=out, stderr=subprocess.STDOUT, env=environment(),
                cwd=self.home, start_new_session=True)

    def wait_until_serving(self):
        """Seconds from launch until the instance answered HTTP."""
        deadline = self.launched + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f'{self.name} exited with '
                                     f'{self.process.returncode}')
            try:
                self.get('@@zamqp-consumers', timeout=2)
            except OSError:
                time.sleep(0.1)
            else:
                return time.monotonic() - self.launched
        raise AssertionError(f'{self.name} did not answer HTTP on port '
                             f'{self.port} within {START_TIMEOUT} s')

    def get(self, view, timeout=10, **form):
        query = f'?{urllib.parse.urlencode(form)}' if form else ''
        url = f'http://127.0.0.1:{self.port}/{view}{query}'
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())

    def texts(self, view, **match):
        """The texts of the entries of ``view`` that match ``match``."""
        return [e['text'] for e in self.get(view)
                if all(e.get(k) == v for k, v in match.items())]

    def signal(self, signum):
        """Send ``signum``; return the seconds until the process ended."""
        sent = time.monotonic()
        self.process.send_signal(signum)
        try:
            self.process.wait(EXIT_TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            pass
        return time.monotonic() - sent

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self):
        """What the instance wrote to stdout and stderr (its log too)."""
        return read(self.stdout)

    def tails(self, lines=40):
        return ''.join(
            f'\n----- {self.name}: last {lines} lines of {path} -----\n'
            + ''.join(read(path).splitlines(True)[-lines:])
            for path in (self.event_log, self.stdout))


def write(path, text):
    with open(path, 'w') as f:
        f.write(text)


def read(path):
    try:
        with open(path, errors='replace') as f:
            return f.read()
    except OSError as exc:
        return f'({exc})'


def start_all(instances):
    """Start the instances together; return the seconds each took."""
    for instance in instances:
        instance.start()
    return [instance.wait_until_serving() for instance in instances]


def show_logs_on_failure(test):
    """Print the tails of the instances' logs when ``test`` fails."""
    @functools.wraps(test)
    def wrapper(self, *args, **kw):
        try:
            return test(self, *args, **kw)
        except BaseException:
            print_tails(self.layer.instances)
            raise
    return wrapper


def print_tails(instances):
    for instance in instances:
        sys.stderr.write(instance.tails())


@contextlib.contextmanager
def publishing(exchange, interval=0.002):
    """Publish Noted messages to ``exchange`` in a thread meanwhile."""
    stopping = threading.Event()

    def publish():
        with AMQPProducer('flood', broker_props(exchange=exchange)) as p:
            n = 0
            while not stopping.wait(interval):
                p(Noted(f'flood-{n}', origin='test'))
                n += 1

    thread = threading.Thread(target=publish, name='test-publisher')
    thread.start()
    try:
        yield
    finally:
        stopping.set()
        thread.join(10)


class InstancesLayer(Layer):
    """Starts the instances that ``make_instances`` makes, in a temporary
    directory; at tear-down kills what still runs and deletes the
    exchanges. (A layer, not setUpClass: zope-testrunner runs layers,
    not setUpClass.)"""

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix='zamqp-instances-')
        self.exchanges = []
        self.instances = []
        self.admin = Admin()
        try:
            self.make_instances()
            self.took = start_all(self.instances)
            self.wait_for_consumers()
        except BaseException:
            print_tails(self.instances)
            self.tearDown()
            raise

    def tearDown(self):
        for instance in self.instances:
            instance.kill()
        for exchange in self.exchanges:
            self.admin.delete_exchange(exchange)
        self.admin.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def make(self, name, exchange=None, url=None, settings=(), **zcml):
        """A configured instance (not started yet) on ``exchange``, with
        the zope.conf ``settings`` of zamqp."""
        if exchange is None:
            exchange = self.exchange()
        instance = Instance(self.root, name)
        self.instances.append(instance)
        instance.create(amqp_zcml(exchange, **zcml), url or broker_url(),
                        settings)
        instance.exchange = exchange
        self[name] = instance

    def exchange(self):
        """A new exchange name, deleted at tear-down."""
        self.exchanges.append(unique('zamqp.test.instances'))
        return self.exchanges[-1]

    def wait_for_consumers(self):
        """Until each instance's consumers consume (their queues exist)."""
        for instance in self.instances:
            consumers = instance.get('@@zamqp-consumers')
            assert sorted(consumers) == CONSUMERS, consumers
            instance.queues = list(consumers.values())
            assert wait_for(
                lambda: all(self.admin.queue_exists(q)
                            for q in instance.queues),
                timeout=10), f'queues missing: {instance.queues}'


class TwoInstances(InstancesLayer):
    """alpha and beta share an exchange; alpha has a SIGTERM handler of
    the add-on, installed before zamqp's."""

    def make_instances(self):
        exchange = self.exchange()
        self.make('alpha', exchange, sigterm=True)
        self.make('beta', exchange)


#: The secret of the SIGNED layer's instances (in their zope.conf).
SECRET = 'instances-shared-secret-0123456789'


class SignedInstances(InstancesLayer):
    """delta and epsilon share an exchange and a secret: they sign what
    they send and refuse what is not signed with it."""

    def make_instances(self):
        exchange = self.exchange()
        for name in ('delta', 'epsilon'):
            self.make(name, exchange, settings=[f'secret {SECRET}'])


class OneInstance(InstancesLayer):
    """gamma, on an exchange of its own."""

    def make_instances(self):
        self.make('gamma')


class BrokerDown(InstancesLayer):
    """down: nothing listens at the broker's port; hung: something
    listens but never speaks AMQP (connect_timeout is 10 s)."""

    def make_instances(self):
        self.listener = socket.socket()
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(16)
        hung = self.listener.getsockname()[1]
        url = 'amqp://guest:guest@127.0.0.1:{}/'
        self.make('down', url=url.format(free_port()))
        self.make('hung', url=url.format(hung))

    def wait_for_consumers(self):
        """They cannot consume: nothing to wait for."""

    def tearDown(self):
        super().tearDown()
        if getattr(self, 'listener', None) is not None:
            self.listener.close()


TWO_INSTANCES = TwoInstances(name='zamqp.tests:TwoInstances')
ONE_INSTANCE = OneInstance(name='zamqp.tests:OneInstance')
SIGNED = SignedInstances(name='zamqp.tests:SignedInstances')
BROKER_DOWN = BrokerDown(name='zamqp.tests:BrokerDown')


class InstancesTestCase(unittest.TestCase):

    def assertStopped(self, instance, signum, name):
        """``signum`` ends ``instance`` quickly and cleanly, while
        messages keep coming."""
        with publishing(instance.exchange):
            time.sleep(0.5)            # handlers are busy when it comes
            took = instance.signal(signum)
        log = instance.log()
        self.assertIsNotNone(instance.process.returncode,
                             f'{instance.name} still runs')
        self.assertLess(took, EXIT_TIMEOUT)
        self.assertEqual(instance.process.returncode, 0)
        self.assertIn(f'{name}: stopping consumers', log)
        self.assertRegex(log, r'stopped consumers: addon\.events, '
                              r'addon\.store\b')
        self.assertNotIn('Traceback', log)
        admin = self.layer.admin
        self.assertTrue(wait_for(
            lambda: not any(admin.queue_exists(q) for q in instance.queues),
            timeout=5), f'queues left on the broker: {instance.queues}')


class TwoInstancesTests(InstancesTestCase):
    """In this order (by name and by place): the last one stops both."""

    layer = TWO_INSTANCES

    def setUp(self):
        self.alpha = self.layer['alpha']
        self.beta = self.layer['beta']
        self.instances = (self.alpha, self.beta)

    @show_logs_on_failure
    def test_1_event_in_alpha_is_notified_in_beta(self):
        text = unique('hello')
        self.assertEqual(self.alpha.get('@@zamqp-notify', text=text),
                         dict(notified=text, origin='alpha'))
        # beta's events consumer notified it as a received event ...
        self.assertTrue(wait_for(lambda: text in self.beta.texts(
            '@@zamqp-seen', origin='alpha', received=True,
            thread='zamqp-worker-addon.events'), timeout=10))
        # ... and beta's store handler committed it to beta's ZODB
        self.assertTrue(wait_for(
            lambda: text in self.beta.texts('@@zamqp-stored'), timeout=10))
        [entry] = [e for e in self.beta.get('@@zamqp-stored')
                   if e['text'] == text]
        self.assertEqual(entry, dict(text=text, consumer='addon.store',
                                     user=None, site='/',
                                     component_site=None))
        # alpha saw it locally, and once more from the broker
        self.assertTrue(wait_for(lambda: self.alpha.texts(
            '@@zamqp-seen', received=True).count(text) == 1, timeout=10))
        self.assertEqual(self.alpha.texts(
            '@@zamqp-seen', received=False), [text])
        # nobody relayed it again: each stored it exactly once
        self.assertTrue(wait_for(
            lambda: self.alpha.texts('@@zamqp-stored').count(text) == 1,
            timeout=10))
        time.sleep(0.5)
        for instance in self.instances:
            self.assertEqual(instance.texts('@@zamqp-stored').count(text),
                             1, instance.name)
            self.assertEqual(instance.texts(
                '@@zamqp-seen', received=True).count(text), 1)

    @show_logs_on_failure
    def test_2_message_from_python_reaches_both(self):
        text = unique('from-python')
        with AMQPProducer('test', broker_props(
                exchange=self.alpha.exchange)) as producer:
            producer(Noted(text, origin='test'))
        for instance in self.instances:
            self.assertTrue(wait_for(lambda: text in instance.texts(
                '@@zamqp-seen', origin='test', received=True), timeout=10),
                instance.name)
            self.assertTrue(wait_for(
                lambda: text in instance.texts('@@zamqp-stored'),
                timeout=10), instance.name)

    @show_logs_on_failure
    def test_3_sigterm_stops_both_cleanly(self):
        self.assertStopped(self.beta, signal.SIGTERM, 'SIGTERM')
        self.assertStopped(self.alpha, signal.SIGTERM, 'SIGTERM')
        # zamqp stopped the consumers, then chained to the add-on's handler
        self.assertIn("the add-on's own SIGTERM handler runs; consumers "
                      "running: none", self.alpha.log())


class SignedInstancesTests(InstancesTestCase):

    layer = SIGNED

    def setUp(self):
        self.delta = self.layer['delta']
        self.epsilon = self.layer['epsilon']
        self.instances = (self.delta, self.epsilon)

    @show_logs_on_failure
    def test_1_signed_event_reaches_the_other_instance(self):
        text = unique('signed')
        self.delta.get('@@zamqp-notify', text=text)
        self.assertTrue(wait_for(
            lambda: text in self.epsilon.texts('@@zamqp-stored'),
            timeout=10))
        self.assertTrue(wait_for(lambda: text in self.epsilon.texts(
            '@@zamqp-seen', origin='delta', received=True), timeout=10))

    @show_logs_on_failure
    def test_2_forged_and_unsigned_never_reach_a_handler(self):
        props = broker_props(exchange=self.delta.exchange)
        texts = {}
        for kind, secret in (('forged', 'someone-elses-secret-0123456789'),
                             ('unsigned', None), ('valid', SECRET)):
            texts[kind] = unique(kind)
            with AMQPProducer('test', props.replace(secret=secret)) as p:
                p(Noted(texts[kind], origin='test'))
        # consumers handle messages in order: once the valid one is
        # stored and notified, the two before it were refused
        for instance in self.instances:
            self.assertTrue(wait_for(
                lambda: texts['valid'] in instance.texts('@@zamqp-stored')
                and texts['valid'] in instance.texts(
                    '@@zamqp-seen', received=True), timeout=10),
                instance.name)
            for kind in ('forged', 'unsigned'):
                self.assertNotIn(texts[kind],
                                 instance.texts('@@zamqp-stored'))
                self.assertNotIn(texts[kind], instance.texts(
                    '@@zamqp-seen', received=True))
            log = instance.log()
            self.assertEqual(len(re.findall(
                r'refused message .*not one of the accepted secrets',
                log)), 2, instance.name)
            self.assertEqual(len(re.findall(
                r'refused message .*the message is not signed', log)), 2)
            self.assertNotIn(SECRET, log)
            self.assertNotIn('someone-elses', log)


class SIGINTTests(InstancesTestCase):

    layer = ONE_INSTANCE

    @show_logs_on_failure
    def test_sigint_stops_consumers_before_the_database_closes(self):
        self.assertStopped(self.layer['gamma'], signal.SIGINT, 'SIGINT')


class BrokerDownTests(InstancesTestCase):

    layer = BROKER_DOWN

    def setUp(self):
        self.down = self.layer['down']
        self.instances = (self.down, self.layer['hung'])

    @show_logs_on_failure
    def test_serving_without_waiting_for_the_broker(self):
        # blocking on the hung broker would take 2 x 12 s
        for instance, took in zip(self.instances, self.layer.took):
            self.assertLess(took, 10, instance.name)
            self.assertEqual(sorted(instance.get('@@zamqp-consumers')),
                             CONSUMERS)

    @show_logs_on_failure
    def test_log_says_the_consumer_cannot_connect_and_retries(self):
        self.assertTrue(wait_for(
            lambda: len(re.findall(
                r'ERROR \[zamqp.*\] consumer addon\.\w+\.\w+: .*'
                r'; retrying in the background', self.down.log())) == 2,
            timeout=10))

    @show_logs_on_failure
    def test_requests_succeed_while_the_broker_is_down(self):
        text = unique('broker-down')
        self.assertEqual(self.down.get('@@zamqp-notify', text=text),
                         dict(notified=text, origin='down'))
        self.assertIn(text, self.down.texts('@@zamqp-seen', received=False))

    @show_logs_on_failure
    def test_sigterm_while_the_broker_is_down(self):
        for instance in self.instances:
            took = instance.signal(signal.SIGTERM)
            self.assertLess(took, EXIT_TIMEOUT, instance.name)
            self.assertEqual(instance.process.returncode, 0, instance.name)
            self.assertIn('SIGTERM: stopping consumers', instance.log())
        # between connection attempts the consumers stop at once; hung
        # in a connection attempt, they are given up after 2 s each
        self.assertIn('stopped consumers: addon.events, addon.store',
                      self.down.log())
