"""A real Zope instance refuses to start with a zope.conf key or a
consumer site that zamqp does not understand, and says which."""
import shutil
import tempfile
import time

import pytest

from zamqp.testhelpers import broker_url
from zamqp.testhelpers import unique
from zamqp.tests.test_zope_instances import Instance
from zamqp.tests.test_zope_instances import read
from zamqp.tests.zopeaddon import amqp_zcml

pytestmark = pytest.mark.slow
#: Seconds an instance that refuses its configuration may take to exit.
REFUSE_TIMEOUT = 60


@pytest.fixture
def root():
    path = tempfile.mkdtemp(prefix='zamqp-startup-')
    yield path
    shutil.rmtree(path, ignore_errors=True)


def refused(root, settings=(), **zcml):
    """Start an instance; return (exit status, seconds, its output)."""
    instance = Instance(root, 'refusing')
    instance.create(amqp_zcml(unique('zamqp.test.startup'), **zcml),
                    broker_url(), settings)
    instance.start()
    try:
        status = instance.process.wait(REFUSE_TIMEOUT)
    finally:
        instance.kill()
    return status, time.monotonic() - instance.launched, \
        read(instance.stdout)


def test_typo_in_zope_conf_stops_the_instance(root):
    status, took, output = refused(root, ['pasword not-this-one'])
    assert status != 0
    assert "unknown key 'pasword'" in output, output[-3000:]
    assert "did you mean 'password'" in output
    assert 'not-this-one' not in output
    print(f'refused in {took:.1f} s')


def test_missing_site_stops_the_instance(root):
    status, took, output = refused(root, site='/nope')
    assert status != 0
    assert "site '/nope' not found" in output, output[-3000:]
    assert "<zamqp:consumer name='addon.store'>" in output
