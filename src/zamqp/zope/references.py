"""Object events of persistent content, sent by reference.

An object event (``IObjectEvent``: modified, added, removed, moved, ...)
carries the object itself, which cannot travel: a persistent object in
an acquisition wrapper does not pickle, and another instance's database
has its own copy anyway. ``<zamqp:broadcast>`` therefore sends such an
event as an :class:`ObjectEventReference`: the event's class (a dotted
name), where its object is (:class:`ObjectReference`: the path relative
to the site it belongs to, that site's path, the absolute path and the
UUID where ``plone.uuid`` gives one) and the event's other attributes
made safe (objects as references, names as strings, modification
descriptions as interface names and attribute names).

On the wire a reference is a plain dict of strings, lists and None
(:meth:`ObjectEventReference.to_data`), so every consumer decodes it,
with the pickle or the JSON serializer, without allow rules of its own.
The receiving consumer (``zamqp.zope.delivery.Delivery``) turns it back
into an event of its own database, before notifying or calling its
handler (:meth:`ObjectEventReference.event`):

- the event class is imported only when the allow rules name it (the
  object events of zope.lifecycleevent, zope.container and OFS always
  are: ``EVENT_CLASSES``) and it must be a class implementing
  ``IObjectEvent``; it is made without calling its ``__init__``, so a
  message never runs code;
- each object is looked up (:meth:`ObjectReference.resolve`) by UUID in
  the catalog of the receiver's site, then by the path relative to the
  receiver's site, then by the absolute path; what is found must sit at
  that very path (nothing acquired). ``event.object`` is then the
  receiver's own object, wrapped in its site and request;
- an object that is not found is ``None``; the event then provides
  :class:`IUnresolvedObjectEvent` and lists it in
  ``event.zamqp_unresolved``. Every rebuilt event has the reference
  it came from as ``event.zamqp_reference``.

See docs/content-events.rst.
"""
import importlib
import keyword
import sys

from Acquisition import aq_base
from Acquisition import aq_chain
from Acquisition import aq_inner
from persistent import Persistent
from zope.component.interfaces import ISite
from zope.interface import Attribute
from zope.interface import alsoProvides
from zope.interface.interfaces import IInterface
from zope.interface.interfaces import IObjectEvent
from zope.lifecycleevent import Attributes
from zope.lifecycleevent import Sequence

from zamqp.exceptions import MessageRefused
from zamqp.exceptions import ZAMQPError
from zamqp.unpickling import AllowRules

try:                                    # Plone's UUIDs, when installed
    from plone.uuid.interfaces import IUUID
except ImportError:                     # pragma: no cover (plain Zope)
    IUUID = None

#: Where Plone's INavigationRoot may be (imported on first use).
_NAVIGATION_MODULES = ('plone.base.interfaces',
                       'plone.app.layout.navigation.interfaces')
_navigation_roots = None

#: The key that marks a dict as an object event reference, and the
#: version of its format.
MARK = 'zamqp.object-event'
VERSION = 1
#: The key of an object reference among an event's other attributes.
OBJECT_MARK = 'zamqp.object'

#: Event classes a reference may name without any allow rule.
EVENT_CLASSES = AllowRules([
    'zope.interface.interfaces.ObjectEvent',
    'zope.lifecycleevent.ObjectCreatedEvent',
    'zope.lifecycleevent.ObjectModifiedEvent',
    'zope.lifecycleevent.ObjectCopiedEvent',
    'zope.lifecycleevent.ObjectMovedEvent',
    'zope.lifecycleevent.ObjectAddedEvent',
    'zope.lifecycleevent.ObjectRemovedEvent',
    'zope.container.contained.ContainerModifiedEvent',
    'OFS.event.ObjectWillBeAddedEvent',
    'OFS.event.ObjectWillBeMovedEvent',
    'OFS.event.ObjectWillBeRemovedEvent',
    'OFS.event.ObjectClonedEvent',
])

#: Plain values an event attribute may have to travel as it is.
_PLAIN = (str, int, float, bool, type(None))
#: Attributes of ObjectEvent subclasses handled apart from the others.
_OBJECT, _DESCRIPTIONS = 'object', 'descriptions'


class CannotTravel(ZAMQPError, TypeError):
    """An event attribute that is neither a plain value nor an object
    that can be referred to; the message names it."""


class IUnresolvedObjectEvent(IObjectEvent):
    """A received object event whose object was not found in this
    database: ``object`` is None."""

    zamqp_reference = Attribute('The ObjectEventReference it was made of.')
    zamqp_unresolved = Attribute(
        "Names of the attributes whose objects were not found "
        "('object', 'oldParent', ...).")


