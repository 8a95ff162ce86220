"""A small Zope add-on that zamqp's tests load into Zope instances."""
from xml.sax.saxutils import quoteattr

#: The ZCML of a test run; ``amqp_zcml`` fills it in.
TEMPLATE = """\
<configure
    xmlns="http://namespaces.zope.org/zope"
    xmlns:zamqp="http://namespaces.zope.org/zamqp">
{first}
  <include package="zamqp" />
  <include package="zamqp.tests.zopeaddon" />

  <zamqp:connection {connection} />
  <zamqp:producer name="addon" exchange={exchange} />
  <zamqp:broadcast
      for="zamqp.tests.zopeaddon.interfaces.INoted" producer="addon" />
  <zamqp:consumer name="addon.events" exchange={exchange} events="true"
      allow="zamqp.tests.zopeaddon.*" />
  <zamqp:consumer name="addon.store" exchange={exchange}
      handler="zamqp.tests.zopeaddon.handlers.store" {where}
      allow="zamqp.tests.zopeaddon.*" />
{slow}{content}
</configure>
"""

#: The broadcasts of object events of ``amqp_zcml(content=True)``.
CONTENT = """
  <zamqp:broadcast producer="addon"
      for="zope.lifecycleevent.interfaces.IObjectModifiedEvent" />
  <zamqp:broadcast producer="addon"
      for="zope.lifecycleevent.interfaces.IObjectMovedEvent" />
"""

#: The shared consumer of ``amqp_zcml(slow=...)``.
SLOW = """
  <zamqp:consumer name="addon.slow" exchange={exchange} queue={queue}
      shared="true" dead_letter_exchange="none" prefetch="1"
      handler="zamqp.tests.zopeaddon.handlers.slow_store" />
"""


def amqp_zcml(exchange, url=None, site='', user=None, sigterm=False,
              slow=None, content=False):
    """The ZCML that loads zamqp and this add-on for one test run.

    It declares the connection ``default`` (at ``url``; without it, at
    zope.conf's ``<product-config zamqp> url``), the producer ``addon``
    on ``exchange``, the broadcast of INoted with it, and two consumers
    of ``exchange``: ``addon.events`` notifies what it receives,
    ``addon.store`` stores it with ``handlers.store`` in ``site`` as
    ``user``. With ``sigterm=True`` the add-on installs a SIGTERM
    handler of its own before zamqp starts (``sigterm.zcml``). With
    ``slow=(exchange, queue)`` a third consumer, ``addon.slow``, shares
    ``queue`` (bound to that exchange) with the other instances and
    handles its messages with ``handlers.slow_store``. With
    ``content=True`` the producer ``addon`` broadcasts object events
    (IObjectModifiedEvent, IObjectMovedEvent) too, which travel as
    references (zamqp.zope.references).
    """
    where = f'site={quoteattr(site)}'
    if user:
        where += f' user={quoteattr(user)}'
    first = ('\n  <include package="zamqp.tests.zopeaddon" '
             'file="sigterm.zcml" />\n' if sigterm else '')
    return TEMPLATE.format(
        first=first,
        connection=f'url={quoteattr(url)}' if url else '',
        exchange=quoteattr(exchange), where=where,
        slow=SLOW.format(exchange=quoteattr(slow[0]),
                         queue=quoteattr(slow[1])) if slow else '',
        content=CONTENT if content else '')
