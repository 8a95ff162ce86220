"""An event type, handlers and the ZCML of the ZCML tests."""
from zope.interface import Interface
from zope.interface import implementer

RECEIVED = []


class IPinged(Interface):
    """A local event some instances relay to the others."""


@implementer(IPinged)
class Pinged:
    def __init__(self, text):
        self.text = text

    def __eq__(self, other):
        return type(other) is type(self) and other.text == self.text

    def __repr__(self):
        return f'Pinged({self.text!r})'


def record(event):
    """A consumer handler: keeps what it is called with."""
    RECEIVED.append(event)


ZCML = """\
<configure xmlns="http://namespaces.zope.org/zope"
           xmlns:zamqp="http://namespaces.zope.org/zamqp">
  <zamqp:producer name="pings" exchange="pings" />
  <zamqp:producer name="now" exchange="inbox" transactional="false" />
  <zamqp:consumer name="remote" exchange="pings" events="true"
                  allow="zamqp.tests.zcmltypes.*" />
  <zamqp:consumer name="inbox" exchange="inbox" />
  <zamqp:consumer name="handled" exchange="inbox"
                  handler="zamqp.tests.zcmltypes.record" />
  <zamqp:broadcast for="zamqp.tests.zcmltypes.IPinged" producer="pings" />
</configure>
"""
