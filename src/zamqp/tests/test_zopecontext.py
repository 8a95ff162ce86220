"""InZope on a real ZODB with a Zope application (plone.testing's STARTUP
layer): transactions, conflicts, site and user; and a ZCML-declared
consumer that commits what it receives from the real broker."""
import logging
import threading
import unittest

import transaction
import zope.component
import zope.component.event  # noqa: F401 (zope.event -> registry)
import zope.event
from AccessControl.SecurityManagement import getSecurityManager
from AccessControl.userfolder import UserFolder
from OFS.Folder import Folder
from persistent.list import PersistentList
from plone.testing import zca
from plone.testing import zodb
from plone.testing import zope as zope_layers
from ZODB.POSException import ConflictError
from zope.component.hooks import getSite
from zope.component.interfaces import ISite
from zope.component.persistentregistry import PersistentComponents
from zope.configuration import xmlconfig
from zope.globalrequest import getRequest
from zope.interface import alsoProvides

from zamqp import AMQPProducer
from zamqp.zope import lifecycle
from zamqp import worker
from zamqp.consumer import AMQPThread
from zamqp.zope.delivery import MessageReceived
from zamqp.interfaces import IProducer
from zamqp.testhelpers import Admin
from zamqp.testhelpers import broker_props
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests.zopeaddon import amqp_zcml
from zamqp.tests.zopeaddon import handlers
from zamqp.tests.zopeaddon.events import Noted
from zamqp.zope.context import InZope
from zamqp.zope.context import MessageGivenBack
from zamqp.zope.context import ZopeContextError


def make_content(db):
    """/site: a folder that is a component site, with its own user folder
    (user 'bob'); /acl_users gets 'carol'."""
    connection = db.open()
    app = connection.root()['Application']
    site = Folder('site')
    app._setObject('site', site)
    site = app.site
    site.setSiteManager(PersistentComponents('site'))
    alsoProvides(site, ISite)
    site._setObject('acl_users', UserFolder())
    site.acl_users._doAddUser('bob', 'secret', ['Member'], [])
    app.acl_users._doAddUser('carol', 'secret', ['Manager'], [])
    site.notes = PersistentList()
    transaction.commit()
    connection.close()


class ZODBTestCase(unittest.TestCase):
    """Each test has a database of its own, with /site in it."""

    layer = zope_layers.STARTUP

    def setUp(self):
        self.db = zodb.stackDemoStorage(self.layer['zodbDB'],
                                        name=self.id())
        make_content(self.db)

    def tearDown(self):
        transaction.abort()
        self.db.close()

    def read(self, getter):
        """``getter(app)`` on a fresh connection: what is committed."""
        connection = self.db.open()
        try:
            return getter(connection.root()['Application'])
        finally:
            transaction.abort()
            connection.close()

    def notes(self):
        return self.read(lambda app: list(app.site.notes))

    def assertConnectionsClosed(self):
        opened = [c for c in self.db.connectionDebugInfo() if c['opened']]
        self.assertEqual(opened, [])


def event(body='hello'):
    return MessageReceived('test-consumer', body, message=None)


def note(event):
    """A handler: append the body to /site/notes."""
    event.site.unrestrictedTraverse('/site').notes.append(event.body)


