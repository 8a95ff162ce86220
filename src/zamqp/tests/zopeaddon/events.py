"""Noted: the event the test add-on relays (a plain, picklable class)."""
from zope.interface import implementer
from zope.interface.interfaces import IObjectEvent
from zope.interface.interfaces import ObjectEvent

from zamqp.tests.zopeaddon.interfaces import INoted


@implementer(INoted)
class Noted:
    """Notified by ``@@zamqp-notify``; relayed by ``<zamqp:broadcast>``."""

    def __init__(self, text, origin=''):
        self.text = text
        self.origin = origin

    def __repr__(self):
        return f'Noted({self.text!r}, origin={self.origin!r})'


class ITouched(IObjectEvent):
    """An object event of the add-on's own (not in zamqp's list of object
    events: consumers must allow it)."""


@implementer(ITouched)
class Touched(ObjectEvent):
    """Something touched ``object``; ``how`` says what."""

    def __init__(self, object, how=''):
        super().__init__(object)
        self.how = how
