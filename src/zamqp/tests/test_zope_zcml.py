"""ZCML directives, the registry dispatch and the lifecycle, on the
layers of zamqp.testing, against the real broker."""
import socket
import threading
import time
import unittest

import transaction
import zope.component
import zope.event
from zope.configuration import xmlconfig
from zope.configuration.config import ConfigurationConflictError
from zope.configuration.config import ConfigurationExecutionError
from zope.configuration.exceptions import ConfigurationError
from zope.interface.verify import verifyObject

import zamqp
from zamqp import AMQPConsumer
from zamqp import AMQPEvent
from zamqp import AMQPThread
from zamqp.zope import lifecycle
from zamqp.zope import settings
from zamqp.interfaces import IAMQPProps
from zamqp.interfaces import IConsumerSpec
from zamqp.interfaces import IMessageReceived
from zamqp.interfaces import IProducer
from zamqp import testhelpers
from zamqp.testhelpers import wait_for
from zamqp.testing import ConsumersPerTest
from zamqp.testing import ZAMQP_FIXTURE
from zamqp.testing import ZAMQPFixture
from zamqp.tests import zcmltypes
from zamqp.tests.eventtypes import Ping
from zamqp.testhelpers import free_port


class AppFixture(ZAMQPFixture):
    def setUpZAMQP(self, context):
        xmlconfig.string(zcmltypes.ZCML, context=context)


APP_FIXTURE = AppFixture(name='zamqp.tests:AppFixture')
APP_TESTING = ConsumersPerTest(bases=(APP_FIXTURE,),
                               name='zamqp.tests:AppTesting')


def subscribe(kind):
    """Record the events of ``kind`` notified through the registry."""
    seen = []
    gsm = zope.component.getGlobalSiteManager()
    gsm.registerHandler(seen.append, (kind,))
    return seen


def producer(name):
    return zope.component.getUtility(IProducer, name)


class TestDirectives(unittest.TestCase):

    layer = APP_TESTING

    def setUp(self):
        del zcmltypes.RECEIVED[:]

    def test_utilities_provide_their_interfaces(self):
        verifyObject(IAMQPProps,
                     zope.component.getUtility(IAMQPProps, 'default'))
        for name in ('pings', 'now'):
            verifyObject(IProducer, producer(name))
        names = [n for n, _ in zope.component.getUtilitiesFor(IConsumerSpec)]
        self.assertEqual(sorted(names), ['handled', 'inbox', 'remote'])
        verifyObject(IConsumerSpec,
                     zope.component.getUtility(IConsumerSpec, 'inbox'))

    def test_names_carry_the_run_prefix(self):
        prefix = self.layer['zamqpPrefix']
        self.assertEqual(producer('pings').props.exchange, prefix + 'pings')
        spec = zope.component.getUtility(IConsumerSpec, 'remote')
        self.assertEqual(spec.props.exchange, prefix + 'pings')

    def test_consumer_threads_are_named_after_consumers(self):
        names = {t.name for t in threading.enumerate()}
        for consumer in ('remote', 'inbox', 'handled'):
            self.assertIn(f'zamqp-consumer-{consumer}', names)
        self.assertEqual(lifecycle.running(), ['handled', 'inbox', 'remote'])

    def test_message_received_event_and_handler(self):
        seen = subscribe(IMessageReceived)
        producer('now')({'order': 1})
        self.assertTrue(wait_for(lambda: seen and zcmltypes.RECEIVED))
        event = seen[0]
        verifyObject(IMessageReceived, event)
        self.assertEqual((event.consumer, event.body), ('inbox', {'order': 1}))
        self.assertEqual(event.message.properties['content_type'],
                         'application/x-python-serialize')
        handled = zcmltypes.RECEIVED[0]
        self.assertEqual((handled.consumer, handled.body),
                         ('handled', {'order': 1}))
        self.assertIsNone(handled.site)

    def test_transactional_producer_publishes_on_commit(self):
        pinged = subscribe(zcmltypes.IPinged)
        transaction.begin()
        producer('pings')(zcmltypes.Pinged('on commit'))
        time.sleep(0.3)
        self.assertEqual(pinged, [])
        transaction.commit()
        self.assertTrue(wait_for(lambda: pinged))
        self.assertEqual(pinged, [zcmltypes.Pinged('on commit')])

    def test_relayed_event_is_renotified_once_and_not_echoed(self):
        pinged = subscribe(zcmltypes.IPinged)
        raw = []
        spy = AMQPThread(AMQPConsumer(
            'spy', producer('pings').props, raw.append, allow=[zcmltypes]))
        spy.start()
        try:
            transaction.begin()
            zope.event.notify(zcmltypes.Pinged('hello'))
            transaction.commit()
            self.assertTrue(wait_for(lambda: len(pinged) == 2))
            time.sleep(0.3)
        finally:
            spy.stop()
        # the local notification, then the one the consumer made
        self.assertEqual(pinged, [zcmltypes.Pinged('hello')] * 2)
        self.assertEqual(raw, [zcmltypes.Pinged('hello')])

    def test_amqp_event_sent_once_by_both_dispatch_paths(self):
        from zamqp import events
        props = producer('pings').props.replace(allow=[Ping])
        got = []
        listener = AMQPThread(AMQPConsumer('ev', props, got.append))
        listener.start()
        try:
            event = AMQPEvent('ev', props, Ping('once'))
            self.assertIn(events.dispatch, zope.event.subscribers)
            zope.event.notify(event)
            self.assertTrue(wait_for(lambda: got == [Ping('once')]))
            time.sleep(0.3)
            self.assertEqual(got, [Ping('once')])
        finally:
            listener.stop()