class ObjectReference:
    """Where an object is, in terms another database can look up.

    ``path``: the ids from the site the object belongs to (the nearest
    ISite or navigation root above it, itself included) down to it, a
    tuple (empty for the site itself); ``site``: that site's physical
    path, ``('',)`` when the object belongs to no site (then ``path``
    starts at the application root); ``uuid``: its UUID, or None.
    ``path`` is None for an object in no database tree (not added yet).
    """

    def __init__(self, path, site=('',), uuid=None):
        self.path = None if path is None else tuple(path)
        self.site = tuple(site)
        self.uuid = uuid

    @property
    def absolute(self):
        """The physical path (a tuple starting with ''), or None."""
        return None if self.path is None else self.site + self.path

    @classmethod
    def of(cls, obj):
        """The reference of ``obj`` (persistent, acquisition-wrapped or
        having a physical path)."""
        uuid = uuid_of(obj)
        path = physical_path(obj)
        if path is None:
            return cls(None, uuid=uuid)
        site = site_path(obj)
        if path[:len(site)] != site:        # pragma: no cover (odd trees)
            site = ('',)
        return cls(path[len(site):], site, uuid)

    def to_data(self):
        """A dict of strings (and None): ``path`` (relative, '/'-joined),
        ``site`` and ``absolute`` (absolute paths, '/' for the root) and
        ``uuid``."""
        return {'path': None if self.path is None else '/'.join(self.path),
                'site': _joined(self.site),
                'absolute': (None if self.path is None
                             else _joined(self.absolute)),
                'uuid': self.uuid}

    @classmethod
    def from_data(cls, data):
        """The reference that ``to_data`` gave; MessageRefused for
        anything else (a path that is not a plain id path)."""
        if not isinstance(data, dict):
            raise MessageRefused(f'object reference is not a dict: '
                                 f'{_short(data)}')
        path, site, uuid = data.get('path'), data.get('site', '/'), \
            data.get('uuid')
        if uuid is not None and not isinstance(uuid, str):
            raise MessageRefused(f'object reference: uuid is not a string: '
                                 f'{_short(uuid)}')
        site = _split(site, absolute=True)
        return cls(None if path is None else _split(path), site, uuid)

    def resolve(self, site):
        """The object this reference names in ``site``'s database, or
        None: by UUID in the catalog of ``site`` (or of the object at
        the sender's site path), then by the path relative to ``site``
        (when the object belonged to a site on the sender and ``site``
        is not the application root), then by the absolute path. Only
        an object at exactly the path traversed counts (no
        acquisition). Traversal is unrestricted."""
        if site is None:
            return None
        root = site.getPhysicalRoot()
        here = site.getPhysicalPath()
        if self.uuid:
            for context in (site, _at(root, self.site)):
                found = find_by_uuid(context, self.uuid)
                if found is not None:
                    return found
        if self.path is None:
            return None
        if self.site != ('',) and here != ('',):
            found = _at(site, self.path, expected=here + self.path)
            if found is not None:
                return found
        return _at(root, self.absolute)

    def __eq__(self, other):
        return isinstance(other, ObjectReference) and \
            (self.path, self.site, self.uuid) == \
            (other.path, other.site, other.uuid)

    def __repr__(self):
        where = '(not located)' if self.path is None else \
            _joined(self.absolute)
        uuid = f' uuid={self.uuid}' if self.uuid else ''
        return f'<ObjectReference {where}{uuid}>'


