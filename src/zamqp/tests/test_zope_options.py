"""Every ZCML attribute and every zope.conf key is understood or an error.

The options are declared once (zamqp.zope.schemas); these tests walk the
schemas, so an option added later is covered without a new test.
"""
import inspect
import os
import pickle
import unittest

import transaction
import zope.component
from OFS.Folder import Folder
from plone.testing import zca
from plone.testing import zodb
from plone.testing import zope as zope_layers
from zope.configuration import xmlconfig
from zope.configuration.config import ConfigurationExecutionError
from zope.configuration.exceptions import ConfigurationError
from zope.processlifetime import DatabaseOpenedWithRoot

from zamqp import AMQPConsumer
from zamqp.exceptions import ConfigurationError as ZAMQPConfigurationError
from zamqp.exceptions import UnpicklingRefused
from zamqp.interfaces import IAMQPProps
from zamqp.interfaces import IConsumerSpec
from zamqp.interfaces import IProducer
from zamqp.props import AMQPProps
from zamqp.tests.eventtypes import Ping
from zamqp.tests.test_zope_zcml import ProductConfig
from zamqp.unpickling import loads
from zamqp.zope import lifecycle
from zamqp.zope import schemas
from zamqp.zope import settings
from zamqp.zope.context import ZopeContextError
from zamqp.zope.spec import ConsumerSpec

TRUE_WORDS = ('true', 'yes', 'on', '1', 'TRUE', 'Yes', 'On')
FALSE_WORDS = ('false', 'no', 'off', '0', 'FALSE', 'No', 'Off')
NOT_BOOLEANS = ('maybe', 'y', 't', '2', 'oui', '')

HEAD = """<configure xmlns="http://namespaces.zope.org/zope"
    xmlns:zamqp="http://namespaces.zope.org/zamqp">
  <include package="zamqp" file="meta.zcml" />
  <zamqp:connection name="default" url="amqp://h/" />
"""
# directive -> the attributes it needs besides the one under test
DIRECTIVES = {
    'connection': (schemas.IConnectionDirective, 'name="other"'),
    'producer': (schemas.IProducerDirective, 'name="p"'),
    'consumer': (schemas.IConsumerDirective, 'name="c"'),
    'allow': (schemas.IAllowDirective, 'names="myapp.*"'),
}


def load(body):
    return xmlconfig.string(HEAD + body + '\n</configure>')


def booleans():
    for directive, (schema, _) in DIRECTIVES.items():
        for name in schema.names(all=True):
            if isinstance(schema[name], schemas.Bool):
                yield directive, name


class SandboxedRegistry(unittest.TestCase):

    def setUp(self):
        zca.pushGlobalRegistry()
        self.test_url = settings._test_url    # a test layer's, if any
        settings.set_test_url(None)

    def tearDown(self):
        zca.popGlobalRegistry()
        settings.set_test_url(self.test_url)

    def assertFails(self, body, *words):
        with self.assertRaises((ConfigurationError,
                                ConfigurationExecutionError)) as info:
            load(body)
        text = str(info.exception)
        for word in words:
            self.assertIn(word, text)
        return text


