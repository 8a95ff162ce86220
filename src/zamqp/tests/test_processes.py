"""Broadcasts and remote events reach consumers in other processes."""
import json
import os
import subprocess
import sys

import pytest
import zope.event

from zamqp import AMQPEvent
from zamqp import AMQPProducer
from zamqp.testhelpers import broker_url
from zamqp.tests import listener
from zamqp.tests.eventtypes import Ping

TIMEOUT = 20


class Listener:
    """listener.py in a process of its own."""

    def __init__(self, mode, props, queue, count, timeout=TIMEOUT):
        self.process = subprocess.Popen(
            [sys.executable, listener.__file__, mode, broker_url(),
             props.exchange, queue, str(count), str(timeout)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED='1'))

    def ready(self):
        """Wait for the READY line; return the consumer's queue name."""
        line = self.process.stdout.readline()
        if not line.startswith('READY '):
            self.process.kill()
            _, err = self.process.communicate()
            pytest.fail(f'listener did not start: {line!r} {err}')
        return line.split()[1]

    def results(self):
        """Wait for the exit; return the JSON lines printed."""
        out, err = self.process.communicate(timeout=TIMEOUT + 10)
        assert self.process.returncode == 0, err
        return [json.loads(line) for line in out.splitlines()]

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def spawn():
    started = []

    def spawn(*args, **kw):
        started.append(Listener(*args, **kw))
        return started[-1]

    yield spawn
    for process in started:
        process.kill()


def test_broadcast_to_two_processes(props, spawn):
    listeners = [spawn('messages', props, 'procs', 3) for _ in range(2)]
    names = [each.ready() for each in listeners]
    assert names[0] != names[1]      # each process has a queue of its own
    producer = AMQPProducer('procs', props)
    sent = ['one', {'two': 2}, [3, 'three']]
    for message in sent:
        producer(message)
    for each in listeners:
        assert each.results() == sent


def test_remote_event_to_two_processes(props, spawn):
    listeners = [spawn('events', props, 'procs-ev', 2) for _ in range(2)]
    for each in listeners:
        each.ready()
    zope.event.notify(AMQPEvent('procs-ev', props, Ping('first')))
    zope.event.notify(AMQPEvent('procs-ev', props, Ping('second')))
    for each in listeners:
        assert each.results() == [{'ping': 'first'}, {'ping': 'second'}]


def test_listener_times_out_without_messages(props, spawn):
    each = spawn('messages', props, 'procs', 1, timeout=0.5)
    each.ready()
    assert each.results() == []