class ObjectEventReference:
    """An object event as a reference: ``event_class`` (dotted name),
    ``object`` (an ObjectReference, or None when the event had no
    object), ``attributes`` (the event's other attributes: plain values
    and ObjectReferences, by name) and ``descriptions`` (of an
    IObjectModifiedEvent: tuples ``('attributes', interface, names)``,
    ``('sequence', interface, keys)`` or ``('text', text)``, interfaces
    as dotted names).

    ``ObjectEventReference.of(event)`` makes one, ``to_data()`` /
    ``from_data()`` turn it into the dict that travels and back, and
    ``event(site)`` rebuilds the event in the receiver's database.
    Pickled, it travels as that dict too.
    """

    def __init__(self, event_class, object=None, attributes=None,
                 descriptions=()):
        self.event_class = event_class
        self.object = object
        self.attributes = dict(attributes or {})
        self.descriptions = tuple(descriptions)

    @classmethod
    def of(cls, event):
        """The reference of ``event`` (an IObjectEvent). Raises
        CannotTravel for an attribute that is neither a plain value
        (string, number, bool, None, or a list or tuple of those) nor
        an object with a path or persistence (referred to)."""
        kind = type(event)
        attributes = {}
        for name, value in sorted(vars(event).items()):
            if name in (_OBJECT, _DESCRIPTIONS) or name.startswith('_'):
                continue
            attributes[name] = _safe(value, name, event)
        obj = getattr(event, _OBJECT, None)
        return cls(f'{kind.__module__}.{kind.__qualname__}',
                   None if obj is None else ObjectReference.of(obj),
                   attributes,
                   [_description(d, event)
                    for d in getattr(event, _DESCRIPTIONS, None) or ()])

    def to_data(self):
        """The dict that travels: strings, lists, dicts and None only."""
        attributes = {}
        for name, value in self.attributes.items():
            if isinstance(value, ObjectReference):
                value = {OBJECT_MARK: value.to_data()}
            elif isinstance(value, tuple):
                value = list(value)
            attributes[name] = value
        return {MARK: VERSION, 'event': self.event_class,
                'object': None if self.object is None
                else self.object.to_data(),
                'attributes': attributes,
                'descriptions': [list(d[:-1]) + [list(d[-1])]
                                 if d[0] != 'text' else list(d)
                                 for d in self.descriptions]}

    def __reduce__(self):
        # travels as the plain dict, which any consumer unpickles
        return (dict, (self.to_data(),))

    def __copy__(self):
        return self.from_data(self.to_data())

    def __deepcopy__(self, memo):
        return self.from_data(self.to_data())

    @classmethod
    def from_data(cls, data):
        """The reference of a received dict (see ``is_reference``);
        MessageRefused when it is malformed. Imports nothing."""
        if not is_reference(data):
            raise MessageRefused(f'not an object event reference: '
                                 f'{_short(data)}')
        if data[MARK] != VERSION:
            raise MessageRefused(f'object event reference of version '
                                 f'{data[MARK]!r}: this zamqp reads version '
                                 f'{VERSION}')
        event_class = data.get('event')
        if not isinstance(event_class, str) or not _dotted(event_class):
            raise MessageRefused(f'object event reference: event class is '
                                 f'not a dotted name: {_short(event_class)}')
        obj = data.get('object')
        attributes = {}
        given = data.get('attributes') or {}
        if not isinstance(given, dict):
            raise MessageRefused('object event reference: attributes are '
                                 f'not a dict: {_short(given)}')
        for name, value in given.items():
            if not (isinstance(name, str) and name.isidentifier()
                    and not name.startswith('_')
                    and not keyword.iskeyword(name)
                    and name not in (_OBJECT, _DESCRIPTIONS)):
                raise MessageRefused('object event reference: refused '
                                     f'attribute name {_short(name)}')
            if isinstance(value, dict) and set(value) == {OBJECT_MARK}:
                value = ObjectReference.from_data(value[OBJECT_MARK])
            elif isinstance(value, list):
                value = tuple(value)
            if not _plain(value) and not isinstance(value, ObjectReference):
                raise MessageRefused(f'object event reference: attribute '
                                     f'{name} is not a plain value')
            attributes[name] = value
        descriptions = []
        for item in data.get('descriptions') or ():
            descriptions.append(_checked_description(item))
        return cls(event_class,
                   None if obj is None else ObjectReference.from_data(obj),
                   attributes, descriptions)

    def resolve_class(self, allow=None):
        """The event class, imported only if ``allow`` (AllowRules; the
        object events of ``EVENT_CLASSES`` always) names it; it must be
        a class implementing IObjectEvent. MessageRefused otherwise."""
        rules = EVENT_CLASSES if allow is None else EVENT_CLASSES | allow
        module, _, name = self.event_class.rpartition('.')
        if not rules.allows(module, name):
            raise MessageRefused(
                f'refused object event class {self.event_class}: it is not '
                "in the allow rules. If you trust it, add it to the "
                "consumer's allow attribute or to <zamqp:allow>")
        try:
            found = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise MessageRefused(f'object event class {self.event_class} '
                                 f'not found here ({exc})') from exc
        if not (isinstance(found, type) and IObjectEvent.implementedBy(found)
                and rules.accepts(found, module, name)):
            raise MessageRefused(
                f'refused object event class {self.event_class}: not a '
                'class implementing zope.interface.interfaces.IObjectEvent')
        return found

    def event(self, site, allow=None):
        """A new event of the (checked) class, with the objects of
        ``site``'s database; its ``__init__`` is not called. Objects not
        found are None and named in ``zamqp_unresolved``; when the
        event's object is not found it provides
        IUnresolvedObjectEvent."""
        kind = self.resolve_class(allow)
        event = kind.__new__(kind)
        unresolved = []
        state = {}
        for name, value in self.attributes.items():
            if isinstance(value, ObjectReference):
                value = value.resolve(site)
                if value is None:
                    unresolved.append(name)
            state[name] = value
        obj = None
        if self.object is not None:
            obj = self.object.resolve(site)
            if obj is None:
                unresolved.insert(0, _OBJECT)
        state[_OBJECT] = obj
        if self.descriptions or issubclass(kind, _modified_class()):
            state[_DESCRIPTIONS] = tuple(
                _description_object(d) for d in self.descriptions)
        state.update(zamqp_reference=self, zamqp_unresolved=tuple(unresolved))
        event.__dict__.update(state)
        if obj is None:
            alsoProvides(event, IUnresolvedObjectEvent)
        return event

    def __eq__(self, other):
        return isinstance(other, ObjectEventReference) and \
            self.to_data() == other.to_data()

    def __repr__(self):
        return f'<ObjectEventReference {self.event_class} of {self.object!r}>'