class InZopeTransactionTests(ZODBTestCase):

    def test_handler_change_is_committed(self):
        InZope(self.db)(note, event('committed'))
        self.assertEqual(self.notes(), ['committed'])
        self.assertConnectionsClosed()

    def test_returns_what_deliver_returns(self):
        self.assertEqual(InZope(self.db)(lambda e: 42, event()), 42)

    def test_transaction_note_names_the_consumer(self):
        description = InZope(self.db)(
            lambda e: transaction.get().description, event())
        self.assertEqual(description, 'zamqp consumer test-consumer')

    def test_failing_handler_is_aborted_and_raises(self):
        def fail(event):
            note(event)
            raise ValueError('handler broke')

        with self.assertRaisesRegex(ValueError, 'handler broke'):
            InZope(self.db)(fail, event('aborted'))
        self.assertEqual(self.notes(), [])
        self.assertConnectionsClosed()
        self.assertIsNone(getSite())

    def test_failing_commit_is_aborted_and_raises(self):
        class Veto:
            def tpc_begin(self, txn):
                pass

            def commit(self, txn):
                pass

            def tpc_vote(self, txn):
                raise RuntimeError('vetoed')

            tpc_finish = tpc_abort = abort = tpc_begin

            def sortKey(self):
                return 'veto'

        def vetoed(event):
            note(event)
            transaction.get().join(Veto())

        with self.assertRaisesRegex(RuntimeError, 'vetoed'):
            InZope(self.db)(vetoed, event('vetoed'))
        self.assertEqual(self.notes(), [])
        self.assertConnectionsClosed()

    def test_conflict_is_retried(self):
        calls = []

        def conflict_twice(event):
            calls.append(1)
            note(event)
            if len(calls) <= 2:
                raise ConflictError('try again')

        with self.assertLogs('zamqp', logging.INFO) as logs:
            InZope(self.db)(conflict_twice, event('third time'))
        self.assertEqual(len(calls), 3)
        self.assertEqual(self.notes(), ['third time'])     # once
        retries = [r for r in logs.records if 'trying again' in r.message]
        self.assertEqual(len(retries), 2)
        self.assertEqual(retries[0].levelno, logging.INFO)
        self.assertIn('test-consumer', retries[0].message)
        self.assertConnectionsClosed()

    def test_conflict_gives_up_after_retries(self):
        calls = []

        def conflict_always(event):
            calls.append(1)
            note(event)
            raise ConflictError('always')

        with self.assertLogs('zamqp', logging.INFO):
            with self.assertRaises(ConflictError):
                InZope(self.db, retries=2)(conflict_always, event())
        self.assertEqual(len(calls), 3)         # the first try and 2 more
        self.assertEqual(self.notes(), [])
        self.assertConnectionsClosed()

    def test_default_is_three_retries(self):
        calls = []

        def conflict_always(event):
            calls.append(1)
            raise ConflictError('always')

        with self.assertLogs('zamqp', logging.INFO):
            with self.assertRaises(ConflictError):
                InZope(self.db)(conflict_always, event())
        self.assertEqual(len(calls), 4)

    def test_real_write_conflict_is_retried(self):
        """Another connection commits the same object meanwhile, once."""
        calls = []

        def race(event):
            calls.append(1)
            note(event)
            if len(calls) == 1:
                self.commit_elsewhere('other')

        InZope(self.db)(race, event('mine'))
        self.assertEqual(len(calls), 2)
        self.assertEqual(self.notes(), ['other', 'mine'])

    def commit_elsewhere(self, text):
        """Commit a note from another thread (its own transaction)."""
        def write():
            manager = transaction.TransactionManager()
            connection = self.db.open(transaction_manager=manager)
            connection.root()['Application'].site.notes.append(text)
            manager.commit()
            connection.close()
        thread = threading.Thread(target=write)
        thread.start()
        thread.join()


class delivering:
    """In this block the thread handles ``delivery`` (a worker.Delivery),
    as the consumer's worker thread sets it for each message."""

    def __init__(self):
        self.delivery = worker.Delivery(message=None)

    def __enter__(self):
        worker._local.delivery = self.delivery
        return self.delivery

    def __exit__(self, *exc_info):
        worker._local.delivery = None


