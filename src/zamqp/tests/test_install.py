"""The README's installs on a fresh environment: ``pip install zamqp``
gives a core that works without Zope; ``pip install zamqp[zope]`` gives
an instance that starts with ``runwsgi`` and its stock zope.ini."""
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from zamqp.testhelpers import broker_url
from zamqp.testhelpers import free_port
from zamqp.tests import brokers

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

CORE = '''
import importlib, importlib.util, os, pkgutil, sys
import zamqp
# package data from the wheel (pyproject.toml, MANIFEST.in)
here = os.path.dirname(zamqp.__file__)
for name in ('py.typed', 'configure.zcml', 'meta.zcml',
             'zope/browser/report.pt',
             'zope/plone/profiles/default/metadata.xml'):
    assert os.path.isfile(os.path.join(here, name)), name
def absent(name):
    try:
        return importlib.util.find_spec(name) is None
    except ModuleNotFoundError:
        return True
for name in ('Zope2', 'App', 'zope.configuration', 'zope.schema',
             'transaction', 'plone.testing'):
    assert absent(name), name
skipped = {'zamqp.zope', 'zamqp.tests', 'zamqp.testing'}
for info in pkgutil.walk_packages(zamqp.__path__, 'zamqp.',
                                  onerror=lambda name: None):
    if not any(info.name == s or info.name.startswith(s + '.')
               for s in skipped):
        importlib.import_module(info.name)
try:
    import zamqp.zope
except ImportError as exc:
    assert "pip install 'zamqp[zope]'" in str(exc), exc
else:
    raise AssertionError('zamqp.zope imported without Zope')
from zamqp import AMQPConsumer, AMQPProducer, AMQPProps, AMQPThread
import uuid, time
props = AMQPProps(url=sys.argv[1], exchange='zamqp.test.install.'
                  + uuid.uuid4().hex[:8])
got = []
thread = AMQPThread(AMQPConsumer('install', props, got.append))
thread.start()
with AMQPProducer('install', props) as producer:
    producer({'core': 'works'})
deadline = time.monotonic() + 10
while not got and time.monotonic() < deadline:
    time.sleep(0.05)
thread.stop()
from zamqp import AMQPConnection
with AMQPConnection('install', props) as connection:
    connection.channel.exchange_delete(props.exchange)
assert got == [{'core': 'works'}], got
print('core ok')
'''

ZCML = '''<configure xmlns="http://namespaces.zope.org/zope"
    xmlns:zamqp="http://namespaces.zope.org/zamqp">
  <include package="zamqp" />
  <zamqp:connection />
</configure>
'''


def fresh_venv(path, requirement):
    """A new venv at ``path`` with ``requirement`` pip-installed; its
    python and the seconds the install took."""
    subprocess.run([sys.executable, '-m', 'venv', str(path)], check=True,
                   timeout=120)
    python = str(path / 'bin' / 'python')
    began = time.monotonic()
    done = subprocess.run([python, '-m', 'pip', 'install', '-q',
                           requirement], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return python, time.monotonic() - began


def clean_env():
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
    env.pop('ZAMQP_CONSUMERS', None)
    return env


def test_core_installs_and_works_without_zope(tmp_path):
    python, took = fresh_venv(tmp_path / 'core', ROOT)
    done = subprocess.run([python, '-c', CORE, broker_url()],
                          capture_output=True, text=True, timeout=120,
                          env=clean_env(), cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'core ok' in done.stdout
    # the console script, zamqp.cli:main (click is a dependency)
    done = subprocess.run([os.path.join(os.path.dirname(python), 'zamqp'),
                           '--help'], capture_output=True, text=True,
                          timeout=60, env=clean_env(), cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith('Usage: zamqp'), done.stdout
    brokers.report(f'pip install zamqp (fresh venv): {took:.0f} s')


def test_zope_extra_starts_an_instance_with_runwsgi(tmp_path):
    python, took = fresh_venv(tmp_path / 'zope', f'{ROOT}[zope]')
    brokers.report(f"pip install 'zamqp[zope]' (fresh venv): {took:.0f} s")
    bin_dir = os.path.dirname(python)
    home = tmp_path / 'instance'
    env = clean_env()
    subprocess.run([os.path.join(bin_dir, 'mkwsgiinstance'), '-d',
                    str(home), '-u', 'admin:admin'], check=True, env=env,
                   timeout=120, stdout=subprocess.DEVNULL)
    includes = home / 'etc' / 'package-includes'
    includes.mkdir(exist_ok=True)
    (includes / 'zamqp-configure.zcml').write_text(ZCML)
    with open(home / 'etc' / 'zope.conf', 'a') as conf:
        conf.write(f'\n<product-config zamqp>\n  url {broker_url()}\n'
                   '</product-config>\n')
    port = free_port()
    ini = home / 'etc' / 'zope.ini'
    text, count = re.subn(r'(?m)^port = \d+$', f'port = {port}',
                          ini.read_text())
    assert count == 1 and 'translogger' in text   # the stock pipeline
    ini.write_text(text)
    log = open(tmp_path / 'runwsgi.log', 'w')
    process = subprocess.Popen(
        [os.path.join(bin_dir, 'runwsgi'), str(ini)], stdout=log,
        stderr=subprocess.STDOUT, env=env, cwd=str(home),
        start_new_session=True)
    try:
        status = serving(port, process)
    finally:
        process.terminate()
        process.wait(20)
        log.close()
    output = (tmp_path / 'runwsgi.log').read_text()
    assert status == 200, output
    assert 'PackageNotFoundError' not in output, output


def serving(port, process, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f'runwsgi exited: {process.returncode}'
        try:
            with urllib.request.urlopen(f'http://127.0.0.1:{port}/',
                                        timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f'runwsgi did not answer within {timeout} s')
