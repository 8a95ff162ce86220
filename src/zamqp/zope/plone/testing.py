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
      of ``$ZAMQP_TEST_URL``. Settings the URL does not give (timeouts,
      secrets, limits) stay those of the ZCML.
    - *Nothing is left on the broker.* Every producer and consumer
      registered while the layer is set up, in any component registry
      stacked on it (a PloneSandboxLayer's, a test's), is recorded; at
      tear-down the layer deletes their exchanges, dead-letter exchanges
      and queues and shared queues that carry this run's prefix, also
      after the layers on top have popped their registries.
    - *No broker, no tests.* Without a broker at the test URL the
      layer's set-up fails at once with a message naming
      ``ZAMQP_TEST_URL``.

``ZAMQPPloneIntegrationTesting``, ``ZAMQPPloneFunctionalTesting``
    plone.app.testing's integration and functional layers that also
    (re)start every configured consumer for each test on that test's
    database, and stop them after it. Use the functional one when a
    consumer's handler must see what the test committed (consumers open
    their own database connections) or commits itself.
``ZAMQP_PLONE_INTEGRATION_TESTING``, ``ZAMQP_PLONE_FUNCTIONAL_TESTING``
    those on ``ZAMQP_PLONE_FIXTURE`` alone.

This module needs Plone (``pip install 'zamqp[plone]' plone.app.testing``);
``zamqp.zope.testing`` has the layers for plain Zope. Where that module
and ``zamqp.zope.settings`` have them, the layer uses their
``check_broker()`` and ``set_test_url()``; else its own equivalents
below.
"""
try:
    from App.config import getConfiguration
    from plone.app.testing import PLONE_FIXTURE
    from plone.app.testing import FunctionalTesting
    from plone.app.testing import IntegrationTesting
    from plone.app.testing import PloneSandboxLayer
except ImportError as exc:     # pragma: no cover (Plone is installed in CI)
    raise ImportError(
        'zamqp.zope.plone.testing needs Plone and plone.app.testing: '
        "pip install 'zamqp[plone]' plone.app.testing") from exc

import os
import uuid

import zope.event
from amqp import exceptions as amqp_errors
from zope.interface.interfaces import IRegistered
from zope.interface.registry import UtilityRegistration

from zamqp import events
from zamqp import testhelpers
from zamqp.interfaces import IConsumerSpec
from zamqp.interfaces import IProducer
from zamqp.props import AMQPProps
from zamqp.zope import lifecycle
from zamqp.zope import settings
from zamqp.zope import testing as zope_testing


def check_broker(layer_name, url=None):
    """Raise RuntimeError, naming ZAMQP_TEST_URL, unless the test broker
    accepts a connection (within ``Admin``'s connect timeout, 5 s)."""
    url = url or testhelpers.broker_url()
    variable = testhelpers.URL_VARIABLE
    try:
        props = AMQPProps(url=url)
    except Exception as exc:
        raise RuntimeError(f'{layer_name}: the broker URL in ${variable} '
                           f'is wrong: {exc}') from None
    try:
        testhelpers.Admin(url).close()
    except Exception as exc:
        source = (f'${variable}' if url == os.environ.get(variable)
                  else f'the default; set {variable} to use another')
        raise RuntimeError(
            f'{layer_name}: no RabbitMQ accepts connections at '
            f'{props.address}{props.virtual_host} (broker URL: {source}): '
            f'{type(exc).__name__}: {exc}. Start that broker or set '
            f'{variable}=amqp://user:password@host:port/vhost') from None


class PinnedBroker(dict):
    """``<product-config zamqp>`` as the layer gives it where
    ``settings.set_test_url`` is missing: ``url`` and ``<name>.url`` are
    the test broker's URL for every connection name (zope.conf's URL
    wins over ZCML), other keys those of the configuration found."""

    def __init__(self, url, found=None):
        super().__init__(found or {})
        self.url = url

    def __bool__(self):
        return True

    def __getitem__(self, key):
        if key == 'url' or key.endswith('.url'):
            return self.url
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key == 'url' or key.endswith('.url'):
            return self.url
        return super().get(key, default)


class Recorder:
    """Record every producer and consumer utility registered, in any
    registry, while it is installed (a zope.event subscriber: component
    registries notify ``Registered`` events through zope.event)."""

    def __init__(self):
        self.producers = []
        self.consumers = []

    def install(self):
        zope.event.subscribers.insert(0, self)

    def uninstall(self):
        while self in zope.event.subscribers:
            zope.event.subscribers.remove(self)

    def __call__(self, event):
        if not IRegistered.providedBy(event):
            return
        registration = event.object
        if not isinstance(registration, UtilityRegistration):
            return
        if registration.provided is IProducer:
            self.producers.append(registration.component)
        elif registration.provided is IConsumerSpec:
            self.consumers.append(registration.component)

    def names(self, prefix):
        """(exchanges, queues) of the recorded utilities whose names
        carry ``prefix``: names of other runs, or not made from ZCML
        names, are never touched."""
        exchanges, queues = set(), set()
        for producer in self.producers:
            props = getattr(producer, 'props', None)
            exchanges.add(getattr(props, 'exchange', None))
        for spec in self.consumers:
            exchanges.add(spec.props.exchange)
            if spec.options.get('shared'):
                queues.add(spec.queue)
            try:
                dead = spec.create().dead_letter_exchange
            except Exception:       # a spec that cannot make a consumer
                dead = None
            if dead:
                exchanges.add(dead)
                queues.add(dead)    # declared with a queue of its name

        def ours(name):
            return isinstance(name, str) and name.startswith(prefix)

        return ({n for n in exchanges if ours(n)},
                {n for n in queues if ours(n)})


def delete(exchanges, queues):
    """Delete ``exchanges`` and ``queues`` on the test broker; absent
    ones are no error."""
    if not (exchanges or queues):
        return
    admin = testhelpers.Admin()
    try:
        for method, names in (('queue_delete', queues),
                              ('exchange_delete', exchanges)):
            for name in sorted(names):
                try:
                    getattr(admin.channel, method)(name)
                except amqp_errors.ChannelError:    # 404, 405: leave it
                    admin.channel = admin.connection.channel()
    finally:
        admin.close()


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
        name = self.__name__ or type(self).__name__
        if hasattr(zope_testing, 'check_broker'):   # the Zope layers' own
            zope_testing.check_broker()
        else:
            check_broker(name)
        self._recorder = Recorder()
        self._recorder.install()
        self._config = getConfiguration()
        self._found = getattr(self._config, 'product_config', None)
        if hasattr(settings, 'set_test_url'):
            settings.set_test_url(testhelpers.broker_url())
        else:
            product_config = dict(self._found or {})
            product_config['zamqp'] = PinnedBroker(
                testhelpers.broker_url(), product_config.get('zamqp'))
            self._config.product_config = product_config
        self['zamqpPrefix'] = f'zamqp.test.{uuid.uuid4().hex[:8]}.'
        settings.set_prefix(self['zamqpPrefix'])
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
        # stop the consumers, close the producers and delete the
        # exchanges of this layer's registry while it is the current one
        zope_testing.release()

    def tearDown(self):
        prefix = self['zamqpPrefix']
        try:
            super().tearDown()
            # and what the registries stacked on this one declared
            delete(*self._recorder.names(prefix))
        finally:
            self._restore()
            del self['zamqpPrefix']

    def _restore(self):
        self._recorder.uninstall()
        self._config.product_config = self._found
        if hasattr(settings, 'set_test_url'):
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