class TestLifecycle(unittest.TestCase):

    layer = APP_FIXTURE

    def tearDown(self):
        lifecycle.stop()

    def test_start_and_stop(self):
        self.assertEqual(lifecycle.start(), ['handled', 'inbox', 'remote'])
        self.assertEqual(lifecycle.start(), [])       # already running
        began = time.monotonic()
        self.assertTrue(lifecycle.stop())
        self.assertLess(time.monotonic() - began, 2.0)
        self.assertEqual(lifecycle.running(), [])
        self.assertFalse([t for t in threading.enumerate()
                          if t.name.startswith('zamqp-consumer-')])

    def test_consumers_kept_off_by_environment(self):
        from zope.processlifetime import DatabaseOpenedWithRoot
        import os
        os.environ[settings.CONSUMERS_VARIABLE] = 'off'
        try:
            lifecycle.database_opened(DatabaseOpenedWithRoot(None))
        finally:
            del os.environ[settings.CONSUMERS_VARIABLE]
        self.assertEqual(lifecycle.running(), [])
        lifecycle.database_opened(DatabaseOpenedWithRoot(None))
        self.assertEqual(len(lifecycle.running()), 3)


class ProductConfig:
    """Set ``<product-config zamqp>`` as zope.conf would."""

    def __init__(self, **values):
        self.values = values

    def __enter__(self):
        from App.config import getConfiguration
        config = getConfiguration()
        self.saved = getattr(config, 'product_config', None)
        config.product_config = {'zamqp': self.values}

    def __exit__(self, *exc_info):
        from App.config import getConfiguration
        getConfiguration().product_config = self.saved


ZCML_HEAD = """<configure xmlns="http://namespaces.zope.org/zope"
    xmlns:zamqp="http://namespaces.zope.org/zamqp">
  <include package="zamqp" file="meta.zcml" />
"""


def load(body):
    return xmlconfig.string(ZCML_HEAD + body + '\n</configure>')


