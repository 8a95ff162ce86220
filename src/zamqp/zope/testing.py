"""plone.testing layers for tests of code that uses zamqp.

``ZAMQP_FIXTURE``
    Loads zamqp's ZCML in a sandboxed component registry, declares the
    ``default`` connection to the broker of ``$ZAMQP_TEST_URL`` (default
    ``amqp://guest:guest@127.0.0.1:5672/``) and prefixes every exchange
    and shared queue declared in ZCML with a name of this run, so parallel
    runs do not see each other's messages. Load your ZCML in a layer on
    top, into ``self['configurationContext']``. At tear-down consumers
    stop and the run's exchanges are deleted.
``ZAMQP_INTEGRATION_TESTING``
    Starts the configured consumers before each test, stops them after.
``ZAMQP_MEMORY_FIXTURE``, ``ZAMQP_MEMORY_INTEGRATION_TESTING``
    The same on an in-process broker of the layer's own (``memory://``,
    see zamqp.memory and docs/memory.rst): no RabbitMQ is needed, and
    tear-down resets that broker. Other layers choose their broker by
    overriding ``brokerURL()``.
``ZAMQP_ZOPE_FIXTURE``
    The same on plone.testing's Zope ``STARTUP`` layer. STARTUP notifies
    ``DatabaseOpenedWithRoot`` before add-on ZCML is loaded, so this layer
    notifies it again once zamqp is loaded: consumers declared by then
    start with the test database. Subclass ``ZAMQPZopeFixture`` and
    override ``setUpZAMQP`` to load your ZCML before that.
``ZAMQP_ZOPE_INTEGRATION_TESTING``, ``ZAMQP_ZOPE_FUNCTIONAL_TESTING``
    plone.testing's Zope integration and functional layers on top, with
    every configured consumer (re)started for each test on that test's
    database (functional: a database of the test's own, so what handlers
    commit does not leak into the next test).
"""
import uuid
import warnings

import zope.component
import zope.event
from amqp.exceptions import AMQPError
from amqp.exceptions import NotFound
from amqp.exceptions import ResourceLocked
from plone.testing import Layer
from plone.testing import zca
from zope.configuration import xmlconfig

import zamqp.zope
from zamqp import events
from zamqp import memory
from zamqp import testhelpers
from zamqp.exceptions import ConnectionFailed
from zamqp.interfaces import IConsumerSpec
from zamqp.interfaces import IProducer
from zamqp.props import AMQPProps
from zamqp.zope import lifecycle
from zamqp.zope import settings

CONNECTION_ZCML = """\
<configure xmlns:zamqp="http://namespaces.zope.org/zamqp">
  <zamqp:connection url="{url}" />
</configure>
"""


def load_zamqp(context, url=None):
    """Load zamqp's ZCML and a ``default`` connection into ``context``."""
    install_registry_dispatch()
    xmlconfig.file('configure.zcml', zamqp.zope, context=context)
    url = url or testhelpers.broker_url()
    xmlconfig.string(CONNECTION_ZCML.format(url=url), context=context)


def install_registry_dispatch():
    """Make zope.event notify through the component registry, as Zope
    does (``zca.ZCML_DIRECTIVES`` alone does not)."""
    from zope.component.event import dispatch
    if dispatch not in zope.event.subscribers:
        zope.event.subscribers.append(dispatch)


def configured_exchanges():
    """Exchanges of the producers and consumers in the current registry,
    and the consumers' dead-letter exchanges (each with a queue of its
    name)."""
    names = {p.props.exchange
             for _, p in zope.component.getUtilitiesFor(IProducer)}
    dead = set()
    for _, spec in zope.component.getUtilitiesFor(IConsumerSpec):
        names.add(spec.props.exchange)
        dead.add(spec.create().dead_letter_exchange)
    return names, dead - {None}


def check_broker(url=None):
    """Raise ConnectionFailed, naming ``$ZAMQP_TEST_URL``, unless the
    test broker (``url``, default: that of $ZAMQP_TEST_URL) accepts a
    connection within 5 seconds."""
    url = url or testhelpers.broker_url()
    if AMQPProps(url=url).memory is not None:
        return          # in this process: always there
    try:
        testhelpers.Admin(url).close()
    except (OSError, AMQPError) as exc:
        raise ConnectionFailed(
            f'zamqp test layer: no broker at {AMQPProps(url=url).url()} '
            f'({type(exc).__name__}: {exc}): start RabbitMQ there, or set '
            f'{testhelpers.URL_VARIABLE}=amqp://user:password@host:port/'
            'vhost to the broker the tests may use') from None


