"""Stream readers in Zope: each message applied exactly once, its
position committed in the ZODB with the handler's changes; ZCML and
zope.conf settings of stream consumers."""
import threading
import time

import transaction
from ZODB.POSException import ConflictError

from zamqp import AMQPProducer
from zamqp.consumer import AMQPThread
from zamqp.exceptions import ConfigurationError
from zamqp.testhelpers import Admin
from zamqp.testhelpers import broker_props
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests.test_zope_options import SandboxedRegistry
from zamqp.tests.test_zope_options import load
from zamqp.tests.test_zope_zcml import ProductConfig
from zamqp.tests.test_zopecontext import ZODBTestCase
from zamqp.zope.context import InZope
from zamqp.zope.delivery import Delivery
from zamqp.zope.offsets import ROOT_KEY
from zamqp.zope.offsets import TransactionalPosition
from zamqp.zope.offsets import ZODBOffsetStore
from zamqp.zope.spec import ConsumerSpec

CALLS = []


def apply(event):
    """A handler: note the body and offset in /site/notes."""
    CALLS.append(event.body)
    offset = event.message.headers['x-stream-offset']
    event.site.unrestrictedTraverse('/site').notes.append(
        (event.body, offset))


class Message:
    def __init__(self, offset):
        self.headers = {'x-stream-offset': offset}
        self.properties = {'application_headers': self.headers}


class TransactionalPositionTests(ZODBTestCase):

    def setUp(self):
        super().setUp()
        del CALLS[:]
        self.store = ZODBOffsetStore(self.db)
        self.deliver = Delivery('c', apply, in_context=InZope(
            self.db, '/site', position=TransactionalPosition(
                self.store, 's', 'r')))

    def test_a_message_is_applied_once_however_often_it_comes(self):
        for offset in (0, 1, 1, 0, 2, 2):
            self.deliver(f'm{offset}', Message(offset))
        self.assertEqual(self.notes(), [('m0', 0), ('m1', 1), ('m2', 2)])
        self.assertEqual(CALLS, ['m0', 'm1', 'm2'])
        self.assertEqual(self.store.load('s', 'r'), 2)
        self.assertIsNone(self.store.load('s', 'other'))

    def test_position_and_changes_are_committed_together_or_not_at_all(self):
        def failing(event):
            apply(event)
            raise ValueError('handler failed after changing things')

        self.deliver('m0', Message(0))
        broken = Delivery('c', failing, in_context=self.deliver.in_context)
        with self.assertRaises(ValueError):
            broken('m1', Message(1))
        self.assertEqual(self.notes(), [('m0', 0)])
        self.assertEqual(self.store.load('s', 'r'), 0)   # not moved
        self.deliver('m1', Message(1))                   # applied now
        self.assertEqual(self.notes(), [('m0', 0), ('m1', 1)])

    def test_a_conflict_retry_applies_the_message_once(self):
        tries = []

        def conflicting(event):
            apply(event)
            tries.append(1)
            if len(tries) == 1:
                raise ConflictError('concurrent change')

        Delivery('c', conflicting, in_context=self.deliver.in_context)(
            'm0', Message(0))
        self.assertEqual(len(tries), 2)
        self.assertEqual(self.notes(), [('m0', 0)])
        self.assertEqual(self.store.load('s', 'r'), 0)

    def test_save_moves_past_dead_letters_and_never_back(self):
        self.deliver('m0', Message(0))
        self.store.save('s', 'r', 3)
        self.store.save('s', 'r', 1)
        self.assertEqual(self.store.load('s', 'r'), 3)
        self.deliver('m2', Message(2))           # before the position
        self.assertEqual(self.notes(), [('m0', 0)])
        connection = self.db.open()
        try:
            self.assertEqual(dict(connection.root()[ROOT_KEY]),
                             {('s', 'r'): 3})
        finally:
            transaction.abort()
            connection.close()

    def test_concurrent_saves_and_handlers_keep_the_highest(self):
        errors = []

        def saver():
            try:
                for offset in range(0, 200, 2):
                    self.store.save('s', 'r', offset)
            except Exception as exc:        # noqa: BLE001
                errors.append(exc)

        thread = threading.Thread(target=saver)
        thread.start()
        for offset in range(1, 200, 2):
            self.deliver(f'm{offset}', Message(offset))
        thread.join(30)
        self.assertEqual(errors, [])
        self.assertEqual(self.store.load('s', 'r'), 199)
        offsets = [offset for _, offset in self.notes()]
        self.assertEqual(offsets, sorted(set(offsets)))


