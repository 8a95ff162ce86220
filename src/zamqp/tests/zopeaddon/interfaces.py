"""The event interface the test add-on relays between instances."""
from zope.interface import Attribute
from zope.interface import Interface


class INoted(Interface):
    """Something was noted; instances relay it to each other."""

    text = Attribute('What was noted.')
    origin = Attribute('Where it was noted (an instance or a process).')