class TestConfiguration(unittest.TestCase):
    """Loading ZCML: errors with file and line, overrides, no sockets."""

    layer = ZAMQP_FIXTURE   # a sandboxed registry; loads go into it

    def setUp(self):
        from plone.testing import zca
        zca.pushGlobalRegistry()
        # these tests read what ZCML and zope.conf declare: the layer's
        # test broker must not replace it
        settings.set_test_url(None)

    def tearDown(self):
        from plone.testing import zca
        zca.popGlobalRegistry()
        settings.set_test_url(testhelpers.broker_url())

    def assertLoadFails(self, body, *words):
        with self.assertRaises((ConfigurationError,
                                ConfigurationExecutionError)) as info:
            load(body)
        text = str(info.exception)
        for word in words:
            self.assertIn(word, text)

    def test_five_lines_declare_a_consumer(self):
        load('<zamqp:connection url="amqp://h/" />\n'
             '<zamqp:consumer name="c" events="true" />')
        spec = zope.component.getUtility(IConsumerSpec, 'c')
        self.assertEqual(spec.props.host, 'h')

    def test_unknown_connection(self):
        self.assertLoadFails('<zamqp:producer name="p" connection="nope" />',
                             "no <zamqp:connection name='nope'>",
                             'line 4')

    def test_bad_url(self):
        self.assertLoadFails('<zamqp:connection url="http://h/" />',
                             'amqp://', 'line 4')

    def test_unimportable_handler(self):
        self.assertLoadFails(
            '<zamqp:connection />\n'
            '<zamqp:consumer name="c" handler="zamqp.nowhere.f" />',
            'handler', 'line 5')

    def test_broadcast_before_its_producer_and_unknown_producer(self):
        load('<zamqp:connection />\n'
             '<zamqp:broadcast for="zamqp.tests.zcmltypes.IPinged" '
             'producer="p" />\n<zamqp:producer name="p" />')
        self.assertLoadFails(
            '<zamqp:broadcast for="zamqp.tests.zcmltypes.IPinged" '
            'producer="q" />', "no <zamqp:producer name='q'>", 'line 4')

    def test_handler_and_events_exclude_each_other(self):
        self.assertLoadFails(
            '<zamqp:consumer name="c" events="true" '
            'handler="zamqp.tests.zcmltypes.record" />', 'not both')

    def test_unknown_serializer(self):
        self.assertLoadFails('<zamqp:producer name="p" serializer="yaml" />',
                             "unknown serializer 'yaml'")

    def test_bad_type(self):
        self.assertLoadFails('<zamqp:producer name="p" type="fan" />',
                             'type', 'line 4')

    def test_duplicate_names_conflict(self):
        with self.assertRaises(ConfigurationConflictError):
            load('<zamqp:connection />\n'
                 '<zamqp:consumer name="c" />\n<zamqp:consumer name="c" />')

    def test_no_socket_is_opened_while_loading(self):
        port = free_port()      # nothing listens there
        load(f'<zamqp:connection url="amqp://127.0.0.1:{port}/" />\n'
             '<zamqp:producer name="p" transactional="false" />\n'
             '<zamqp:consumer name="c" />')
        self.assertIsNotNone(zope.component.getUtility(IProducer, 'p'))
        with self.assertRaises(zamqp.ConnectionFailed):
            zope.component.getUtility(IProducer, 'p')('x')

    def test_start_does_not_block_on_a_broker_that_is_down(self):
        load(f'<zamqp:connection url="amqp://127.0.0.1:{free_port()}/" />\n'
             '<zamqp:consumer name="c" />')
        began = time.monotonic()
        self.assertEqual(lifecycle.start(), ['c'])
        self.assertLess(time.monotonic() - began, 1.0)
        self.assertTrue(lifecycle.stop())

    def test_stop_has_one_deadline_for_all_consumers(self):
        silent = socket.socket()        # accepts TCP, never speaks AMQP
        silent.bind(('127.0.0.1', 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        try:
            load(f'<zamqp:connection url="amqp://127.0.0.1:{port}/'
                 '?connect_timeout=3" />\n'
                 '<zamqp:consumer name="a" />\n<zamqp:consumer name="b" />')
            self.assertEqual(lifecycle.start(), ['a', 'b'])
            began = time.monotonic()
            self.assertFalse(lifecycle.stop(timeout=1.0))  # stuck connecting
            self.assertLess(time.monotonic() - began, 1.5)
        finally:
            silent.close()

    def test_product_config_overrides_url_and_credentials(self):
        with ProductConfig(url='amqp://u:p@broker.example:5700/prod',
                           **{'other.password': 's3cret'}):
            load('<zamqp:connection url="amqp://g:g@localhost/" '
                 'host="zcml-host" />\n'
                 '<zamqp:connection name="Other" user="x" password="y" />')
        default = zope.component.getUtility(IAMQPProps, 'default')
        self.assertEqual((default.host, default.port, default.user,
                          default.password, default.virtual_host),
                         ('broker.example', 5700, 'u', 'p', 'prod'))
        other = zope.component.getUtility(IAMQPProps, 'Other')
        self.assertEqual((other.user, other.password), ('x', 's3cret'))

    def test_hosts_of_a_cluster_in_zcml_and_zope_conf(self):
        load('<zamqp:connection hosts="a:5672 b:5673" />')
        props = zope.component.getUtility(IAMQPProps, 'default')
        self.assertEqual(props.hosts, (('a', 5672), ('b', 5673)))
        with ProductConfig(hosts='c:1 d:2'):
            load('<zamqp:connection name="x" hosts="a:5672 b:5673" />')
        props = zope.component.getUtility(IAMQPProps, 'x')
        self.assertEqual(props.hosts, (('a', 5672), ('b', 5673)))
        with ProductConfig(**{'y.url': 'amqp://c:1,d:2/'}):
            load('<zamqp:connection name="y" hosts="a:5672 b:5673" />')
        props = zope.component.getUtility(IAMQPProps, 'y')
        self.assertEqual(props.hosts, (('c', 1), ('d', 2)))

    def test_consumer_reliability_attributes(self):
        load('<zamqp:connection />\n'
             '<zamqp:consumer name="w" shared="true" queue_type="quorum" '
             'max_retries="5" dead_letter_exchange="failed" />\n'
             '<zamqp:consumer name="d" shared="true" '
             'dead_letter_exchange="none" />')
        spec = zope.component.getUtility(IConsumerSpec, 'w')
        consumer = spec.create()
        prefix = self.layer['zamqpPrefix']
        self.assertEqual((consumer.queue_type, consumer.max_retries,
                          consumer.dead_letter_exchange, consumer.queue_name),
                         ('quorum', 5, prefix + 'failed', prefix + 'w'))
        drop = zope.component.getUtility(IConsumerSpec, 'd').create()
        self.assertIsNone(drop.dead_letter_exchange)

    def test_product_config_keeps_consumers_off(self):
        with ProductConfig(consumers='off'):
            self.assertFalse(settings.consumers_enabled())
        self.assertTrue(settings.consumers_enabled())

    def test_allow_directive_widens_every_consumer(self):
        load('<zamqp:connection />\n<zamqp:allow names="a.B c.*" />\n'
             '<zamqp:consumer name="c" allow="d.E" />')
        rules = zope.component.getUtility(IConsumerSpec, 'c').allow_rules()
        for module, name in (('a', 'B'), ('d', 'E')):
            self.assertTrue(rules.allows(module, name))
        self.assertFalse(rules.allows('x', 'Y'))

    def test_signing_limits_and_tls_attributes(self):
        secret = 'zcml-secret-0123456789'
        load('<zamqp:connection secret="%s" accepted_secrets="%s" '
             'accept_unsigned="true" signature_max_age="300" '
             'max_size="1000" max_depth="0" ssl="true" verify="true" '
             'server_hostname="rabbit.example" />\n'
             '<zamqp:allow names="a.Signed" signed="true" />\n'
             '<zamqp:consumer name="c" signed_allow="d.*" max_depth="7" />'
             % (secret, 'older-secret-0123456789'))
        props = zope.component.getUtility(IAMQPProps, 'default')
        self.assertEqual((props.secret, props.accepted_secrets,
                          props.accept_unsigned, props.signature_max_age,
                          props.max_size, props.max_depth,
                          props.server_hostname),
                         (secret, ('older-secret-0123456789',), True, 300.0,
                          1000, None, 'rabbit.example'))
        spec = zope.component.getUtility(IConsumerSpec, 'c')
        consumer = spec.create()
        decoder = consumer.decoder
        self.assertEqual((decoder.max_size, decoder.max_depth), (1000, 7))
        for module, name in (('a', 'Signed'), ('d', 'E')):
            self.assertTrue(decoder.signed_allow.allows(module, name))
            self.assertFalse(decoder.allow.allows(module, name))
        self.assertEqual(decoder.signer.key_ids, props.signer.key_ids)

    def test_secret_from_zope_conf_or_environment(self):
        import os
        with ProductConfig(secret='conf-secret-0123456789',
                           max_size='0'):
            load('<zamqp:connection secret_env="ZAMQP_NOT_SET_ANYWHERE" />')
        props = zope.component.getUtility(IAMQPProps, 'default')
        self.assertEqual((props.secret, props.max_size),
                         ('conf-secret-0123456789', None))
        os.environ['ZAMQP_TEST_ZCML_SECRET'] = 'env-secret-0123456789'
        try:
            load('<zamqp:connection name="e" '
                 'secret_env="ZAMQP_TEST_ZCML_SECRET" />')
        finally:
            del os.environ['ZAMQP_TEST_ZCML_SECRET']
        props = zope.component.getUtility(IAMQPProps, 'e')
        self.assertEqual(props.secret, 'env-secret-0123456789')
        self.assertLoadFails(
            '<zamqp:connection name="f" secret_env="ZAMQP_NOT_SET_X" />',
            'ZAMQP_NOT_SET_X', 'line 4')
        self.assertLoadFails('<zamqp:connection name="g" secret="short" />',
                             'shorter than 16', 'line 4')
