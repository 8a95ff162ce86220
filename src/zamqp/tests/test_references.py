"""Object events by reference (zamqp.zope.references), the site API of
zamqp.zope.context, and the Relay's errors: on a real ZODB with a Zope
application (plone.testing's STARTUP layer), and through the real broker
with consumers declared in ZCML."""
import json
import logging
import pickle
import sys
import threading

import transaction
import zope.component
import zope.event
from OFS.Folder import Folder
from OFS.interfaces import IItem
from OFS.SimpleItem import SimpleItem
from plone.testing import zca
from zope.component.hooks import getSite
from zope.component.interfaces import ISite
from zope.component.persistentregistry import PersistentComponents
from zope.configuration import xmlconfig
from zope.interface import Interface
from zope.interface import alsoProvides
from zope.lifecycleevent import Attributes
from zope.lifecycleevent import ObjectAddedEvent
from zope.lifecycleevent import ObjectModifiedEvent
from zope.lifecycleevent import ObjectMovedEvent
from zope.lifecycleevent import ObjectRemovedEvent
from zope.lifecycleevent import Sequence
from zope.lifecycleevent.interfaces import IObjectModifiedEvent

import zamqp.tests.test_zopecontext as zopecontext
from zamqp import serializers
from zamqp.exceptions import MessageRefused
from zamqp.interfaces import IProducer
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests.zopeaddon import amqp_zcml
from zamqp.tests.zopeaddon import handlers
from zamqp.tests.zopeaddon.events import Noted
from zamqp.tests.zopeaddon.events import Touched
from zamqp.tests.zopeaddon.interfaces import INoted
from zamqp.unpickling import AllowRules
from zamqp.zope import context
from zamqp.zope import lifecycle
from zamqp.zope import references
from zamqp.zope.context import InZope
from zamqp.zope.delivery import BroadcastError
from zamqp.zope.delivery import Delivery
from zamqp.zope.delivery import MessageReceived
from zamqp.zope.delivery import Relay
from zamqp.zope.delivery import is_received
from zamqp.zope.references import IUnresolvedObjectEvent
from zamqp.zope.references import ObjectEventReference
from zamqp.zope.references import ObjectReference


def make_site(parent, name):
    """A Folder that is a component site, under ``parent``."""
    parent._setObject(name, Folder(name))
    site = parent[name]
    site.setSiteManager(PersistentComponents(
        name, bases=(zope.component.getGlobalSiteManager(),)))
    alsoProvides(site, ISite)
    return site


def add(parent, name, title='', kind=Folder):
    obj = kind(name) if kind is Folder else kind()
    if kind is not Folder:
        obj.id = name
    obj.title = title
    parent._setObject(name, obj)
    return parent[name]


class ContentTestCase(zopecontext.ZODBTestCase):
    """/site (make_content's component site) with folder/doc in it,
    /other (another component site) with folder/doc, /plain/doc in no
    site, /doc at the root."""

    def setUp(self):
        super().setUp()
        connection = self.db.open()
        app = connection.root()['Application']
        # like a real site's, /site's registry extends the global one
        app.site.getSiteManager().__bases__ = (
            zope.component.getGlobalSiteManager(),)
        add(add(app.site, 'folder', 'site folder'), 'doc', 'site doc',
            SimpleItem)
        other = make_site(app, 'other')
        add(add(other, 'folder', 'other folder'), 'doc', 'other doc',
            SimpleItem)
        add(add(app, 'plain', 'plain'), 'doc', 'plain doc', SimpleItem)
        add(app, 'doc', 'root doc', SimpleItem)
        transaction.commit()
        connection.close()
        self.connection = self.db.open()
        self.app = self.connection.root()['Application']

    def tearDown(self):
        transaction.abort()
        self.connection.close()
        super().tearDown()

    def received(self, body, site=''):
        """Deliver ``body`` (as a consumer decoded it) with a Delivery in
        InZope on ``site``; return what the subscribers saw."""
        seen = []

        def record(event):
            seen.append(dict(
                event=event, path=references.physical_path(event.object),
                title=getattr(event.object, 'title', None),
                jar=getattr(event.object, '_p_jar', None),
                received=is_received(), site=context.site()))

        zope.component.provideHandler(record, [Interface])
        try:
            Delivery('test', events=True, in_context=InZope(self.db, site))(
                body, message=None)
        finally:
            zope.component.getGlobalSiteManager().unregisterHandler(
                record, [Interface])
        return [s for s in seen if not isinstance(s['event'], MessageReceived)]


