"""Kept for ``from zamqp.testing import ...``: the test layers live in
:mod:`zamqp.zope.testing` (they need ``zamqp[zope]`` and plone.testing)."""
from zamqp.zope.testing import *  # noqa: F401,F403