class InZopeShutdownTests(ZODBTestCase):
    """The consumer gives the message back, or Zope closes the database
    from its main thread, while a handler runs in the worker thread."""

    def test_handled_message_is_committed(self):
        with delivering():
            InZope(self.db)(note, event('kept'))
        self.assertEqual(self.notes(), ['kept'])

    def test_message_given_back_while_handled_is_aborted(self):
        def note_then_given_back(event):
            note(event)
            delivery.abandon()      # the stop deadline passed meanwhile

        with delivering() as delivery:
            with self.assertRaisesRegex(MessageGivenBack,
                                        'given back to the queue'):
                InZope(self.db)(note_then_given_back, event('twice?'))
        self.assertEqual(self.notes(), [])
        self.assertConnectionsClosed()
        self.assertIsNone(getSite())

    def test_message_given_back_before_is_not_handled(self):
        calls = []
        with delivering() as delivery:
            delivery.abandon()
            with self.assertRaises(MessageGivenBack):
                InZope(self.db)(calls.append, event())
        self.assertEqual(calls, [])

    def test_a_given_back_message_is_not_retried_on_conflict(self):
        calls = []

        def conflict_then_given_back(event):
            calls.append(1)
            delivery.abandon()
            raise ConflictError('try again')

        with delivering() as delivery:
            with self.assertRaises(MessageGivenBack):
                InZope(self.db)(conflict_then_given_back, event())
        self.assertEqual(calls, [1])

    def test_database_closed_in_another_thread_while_handler_runs(self):
        """DB.close() (Zope's, in MainThread, at exit) aborts the worker's
        transaction and closes its connection without KeyError from
        transaction's WeakSet (or ConnectionStateError)."""
        for write_first in (True, False):
            db = zodb.stackDemoStorage(self.layer['zodbDB'],
                                       name=f'{self.id()}-{write_first}')
            make_content(db)
            running, release = threading.Event(), threading.Event()
            outcome = []

            def slow(event):
                if write_first:
                    note(event)
                running.set()
                release.wait(10)
                if not write_first:
                    note(event)

            def work():
                with delivering() as delivery:
                    deliveries.append(delivery)
                    try:
                        InZope(db)(slow, event('never'))
                    except BaseException as exc:
                        outcome.append(exc)

            deliveries = []
            thread = threading.Thread(target=work)
            thread.start()
            self.assertTrue(running.wait(10))
            deliveries[0].abandon()     # the consumer's stop deadline ...
            db.close()                  # ... then Zope's: must not raise
            release.set()
            thread.join(10)
            self.assertFalse(thread.is_alive())
            # nothing is committed: MessageGivenBack, or the handler's
            # own error when it reads from the closed database
            [error] = outcome
            self.assertIsInstance(
                error, MessageGivenBack if write_first else AttributeError)


class InZopeContextTests(ZODBTestCase):

    def context_seen(self, site='', user=None):
        """Run a handler that records site, user and request."""
        seen = {}

        def record(event):
            seen.update(
                site=getSite(), event_site=event.site,
                path=event.site.getPhysicalPath(),
                user=getSecurityManager().getUser().getId(),
                request=getRequest(),
                acquired=event.site.REQUEST,
                url=event.site.absolute_url())

        InZope(self.db, site, user)(record, event())
        return seen

    def test_site_and_user(self):
        seen = self.context_seen('/site', 'bob')
        self.assertEqual(seen['path'], ('', 'site'))
        self.assertIs(seen['site'], seen['event_site'])
        self.assertEqual(seen['user'], 'bob')

    def test_request_is_there_and_acquired(self):
        seen = self.context_seen('/site')
        self.assertIsNotNone(seen['request'])
        self.assertIs(seen['acquired'], seen['request'])
        self.assertEqual(seen['url'], 'http://nohost/site')

    def test_default_is_application_root_and_anonymous(self):
        seen = self.context_seen()
        self.assertEqual(seen['path'], ('',))
        self.assertIsNone(seen['site'])     # the root is not a site
        self.assertIsNone(seen['user'])     # Anonymous User has no id

    def test_path_without_slash(self):
        self.assertEqual(self.context_seen('site')['path'], ('', 'site'))

    def test_user_found_above_the_site(self):
        self.assertEqual(self.context_seen('/site', 'carol')['user'],
                         'carol')

    def test_user_of_site_not_found_at_root(self):
        with self.assertRaisesRegex(ZopeContextError, "'bob'.*upwards"):
            self.context_seen('', 'bob')

    def test_unknown_user_is_a_clear_error(self):
        calls = []
        with self.assertRaises(ZopeContextError) as raised:
            InZope(self.db, '/site', 'nobody')(calls.append, event())
        self.assertIn("user 'nobody' not found", str(raised.exception))
        self.assertIn('/site', str(raised.exception))
        self.assertEqual(calls, [])
        self.assertConnectionsClosed()

    def test_unknown_site_is_a_clear_error(self):
        with self.assertRaisesRegex(ZopeContextError,
                                    "site '/nowhere' not found"):
            InZope(self.db, '/nowhere')(note, event())
        self.assertConnectionsClosed()

    def test_everything_is_released_afterwards(self):
        self.context_seen('/site', 'bob')
        self.assertIsNone(getSite())
        self.assertIsNone(getSecurityManager().getUser().getId())
        self.assertIsNone(getRequest())
        self.assertConnectionsClosed()

    def test_released_after_failure_too(self):
        def fail(event):
            raise KeyError('x')

        with self.assertRaises(KeyError):
            InZope(self.db, '/site', 'bob')(fail, event())
        self.assertIsNone(getSite())
        self.assertIsNone(getSecurityManager().getUser().getId())
        self.assertIsNone(getRequest())
        self.assertConnectionsClosed()