class EncodeTests(ContentTestCase):

    def test_data_is_plain_json_and_pickles_without_allow_rules(self):
        doc = self.app.site.folder.doc
        data = references.encode(ObjectModifiedEvent(
            doc, Attributes(IItem, 'title'), Sequence(IItem, 3, 'x'),
            'free text'))
        self.assertEqual(data, {
            'zamqp.object-event': 1,
            'event': 'zope.lifecycleevent.ObjectModifiedEvent',
            'object': {'path': 'folder/doc', 'site': '/site',
                       'absolute': '/site/folder/doc', 'uuid': None},
            'attributes': {},
            'descriptions': [['attributes', 'OFS.interfaces.IItem',
                              ['title']],
                             ['sequence', 'OFS.interfaces.IItem', [3, 'x']],
                             ['text', 'free text']]})
        for name in ('pickle', 'json'):
            serializer = serializers.get(name)
            decoded = serializer.loads(serializer.dumps(data), AllowRules())
            self.assertEqual(decoded, data, name)

    def test_reference_object_pickles_as_the_plain_dict(self):
        reference = ObjectEventReference.of(
            ObjectModifiedEvent(self.app.site.folder.doc))
        body = pickle.dumps(reference)
        self.assertNotIn(b'references', body)
        self.assertEqual(serializers.get('pickle').loads(body, AllowRules()),
                         reference.to_data())

    def test_reference_copies_are_references(self):
        import copy
        reference = ObjectEventReference.of(ObjectModifiedEvent(
            self.app.site.folder.doc, Attributes(IItem, 'title')))
        for made in (copy.copy(reference), copy.deepcopy(reference)):
            self.assertIsInstance(made, ObjectEventReference)
            self.assertEqual(made, reference)

    def test_object_outside_any_site_is_relative_to_the_root(self):
        data = references.encode(ObjectModifiedEvent(self.app.plain.doc))
        self.assertEqual(data['object'], {
            'path': 'plain/doc', 'site': '/', 'absolute': '/plain/doc',
            'uuid': None})

    def test_the_site_itself(self):
        data = references.encode(ObjectModifiedEvent(self.app.site))
        self.assertEqual(data['object'], {
            'path': '', 'site': '/site', 'absolute': '/site', 'uuid': None})

    def test_moved_event_parents_are_references_names_strings(self):
        doc = self.app.site.folder.doc
        reference = ObjectEventReference.of(ObjectMovedEvent(
            doc, self.app.plain, 'old', self.app.site.folder, 'doc'))
        self.assertEqual(reference.attributes, {
            'oldParent': ObjectReference(('plain',)),
            'oldName': 'old',
            'newParent': ObjectReference(('folder',), ('', 'site')),
            'newName': 'doc'})

    def test_unlocated_object_has_no_path(self):
        data = references.encode(ObjectModifiedEvent(Folder('new')))
        self.assertEqual(data['object']['path'], None)
        self.assertEqual(data['object']['absolute'], None)

    def test_what_needs_a_reference(self):
        doc = self.app.site.folder.doc
        self.assertTrue(references.by_reference(ObjectModifiedEvent(doc)))
        self.assertTrue(references.by_reference(
            ObjectModifiedEvent(Folder('unwrapped'))))
        self.assertFalse(references.by_reference(
            ObjectModifiedEvent({'plain': 'value'})))
        self.assertFalse(references.by_reference(Noted('no object event')))

    def test_attribute_that_cannot_travel_is_named(self):
        event = Touched(self.app.site.folder.doc, how=threading.Lock())
        with self.assertRaisesRegex(references.CannotTravel,
                                    "attribute 'how' of Touched is "
                                    "_thread.lock"):
            references.encode(event)