class StreamConsumerInZopeTests(ZODBTestCase):
    """A stream consumer made from its ConsumerSpec, on the real broker:
    what a restarted instance missed is applied, once, in order."""

    def setUp(self):
        super().setUp()
        del CALLS[:]
        self.exchange = unique('zamqp.test.zstream')
        self.queue = unique('zamqp.test.zstream')
        admin = Admin()
        self.addCleanup(admin.close)
        self.addCleanup(admin.delete_queue, self.exchange + '.dead')
        self.addCleanup(admin.delete_exchange, self.exchange + '.dead')
        self.addCleanup(admin.delete_exchange, self.exchange)
        self.addCleanup(admin.delete_queue, self.queue)
        self.props = broker_props(exchange=self.exchange)

    def spec(self, **kw):
        kw.setdefault('reader', 'instance1')
        return ConsumerSpec('c', broker_props(), self.queue,
                            exchange=self.exchange, handler=apply,
                            stream=True, site='/site', **kw)

    def start(self, spec):
        thread = AMQPThread(spec.create(self.db))
        thread.start()
        self.addCleanup(thread.stop)
        return thread

    def test_a_restarted_reader_applies_what_it_missed_once(self):
        thread = self.start(self.spec())
        with AMQPProducer(self.queue, self.props, confirm=True) as producer:
            for n in range(20):
                producer(n)
            self.assertTrue(wait_for(lambda: len(self.notes()) == 20, 10))
            self.assertTrue(thread.stop(5))
            for n in range(20, 50):
                producer(n)
        # a new reader object knows nothing: the ZODB says where it was;
        # start='first' would repeat everything if it did not
        thread = self.start(self.spec(start='first'))
        self.assertTrue(wait_for(lambda: len(self.notes()) >= 50, 15))
        thread.stop(5)
        self.assertEqual(self.notes(), [(n, n) for n in range(50)])
        status = thread.consumer.status()
        self.assertEqual((status['handled'], status['position']), (30, 49))

    def test_a_position_lost_outside_the_zodb_does_not_repeat_effects(self):
        thread = self.start(self.spec())
        with AMQPProducer(self.queue, self.props, confirm=True) as producer:
            for n in range(10):
                producer(n)
        self.assertTrue(wait_for(lambda: len(self.notes()) == 10, 10))
        thread.stop(5)
        # the reader is made to begin before its committed position, as
        # after a crash between commit and anything else
        spec = self.spec(start='first')
        consumer = spec.create(self.db)
        consumer.reader.store = _Forgetful(consumer.reader.store)
        again = AMQPThread(consumer)
        again.start()
        self.addCleanup(again.stop)
        self.assertTrue(wait_for(
            lambda: consumer.status()['handled'] == 10, 10))
        again.stop(5)
        self.assertEqual(self.notes(), [(n, n) for n in range(10)])
        self.assertEqual(len(CALLS), 10 + 0)  # the handler ran 10 times only


class _Forgetful:
    """A store that forgets positions when asked (saves still go)."""

    def __init__(self, store):
        self.store = store

    def load(self, stream, reader):
        return None

    def save(self, stream, reader, offset):
        self.store.save(stream, reader, offset)


class StreamZCMLTests(SandboxedRegistry):

    def test_a_stream_consumer_needs_a_reader_per_instance(self):
        self.assertFails(
            '<zamqp:consumer name="c" stream="true" events="true" />',
            'needs a reader', 'consumer.c.reader in zope.conf')

    def test_reader_and_retention_from_zope_conf(self):
        import zope.component
        from zamqp.interfaces import IConsumerSpec
        with ProductConfig(**{'consumer.c.reader': 'instance2',
                              'consumer.c.max_age': '12h',
                              'consumer.c.max_length_bytes': '0',
                              'consumer.c.start': 'first'}):
            load('<zamqp:consumer name="c" stream="true" events="true" '
                 'reader="instance1" max_segment_size_bytes="1000000" />')
        spec = zope.component.getUtility(IConsumerSpec, 'c')
        self.assertEqual(spec.stream_options, dict(
            reader='instance2', max_age='12h', max_length_bytes=None,
            start='first', max_segment_size_bytes=1_000_000))

    def test_stream_options_without_stream_are_refused(self):
        self.assertFails(
            '<zamqp:consumer name="c" events="true" reader="i1" />',
            'reader applies to stream readers only', 'stream="true"')

    def test_bad_stream_values_name_the_place(self):
        self.assertFails(
            '<zamqp:consumer name="c" stream="true" events="true" '
            'reader="i1" start="frist" />',
            "start='frist' is not understood", '<zamqp:consumer')
        self.assertFails(
            '<zamqp:consumer name="c" stream="true" events="true" '
            'reader="i1" max_age="1 week" />',
            "max_age='1 week' is not an interval")

    def test_without_a_database_offsets_is_needed(self):
        spec = ConsumerSpec('c', broker_props(), 'q', stream=True,
                            reader='i1', events=True)
        with self.assertRaises(ConfigurationError) as info:
            spec.create(None)
        self.assertIn('give offsets=', str(info.exception))


