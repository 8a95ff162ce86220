"""zamqp in Zope and Plone: ZCML directives, settings from zope.conf,
consumers started with the database, handlers run in Zope's context,
test layers.

Needs ``pip install zamqp[zope]``; the plain core (``zamqp``) never
imports this package.
"""
import importlib.util as _util

_NEEDED = ('zope.configuration', 'zope.schema', 'zope.processlifetime',
           'transaction')
_missing = [name for name in _NEEDED if _util.find_spec(name) is None]
if _missing:
    raise ImportError(
        f"zamqp.zope needs {', '.join(_missing)}: install zamqp with its "
        "Zope extra, pip install 'zamqp[zope]'")