class ResolveTests(ContentTestCase):

    def test_modified_event_resolves_in_the_receivers_database(self):
        sent = self.app.site.folder.doc
        data = references.encode(ObjectModifiedEvent(
            sent, Attributes(IItem, 'title')))
        [seen] = self.received(data, '/site')
        event = seen['event']
        self.assertIsInstance(event, ObjectModifiedEvent)
        self.assertEqual(seen['path'], ('', 'site', 'folder', 'doc'))
        self.assertEqual(seen['title'], 'site doc')
        self.assertIsNot(event.object, sent)            # its own copy
        self.assertIsNot(seen['jar'], self.connection)
        self.assertTrue(seen['received'])
        self.assertFalse(IUnresolvedObjectEvent.providedBy(event))
        self.assertEqual(event.zamqp_unresolved, ())
        self.assertEqual(event.zamqp_reference,
                         ObjectEventReference.from_data(data))
        [description] = event.descriptions
        self.assertIs(description.interface, IItem)
        self.assertEqual(description.attributes, ('title',))
        # acquisition-wrapped in the receiver's site and request
        self.assertEqual(event.object.absolute_url(),
                         'http://nohost/site/folder/doc')

    def test_path_relative_to_the_receivers_site(self):
        data = references.encode(ObjectModifiedEvent(
            self.app.site.folder.doc))
        [seen] = self.received(data, '/other')
        self.assertEqual(seen['path'], ('', 'other', 'folder', 'doc'))
        self.assertEqual(seen['title'], 'other doc')

    def test_absolute_path_when_the_receiver_runs_on_the_root(self):
        data = references.encode(ObjectModifiedEvent(
            self.app.site.folder.doc))
        [seen] = self.received(data)
        self.assertEqual(seen['path'], ('', 'site', 'folder', 'doc'))

    def test_site_itself_resolves_to_the_receivers_site(self):
        data = references.encode(ObjectModifiedEvent(self.app.site))
        self.assertEqual(self.received(data, '/other')[0]['path'],
                         ('', 'other'))
        # not to the application root when the receiver runs there
        self.assertEqual(self.received(data)[0]['path'], ('', 'site'))

    def test_object_outside_sites_is_not_looked_up_in_the_receivers(self):
        data = references.encode(ObjectModifiedEvent(self.app.doc))
        # /site/doc does not exist; /other has no doc either: absolute
        self.assertEqual(self.received(data, '/site')[0]['path'],
                         ('', 'doc'))

    def test_nothing_is_acquired(self):
        # /plain/doc/doc does not exist, though traversal could acquire
        # /plain/doc from it
        reference = ObjectReference(('plain', 'doc', 'doc'))
        self.assertIsNone(reference.resolve(self.app))
        self.assertIsNotNone(self.app.unrestrictedTraverse(
            'plain/doc/doc', None))           # acquisition would find one

    def test_missing_object_is_none_and_marked(self):
        sent = self.app.site.folder.doc
        data = references.encode(ObjectModifiedEvent(sent))
        data['object']['path'] = 'folder/gone'
        data['object']['absolute'] = '/site/folder/gone'
        [seen] = self.received(data, '/site')
        event = seen['event']
        self.assertIsInstance(event, ObjectModifiedEvent)
        self.assertIsNone(event.object)
        self.assertTrue(IUnresolvedObjectEvent.providedBy(event))
        self.assertEqual(event.zamqp_unresolved, ('object',))
        self.assertEqual(event.zamqp_reference.object.absolute,
                         ('', 'site', 'folder', 'gone'))

    def test_removed_event_of_an_object_gone_here_too(self):
        doc = self.app.site.folder.doc
        self.app.site.folder._delObject('doc')
        transaction.commit()
        data = references.encode(ObjectRemovedEvent(
            doc, self.app.site.folder, 'doc'))
        [seen] = self.received(data, '/site')
        event = seen['event']
        self.assertIsNone(event.object)
        self.assertEqual(event.oldName, 'doc')
        self.assertEqual(references.physical_path(event.oldParent),
                         ('', 'site', 'folder'))
        self.assertTrue(IUnresolvedObjectEvent.providedBy(event))

    def test_moved_event_resolves_parents(self):
        doc = self.app.site.folder.doc
        data = references.encode(ObjectMovedEvent(
            doc, self.app.plain, 'old', self.app.site.folder, 'doc'))
        [seen] = self.received(data, '/other')
        event = seen['event']
        self.assertEqual(seen['path'], ('', 'other', 'folder', 'doc'))
        self.assertEqual(references.physical_path(event.oldParent),
                         ('', 'plain'))
        self.assertEqual(references.physical_path(event.newParent),
                         ('', 'other', 'folder'))
        self.assertEqual((event.oldName, event.newName), ('old', 'doc'))

    def test_added_event_of_a_parent_missing_here(self):
        doc = self.app.site.folder.doc
        data = references.encode(ObjectAddedEvent(
            doc, self.app.site.folder, 'doc'))
        data['attributes']['newParent']['zamqp.object'].update(
            path='nowhere', absolute='/site/nowhere')
        [seen] = self.received(data, '/site')
        event = seen['event']
        self.assertIsNotNone(event.object)
        self.assertIsNone(event.newParent)
        self.assertEqual(event.zamqp_unresolved, ('newParent',))
        self.assertFalse(IUnresolvedObjectEvent.providedBy(event))

    def test_json_round_trip(self):
        data = references.encode(ObjectModifiedEvent(
            self.app.site.folder.doc, Attributes(IItem, 'title')))
        body = json.loads(json.dumps(data))
        [seen] = self.received(body, '/other')
        self.assertEqual(seen['path'], ('', 'other', 'folder', 'doc'))
        self.assertEqual(seen['event'].descriptions[0].attributes,
                         ('title',))

    def test_interface_of_a_module_not_imported_stays_a_name(self):
        data = references.encode(ObjectModifiedEvent(
            self.app.site.folder.doc))
        data['descriptions'] = [['attributes', 'not.imported.IThing',
                                 ['x']]]
        [seen] = self.received(data, '/site')
        self.assertEqual(seen['event'].descriptions[0].interface,
                         'not.imported.IThing')
        self.assertNotIn('not.imported', sys.modules)


