"""The public API is typed: mypy sees its hints through py.typed.

mypy runs in a subprocess on two small user programs written to a
temporary directory, with the installed zamqp (the venv's site-packages,
no MYPYPATH, no source directory on the path): one that uses the API as
documented must check clean, one that misuses it must get exactly the
errors expected. Without py.typed mypy would not analyze zamqp at all
(missing library stubs or py.typed marker) and see none of them.
"""
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import zamqp

GOOD = '''\
import pathlib
import ssl
from typing import Any, List, Optional

from zamqp import AMQPConsumer, AMQPEvent, AMQPEventCallback
from zamqp import AMQPProducer, AMQPProps, AMQPThread, NotConfirmed
from zamqp import memory, metrics, runner

props = AMQPProps(url='memory://typing', exchange='x', type='topic',
                  heartbeat=30, connect_timeout=2.5, allow=['a.b', dict],
                  ca_file=pathlib.Path('ca.pem'),
                  ssl=ssl.create_default_context(), declare='passive',
                  hosts=['h1:5672', ('h2', 5673)], secret='s' * 32)
other: AMQPProps = props.replace(exchange='y')
url: str = AMQPProps.from_url('amqp://localhost/').url()
port: int = props.port
timeout: float = props.timeout
name: Optional[str] = props.memory

producer = AMQPProducer('q', props, confirm=True, confirm_timeout=5,
                        compression='zlib', declare=False, window=10)
message_id: str = producer({'a': 1}, routing_key='k', headers={'h': 1})
ids: List[str] = producer.publish_many([1, 2, 3])
with producer.batch() as batch:
    batch('x')
producer.flush(timeout=1.0)
state: Any = producer.status()['state']
try:
    producer.close()
except NotConfirmed as failure:
    missing: List[str] = failure.message_ids


def handle(body: Any) -> None:
    print(body)


def handle_message(body: Any, message: Any) -> None:
    print(body, message)


consumer = AMQPConsumer('q', props, handle, shared=True, prefetch=10,
                        queue_type='quorum', untyped='json')
AMQPConsumer('q', props, handle_message, pass_message=True)
AMQPConsumer('q', props, AMQPEventCallback(), dead_letter_exchange=None)
thread = AMQPThread(consumer, name='t')
thread.start(timeout=1)
stopped: bool = thread.stop(timeout=1.0)
sent: bool = AMQPEvent('q', props, {'x': 1}, serializer='json').publish()
started: AMQPThread = runner.create_consumer(props, 'q', allow=[dict])
runner.close()
text: str = metrics.render()
metrics.serve(0).stop()
memory.reset('typing')
count: int = memory.broker('typing').message_count('q')
'''

# line of BAD -> the error code mypy must report there
BAD = '''\
from zamqp import AMQPConsumer, AMQPProducer, AMQPProps, AMQPThread

props = AMQPProps(port='x')
AMQPProducer('q', props, confirm_timeout='slow')
producer = AMQPProducer('q', props)
producer.publish_later('x')
ids: int = producer('x')
AMQPConsumer('q', props, 'not a callback')
AMQPThread(AMQPConsumer('q', props, print)).stop(timeout='soon')
props.url(5672)
'''
EXPECTED = {3: 'arg-type', 4: 'arg-type', 6: 'attr-defined',
            7: 'assignment', 8: 'arg-type', 9: 'arg-type', 10: 'arg-type'}


def mypy(tmp_path, *files):
    """mypy's error lines for ``files``, with the installed zamqp."""
    assert importlib.util.find_spec('mypy') is not None, (
        'mypy is not installed: install the test (or core-test) extra')
    config = tmp_path / 'mypy.ini'
    config.write_text('[mypy]\n')
    env = {k: v for k, v in os.environ.items() if k != 'MYPYPATH'}
    result = subprocess.run(
        [sys.executable, '-m', 'mypy', '--config-file', str(config),
         '--cache-dir', str(tmp_path / 'cache'), '--show-error-codes',
         '--no-error-summary', '--no-pretty', *files],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.stdout.splitlines()


def test_installed_package_is_typed():
    """The package mypy finds has its py.typed marker."""
    package = pathlib.Path(zamqp.__file__).parent
    assert (package / 'py.typed').is_file()


def test_mypy_sees_the_hints(tmp_path):
    (tmp_path / 'good.py').write_text(GOOD)
    (tmp_path / 'bad.py').write_text(BAD)
    lines = mypy(tmp_path, 'good.py', 'bad.py')
    assert not [line for line in lines if line.startswith('good.py')], \
        '\n'.join(lines)
    found = {}
    for line in lines:
        match = re.match(r'bad\.py:(\d+): error: .*\[([a-z-]+)\]$', line)
        if match:
            found[int(match.group(1))] = match.group(2)
    assert found == EXPECTED, textwrap.indent('\n'.join(lines), '  ')
    text = '\n'.join(lines)
    assert '"port" to "AMQPProps" has incompatible type "str"' in text
    assert '"confirm_timeout" to "AMQPProducer"' in text
    assert '"AMQPProducer" has no attribute "publish_later"' in text
