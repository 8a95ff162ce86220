"""zamqp in Plone sites (plone.app.testing, the real broker): the test
layers of zamqp.zope.plone.testing, content edits in one site reaching
another, the Site Setup configlet.

Two Plone sites in one test database stand for two instances: each has a
consumer of its own (``site="/plone"``, ``site="/plone2"``), so a message
goes through the broker, is unpickled and handled in a consumer thread
with its own database connection, in the other site, as in another
instance; one process keeps the test fast and needs no ZEO server.
"""
import threading
import unittest

import transaction
import zope.component
from AccessControl import Unauthorized
from plone.app.testing import SITE_OWNER_NAME
from plone.app.testing import TEST_USER_ID
from plone.app.testing import PloneSandboxLayer
from plone.app.testing import setRoles
from plone.base.utils import get_installer
from plone.testing import zope as zope_layers
from plone.uuid.interfaces import IUUID
from Products.CMFCore.indexing import processQueue
from Products.CMFPlone.factory import addPloneSite
from zope.component.hooks import getSite
from zope.component.hooks import setSite
from zope.configuration import xmlconfig
from zope.event import notify
from zope.lifecycleevent import ObjectModifiedEvent
from zope.lifecycleevent.interfaces import IObjectModifiedEvent

from zamqp.interfaces import IAMQPProps
from zamqp.interfaces import IConsumerSpec
from zamqp.interfaces import IProducer
from zamqp.props import AMQPProps
from zamqp.testhelpers import Admin
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import wait_for
from zamqp.zope import lifecycle
from zamqp.zope.delivery import is_received
from zamqp.zope.plone.testing import ZAMQP_PLONE_FIXTURE
from zamqp.zope.plone.testing import ZAMQPPloneFunctionalTesting
from zamqp.zope.plone.testing import ZAMQPPloneIntegrationTesting

#: An add-on's ZCML: its own connections (on no broker: the layer's
#: broker wins), content edits broadcast, a consumer per site.
ADDON_ZCML = """\
<configure xmlns="http://namespaces.zope.org/zope"
           xmlns:zamqp="http://namespaces.zope.org/zamqp">
  <zamqp:connection url="amqp://shop:wrong@127.0.0.1:1/nowhere"
                    timeout="7.5" />
  <zamqp:connection name="billing"
                    url="amqp://billing:wrong@127.0.0.1:1/billing" />
  <zamqp:producer name="plone.edits" exchange="plone.edits" />
  <zamqp:broadcast
      for="zope.lifecycleevent.interfaces.IObjectModifiedEvent"
      producer="plone.edits" />
  <zamqp:consumer name="site1.edits" exchange="plone.edits" events="true"
      site="/plone" user="{owner}" allow="zope.lifecycleevent.*" />
  <zamqp:consumer name="site2.edits" exchange="plone.edits" events="true"
      site="/plone2" user="{owner}" allow="zope.lifecycleevent.*" />
  <zamqp:producer name="billing" connection="billing"
      exchange="plone.billing" />
</configure>
"""

#: What the consumers' threads saw of received IObjectModifiedEvents.
received = []
_received_lock = threading.Lock()


def record(event):
    """Subscriber of IObjectModifiedEvent: note received events, in the
    site (and database connection) of the consumer that handles them."""
    if not is_received():
        return
    obj = event.object
    site = getSite()
    entry = dict(site=site.getId() if site is not None else None,
                 thread=threading.current_thread().name, object=obj)
    try:
        entry.update(path='/'.join(obj.getPhysicalPath()),
                     uuid=IUUID(obj, None), title=obj.Title(),
                     jar=obj._p_jar is not None)
    except Exception as exc:      # noted, the test shows it
        entry['error'] = repr(exc)
    with _received_lock:
        received.append(entry)


def make_documents(site1, site2):
    """A Document ``doc`` in each site, of one UUID (as a copy of the
    content would be); returns the UUID. Each is made and indexed with
    its site current: Plone indexes in the current site's catalog."""
    setSite(site1)
    site1.invokeFactory('Document', 'doc', title='Site one')
    uid = IUUID(site1['doc'])
    processQueue()
    setSite(site2)
    site2.invokeFactory('Document', 'doc', title='Site two copy')
    setattr(site2['doc'], '_plone.uuid', uid)
    site2['doc'].reindexObject()
    processQueue()
    return uid