class IUUIDForTests(Interface):
    """Stands in for plone.uuid's IUUID (not installed here)."""


class Brain:
    def __init__(self, obj):
        self.obj = obj

    def _unrestrictedGetObject(self):
        return self.obj


class Catalog(SimpleItem):
    """The part of a CMF catalog that references use."""

    def __init__(self):
        self.uids = {}

    def unrestrictedSearchResults(self, UID):
        path = self.uids.get(UID)
        if path is None:
            return []
        return [Brain(self.unrestrictedTraverse(path))]


class UUIDTests(ContentTestCase):
    """plone.uuid and a CMF catalog stand in: the reference carries the
    UUID the IUUID adapter gives and is found by it first."""

    def setUp(self):
        super().setUp()
        self.patch = references.IUUID
        references.IUUID = IUUIDForTests
        zope.component.provideAdapter(
            lambda obj: getattr(obj, 'uid', None), (IItem,), IUUIDForTests)
        self.app.site._setObject('portal_catalog', Catalog())
        self.app.site.folder.doc.uid = 'uid-1'
        transaction.commit()

    def tearDown(self):
        references.IUUID = self.patch
        zope.component.getGlobalSiteManager().unregisterAdapter(
            required=(IItem,), provided=IUUIDForTests)
        super().tearDown()

    def test_uuid_travels(self):
        data = references.encode(ObjectModifiedEvent(
            self.app.site.folder.doc))
        self.assertEqual(data['object']['uuid'], 'uid-1')

    def test_found_by_uuid_first_though_moved_here(self):
        data = references.encode(ObjectModifiedEvent(
            self.app.site.folder.doc))
        # here the object with that UUID lives elsewhere
        self.app.site.portal_catalog.uids = {'uid-1': '/plain/doc'}
        transaction.commit()
        [seen] = self.received(data, '/site')
        self.assertEqual(seen['path'], ('', 'plain', 'doc'))
        # the catalog of the sender's site is used when the receiver
        # runs on the root
        self.assertEqual(self.received(data)[0]['path'],
                         ('', 'plain', 'doc'))

    def test_unknown_uuid_falls_back_to_the_path(self):
        data = references.encode(ObjectModifiedEvent(
            self.app.site.folder.doc))
        [seen] = self.received(data, '/site')
        self.assertEqual(seen['path'], ('', 'site', 'folder', 'doc'))


