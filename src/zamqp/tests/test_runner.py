"""zamqp.runner: one event consumer thread per process."""
import os
import subprocess
import sys
import time

import zope.event

from zamqp import AMQPEvent
from zamqp import runner
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import wait_for
from zamqp.testhelpers import zamqp_threads
from zamqp.tests import listener
from zamqp.tests.eventtypes import Ping


def test_create_consumer_notifies_events(props, pings, no_leaked_threads):
    thread = runner.create_consumer(props, 'run', allow=[Ping])
    assert thread.is_alive() and thread.daemon
    assert runner._thread is thread
    zope.event.notify(AMQPEvent('run', props, Ping('a')))
    assert wait_for(lambda: pings == [Ping('a')])
    runner.close()
    assert not thread.is_alive()
    assert runner._thread is None


def test_create_consumer_again_replaces(make_props, pings, admin,
                                        no_leaked_threads):
    props = make_props(type='direct')   # routes by queue name
    first = runner.create_consumer(props, 'run', allow=[Ping])
    second = runner.create_consumer(props, 'run2', allow=[Ping])
    assert not first.is_alive()
    assert second.is_alive()
    assert set(zamqp_threads()) == {second, second.worker}
    assert wait_for(
        lambda: not admin.queue_exists(first.consumer.queue_name))
    zope.event.notify(AMQPEvent('run', props, Ping('old')))
    zope.event.notify(AMQPEvent('run2', props, Ping('new')))
    assert wait_for(lambda: pings == [Ping('new')])
    time.sleep(0.2)
    assert pings == [Ping('new')]
    runner.close()
    # the events' producer keeps a keeper thread until its last confirm
    assert wait_for(lambda: zamqp_threads() == [], timeout=1)


def test_close_without_consumer_is_harmless():
    runner.close()
    runner.close()


def test_close_twice(props, no_leaked_threads):
    runner.create_consumer(props, 'run')
    runner.close()
    runner.close()


def test_process_exits_promptly_and_queue_goes(props, admin):
    process = subprocess.Popen(
        [sys.executable, listener.__file__, 'runner', broker_url(),
         props.exchange, 'run-exit', '1', '20'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED='1'))
    try:
        line = process.stdout.readline()
        assert line.startswith('READY '), process.stderr.read()
        queue_name = line.split()[1]
        assert admin.queue_exists(queue_name)
        zope.event.notify(AMQPEvent('run-exit', props, Ping('bye')))
        assert process.stdout.readline().strip() == '{"ping": "bye"}'
        # main() has returned, the consumer thread is still running:
        # the exit must stop it and close its connection
        begin = time.monotonic()
        out, err = process.communicate(timeout=10)
        assert time.monotonic() - begin < 5
        assert process.returncode == 0, err
        assert out.splitlines() == ['{"threads at exit": []}']
        assert 'Traceback' not in err, err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert wait_for(lambda: not admin.queue_exists(queue_name), timeout=2)