def close_producers():
    for name, producer in zope.component.getUtilitiesFor(IProducer):
        producer.close()


class ConsumerInZopeTests(ZODBTestCase):
    """zamqp and the test add-on loaded from ZCML; lifecycle.start(db)
    starts the consumers, which handle messages from the real broker in
    transactions of ``db``."""

    def setUp(self):
        super().setUp()
        self.exchange = unique('zamqp.test.zope')
        self.admin = Admin()
        self.addCleanup(self.admin.close)
        self.addCleanup(self.admin.delete_exchange, self.exchange)
        zca.pushGlobalRegistry()
        self.addCleanup(zca.popGlobalRegistry)
        self.addCleanup(close_producers)
        context = zca.stackConfigurationContext(
            self.layer['configurationContext'])
        xmlconfig.string(amqp_zcml(self.exchange, url=broker_url(),
                                   site='/site', user='bob'),
                         context=context)
        self.addCleanup(lifecycle.restore_sigterm)
        self.addCleanup(lifecycle.stop)
        self.assertEqual(sorted(lifecycle.start(self.db)),
                         ['addon.events', 'addon.store'])
        self.wait_for_queues()

    def wait_for_queues(self):
        queues = [t.consumer.queue_name for t in threading.enumerate()
                  if isinstance(t, AMQPThread)]
        self.assertEqual(len(queues), 2)
        self.assertTrue(wait_for(
            lambda: all(self.admin.queue_exists(q) for q in queues),
            timeout=10), f'consumer queues not declared: {queues}')

    def stored(self):
        return self.read(lambda app: handlers.stored(app.site))

    def wait_stored(self, text):
        self.assertTrue(
            wait_for(lambda: text in [s['text'] for s in self.stored()],
                     timeout=10),
            f'{text!r} was not stored; stored: {self.stored()}')

    def test_message_is_handled_in_a_committed_transaction(self):
        with AMQPProducer('test', broker_props(exchange=self.exchange)) \
                as producer:
            producer(Noted('over the broker', origin='test'))
        self.wait_stored('over the broker')
        [entry] = self.stored()
        self.assertEqual(entry, dict(
            text='over the broker', consumer='addon.store', user='bob',
            site='/site', component_site='/site'))

    def test_received_event_is_notified_and_not_relayed(self):
        del handlers.SEEN[:]
        with AMQPProducer('test', broker_props(exchange=self.exchange)) \
                as producer:
            producer(Noted('remote', origin='test'))
        self.wait_stored('remote')
        self.assertTrue(wait_for(lambda: handlers.SEEN, timeout=5))
        self.assertEqual(handlers.SEEN, [dict(
            text='remote', origin='test', received=True,
            thread='zamqp-worker-addon.events')])
        self.assertEqual(len(self.stored()), 1)    # no echo came back

    def test_local_event_is_relayed_after_commit_only(self):
        transaction.begin()
        zope.event.notify(Noted('aborted'))
        transaction.abort()
        transaction.begin()
        zope.event.notify(Noted('committed'))
        transaction.commit()
        self.wait_stored('committed')
        self.assertEqual([s['text'] for s in self.stored()], ['committed'])