class HostileReferenceTests(ContentTestCase):
    """A reference from the network names what is imported: only allowed
    IObjectEvent classes, and paths of plain ids."""

    def data(self, **changes):
        data = references.encode(ObjectModifiedEvent(
            self.app.site.folder.doc))
        data.update(changes)
        return data

    def assertRefused(self, data, pattern, allow=None):
        with self.assertRaisesRegex(MessageRefused, pattern):
            references.decode(data, allow)

    def test_class_not_allowed_is_not_imported(self):
        self.assertNotIn('antigravity', sys.modules)
        self.assertRefused(self.data(event='antigravity.Fly'),
                           'refused object event class antigravity.Fly: '
                           'it is not in the allow rules')
        self.assertNotIn('antigravity', sys.modules)
        self.assertRefused(self.data(event='os.system'), 'os.system')

    def test_allowed_class_that_is_no_object_event_is_refused(self):
        self.assertRefused(
            self.data(event='zamqp.tests.zopeaddon.events.Noted'),
            'not a class implementing .*IObjectEvent',
            AllowRules.from_spec(['zamqp.tests.zopeaddon.*']))
        self.assertRefused(
            self.data(event='zamqp.tests.zopeaddon.handlers.store'),
            'refused object event class',
            AllowRules.from_spec(['zamqp.tests.zopeaddon.handlers.store']))

    def test_own_event_class_needs_an_allow_rule(self):
        data = references.encode(Touched(self.app.site.folder.doc, 'x'))
        self.assertEqual(data['event'], 'zamqp.tests.zopeaddon.events.'
                                        'Touched')
        self.assertRefused(data, 'not in the allow rules')
        reference = references.decode(
            data, AllowRules.from_spec(['zamqp.tests.zopeaddon.*']))
        self.assertEqual(reference.attributes, {'how': 'x'})

    def test_bad_paths_are_refused(self):
        for path in ('../x', 'folder/..', '@@view', '++resource++x',
                     '_private', 'a//b', ' a'):
            data = self.data()
            data['object'] = dict(data['object'], path=path)
            self.assertRefused(data, 'refused path', )
        data = self.data()
        data['object'] = dict(data['object'], site='relative')
        self.assertRefused(data, 'not absolute')

    def test_bad_attribute_names_and_values_are_refused(self):
        for name in ('__class__', '_p_jar', 'object', 'descriptions',
                     'not an identifier', 'class'):
            self.assertRefused(self.data(attributes={name: 'x'}),
                               'refused attribute name')
        self.assertRefused(self.data(attributes={'x': {'a': 1}}),
                           'not a plain value')

    def test_bad_descriptions_and_versions_are_refused(self):
        self.assertRefused(self.data(descriptions=[['code', 'os.system']]),
                           'refused description')
        self.assertRefused(self.data(descriptions=[['attributes', 'I', [{}]]]),
                           'refused description')
        self.assertRefused(self.data(**{'zamqp.object-event': 2}),
                           'version 2')

    def test_delivery_refuses_before_opening_a_transaction(self):
        calls = []
        delivery = Delivery('test', events=True,
                            in_context=lambda deliver, event: calls.append(1))
        with self.assertRaises(MessageRefused):
            delivery(self.data(event='os.system'), None)
        self.assertEqual(calls, [])