class LimitsFromZopeConfTests(SandboxedRegistry):

    def test_zero_in_zope_conf_is_no_limit_not_the_default(self):
        import zope.component
        from zamqp.interfaces import IConsumerSpec
        with ProductConfig(**{'consumer.c.max_size': '0'}):
            load('<zamqp:consumer name="c" events="true" />')
        spec = zope.component.getUtility(IConsumerSpec, 'c')
        self.assertIsNone(spec.options['max_size'])
        self.assertIsNone(spec.create(None).decoder.max_size)


class StreamDefaultsTests(SandboxedRegistry):

    def test_zcml_defaults_declare_the_same_stream_as_python(self):
        import zope.component
        from zamqp import AMQPConsumer
        from zamqp.interfaces import IConsumerSpec
        load('<zamqp:consumer name="c" stream="true" events="true" '
             'reader="i1" offsets="/tmp/unused" />')
        spec = zope.component.getUtility(IConsumerSpec, 'c')
        zope_reader = spec.create(None)
        python_reader = AMQPConsumer(
            spec.queue, spec.props, print, stream=True, reader='i2',
            offsets='/tmp/unused')
        self.assertEqual(zope_reader.declaration.arguments(),
                         python_reader.declaration.arguments())
        self.assertEqual(zope_reader.declaration.arguments()['x-max-age'],
                         '7D')


BROADCAST_OVER_A_STREAM = """\
<configure
    xmlns="http://namespaces.zope.org/zope"
    xmlns:zamqp="http://namespaces.zope.org/zamqp">
  <include package="zamqp" />
  <include package="zamqp.tests.zopeaddon" />
  <zamqp:connection url="{url}" />
  <zamqp:producer name="addon" exchange="{exchange}" />
  <zamqp:broadcast
      for="zamqp.tests.zopeaddon.interfaces.INoted" producer="addon" />
  <zamqp:consumer name="addon.stream" exchange="{exchange}" events="true"
      stream="true" queue="{queue}" reader="instance1"
      allow="zamqp.tests.zopeaddon.*" />
</configure>
"""


class BroadcastOverAStreamTests(ZODBTestCase):
    """<zamqp:broadcast> relays and events="true" work unchanged over a
    stream reader: a local event committed here is notified, received,
    by the reader, once, and not relayed back."""

    def setUp(self):
        super().setUp()
        from plone.testing import zca
        from zope.configuration import xmlconfig
        from zamqp.testhelpers import broker_url
        from zamqp.tests.test_zopecontext import close_producers
        from zamqp.zope import lifecycle
        self.exchange = unique('zamqp.test.zbroadcast')
        self.queue = unique('zamqp.test.zbroadcast')
        admin = Admin()
        self.addCleanup(admin.close)
        self.addCleanup(admin.delete_queue, self.exchange + '.dead')
        self.addCleanup(admin.delete_exchange, self.exchange + '.dead')
        self.addCleanup(admin.delete_exchange, self.exchange)
        self.addCleanup(admin.delete_queue, self.queue)
        zca.pushGlobalRegistry()
        self.addCleanup(zca.popGlobalRegistry)
        self.addCleanup(close_producers)
        context = zca.stackConfigurationContext(
            self.layer['configurationContext'])
        xmlconfig.string(BROADCAST_OVER_A_STREAM.format(
            url=broker_url(), exchange=self.exchange, queue=self.queue),
            context=context)
        self.addCleanup(lifecycle.restore_sigterm)
        self.addCleanup(lifecycle.stop)
        self.assertEqual(lifecycle.start(self.db), ['addon.stream'])
        self.assertTrue(wait_for(lambda: admin.queue_exists(self.queue),
                                 10))

    def test_a_relayed_event_is_notified_once_by_the_reader(self):
        import zope.event
        from zamqp.tests.zopeaddon import handlers
        from zamqp.tests.zopeaddon.events import Noted
        del handlers.SEEN[:]
        time.sleep(0.5)         # the reader subscribed ('next')
        transaction.begin()
        zope.event.notify(Noted('over a stream', origin='here'))
        transaction.commit()

        def received():
            return [s for s in handlers.SEEN if s['received']]

        from zamqp.zope import lifecycle
        self.assertTrue(wait_for(received, 10),
                        (handlers.SEEN, lifecycle.status()))
        time.sleep(0.5)
        self.assertEqual(received(), [dict(
            text='over a stream', origin='here', received=True,
            thread=f'zamqp-worker-{self.queue}')])
        # notified locally once, received once: no echo came back
        self.assertEqual(len(handlers.SEEN), 2)
