"""Doctest set-up for docs/*.rst and README.rst.

Classes defined at a doctest prompt live in a module named
``zamqp_doctest`` so pickle can find them by name, as it finds the classes
of a real module. Helpers from zamqp.testhelpers are in every namespace.
"""
import sys
import types

import pytest
import zope.event
from _pytest.doctest import DoctestItem

from zamqp import events
from zamqp import runner
from zamqp import testhelpers


class DoctestModule(types.ModuleType):
    """A module whose attributes are the doctest's globals."""

    def __init__(self, name, globs):
        super().__init__(name)
        self._globs = globs

    def __getattr__(self, name):
        try:
            return self._globs[name]
        except KeyError:
            raise AttributeError(name) from None


@pytest.fixture(autouse=True)
def doctest_module(request):
    if not isinstance(request.node, DoctestItem):
        yield
        return
    globs = request.node.dtest.globs
    globs['__name__'] = 'zamqp_doctest'
    globs.update(wait_for=testhelpers.wait_for,
                 broker_url=testhelpers.broker_url,
                 unique=testhelpers.unique)
    sys.modules['zamqp_doctest'] = DoctestModule('zamqp_doctest', globs)
    subscribers = list(zope.event.subscribers)
    yield
    runner.close()
    events.close_producers()
    zope.event.subscribers[:] = subscribers
    del sys.modules['zamqp_doctest']