def release(url=None):
    """Stop consumers, close producers, delete this run's exchanges and
    queues: those of the current registry and every name the run's
    prefix made (also those an add-on's layer on top declared in a
    registry of its own). A ``memory://`` broker (``url``) is reset
    instead."""
    lifecycle.stop()
    events.close_producers()
    for _, producer in zope.component.getUtilitiesFor(IProducer):
        producer.close()
    name = AMQPProps(url=url).memory if url else None
    if name is not None:
        memory.reset(name)
        lifecycle.restore_sigterm()
        return
    exchanges, dead_letters = configured_exchanges()
    names = settings.prefixed_names()
    exchanges |= names | {f'{name}.dead' for name in names}
    queues = dead_letters | names | {f'{name}.dead' for name in names}
    try:
        admin = testhelpers.Admin()
    except (OSError, AMQPError) as exc:
        warnings.warn(f'zamqp test layer: the broker went away ({exc}); '
                      f'not deleted: {sorted(exchanges | queues)}')
    else:
        try:
            for name in sorted(exchanges | dead_letters):
                _delete(admin, 'exchange_delete', name)
            for name in sorted(queues):
                _delete(admin, 'queue_delete', name)
        finally:
            admin.close()
    lifecycle.restore_sigterm()


def _delete(admin, method, name):
    """Delete the exchange or queue ``name``; one that is not there, or
    an exclusive queue of another connection, is left alone."""
    try:
        getattr(admin.channel, method)(name)
    except (NotFound, ResourceLocked):
        admin.channel = admin.connection.channel()


class ZAMQPFixture(Layer):
    """zamqp's ZCML in a sandboxed registry, on a prefix of this run.

    setUp fails at once, naming ``$ZAMQP_TEST_URL``, when the broker is
    not reachable. Every connection configured under this layer (also an
    add-on's own ``<zamqp:connection>``) connects to the test broker.
    """

    defaultBases = (zca.ZCML_DIRECTIVES,)

    def brokerURL(self):
        """The URL of the broker every connection uses (a hook)."""
        return testhelpers.broker_url()

    def setUp(self):
        url = self['zamqpURL'] = self.brokerURL()
        check_broker(url)
        self['zamqpPrefix'] = f'zamqp.test.{uuid.uuid4().hex[:8]}.'
        settings.set_prefix(self['zamqpPrefix'])
        settings.set_test_url(url)
        zca.pushGlobalRegistry()
        self['configurationContext'] = context = \
            zca.stackConfigurationContext(self.get('configurationContext'))
        try:
            load_zamqp(context, url)
            self.setUpZAMQP(context)
        except BaseException:
            self.tearDown()
            raise

    def setUpZAMQP(self, context):
        """Hook for subclasses: load ZCML into ``context``."""

    def tearDown(self):
        try:
            release(self.get('zamqpURL'))
        finally:
            del self['configurationContext']
            zca.popGlobalRegistry()
            settings.set_prefix(None)
            settings.set_test_url(None)


class ConsumersPerTest(Layer):
    """Every configured consumer runs during each test, on its database."""

    def testSetUp(self):
        lifecycle.stop()
        lifecycle.start(self.get('zodbDB'))
        lifecycle.wait()

    def testTearDown(self):
        lifecycle.stop()
        events.close_producers()


ZAMQP_FIXTURE = ZAMQPFixture()
ZAMQP_INTEGRATION_TESTING = ConsumersPerTest(
    bases=(ZAMQP_FIXTURE,), name='zamqp.testing:Integration')


class ZAMQPMemoryFixture(ZAMQPFixture):
    """ZAMQP_FIXTURE on an in-process broker of the layer's own
    (``memory://``, zamqp.memory): no RabbitMQ needed; reset at
    tear-down."""

    def brokerURL(self):
        return f'memory://zamqp.layer.{uuid.uuid4().hex[:8]}'


ZAMQP_MEMORY_FIXTURE = ZAMQPMemoryFixture()
ZAMQP_MEMORY_INTEGRATION_TESTING = ConsumersPerTest(
    bases=(ZAMQP_MEMORY_FIXTURE,), name='zamqp.testing:MemoryIntegration')

try:
    from plone.testing import zope as zope_layers
except ImportError:     # Zope is not installed: no Zope layers
    zope_layers = None


if zope_layers is not None:

    class ZAMQPZopeFixture(ZAMQPFixture):
        """zamqp on Zope's STARTUP layer; consumers get its database."""

        defaultBases = (zope_layers.STARTUP,)

        def setUp(self):
            from zope.processlifetime import DatabaseOpenedWithRoot
            super().setUp()
            zope.event.notify(DatabaseOpenedWithRoot(self['zodbDB']))
            lifecycle.wait()

    ZAMQP_ZOPE_FIXTURE = ZAMQPZopeFixture()
    ZAMQP_ZOPE_INTEGRATION_TESTING = ConsumersPerTest(
        bases=(zope_layers.IntegrationTesting(
            bases=(ZAMQP_ZOPE_FIXTURE,),
            name='zamqp.testing:ZopeIntegrationBase'),),
        name='zamqp.testing:ZopeIntegration')
    ZAMQP_ZOPE_FUNCTIONAL_TESTING = ConsumersPerTest(
        bases=(zope_layers.FunctionalTesting(
            bases=(ZAMQP_ZOPE_FIXTURE,),
            name='zamqp.testing:ZopeFunctionalBase'),),
        name='zamqp.testing:ZopeFunctional')
