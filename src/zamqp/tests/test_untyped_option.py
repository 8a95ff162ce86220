"""The untyped policy as a ZCML attribute and a zope.conf key."""
import zope.component

from zamqp.interfaces import IConsumerSpec
from zamqp.tests.test_zope_options import SandboxedRegistry
from zamqp.tests.test_zope_options import load
from zamqp.tests.test_zope_zcml import ProductConfig


class TestUntyped(SandboxedRegistry):

    def decoder(self):
        return zope.component.getUtility(IConsumerSpec, 'c').create().decoder

    def test_default_refuses(self):
        load('<zamqp:consumer name="c" />')
        self.assertEqual(self.decoder().untyped, 'refuse')

    def test_zcml_attribute(self):
        for value in ('refuse', 'json', 'bytes'):
            with self.subTest(value=value):
                load(f'<zamqp:consumer name="c" untyped="{value}" />')
                self.assertEqual(self.decoder().untyped, value)

    def test_zope_conf_key_wins(self):
        with ProductConfig(**{'consumer.c.untyped': 'bytes'}):
            load('<zamqp:consumer name="c" untyped="json" />')
        self.assertEqual(self.decoder().untyped, 'bytes')

    def test_unknown_policy_is_an_error(self):
        self.assertFails('<zamqp:consumer name="c" untyped="text" />',
                         'untyped', 'text')
        with ProductConfig(**{'consumer.c.untyped': 'yaml'}):
            self.assertFails('<zamqp:consumer name="c" />',
                             "consumer.c.untyped 'yaml' is not valid",
                             'zope.conf')

    def test_json_needs_json_accepted(self):
        load('<zamqp:consumer name="c" untyped="json" accept="pickle" />')
        spec = zope.component.getUtility(IConsumerSpec, 'c')
        with self.assertRaises(Exception) as info:
            spec.create()
        self.assertIn("'json' is not in accept=", str(info.exception))