class SiteAPITests(zopecontext.ZODBTestCase):
    """zamqp.zope.context.site(), application(), connection()."""

    def test_outside_a_delivery_there_is_none(self):
        self.assertIsNone(context.site())
        self.assertIsNone(context.application())
        self.assertIsNone(context.connection())

    def test_in_a_delivery_on_the_root(self):
        seen = {}

        def record(event):
            seen.update(site=context.site(), event_site=event.site,
                        app=context.application(),
                        connection=context.connection(),
                        keys=sorted(context.connection().root()),
                        component_site=getSite())

        InZope(self.db)(record, zopecontext.event())
        self.assertIs(seen['site'], seen['event_site'])
        self.assertIs(seen['app'], seen['site'])
        self.assertEqual(seen['app'].getPhysicalPath(), ('',))
        self.assertIsNone(seen['component_site'])   # the root is no ISite
        self.assertIs(seen['connection'], seen['app']._p_jar)
        self.assertIn('Application', seen['keys'])
        self.test_outside_a_delivery_there_is_none()

    def test_in_a_delivery_on_a_component_site(self):
        seen = {}

        def record(event):
            seen.update(site=context.site(), app=context.application(),
                        component_site=getSite())

        InZope(self.db, '/site')(record, zopecontext.event())
        self.assertEqual(seen['site'].getPhysicalPath(), ('', 'site'))
        self.assertIs(seen['component_site'], seen['site'])
        self.assertEqual(seen['app'].getPhysicalPath(), ('',))

    def test_released_after_a_failure(self):
        def fail(event):
            raise ValueError('broke')

        with self.assertRaises(ValueError):
            InZope(self.db)(fail, zopecontext.event())
        self.test_outside_a_delivery_there_is_none()

    def test_events_subscriber_writes_to_the_root_and_it_is_committed(self):
        """An ``events="true"`` consumer on the application root: the
        subscriber has no component site, but site() to write to."""
        def subscriber(event):
            self.assertIsNone(getSite())
            context.site().zamqp_written = event.text
            context.application().site.notes.append(event.text)

        zope.component.provideHandler(subscriber, [Interface])
        try:
            Delivery('test', events=True, in_context=InZope(self.db))(
                Noted('written'), None)
        finally:
            zope.component.getGlobalSiteManager().unregisterHandler(
                subscriber, [Interface])
        self.assertEqual(self.read(lambda app: app.zamqp_written), 'written')
        self.assertEqual(self.notes(), ['written'])


