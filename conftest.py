"""Doctest set-up for docs/*.rst and README.rst.

Classes defined at a doctest prompt live in a module named
``zamqp_doctest`` so pickle can find them by name, as it finds the classes
of a real module. Helpers from zamqp.testhelpers are in every namespace.

It also defines the core suite (``pytest --core``, see ZOPE_TESTS).
"""
import os
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


# The test modules and documents that need Zope or Plone (the test and
# plone-test extras), relative to this directory. Their tests carry the
# marker ``zope``; so can single tests in other modules. ``pytest --core``
# runs the core suite, all other tests: it neither collects these files
# (they do not import without Zope) nor runs tests marked ``zope``.
# scripts/test also runs the core suite on the oldest and the newest
# Python, in virtualenvs with the core-test extra and without Zope: a
# core test that needs Zope fails there, it is not skipped.
ZOPE_TESTS = frozenset([
    'docs/content-events.rst',
    'docs/plone.rst',
    'docs/troubleshooting.rst',
    'docs/zope.rst',
    'src/zamqp/tests/test_api_docs.py',
    'src/zamqp/tests/test_confirms.py',
    'src/zamqp/tests/test_content_instances.py',
    'src/zamqp/tests/test_credentials.py',
    'src/zamqp/tests/test_layers.py',
    'src/zamqp/tests/test_lifecycle.py',
    'src/zamqp/tests/test_memory_layer.py',
    'src/zamqp/tests/test_plone.py',
    'src/zamqp/tests/test_plone_layers.py',
    'src/zamqp/tests/test_references.py',
    'src/zamqp/tests/test_startup_checks.py',
    'src/zamqp/tests/test_status_page.py',
    'src/zamqp/tests/test_status_report.py',
    'src/zamqp/tests/test_stream_cluster.py',
    'src/zamqp/tests/test_stream_faults.py',
    'src/zamqp/tests/test_stream_zope.py',
    'src/zamqp/tests/test_status_views.py',
    'src/zamqp/tests/test_stream_instances.py',
    'src/zamqp/tests/test_untyped_option.py',
    'src/zamqp/tests/test_zconsole.py',
    'src/zamqp/tests/test_zope_instances.py',
    'src/zamqp/tests/test_zope_options.py',
    'src/zamqp/tests/test_zope_shutdown.py',
    'src/zamqp/tests/test_zope_zcml.py',
    'src/zamqp/tests/test_zopecontext.py',
])
HERE = os.path.dirname(os.path.abspath(__file__))


def needs_zope(path):
    relative = os.path.relpath(str(path), HERE).replace(os.sep, '/')
    return relative in ZOPE_TESTS


def pytest_addoption(parser):
    parser.addoption(
        '--core', action='store_true',
        help='the core suite only: no test that needs Zope or Plone '
             '(ZOPE_TESTS in conftest.py and tests marked zope)')


def pytest_ignore_collect(collection_path, config):
    if config.getoption('core') and needs_zope(collection_path):
        return True
    return None


def pytest_collection_modifyitems(config, items):
    core, zope_tests = [], []
    for item in items:
        if needs_zope(item.path):
            item.add_marker(pytest.mark.zope)
        if item.get_closest_marker('zope') is None:
            core.append(item)
        else:
            zope_tests.append(item)
    if config.getoption('core') and zope_tests:
        config.hook.pytest_deselected(items=zope_tests)
        items[:] = core


def pytest_terminal_summary(terminalreporter, config):
    if config.getoption('core') and terminalreporter.stats.get('error'):
        terminalreporter.write_line(
            'If a test module did not import: the core suite (--core) '
            'imports every one but those of ZOPE_TESTS in conftest.py; a '
            'module that needs Zope or Plone belongs there (or its Zope '
            'tests, marked zope, import Zope inside the test).', red=True)
