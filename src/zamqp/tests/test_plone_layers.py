"""zamqp and Plone's own machinery: plone.autoinclude finds zamqp, the
Plone test layer fails fast without a broker and leaves nothing on the
broker after tear-down, zamqp imports without Plone."""
import json
import os
import subprocess
import sys
import time
import unittest

import zope.component
import zope.event
from plone.app.testing import PLONE_FIXTURE
from plone.base.interfaces import IPloneSiteRoot
from plone.testing import Layer
from plone.testing import zca
from zope.configuration import xmlconfig
from zope.interface import Interface
from zope.publisher.interfaces.browser import IDefaultBrowserLayer
from zope.processlifetime import IDatabaseOpenedWithRoot

from zamqp.exceptions import ConnectionFailed
from zamqp.testhelpers import URL_VARIABLE
from zamqp.testhelpers import free_port
from zamqp.zope import lifecycle
from zamqp.zope import settings
from zamqp.zope.plone.testing import ZAMQPPloneFixture

#: What Products.CMFPlone's meta.zcml and configure.zcml do outside
#: tests (plone.app.testing's PLONE_FIXTURE turns it off with the
#: ``disable-autoinclude`` feature).
AUTOINCLUDE_ZCML = """\
<configure xmlns="http://namespaces.zope.org/zope">
  <include package="plone.autoinclude" file="meta.zcml" />
  <autoIncludePlugins target="plone" file="meta.zcml" />
  <autoIncludePlugins target="plone" file="configure.zcml" />
</configure>
"""

ZAMQP_DIRECTIVE = """\
<configure xmlns:zamqp="http://namespaces.zope.org/zamqp">
  <zamqp:allow names="zamqp.tests.autoincluded.*" />
</configure>
"""


def registries(registry):
    """``registry`` and all its bases, depth first."""
    yield registry
    for base in registry.__bases__:
        yield from registries(base)


def zamqp_loaded():
    """Whether zamqp's configure.zcml is in the current registry (or a
    base of it): its subscriber that starts the consumers."""
    return any(
        registration.handler is lifecycle.database_opened
        and IDatabaseOpenedWithRoot in registration.required
        for registry in registries(zope.component.getGlobalSiteManager())
        for registration in registry.registeredHandlers())


class AutoincludeFixture(Layer):
    """A Plone (PLONE_FIXTURE, no zamqp) whose add-ons are loaded by
    plone.autoinclude, as a Plone instance loads them."""

    defaultBases = (PLONE_FIXTURE,)

    def setUp(self):
        self['zamqpBefore'] = zamqp_loaded()
        zca.pushGlobalRegistry()
        self['configurationContext'] = context = \
            zca.stackConfigurationContext(self.get('configurationContext'),
                                          name='autoinclude')
        context._features.discard('disable-autoinclude')
        xmlconfig.string(AUTOINCLUDE_ZCML, context=context)

    def tearDown(self):
        lifecycle.stop()
        del self['configurationContext']
        zca.popGlobalRegistry()
        del self['zamqpBefore']


AUTOINCLUDE_FIXTURE = AutoincludeFixture(name='zamqp.tests:Autoinclude')


class TestAutoinclude(unittest.TestCase):

    layer = AUTOINCLUDE_FIXTURE

    def test_plone_alone_does_not_load_zamqp(self):
        self.assertFalse(self.layer['zamqpBefore'])

    def test_autoinclude_loads_zamqps_subscribers(self):
        self.assertTrue(zamqp_loaded())

    def test_autoinclude_loads_zamqps_directives(self):
        context = zca.stackConfigurationContext(
            self.layer['configurationContext'], name='directive')
        zca.pushGlobalRegistry()
        try:
            xmlconfig.string(ZAMQP_DIRECTIVE, context=context)  # no error
        finally:
            zca.popGlobalRegistry()

    def test_autoinclude_loads_the_plone_part(self):
        view = zope.component.getGlobalSiteManager().adapters.lookup(
            (IPloneSiteRoot, IDefaultBrowserLayer), Interface,
            'zamqp-controlpanel')
        self.assertIsNotNone(view)
        from Products.GenericSetup import profile_registry
        info = profile_registry.getProfileInfo('zamqp.zope.plone:default')
        self.assertEqual(info['product'], 'zamqp.zope.plone')


class TestFailFast(unittest.TestCase):
    """No broker at ZAMQP_TEST_URL: the layer's set-up fails at once,
    before it changed anything."""

    def test_unreachable_broker(self):
        url = f'amqp://guest:guest@127.0.0.1:{free_port()}/'
        layer = ZAMQPPloneFixture(name='zamqp.tests:NoBroker')
        subscribers = list(zope.event.subscribers)
        old = os.environ.get(URL_VARIABLE)
        os.environ[URL_VARIABLE] = url
        try:
            started = time.monotonic()
            with self.assertRaises(ConnectionFailed) as caught:
                layer.setUp()
            elapsed = time.monotonic() - started
        finally:
            if old is None:
                del os.environ[URL_VARIABLE]
            else:
                os.environ[URL_VARIABLE] = old
        self.assertIn(URL_VARIABLE, str(caught.exception))
        self.assertLess(elapsed, 5.5)
        self.assertEqual(zope.event.subscribers, subscribers)
        self.assertEqual(settings.prefixed('x'), 'x')   # no prefix set
        self.assertRaises(KeyError, layer.__getitem__, 'zamqpPrefix')