# The API the Relay and the Delivery use

def by_reference(event):
    """Whether ``event`` travels as a reference: an IObjectEvent whose
    object is persistent, acquisition-wrapped or has a physical path."""
    return IObjectEvent.providedBy(event) and \
        _is_content(getattr(event, _OBJECT, None))


def encode(event):
    """The dict that carries ``event`` (see ``by_reference``)."""
    return ObjectEventReference.of(event).to_data()


def is_reference(body):
    """Whether a received body is an encoded object event reference."""
    return isinstance(body, dict) and MARK in body


def decode(body, allow=None):
    """The ObjectEventReference of a received body, its event class
    checked against ``allow`` (see ``resolve_class``); MessageRefused
    when malformed or refused."""
    reference = ObjectEventReference.from_data(body)
    reference.resolve_class(allow)
    return reference


def is_received_reference(event):
    """Whether ``event`` was rebuilt from a received reference."""
    return isinstance(getattr(event, 'zamqp_reference', None),
                      ObjectEventReference)


# Finding things

def physical_path(obj):
    """The physical path of ``obj`` (a tuple from ''), or None when it
    has none or is not in a database tree."""
    method = getattr(obj, 'getPhysicalPath', None)
    if method is None:
        return None
    try:
        path = tuple(method())
    except Exception:                   # noqa: BLE001 (not located)
        return None
    if not path or path[0] != '' or not all(
            isinstance(part, str) for part in path):
        return None
    return path


def site_path(obj):
    """The physical path of the nearest ISite or navigation root from
    ``obj`` (itself included) upwards, or ``('',)``."""
    roots = _navigation_root_interfaces()
    for item in aq_chain(aq_inner(obj)):
        if ISite.providedBy(item) or any(
                root.providedBy(item) for root in roots):
            path = physical_path(item)
            if path is not None:
                return path
    return ('',)


def _navigation_root_interfaces():
    """Plone's INavigationRoot, when Plone is installed (else none)."""
    global _navigation_roots
    if _navigation_roots is None:
        found = []
        for module in _NAVIGATION_MODULES:
            try:
                found.append(importlib.import_module(module).INavigationRoot)
                break
            except (ImportError, AttributeError):
                pass
        _navigation_roots = tuple(found)
    return _navigation_roots


def uuid_of(obj):
    """The object's UUID (plone.uuid's IUUID adapter), or None."""
    if IUUID is None:
        return None
    try:
        uuid = IUUID(obj, None)
    except TypeError:                   # pragma: no cover
        return None
    return uuid if isinstance(uuid, str) else None


def find_by_uuid(context, uuid):
    """The object of UUID ``uuid`` in the ``portal_catalog`` found from
    ``context`` (CMFCore's, Plone's: ``unrestrictedSearchResults(UID=)``),
    or None (no such catalog, not exactly one match)."""
    if context is None:
        return None
    catalog = getattr(context, 'portal_catalog', None)
    search = getattr(catalog, 'unrestrictedSearchResults', None)
    if search is None:
        return None
    brains = list(search(UID=uuid))
    if len(brains) != 1:
        return None
    brain = brains[0]
    get = getattr(brain, '_unrestrictedGetObject', None) or brain.getObject
    try:
        return get()
    except (KeyError, AttributeError, LookupError):
        return None