class RelayTests(ContentTestCase):
    """The Relay publishes a reference for object events of content,
    names the broadcast when an event cannot travel, and relays no
    rebuilt event."""

    def setUp(self):
        super().setUp()
        zca.pushGlobalRegistry()
        self.addCleanup(zca.popGlobalRegistry)
        self.producer = Recorder()
        zope.component.provideUtility(self.producer, IProducer, 'p')

    def test_object_event_of_content_is_published_as_reference(self):
        Relay('p', IObjectModifiedEvent)(ObjectModifiedEvent(
            self.app.site.folder.doc))
        [body] = self.producer.published
        self.assertEqual(body['object']['absolute'], '/site/folder/doc')

    def test_other_events_are_published_as_they_are(self):
        event = Noted('plain')
        Relay('p')(event)
        self.assertEqual(self.producer.published, [event])

    def test_unpicklable_event_names_the_broadcast(self):
        relay = Relay('p', INoted)
        with self.assertLogs('zamqp', logging.ERROR) as logs:
            with self.assertRaises(BroadcastError) as raised:
                relay(Noted(threading.Lock()))
        text = str(raised.exception)
        self.assertIn("<zamqp:broadcast for='zamqp.tests.zopeaddon."
                      "interfaces.INoted' producer='p'> cannot send "
                      "Noted(<unlocked _thread.lock", text)
        self.assertIn("TypeError: cannot pickle '_thread.lock' object", text)
        self.assertIn('travel as references', text)
        self.assertIn(text, logs.output[0])
        self.assertEqual(self.producer.published, [])

    def test_without_for_the_interfaces_are_named(self):
        with self.assertLogs('zamqp', logging.ERROR):
            with self.assertRaisesRegex(
                    BroadcastError, r"<zamqp:broadcast producer='p'> \(the "
                    r"event provides zamqp.tests.zopeaddon.interfaces."
                    r"INoted\)"):
                Relay('p')(Noted(threading.Lock()))

    def test_registered_relay_names_its_interface(self):
        relay = Relay('p')
        zope.component.provideHandler(relay, [INoted])
        with self.assertLogs('zamqp', logging.ERROR):
            with self.assertRaisesRegex(
                    BroadcastError, r"^<zamqp:broadcast for='zamqp\.tests\."
                    r"zopeaddon\.interfaces\.INoted' producer='p'> cannot "
                    r"send Noted"):
                zope.event.notify(Noted(threading.Lock()))

    def test_attribute_that_cannot_travel_names_the_broadcast(self):
        with self.assertLogs('zamqp', logging.ERROR):
            with self.assertRaisesRegex(BroadcastError,
                                        "attribute 'how' of Touched"):
                Relay('p')(Touched(self.app.site.folder.doc,
                                   threading.Lock()))

    def test_persistent_payload_of_a_plain_event_names_the_broadcast(self):
        with self.assertLogs('zamqp', logging.ERROR):
            with self.assertRaisesRegex(
                    BroadcastError, "Can't pickle objects in acquisition "
                    "wrappers"):
                Relay('p')(Noted(self.app.site.folder.doc))

    def test_other_errors_of_the_producer_keep_their_name(self):
        def broken(obj):
            raise TypeError('a bug in the producer')

        zope.component.provideUtility(broken, IProducer, 'broken')
        with self.assertRaisesRegex(TypeError, 'a bug in the producer'):
            Relay('broken')(Noted('picklable'))

    def test_rebuilt_event_is_not_relayed_even_outside_receiving(self):
        data = references.encode(ObjectModifiedEvent(
            self.app.site.folder.doc))
        rebuilt = references.decode(data).event(self.app)
        self.assertFalse(is_received())
        Relay('p')(rebuilt)
        self.assertEqual(self.producer.published, [])


class Recorder:
    """A producer that serializes with pickle, as the default producer
    does, and records what it was given."""

    def __init__(self):
        self.published = []

    def __call__(self, obj):
        pickle.dumps(obj)
        self.published.append(obj)


def sandbox_on_exchange(test, prefix):
    """A registry of ``test``'s own and a new exchange ``test.exchange``
    (deleted at cleanup); return the configuration context to load into."""
    test.exchange = unique(prefix)
    test.admin = zopecontext.Admin()
    test.addCleanup(test.admin.close)
    test.addCleanup(test.admin.delete_exchange, test.exchange)
    zca.pushGlobalRegistry()
    test.addCleanup(zca.popGlobalRegistry)
    test.addCleanup(zopecontext.close_producers)
    return zca.stackConfigurationContext(test.layer['configurationContext'])


