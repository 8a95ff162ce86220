"""plone.app.testing layers for Plone add-ons that use zamqp.

``ZAMQP_PLONE_FIXTURE``
    plone.app.testing's ``PLONE_FIXTURE`` (a Plone site ``/plone``) with
    zamqp's ZCML loaded and the ``default`` connection on the broker of
    ``$ZAMQP_TEST_URL``, every exchange and shared queue declared in
    ZCML prefixed with a name of this run. On top of it, load your
    add-on in a ``PloneSandboxLayer`` as usual::

        class ShopLayer(PloneSandboxLayer):
            defaultBases = (ZAMQP_PLONE_FIXTURE,)

            def setUpZope(self, app, configurationContext):
                import shop
                self.loadZCML(package=shop)

        SHOP_FIXTURE = ShopLayer()
        SHOP_FUNCTIONAL_TESTING = ZAMQPPloneFunctionalTesting(
            bases=(SHOP_FIXTURE,), name='shop:Functional')

    What this layer guarantees to the layers on top of it:

    - *The test broker wins.* Every ``<zamqp:connection>`` loaded after
      this layer (your add-on's own, of any name) connects to the broker
      of ``$ZAMQP_TEST_URL`` (``zamqp.zope.settings.set_test_url``).
      Settings the URL does not give (timeouts, secrets, limits) stay
      those of the ZCML.
    - *Nothing is left on the broker.* At tear-down the layer deletes
      the exchanges and queues of every name this run's prefix made
      (``zamqp.zope.testing.release``), also those declared in the
      registries of the layers on top, which they popped before.
    - *No broker, no tests.* Without a broker at the test URL the
      layer's set-up fails at once with a message naming
      ``ZAMQP_TEST_URL`` (``zamqp.zope.testing.check_broker``).

``ZAMQPPloneIntegrationTesting``, ``ZAMQPPloneFunctionalTesting``
    plone.app.testing's integration and functional layers that also
    (re)start every configured consumer for each test on that test's
    database, and stop them after it. Use the functional one when a
    consumer's handler must see what the test committed (consumers open
    their own database connections) or commits itself.
``ZAMQP_PLONE_INTEGRATION_TESTING``, ``ZAMQP_PLONE_FUNCTIONAL_TESTING``
    those on ``ZAMQP_PLONE_FIXTURE`` alone.

This module needs Plone (``pip install 'zamqp[plone]' plone.app.testing``);
``zamqp.zope.testing`` has the layers for plain Zope.
"""
try:
    from plone.app.testing import PLONE_FIXTURE
    from plone.app.testing import FunctionalTesting
    from plone.app.testing import IntegrationTesting
    from plone.app.testing import PloneSandboxLayer
except ImportError as exc:     # pragma: no cover (Plone is installed in CI)
    raise ImportError(
        'zamqp.zope.plone.testing needs Plone and plone.app.testing: '
        "pip install 'zamqp[plone]' plone.app.testing") from exc

import uuid

from zamqp import events
from zamqp import testhelpers
from zamqp.zope import lifecycle
from zamqp.zope import settings
from zamqp.zope import testing as zope_testing


class ZAMQPPloneFixture(PloneSandboxLayer):
    """zamqp on plone.app.testing's Plone site fixture (see the module's
    documentation): the test broker wins over the ZCML of layers on top,
    and what they declared is deleted from the broker at tear-down.

    A PloneSandboxLayer: a DemoStorage, configuration context and global
    registry of its own (the site's component registry based on it).
    Subclasses may override ``setUpZAMQP(context)`` to load ZCML, and
    ``setUpPloneSite(portal)``.
    """

    defaultBases = (PLONE_FIXTURE,)

    def setUp(self):
        zope_testing.check_broker()     # fails at once, naming the variable
        self['zamqpPrefix'] = f'zamqp.test.{uuid.uuid4().hex[:8]}.'
        settings.set_prefix(self['zamqpPrefix'])
        settings.set_test_url(testhelpers.broker_url())
        try:
            super().setUp()
        except BaseException:
            self._restore()
            raise

    def setUpZope(self, app, configurationContext):
        zope_testing.load_zamqp(configurationContext)
        self.setUpZAMQP(configurationContext)

    def setUpZAMQP(self, context):
        """Hook for subclasses: load ZCML into ``context``."""

    def tearDownPloneSite(self, portal):
        # stop the consumers, close the producers, delete the exchanges
        # and queues of every name the run's prefix made (those of the
        # registries stacked on this one too), while this layer's
        # registry is still the current one
        zope_testing.release()

    def tearDown(self):
        try:
            super().tearDown()
        finally:
            self._restore()
            del self['zamqpPrefix']

    def _restore(self):
        settings.set_test_url(None)
        settings.set_prefix(None)


class _ConsumersPerTest:
    """Mixin of the testing layers: every configured consumer runs
    during each test, on that test's database."""

    def testSetUp(self):
        super().testSetUp()
        lifecycle.stop()
        lifecycle.start(self['zodbDB'])
        lifecycle.wait()

    def testTearDown(self):
        lifecycle.stop()
        events.close_producers()
        super().testTearDown()


class ZAMQPPloneIntegrationTesting(_ConsumersPerTest, IntegrationTesting):
    """plone.app.testing's IntegrationTesting with the consumers running
    during each test (they see only what is committed)."""


class ZAMQPPloneFunctionalTesting(_ConsumersPerTest, FunctionalTesting):
    """plone.app.testing's FunctionalTesting with the consumers running
    during each test, on the test's own database."""


ZAMQP_PLONE_FIXTURE = ZAMQPPloneFixture(name='ZAMQP_PLONE_FIXTURE')
ZAMQP_PLONE_INTEGRATION_TESTING = ZAMQPPloneIntegrationTesting(
    bases=(ZAMQP_PLONE_FIXTURE,), name='zamqp.plone:Integration')
ZAMQP_PLONE_FUNCTIONAL_TESTING = ZAMQPPloneFunctionalTesting(
    bases=(ZAMQP_PLONE_FIXTURE,), name='zamqp.plone:Functional')
