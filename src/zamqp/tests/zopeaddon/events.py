"""Noted: the event the test add-on relays (a plain, picklable class)."""
from zope.interface import implementer

from zamqp.tests.zopeaddon.interfaces import INoted


@implementer(INoted)
class Noted:
    """Notified by ``@@zamqp-notify``; relayed by ``<zamqp:broadcast>``."""

    def __init__(self, text, origin=''):
        self.text = text
        self.origin = origin

    def __repr__(self):
        return f'Noted({self.text!r}, origin={self.origin!r})'