class AddonLayer(PloneSandboxLayer):
    """A Plone add-on's PloneSandboxLayer on ZAMQP_PLONE_FIXTURE: the
    ZCML above, a second site ``/plone2``, zamqp's profile in /plone."""

    defaultBases = (ZAMQP_PLONE_FIXTURE,)

    def setUpZope(self, app, configurationContext):
        # the second site and the content first: no events broadcast yet
        zope_layers.login(app['acl_users'], SITE_OWNER_NAME)
        addPloneSite(app, 'plone2', title='Site two',
                     extension_ids=('plone.app.contenttypes:default',))
        app['plone2']['portal_workflow'].setDefaultChain('')
        self['docUUID'] = make_documents(app['plone'], app['plone2'])
        setSite(None)       # addPloneSite leaves the new site current
        zope_layers.logout()
        xmlconfig.string(ADDON_ZCML.format(owner=SITE_OWNER_NAME),
                         context=configurationContext)
        zope.component.provideHandler(record, (IObjectModifiedEvent,))

    def setUpPloneSite(self, portal):
        self.applyProfile(portal, 'zamqp.zope.plone:default')


ADDON_FIXTURE = AddonLayer()
ADDON_FUNCTIONAL = ZAMQPPloneFunctionalTesting(
    bases=(ADDON_FIXTURE,), name='zamqp.tests.plone:Functional')
ADDON_INTEGRATION = ZAMQPPloneIntegrationTesting(
    bases=(ADDON_FIXTURE,), name='zamqp.tests.plone:Integration')


def exchange_exists(name):
    """A passive exchange.declare: False when the broker answers 404."""
    admin = Admin()
    try:
        admin.channel.exchange_declare(name, 'fanout', passive=True)
        return True
    except Exception as exc:
        if getattr(exc, 'reply_code', None) == 404:
            return False
        raise
    finally:
        admin.close()


class TestFixture(unittest.TestCase):
    """What ZAMQP_PLONE_FIXTURE gives the layers on top of it."""

    layer = ADDON_INTEGRATION

    def test_the_layers_broker_wins_over_the_addons_connections(self):
        test = AMQPProps(url=broker_url())
        for name in ('default', 'billing'):
            props = zope.component.getUtility(IAMQPProps, name)
            self.assertEqual(
                (props.address, props.user, props.virtual_host),
                (test.address, test.user, test.virtual_host), name)
        # what the URL does not give stays the add-on's
        self.assertEqual(
            zope.component.getUtility(IAMQPProps, 'default').timeout, 7.5)

    def test_the_consumers_run_in_their_sites(self):
        self.assertEqual(lifecycle.running(), ['site1.edits', 'site2.edits'])
        self.assertTrue(lifecycle.wait())
        specs = dict(zope.component.getUtilitiesFor(IConsumerSpec))
        self.assertEqual(specs['site2.edits'].site, '/plone2')


class TestFixtureCommits(unittest.TestCase):
    """The add-on's producers, on commit, reach the test broker."""

    layer = ADDON_FUNCTIONAL

    def test_the_addons_producer_reaches_the_test_broker(self):
        producer = zope.component.getUtility(IProducer, 'billing')
        prefix = self.layer['zamqpPrefix']
        self.assertEqual(producer.props.exchange, prefix + 'plone.billing')
        self.assertEqual(producer.props.address,
                         AMQPProps(url=broker_url()).address)
        self.assertFalse(exchange_exists(prefix + 'plone.billing'))
        producer({'invoice': 1})
        transaction.commit()        # published now, on the test broker
        self.assertTrue(wait_for(
            lambda: exchange_exists(prefix + 'plone.billing')))