class ContentOverTheBrokerTests(ContentTestCase):
    """zamqp and the test add-on from ZCML with content broadcasts: an
    object event notified in a transaction goes through the real broker
    as a reference, and the add-on's subscriber sees it rebuilt with the
    consumer's own object; it is not relayed again."""

    def setUp(self):
        super().setUp()
        ctx = sandbox_on_exchange(self, 'zamqp.test.references')
        xmlconfig.string(amqp_zcml(self.exchange, url=broker_url(),
                                   content=True), context=ctx)
        self.addCleanup(lifecycle.restore_sigterm)
        self.addCleanup(lifecycle.stop)
        lifecycle.start(self.db)
        self.assertTrue(lifecycle.wait())
        del handlers.CONTENT_SEEN[:]

    def content_log(self):
        return self.read(lambda app: handlers.stored(app, 'zamqp_content'))

    def test_modified_event_arrives_with_the_consumers_object(self):
        doc = self.app.site.folder.doc
        doc.title = 'changed here'
        zope.event.notify(ObjectModifiedEvent(doc, Attributes(IItem,
                                                              'title')))
        transaction.commit()
        self.assertTrue(wait_for(lambda: self.content_log(), timeout=10))
        [entry] = self.content_log()
        self.assertEqual(entry['event'], 'ObjectModifiedEvent')
        self.assertEqual(entry['path'], '/site/folder/doc')
        self.assertEqual(entry['title'], 'changed here')  # committed first
        self.assertEqual(entry['sender_path'], '/site/folder/doc')
        self.assertEqual(entry['descriptions'], [['title']])
        self.assertTrue(entry['received'])
        self.assertFalse(entry['unresolved'])
        self.assertEqual(entry['thread'], 'zamqp-worker-addon.events')
        # seen twice here: locally, then received; nothing relayed again
        wait_for(lambda: False, timeout=0.5)
        self.assertEqual([(e['event'], e['received'])
                          for e in handlers.CONTENT_SEEN],
                         [('ObjectModifiedEvent', False),
                          ('ObjectModifiedEvent', True)])
        self.assertEqual(len(self.content_log()), 1)

    def test_added_then_removed_before_it_arrives(self):
        # in one transaction: when the messages go, it is gone
        add(self.app.site.folder, 'brief', 'brief', SimpleItem)
        self.app.site.folder._delObject('brief')
        transaction.commit()
        self.assertTrue(wait_for(
            lambda: len([e for e in self.content_log()
                         if e['event'] == 'ObjectRemovedEvent']) == 1,
            timeout=10))
        log = [(e['event'], e['path'], e['unresolved'], e['sender_path'])
               for e in self.content_log()]
        self.assertIn(('ObjectAddedEvent', None, True,
                       '/site/folder/brief'), log)
        self.assertIn(('ObjectRemovedEvent', None, True,
                       '/site/folder/brief'), log)
        # the container modified events found the folder
        self.assertIn(('ContainerModifiedEvent', '/site/folder', False,
                       '/site/folder'), log)


class ContentOverJSONTests(ContentTestCase):
    """A producer with the JSON serializer broadcasts object events too:
    a reference is a plain dict. The consumer runs on /other, the
    counterpart of the sender's /site."""

    def setUp(self):
        super().setUp()
        ctx = sandbox_on_exchange(self, 'zamqp.test.references.json')
        xmlconfig.string(f'''
        <configure xmlns="http://namespaces.zope.org/zope"
                   xmlns:zamqp="http://namespaces.zope.org/zamqp">
          <include package="zamqp" />
          <zamqp:connection url="{broker_url()}" />
          <zamqp:producer name="json" exchange="{self.exchange}"
                          serializer="json" />
          <zamqp:broadcast producer="json"
              for="zope.lifecycleevent.interfaces.IObjectModifiedEvent" />
          <zamqp:consumer name="json.events" exchange="{self.exchange}"
                          events="true" accept="json" site="/other" />
        </configure>''', context=ctx)
        # /other's registry extends the test's (pushed) global registry
        self.app.other.getSiteManager().__bases__ = (
            zope.component.getGlobalSiteManager(),)
        transaction.commit()
        self.seen = []
        zope.component.provideHandler(self.record, [IObjectModifiedEvent])
        self.addCleanup(lifecycle.restore_sigterm)
        self.addCleanup(lifecycle.stop)
        lifecycle.start(self.db)
        self.assertTrue(lifecycle.wait())

    def record(self, event):
        self.seen.append((is_received(),
                          references.physical_path(event.object),
                          getattr(event.object, 'title', None),
                          context.site().getPhysicalPath()
                          if context.site() is not None else None))

    def test_modified_event_travels_as_json(self):
        zope.event.notify(ObjectModifiedEvent(self.app.site.folder.doc))
        transaction.commit()
        self.assertTrue(wait_for(lambda: len(self.seen) == 2, timeout=10))
        self.assertEqual(self.seen, [
            (False, ('', 'site', 'folder', 'doc'), 'site doc', None),
            (True, ('', 'other', 'folder', 'doc'), 'other doc',
             ('', 'other'))])