#: Sets up an add-on layer on ZAMQP_PLONE_FIXTURE (a PloneSandboxLayer
#: with a producer, a broadcast and a shared consumer), uses the broker,
#: tears the layers down; prints what existed on the broker during and
#: after the run.
LEAK_SCRIPT = r'''
import json, sys, transaction
from amqp import exceptions
from plone.app.testing import PloneSandboxLayer
from zope.configuration import xmlconfig
import zope.component
from zamqp.interfaces import IProducer
from zamqp.testhelpers import Admin, wait_for
from zamqp.zope import lifecycle
from zamqp.zope.plone.testing import ZAMQP_PLONE_FIXTURE

ZCML = """
<configure xmlns:zamqp="http://namespaces.zope.org/zamqp">
  <zamqp:producer name="leak" exchange="leak.events" />
  <zamqp:consumer name="leak.events" exchange="leak.events" />
  <zamqp:consumer name="leak.work" exchange="leak.work" shared="true" />
</configure>"""

class Addon(PloneSandboxLayer):
    defaultBases = (ZAMQP_PLONE_FIXTURE,)
    def setUpZope(self, app, configurationContext):
        xmlconfig.string(ZCML, context=configurationContext)

ADDON = Addon(name='Addon')
layers = []
def add(layer):                 # bases first, each once
    for base in layer.__bases__:
        add(base)
    if layer not in layers:
        layers.append(layer)
add(ADDON)
for layer in layers:
    layer.setUp()
prefix = ADDON['zamqpPrefix']
names = {'exchange': [prefix + n for n in
                      ('leak.events', 'leak.work', 'leak.work.dead')],
         'queue': [prefix + n for n in ('leak.work', 'leak.work.dead')]}

def present():
    admin = Admin()
    found = []
    try:
        for kind, listed in names.items():
            for name in listed:
                try:
                    if kind == 'exchange':
                        admin.channel.exchange_declare(name, 'fanout',
                                                       passive=True)
                    else:
                        admin.channel.queue_declare(name, passive=True)
                    found.append(name)
                except exceptions.NotFound:
                    admin.channel = admin.connection.channel()
    finally:
        admin.close()
    return sorted(found)

lifecycle.start(ADDON['zodbDB'])
assert lifecycle.wait(), lifecycle.status()
zope.component.getUtility(IProducer, 'leak')({'n': 1})
transaction.commit()
wait_for(lambda: len(present()) == 5)
during = present()
for layer in reversed(layers):
    layer.tearDown()
print(json.dumps({'during': during, 'after': present(),
                  'names': sorted(sum(names.values(), []))}))
'''


class TestNoLeak(unittest.TestCase):
    """After tear-down, no exchange or queue of the run is left (the
    add-on layer on top popped its registry first)."""

    def test_run_in_a_process_of_its_own(self):
        result = subprocess.run(
            [sys.executable, '-c', LEAK_SCRIPT], capture_output=True,
            text=True, timeout=240)
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        report = json.loads(result.stdout.strip().splitlines()[-1])
        self.assertEqual(report['during'], report['names'])   # it can fail
        self.assertEqual(report['after'], [])


#: Imports zamqp, its Zope part and the plone package with Plone hidden
#: (plone.testing stays: zamqp.zope.testing needs it), loads zamqp's
#: ZCML; the Plone test layers then say what they need.
NO_PLONE_SCRIPT = r'''
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(('plone.app', 'plone.base', 'plone.dexterity',
                            'Products.CMFPlone', 'Products.CMFCore')):
            raise ImportError(f'hidden: {name}')
sys.meta_path.insert(0, Hide())
import zamqp, zamqp.zope, zamqp.zope.testing, zamqp.zope.plone
from zope.configuration import xmlconfig
from zope.configuration.config import ConfigurationMachine
from zope.configuration.xmlconfig import registerCommonDirectives
context = ConfigurationMachine()
registerCommonDirectives(context)
xmlconfig.file('configure.zcml', zamqp.zope, context=context)
try:
    import zamqp.zope.plone.testing
except ImportError as exc:
    print('testing:', exc)
'''


class TestWithoutPlone(unittest.TestCase):

    def test_imports_and_zcml_without_plone(self):
        result = subprocess.run(
            [sys.executable, '-c', NO_PLONE_SCRIPT], capture_output=True,
            text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        self.assertIn("testing: zamqp.zope.plone.testing needs Plone",
                      result.stdout)

    def test_plain_zope_with_plone_installed_loads_no_plone_part(self):
        """Plone installed but its ZCML not loaded (a plain Zope
        instance in the same environment): zamqp's ZCML leaves its Plone
        part out (it needs Plone 6's feature plone-60)."""
        import zamqp.zope
        context = zca.stackConfigurationContext(None, name='plain')
        registry = zca.pushGlobalRegistry()
        try:
            xmlconfig.file('configure.zcml', zamqp.zope, context=context)
            # what this load registered (not what layers set up below
            # this registry have)
            handlers = [r.handler for r in registry.registeredHandlers()]
            self.assertIn(lifecycle.database_opened, handlers)
            self.assertEqual(
                [r.name for r in registry.registeredAdapters()
                 if r.name == 'zamqp-controlpanel'], [])
        finally:
            zca.popGlobalRegistry()