class TestContentEdits(unittest.TestCase):
    """An edit of a Document in site 1 reaches the subscribers of site 2,
    whose event.object is site 2's Document of the same UUID and path."""

    layer = ADDON_FUNCTIONAL

    def setUp(self):
        app = self.layer['app']
        self.site1, self.site2 = app['plone'], app['plone2']
        self.uid = self.layer['docUUID']
        setRoles(self.site1, TEST_USER_ID, ['Manager'])   # an editor
        for site, path in ((self.site1, '/plone/doc'),
                           (self.site2, '/plone2/doc')):
            self.assertEqual(
                [b.getPath() for b in site['portal_catalog']
                 .unrestrictedSearchResults(UID=self.uid)], [path])
        with _received_lock:
            del received[:]

    def doc_events(self, site):
        """What the consumer of ``site`` received of the documents
        (adding them in setUp also modified the sites: their events may
        arrive during the test)."""
        with _received_lock:
            return [e for e in received if e['site'] == site
                    and e.get('path', '').endswith('/doc')]

    def test_edit_in_site1_is_site2s_document_in_site2(self):
        doc = self.site1['doc']
        doc.title = 'Edited in site one'
        notify(ObjectModifiedEvent(doc))
        transaction.commit()        # the edit is published now
        self.assertTrue(
            wait_for(lambda: self.doc_events('plone2'), timeout=10),
            f'site 2 received no IObjectModifiedEvent of its document '
            f'(received: {received!r})')
        [entry] = self.doc_events('plone2')
        self.assertNotIn('error', entry)
        self.assertTrue(entry['thread'].startswith('zamqp-'))
        self.assertTrue(entry['thread'].endswith('-site2.edits'))
        self.assertEqual(entry['path'], '/plone2/doc')
        self.assertEqual(entry['uuid'], self.uid)
        self.assertEqual(entry['title'], 'Site two copy')
        self.assertTrue(entry['jar'])   # a persistent object, not a copy
        # and site 1's own consumer got site 1's document, edited
        self.assertTrue(wait_for(lambda: self.doc_events('plone')))
        [entry] = self.doc_events('plone')
        self.assertEqual((entry['path'], entry['uuid'], entry['title']),
                         ('/plone/doc', self.uid, 'Edited in site one'))

    def test_received_edit_reindexes_site2s_copy(self):
        """Plone's own subscribers run for the received event in site 2:
        its catalog indexes site 2's document again (a catalog in step
        with its objects, not with the sender's)."""
        catalog = self.site2['portal_catalog']

        def title_in_site2():
            transaction.begin()         # see what the consumer committed
            [brain] = catalog.unrestrictedSearchResults(UID=self.uid)
            return brain.Title

        setSite(self.site2)
        try:
            self.site2['doc'].title = 'Changed in site two, not indexed'
            transaction.commit()        # no event: the catalog is stale
        finally:
            setSite(self.site1)
        self.assertEqual(title_in_site2(), 'Site two copy')
        doc = self.site1['doc']
        doc.title = 'Edited in site one'
        notify(ObjectModifiedEvent(doc))
        transaction.commit()
        self.assertTrue(wait_for(
            lambda: title_in_site2() == 'Changed in site two, not indexed',
            timeout=10), title_in_site2())
        [brain] = self.site1['portal_catalog'].unrestrictedSearchResults(
            UID=self.uid)
        self.assertEqual(brain.Title, 'Edited in site one')

    def test_an_aborted_edit_is_not_published(self):
        doc = self.site1['doc']
        doc.title = 'Never'
        notify(ObjectModifiedEvent(doc))
        transaction.abort()
        doc = self.site1['doc']
        doc.title = 'Later'
        notify(ObjectModifiedEvent(doc))
        transaction.commit()
        self.assertTrue(wait_for(lambda: self.doc_events('plone'),
                                 timeout=10),
                        f'site 1 received nothing: {received!r}')
        self.assertTrue(wait_for(lambda: self.doc_events('plone2')))
        self.assertEqual([e['title'] for e in self.doc_events('plone')],
                         ['Later'])


class TestControlPanel(unittest.TestCase):
    """The configlet in Site Setup and its page, for Managers only."""

    layer = ADDON_INTEGRATION

    def setUp(self):
        self.portal = self.layer['portal']

    def configlet(self):
        tool = self.portal['portal_controlpanel']
        return [a for a in tool.listActions() if a.getId() == 'zamqp']

    def test_configlet_registered_by_the_profile(self):
        [action] = self.configlet()
        self.assertEqual(action.getCategory(), 'Products')
        self.assertEqual(action.permissions, ('View management screens',))
        self.assertIn('@@zamqp-controlpanel',
                      action.getActionExpression())

    def test_manager_sees_the_consumers(self):
        setRoles(self.portal, TEST_USER_ID, ['Manager'])
        view = self.portal.restrictedTraverse('@@zamqp-controlpanel')
        html = view()
        self.assertIn('AMQP (zamqp)', html)
        self.assertIn('site2.edits', html)
        self.assertIn('id="zamqp-status"', html)

    def test_site_administrator_and_member_are_refused(self):
        for roles in (['Site Administrator'], ['Member']):
            setRoles(self.portal, TEST_USER_ID, roles)
            with self.assertRaises(Unauthorized, msg=roles):
                self.portal.restrictedTraverse('@@zamqp-controlpanel')

    def test_site_setup_lists_it_for_managers_only(self):
        setRoles(self.portal, TEST_USER_ID, ['Manager'])
        overview = self.portal.restrictedTraverse('@@overview-controlpanel')
        self.assertIn('@@zamqp-controlpanel', overview())
        setRoles(self.portal, TEST_USER_ID, ['Site Administrator'])
        overview = self.portal.restrictedTraverse('@@overview-controlpanel')
        html = overview()
        self.assertIn('@@site-controlpanel', html)   # Site Setup it sees
        self.assertNotIn('@@zamqp-controlpanel', html)

    def test_the_addons_panel_activates_and_deactivates_it(self):
        installer = get_installer(self.portal, self.layer['request'])
        self.assertTrue(installer.is_product_installed('zamqp.zope.plone'))
        self.assertTrue(installer.uninstall_product('zamqp.zope.plone'))
        self.assertEqual(self.configlet(), [])
        self.assertFalse(installer.is_product_installed('zamqp.zope.plone'))
        self.assertTrue(installer.install_product('zamqp.zope.plone'))
        self.assertEqual(len(self.configlet()), 1)