class TestBooleans(SandboxedRegistry):

    def test_every_boolean_is_a_strict_zcml_boolean(self):
        found = list(booleans())
        # ssl, verify, accept_unsigned, persistent, transactional, confirm,
        # mandatory, events, shared, durable, ack, enabled, signed
        self.assertGreaterEqual(len(found), 13)
        for directive, name in found:
            schema = DIRECTIVES[directive][0]
            self.assertIsInstance(schema[name], schemas.Bool, name)

    def test_every_boolean_takes_every_word(self):
        for directive, name in booleans():
            schema, needs = DIRECTIVES[directive]
            field = schema[name]
            for words, value in ((TRUE_WORDS, True), (FALSE_WORDS, False)):
                for word in words:
                    with self.subTest(directive=directive, name=name,
                                      word=word):
                        self.assertIs(field.fromUnicode(word), value)

    def test_every_boolean_refuses_other_words_with_file_and_line(self):
        for directive, name in booleans():
            _, needs = DIRECTIVES[directive]
            for word in NOT_BOOLEANS:
                with self.subTest(directive=directive, name=name, word=word):
                    text = self.assertFails(
                        f'<zamqp:{directive} {needs} {name}="{word}" />',
                        'line 5', name, 'is not a boolean', 'true/yes/on/1')
                    self.assertIn(repr(word), text)

    def read(self, body, interface, name):
        load(body)
        return zope.component.getUtility(interface, name)

    def test_ssl_yes_connects_with_tls(self):
        props = self.read('<zamqp:connection name="t" host="h" ssl="yes" />',
                          IAMQPProps, 't')
        self.assertTrue(props.ssl)
        self.assertTrue(props.verify)       # the default: verified

    def test_verify_yes_and_no(self):
        for word, value in (('yes', True), ('on', True), ('1', True),
                            ('no', False), ('off', False), ('0', False)):
            zca.pushGlobalRegistry()
            try:
                props = self.read(
                    f'<zamqp:connection name="t" host="h" ssl="true" '
                    f'verify="{word}" />', IAMQPProps, 't')
                self.assertEqual((props.ssl, props.verify), (True, value))
            finally:
                zca.popGlobalRegistry()

    def test_ssl_no_is_plain_text(self):
        props = self.read('<zamqp:connection name="t" host="h" ssl="no" />',
                          IAMQPProps, 't')
        self.assertFalse(props.ssl)

    def test_consumer_and_producer_booleans_reach_the_objects(self):
        load('<zamqp:producer name="p" transactional="no" '
             'persistent="yes" />\n'
             '<zamqp:consumer name="c" events="1" shared="yes" ack="on" '
             'durable="1" enabled="off" />')
        producer = zope.component.getUtility(IProducer, 'p')
        self.assertFalse(producer.transactional)
        self.assertEqual(producer.delivery_mode, 2)
        spec = zope.component.getUtility(IConsumerSpec, 'c')
        self.assertTrue(spec.events)
        self.assertEqual(
            {k: spec.options[k] for k in ('shared', 'ack', 'durable')},
            {'shared': True, 'ack': True, 'durable': True})
        self.assertFalse(spec.enabled)


class TestOneDeclaration(unittest.TestCase):
    """The schemas' names are the Python keywords."""

    def keywords(self, *callables):
        names = set()
        for function in callables:
            names |= set(inspect.signature(function).parameters)
        return names

    def test_connection_attributes_are_amqpprops_keywords(self):
        missing = set(settings.CONNECTION_FIELDS) - self.keywords(AMQPProps)
        self.assertEqual(missing, set())

    def test_consumer_attributes_are_spec_or_consumer_keywords(self):
        known = self.keywords(ConsumerSpec, AMQPConsumer) | {'connection'}
        missing = set(settings.CONSUMER_FIELDS) - known
        self.assertEqual(missing, set())

    def test_zope_conf_reads_with_the_zcml_fields(self):
        self.assertIs(settings.CONNECTION_FIELDS['ssl'],
                      schemas.IConnectionDirective['ssl'])
        self.assertIs(settings.CONSUMER_FIELDS['site'],
                      schemas.IConsumerDirective['site'])


def sample(field):
    """A valid text for ``field`` and the value it stands for."""
    if isinstance(field, schemas.Bool):
        return 'yes', True
    kind = type(field).__name__
    if kind == 'ExchangeType':
        return 'x-delayed-message', 'x-delayed-message'
    if kind == 'Int':
        low = field.min if field.min is not None else 1
        return str(low + 1), low + 1
    if kind == 'Float':
        return '2.5', 2.5
    if kind == 'Choice':
        value = [term.value for term in field.vocabulary][-1]
        return value, value
    if kind == 'Tokens':
        return 'a b', ['a', 'b']
    return 'text', 'text'


