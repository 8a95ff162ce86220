"""The demo: separate listener processes get a broadcast and a zope event."""
import os
import re
import subprocess
import sys

import pytest
from amqp import exceptions as amqp_errors

from zamqp.testhelpers import broker_url


def test_demo_listeners_receive_broadcast_and_event():
    env = dict(os.environ, ZAMQP_URL=broker_url())
    result = subprocess.run(
        [sys.executable, '-m', 'zamqp.demo'], env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for name in ('alice', 'bob'):
        assert f"[{name}] broadcast message received: 'Hello, everyone!'" \
            in output
        assert f'[{name}] zope event received: Greeting(' in output
    assert 'OK: every listener (alice, bob) received' in output


def test_demo_deletes_its_exchanges(admin):
    env = dict(os.environ, ZAMQP_URL=broker_url())
    result = subprocess.run(
        [sys.executable, '-m', 'zamqp.demo', 'ann', 'bob', 'cid'], env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    run = re.search(r'zamqp demo, run (\w+),', result.stdout).group(1)
    for kind in ('broadcast', 'events'):
        with pytest.raises(amqp_errors.NotFound):
            admin.channel.exchange_declare(
                f'zamqp.demo.{run}.{kind}', 'fanout', passive=True)
        admin.channel = admin.connection.channel()


def test_catch_up_demo_reader_gets_what_it_missed(admin):
    env = dict(os.environ, ZAMQP_URL=broker_url())
    result = subprocess.run(
        [sys.executable, '-m', 'zamqp.demo', 'catch-up'], env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    second = output[output.index('3. alice starts again'):]
    assert re.findall(r"offset (\d+): '(news \d)'", second) == [
        ('1', 'news 2'), ('2', 'news 3'), ('3', 'news 4')]
    assert 'reading the stream from position 0' in second
    run = re.search(r'run (\w+),', output).group(1)
    with pytest.raises(amqp_errors.NotFound):
        admin.channel.queue_declare(f'zamqp.demo.{run}.stream',
                                    passive=True)
    admin.channel = admin.connection.channel()
