"""zamqp's test layers: fail fast without a broker, their broker wins,
nothing of a run is left on the broker."""
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
import transaction
import zope.component
from amqp.exceptions import NotFound
from plone.testing import zca
from zope.configuration import xmlconfig

from zamqp.exceptions import ConnectionFailed
from zamqp.interfaces import IAMQPProps
from zamqp.interfaces import IProducer
from zamqp.props import AMQPProps
from zamqp.testhelpers import Admin
from zamqp.testhelpers import URL_VARIABLE
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import free_port
from zamqp.testing import ZAMQPFixture
from zamqp.zope import settings

ADDON = """<configure xmlns="http://namespaces.zope.org/zope"
    xmlns:zamqp="http://namespaces.zope.org/zamqp">
  <zamqp:connection name="billing" url="amqp://u:p@billing.example:5999/b" />
  <zamqp:producer name="orders" connection="billing" exchange="orders" />
  <zamqp:consumer name="work" connection="billing" exchange="orders"
                  shared="yes" />
</configure>"""


@pytest.fixture
def nowhere(monkeypatch):
    url = f'amqp://guest:hush@127.0.0.1:{free_port()}/'
    monkeypatch.setenv(URL_VARIABLE, url)
    return url


def exists(admin, kind, name):
    try:
        if kind == 'exchange':
            admin.channel.exchange_declare(name, 'fanout', passive=True)
        else:
            admin.channel.queue_declare(name, passive=True)
    except NotFound:
        admin.channel = admin.connection.channel()
        return False
    return True


def test_setup_fails_fast_naming_the_variable(nowhere):
    registry = zope.component.getGlobalSiteManager()
    began = time.monotonic()
    with pytest.raises(ConnectionFailed) as info:
        ZAMQPFixture(name='test:NoBroker').setUp()
    took = time.monotonic() - began
    text = str(info.value)
    assert URL_VARIABLE in text and 'no broker at' in text
    assert 'hush' not in text
    assert took < 6
    assert zope.component.getGlobalSiteManager() is registry
    assert settings.prefixed('x') == 'x'


def test_layer_broker_wins_and_addon_layer_leaves_nothing():
    layer = ZAMQPFixture(name='test:Leaks')
    layer.setUp()
    admin = Admin()
    try:
        # an add-on's layer on top, with a registry of its own (as
        # PloneSandboxLayer does), declaring its own connection
        zca.pushGlobalRegistry()
        xmlconfig.string(ADDON, context=zca.stackConfigurationContext(
            layer['configurationContext']))
        billing = zope.component.getUtility(IAMQPProps, 'billing')
        test_broker = AMQPProps(url=broker_url())
        assert (billing.host, billing.port, billing.virtual_host) == (
            test_broker.host, test_broker.port, test_broker.virtual_host)
        producer = zope.component.getUtility(IProducer, 'orders')
        transaction.begin()
        producer({'n': 1})
        transaction.commit()
        producer.flush()
        from zamqp.zope import lifecycle
        lifecycle.start()
        lifecycle.wait()
        exchange = producer.props.exchange
        queue = layer['zamqpPrefix'] + 'work'
        assert exists(admin, 'exchange', exchange)
        assert exists(admin, 'queue', queue)
        lifecycle.stop()
        producer.close()
        zca.popGlobalRegistry()     # the add-on layer's tearDown
    finally:
        layer.tearDown()
    try:
        assert not exists(admin, 'exchange', exchange)
        assert not exists(admin, 'queue', queue)
        assert not exists(admin, 'exchange', exchange + '.dead')
    finally:
        admin.close()


SUITE = '''
import unittest
from zamqp.testing import ZAMQP_INTEGRATION_TESTING

class T(unittest.TestCase):
    layer = ZAMQP_INTEGRATION_TESTING

    def test_one(self):
        pass
'''


def test_runner_without_broker_fails_once_without_teardown_traceback(
        tmp_path, nowhere):
    (tmp_path / 'tests.py').write_text(textwrap.dedent(SUITE))
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(tmp_path)] + sys.path))
    began = time.monotonic()
    run = subprocess.run(
        [sys.executable, '-W', 'error::ResourceWarning', '-m',
         'zope.testrunner', '--test-path', str(tmp_path),
         '--exit-with-status'],
        capture_output=True, text=True, env=env, timeout=120)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert URL_VARIABLE in output, output
    assert not re.search(r'(?m)^\s*(ConnectionRefusedError|OSError)',
                         output), output         # no raw error of its own
    assert output.count('Traceback') <= 1, output
    assert 'tearDown' not in output, output
    assert time.monotonic() - began < 60
