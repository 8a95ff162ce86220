"""Publish on commit in a ``zconsole run`` script: a broadcast notified
before anything began a transaction goes on commit, never on abort."""
import os
import shutil
import subprocess
import tempfile
import textwrap

import pytest

from zamqp import AMQPConsumer
from zamqp import AMQPThread
from zamqp.testhelpers import Admin
from zamqp.testhelpers import broker_props
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests.test_zope_instances import Instance
from zamqp.tests.test_zope_instances import command
from zamqp.tests.test_zope_instances import environment
from zamqp.tests.zopeaddon import amqp_zcml
from zamqp.tests.zopeaddon import events as addon_events

pytestmark = pytest.mark.slow

SCRIPT = '''
import transaction
import zope.event
from zamqp.tests.zopeaddon.events import Noted
zope.event.notify(Noted({text!r}))
transaction.{end}()
'''


@pytest.fixture
def instance():
    root = tempfile.mkdtemp(prefix='zamqp-zconsole-')
    exchange = unique('zamqp.test.zconsole')
    made = Instance(root, 'console')
    made.create(amqp_zcml(exchange), broker_url())
    made.exchange = exchange
    yield made
    shutil.rmtree(root, ignore_errors=True)
    admin = Admin()
    admin.delete_exchange(exchange)
    admin.close()


def run(instance, text, end):
    path = os.path.join(instance.home, f'{end}.py')
    with open(path, 'w') as script:
        script.write(textwrap.dedent(SCRIPT.format(text=text, end=end)))
    env = dict(environment(), ZAMQP_CONSUMERS='off')
    done = subprocess.run(
        command('zconsole', 'Zope2.utilities.zconsole')
        + ['run', instance.etc('zope.conf'), path],
        env=env, cwd=instance.home, capture_output=True, text=True,
        timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_script_publishes_on_commit_only(instance):
    got = []
    props = broker_props(exchange=instance.exchange, allow=[addon_events])
    listener = AMQPThread(AMQPConsumer('zconsole', props, got.append))
    listener.start()
    try:
        run(instance, 'aborted', 'abort')
        run(instance, 'committed', 'commit')
        assert wait_for(lambda: got, timeout=10)
        assert [event.text for event in got] == ['committed']
    finally:
        listener.stop()