def _at(start, path, expected=None):
    """The object at ``path`` from ``start``, if it sits at the physical
    path ``expected`` (by default ``path`` itself, absolute)."""
    if start is None or path is None:
        return None
    if expected is None:
        expected = tuple(path)
    names = [part for part in path if part]
    found = start.unrestrictedTraverse(names, None) if names else start
    if found is None or physical_path(found) != tuple(expected):
        return None
    return found


def _is_content(obj):
    if obj is None:
        return False
    return (isinstance(aq_base(obj), Persistent)
            or aq_base(obj) is not obj
            or getattr(obj, 'getPhysicalPath', None) is not None)


def _safe(value, name, event):
    if _plain(value):
        return tuple(value) if isinstance(value, list) else value
    if _is_content(value):
        return ObjectReference.of(value)
    raise CannotTravel(
        f'attribute {name!r} of {type(event).__name__} is '
        f'{type(value).__module__}.{type(value).__qualname__}, which '
        'cannot travel: only plain values (strings, numbers, bools, None '
        'and lists of them) and content objects (sent as references) do')


def _plain(value):
    if isinstance(value, (list, tuple)):
        return all(isinstance(item, _PLAIN) for item in value)
    return isinstance(value, _PLAIN)


def _description(description, event):
    if isinstance(description, Attributes):
        return ('attributes', _interface_name(description.interface),
                tuple(str(a) for a in description.attributes))
    if isinstance(description, Sequence):
        keys = tuple(description.keys)
        if not _plain(keys):
            raise CannotTravel(f'keys of a Sequence description of '
                               f'{type(event).__name__} are not plain '
                               'values')
        return ('sequence', _interface_name(description.interface), keys)
    if isinstance(description, str):
        return ('text', description)
    raise CannotTravel(
        f'description {description!r} of {type(event).__name__} cannot '
        'travel: only zope.lifecycleevent Attributes and Sequence and '
        'strings do')


def _interface_name(interface):
    identifier = getattr(interface, '__identifier__', None)
    return identifier if isinstance(identifier, str) else str(interface)


def _checked_description(item):
    if not isinstance(item, (list, tuple)) or not item or \
            item[0] not in ('attributes', 'sequence', 'text'):
        raise MessageRefused(f'object event reference: refused description '
                             f'{_short(item)}')
    if item[0] == 'text':
        if len(item) != 2 or not isinstance(item[1], str):
            raise MessageRefused('object event reference: refused text '
                                 f'description {_short(item)}')
        return ('text', item[1])
    if len(item) != 3 or not isinstance(item[1], str) or \
            not isinstance(item[2], (list, tuple)) or not _plain(item[2]):
        raise MessageRefused(f'object event reference: refused description '
                             f'{_short(item)}')
    if item[0] == 'attributes' and not all(isinstance(a, str)
                                           for a in item[2]):
        raise MessageRefused('object event reference: attribute names '
                             f'must be strings: {_short(item)}')
    return (item[0], item[1], tuple(item[2]))


def _description_object(description):
    """Attributes or Sequence of the interface, when its module is
    already imported here (nothing is imported for it); else with the
    dotted name in place of the interface."""
    if description[0] == 'text':
        return description[1]
    kind, name, names = description
    interface = _loaded_interface(name)
    make = Attributes if kind == 'attributes' else Sequence
    return make(interface, *names)


def _loaded_interface(dotted):
    module, _, name = dotted.rpartition('.')
    found = getattr(sys.modules.get(module), name, None)
    return found if IInterface.providedBy(found) else dotted


def _modified_class():
    from zope.lifecycleevent import ObjectModifiedEvent
    return ObjectModifiedEvent


def _dotted(name):
    parts = name.split('.')
    return len(parts) > 1 and all(p.isidentifier() for p in parts)


def _split(text, absolute=False):
    """A path tuple from '/'-joined text; only plain ids (no '', '.',
    '..', '@@…', '++…', '_…'). Absolute paths start with ''."""
    if not isinstance(text, str):
        raise MessageRefused(f'object reference: path is not a string: '
                             f'{_short(text)}')
    if absolute:
        if not text.startswith('/'):
            raise MessageRefused(f'object reference: site path is not '
                                 f'absolute: {_short(text)}')
        text = text[1:]
    parts = tuple(text.split('/')) if text else ()
    for part in parts:
        if not part or part in ('.', '..') or part.startswith(
                ('@@', '++', '_')) or part.strip() != part:
            raise MessageRefused(f'object reference: refused path '
                                 f'{_short(text)}')
    return ('',) + parts if absolute else parts


def _joined(path):
    return '/'.join(path) or '/'


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + '...'