class TestZopeConfKeys(unittest.TestCase):

    def test_every_connection_and_consumer_key_is_read_by_its_field(self):
        for fields, prefix in ((settings.CONNECTION_FIELDS, ''),
                               (settings.CONNECTION_FIELDS, 'billing.'),
                               (settings.CONSUMER_FIELDS, 'consumer.c.')):
            for name, field in fields.items():
                text, value = sample(field)
                key = prefix + name
                with self.subTest(key=key):
                    settings.check(['default', 'billing'], ['c'],
                                   {key: text})
                    self.assertEqual(settings.convert(key, field, text),
                                     value)

    def test_typos_name_key_section_and_nearest(self):
        cases = {'pasword': 'password', 'urll': 'url',
                 'billing.hots': 'billing.hosts',
                 'consumer.c.sit': 'consumer.c.site',
                 'consumer.cc.site': 'consumer.c.site',
                 'prefx': 'prefix', 'consumer': 'consumers'}
        for key, nearest in cases.items():
            with self.subTest(key=key):
                with self.assertRaises(settings.ProductConfigError) as info:
                    settings.check(['default', 'billing'], ['c'],
                                   {key: 'x'})
                text = str(info.exception)
                self.assertIn(f'unknown key {key!r}', text)
                self.assertIn('<product-config zamqp> in zope.conf', text)
                self.assertIn(f"did you mean '{nearest}'?", text)

    def test_unknown_connection_and_consumer_are_named(self):
        with self.assertRaises(settings.ProductConfigError) as info:
            settings.check(['default'], ['c'], {'billing.host': 'h'})
        self.assertIn("no <zamqp:connection name='billing'>",
                      str(info.exception))
        with self.assertRaises(settings.ProductConfigError) as info:
            settings.check(['default'], ['c'], {'consumer.nope.site': '/'})
        self.assertIn("no <zamqp:consumer name='nope'>", str(info.exception))

    def test_bad_values_name_key_and_what_is_expected(self):
        cases = {'timeout': ('abc', 'a number'),
                 'port': ('0', 'at least 1'),
                 'heartbeat': ('-1', 'at least 0'),
                 'ssl': ('maybe', 'true/yes/on/1'),
                 'consumers': ('sometimes', 'true/yes/on/1'),
                 'consumer.c.prefetch': ('many', 'a whole number'),
                 'consumer.c.queue_type': ('stream', 'classic, quorum'),
                 'consumer.c.enabled': ('perhaps', 'false/no/off/0')}
        for key, (value, expected) in cases.items():
            with self.subTest(key=key):
                with self.assertRaises(settings.ProductConfigError) as info:
                    settings.check(['default'], ['c'], {key: value})
                text = str(info.exception)
                self.assertIn(f'{key} {value!r} is not valid', text)
                self.assertIn('zope.conf', text)
                self.assertIn(expected, text)

    def test_consumers_variable_is_strict(self):
        os.environ[settings.CONSUMERS_VARIABLE] = 'nah'
        try:
            with self.assertRaises(ZAMQPConfigurationError) as info:
                settings.consumers_enabled()
            self.assertIn(settings.CONSUMERS_VARIABLE, str(info.exception))
            os.environ[settings.CONSUMERS_VARIABLE] = 'Off'
            self.assertFalse(settings.consumers_enabled())
        finally:
            del os.environ[settings.CONSUMERS_VARIABLE]


class TestZopeConfInZCML(SandboxedRegistry):
    """zope.conf's section applied and checked when ZCML is executed."""

    def test_typo_stops_the_configuration(self):
        with ProductConfig(url='amqp://h/', pasword='secret'):
            text = self.assertFails('', "unknown key 'pasword'",
                                    "did you mean 'password'")
        self.assertNotIn('secret', text)

    def test_bad_value_stops_the_configuration(self):
        with ProductConfig(timeout='abc'):
            self.assertFails('', "timeout 'abc' is not valid", 'zope.conf')

    def test_connection_keys_win(self):
        with ProductConfig(**{'ssl': 'on', 'verify': 'off',
                              'heartbeat': '7', 'max_size': '0'}):
            load('')
        props = zope.component.getUtility(IAMQPProps, 'default')
        self.assertEqual((props.ssl, props.verify, props.heartbeat,
                          props.max_size), (True, False, 7, None))

    def test_consumer_keys_win(self):
        with ProductConfig(**{'consumer.c.site': '/plone',
                              'consumer.c.user': 'admin',
                              'consumer.c.enabled': 'off',
                              'consumer.c.prefetch': '5'}):
            load('<zamqp:consumer name="c" events="true" site="/zope" />')
        spec = zope.component.getUtility(IConsumerSpec, 'c')
        self.assertEqual((spec.site, spec.user, spec.enabled,
                          spec.options['prefetch']),
                         ('/plone', 'admin', False, 5))

    def test_handler_and_events_from_zope_conf_conflict(self):
        with ProductConfig(**{'consumer.c.events': 'yes'}):
            self.assertFails(
                '<zamqp:consumer name="c" '
                'handler="zamqp.tests.zcmltypes.record" />',
                "give handler or events='true', not both")

    def test_a_connection_cannot_be_named_consumer(self):
        self.assertFails('<zamqp:connection name="consumer" />',
                         'cannot be named', 'line 5')

    def test_allow_refusal_speaks_zcml(self):
        load('<zamqp:consumer name="c" events="true" />')
        spec = zope.component.getUtility(IConsumerSpec, 'c')
        with self.assertRaises(UnpicklingRefused) as info:
            loads(pickle.dumps(Ping('x')), spec.allow_rules())
        text = str(info.exception)
        self.assertIn("the allow attribute of <zamqp:consumer name='c'>",
                      text)
        self.assertIn('<zamqp:allow names="zamqp.tests.eventtypes.Ping"/>',
                      text)
        self.assertNotIn('AMQPConsumer', text)


class TestStartupChecks(unittest.TestCase):
    """At database open: zope.conf's keys, then every consumer's site and
    user, before any consumer starts."""

    layer = zope_layers.STARTUP

    def setUp(self):
        zca.pushGlobalRegistry()
        self.db = zodb.stackDemoStorage(self.layer['zodbDB'],
                                        name=self.id())
        connection = self.db.open()
        connection.root()['Application']._setObject('site', Folder('site'))
        transaction.commit()
        connection.close()

    def tearDown(self):
        lifecycle.stop()
        self.db.close()
        zca.popGlobalRegistry()

    def opened(self):
        lifecycle.database_opened(DatabaseOpenedWithRoot(self.db))

    def test_missing_site_stops_startup(self):
        load('<zamqp:consumer name="c" events="true" site="/nope" />')
        with self.assertRaises(ZopeContextError) as info:
            self.opened()
        text = str(info.exception)
        self.assertIn("<zamqp:consumer name='c'>", text)
        self.assertIn("site '/nope' not found", text)
        self.assertIn('consumer.c.site', text)
        self.assertEqual(lifecycle.running(), [])

    def test_missing_user_stops_startup(self):
        load('<zamqp:consumer name="c" events="true" site="/site" '
             'user="nobody" />')
        with self.assertRaises(ZopeContextError) as info:
            self.opened()
        self.assertIn("user 'nobody' not found", str(info.exception))

    def test_disabled_consumer_is_neither_checked_nor_started(self):
        load('<zamqp:consumer name="c" events="true" site="/nope" '
             'enabled="no" />\n'
             '<zamqp:consumer name="d" events="true" site="/site" />')
        with ProductConfig(**{'consumers': 'off'}):
            self.opened()
        self.assertEqual(lifecycle.running(), [])

    def test_unknown_key_stops_startup(self):
        load('<zamqp:consumer name="c" events="true" />')
        with ProductConfig(**{'consumer.c.sitee': '/site'}):
            with self.assertRaises(settings.ProductConfigError) as info:
                self.opened()
        self.assertIn("did you mean 'consumer.c.site'", str(info.exception))


class TestHintsInZCMLTerms(SandboxedRegistry):

    def test_core_errors_name_the_attribute(self):
        text = self.assertFails(
            '<zamqp:connection name="t" host="h" ssl="yes" '
            'ca_file="/no/such/ca.pem" />', 'line 5', 'the ca_file attribute')
        self.assertNotIn('AMQPProps(', text)
