"""Private RabbitMQ nodes for fault tests: start, stop, kill -9, clusters.

Each node has its own name, ports and data directory under a temporary
directory, so the shared broker (rabbit@localhost, port 5672) is never
touched. Every call is bounded by a timeout; ``cleanup()`` stops what is
left (kill -9 if need be) and removes the directories.
"""
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

from zamqp.testhelpers import free_port

SERVER = '/usr/sbin/rabbitmq-server'
CTL = '/usr/sbin/rabbitmqctl'
USER = 'rabbitmq'
START_TIMEOUT = 40.0
CTL_TIMEOUT = 30.0
LIFETIME = 900.0    # a node's watchdog kills it after this many seconds

# Kills the node (found by its RABBITMQ_NODENAME) once the test process
# is gone or LIFETIME passed, so no node outlives a killed test run.
WATCHDOG = """
import os, sys, time
parent, node, deadline = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
sys.path.insert(0, sys.argv[4])
from brokers import PrivateBroker
while time.time() < deadline:
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        break
    time.sleep(1)
PrivateBroker.kill_node(node)
"""


#: Figures the fault tests measured; conftest shows them again at the end.
FIGURES = []


def report(line):
    """Print a measured figure and keep it for the end of the run."""
    FIGURES.append(line)
    print(line)


def missing():
    """True where private nodes cannot be started and that is acceptable:
    RabbitMQ is not installed here and this is not CI (scripts/test
    installs it when it starts a broker; CI must run these tests)."""
    return not available() and not os.environ.get('CI')


def available():
    """True if a private node can be started here (RabbitMQ installed)."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return os.path.exists(SERVER) and os.path.exists(CTL)


def port_open(port, timeout=0.2):
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=timeout):
            return True
    except OSError:
        return False


def _chown(path):
    entry = pwd.getpwnam(USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)


class PrivateBroker:
    """One RabbitMQ node of the tests' own, e.g. ``zamqptest-1a2b@localhost``.

    ``start()`` waits until the AMQP port listens; ``kill()`` is kill -9 of
    the Erlang VM; ``stop()`` the orderly ``rabbitmqctl stop``. The data
    directory is kept between stops, so durable queues and persistent
    messages survive a restart.

    ``tls`` (optional) turns on a TLS listener on a port of its own
    (``tls_port``): a dict of RabbitMQ ``ssl_options`` (``cacertfile``,
    ``certfile``, ``keyfile`` as paths, which are copied into the node's
    directory; ``verify``, ``fail_if_no_peer_cert`` ...), see
    tests/certs.py ``Certificates.broker_options``.

    ``config`` (optional) adds settings to rabbitmq.conf: a dict (``{key:
    value}``, booleans written as true/false) or lines of text, e.g.
    ``{'consumer_timeout': 3000}``. ``advanced`` (optional) is the text of
    an advanced.config (Erlang terms, for settings rabbitmq.conf cannot
    set), e.g. ``'[{rabbit, [{channel_tick_interval, 1000}]}].'``; it is
    passed with RABBITMQ_ADVANCED_CONFIG_FILE.
    """

    def __init__(self, base=None, name=None, tls=None, config=None,
                 advanced=None):
        self._own_base = base is None
        self.base = base or tempfile.mkdtemp(prefix='zamqp-brokers-')
        _chown(self.base)
        self.name = name or f'zamqptest-{uuid.uuid4().hex[:8]}'
        self.node = f'{self.name}@localhost'
        self.port = free_port()
        self.dist_port = free_port()
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.config = config
        self.advanced = advanced
        self.dir = os.path.join(self.base, self.name)
        self._prepare()

    @property
    def url(self):
        return f'amqp://guest:guest@127.0.0.1:{self.port}/'

    @property
    def address(self):
        return f'127.0.0.1:{self.port}'

    def _prepare(self):
        for sub in ('', 'mnesia', 'log'):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
            _chown(os.path.join(self.dir, sub))
        self._write('enabled_plugins', '[].\n')
        self._write('rabbitmq.conf', 'loopback_users = none\n'
                    'log.console = false\nlog.file.level = warning\n'
                    + self._tls_config() + self._extra_config())
        if self.advanced:
            self._write('advanced.config', self.advanced.rstrip() + '\n')

    def _extra_config(self):
        """The rabbitmq.conf lines given as ``config`` ('' without)."""
        config = self.config
        if not config:
            return ''
        if isinstance(config, str):
            return config.rstrip('\n') + '\n'
        lines = []
        for key, value in config.items():
            if isinstance(value, bool):
                value = str(value).lower()
            lines.append(f'{key} = {value}')
        return '\n'.join(lines) + '\n'

    def _tls_config(self):
        """rabbitmq.conf lines of the TLS listener ('' without one)."""
        if not self.tls:
            return ''
        lines = [f'listeners.ssl.default = {self.tls_port}']
        for key, value in self.tls.items():
            if key in ('cacertfile', 'certfile', 'keyfile'):
                value = self._copy(value)
            elif isinstance(value, bool):
                value = str(value).lower()
            lines.append(f'ssl_options.{key} = {value}')
        return '\n'.join(lines) + '\n'

    def _copy(self, path):
        """Copy ``path`` where the rabbitmq user may read it."""
        os.makedirs(os.path.join(self.dir, 'tls'), exist_ok=True)
        _chown(os.path.join(self.dir, 'tls'))
        target = os.path.join(self.dir, 'tls', os.path.basename(path))
        shutil.copyfile(path, target)
        _chown(target)
        return target

    def _write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, 'w') as f:
            f.write(text)
        _chown(path)

    def env(self):
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=os.path.join(self.dir, 'mnesia'),
            RABBITMQ_LOG_BASE=os.path.join(self.dir, 'log'),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(
                self.dir, 'enabled_plugins'),
            RABBITMQ_CONFIG_FILE=os.path.join(self.dir, 'rabbitmq.conf'),
        )
        if self.advanced:
            env['RABBITMQ_ADVANCED_CONFIG_FILE'] = os.path.join(
                self.dir, 'advanced.config')
        return env

    # life cycle

    def launch(self):
        """Start the node in the background; ``wait()`` for it to listen."""
        subprocess.run([SERVER, '-detached'], env=self.env(), cwd=self.dir,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=CTL_TIMEOUT, check=True)
        subprocess.Popen(
            [sys.executable, '-c', WATCHDOG, str(os.getpid()), self.node,
             str(time.time() + LIFETIME), os.path.dirname(__file__)],
            start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    def wait(self, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_open(self.port) and \
                    (self.tls_port is None or port_open(self.tls_port)):
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f'{self.node} did not listen on {self.port} '
                           f'within {timeout:.0f} s; logs in {self.dir}/log')

    def start(self, timeout=START_TIMEOUT):
        self.launch()
        return self.wait(timeout)

    def pids(self):
        """Process ids of this node's Erlang VM (found by its name)."""
        return self.node_pids(self.node)

    @staticmethod
    def kill_node(node):
        for pid in PrivateBroker.node_pids(node):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    @staticmethod
    def node_pids(node):
        found = []
        needle = b'RABBITMQ_NODENAME=' + node.encode()
        for entry in os.listdir('/proc'):
            if not entry.isdigit():
                continue
            try:
                with open(f'/proc/{entry}/cmdline', 'rb') as f:
                    program = f.read().split(b'\0')[0]
                if not program.endswith(b'beam.smp'):
                    continue
                with open(f'/proc/{entry}/environ', 'rb') as f:
                    environ = f.read().split(b'\0')
            except OSError:
                continue
            if needle in environ:
                found.append(int(entry))
        return found

    def kill(self, timeout=10.0):
        """kill -9 the node and wait until its port is closed."""
        self.kill_node(self.node)
        deadline = time.monotonic() + timeout
        while (self.pids() or port_open(self.port)) and \
                time.monotonic() < deadline:
            time.sleep(0.05)

    def ctl(self, *args, timeout=CTL_TIMEOUT, check=True):
        return subprocess.run(
            [CTL, '-n', self.node, *args], env=self.env(), cwd=self.dir,
            capture_output=True, text=True, timeout=timeout, check=check)

    def stop(self, timeout=CTL_TIMEOUT):
        """Stop the node in order; kill -9 if that does not work in time."""
        if not self.pids():
            return
        try:
            self.ctl('stop', timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def restart(self):
        self.stop()
        return self.start()

    def cleanup(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._own_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def __repr__(self):
        return f'<PrivateBroker {self.node} port {self.port}>'


class Cluster:
    """``size`` private nodes joined into one cluster (node 0 first).

    Nodes start in parallel; then each other node runs ``stop_app``,
    ``join_cluster`` with node 0 and ``start_app``.
    """

    def __init__(self, size=2):
        self.base = tempfile.mkdtemp(prefix='zamqp-cluster-')
        _chown(self.base)
        tag = uuid.uuid4().hex[:6]
        self.nodes = [PrivateBroker(self.base, f'zamqptest-{tag}-{i}')
                      for i in range(size)]

    def start(self):
        try:
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node.wait()
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl('stop_app')
                node.ctl('join_cluster', first.node)
                node.ctl('start_app')
                node.wait()
        except BaseException:
            self.cleanup()
            raise
        return self

    def running_nodes(self):
        out = self.nodes[0].ctl('cluster_status', '--formatter', 'json')
        return json.loads(out.stdout).get('running_nodes', [])

    @property
    def addresses(self):
        return [node.address for node in self.nodes]

    def cleanup(self):
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.base, ignore_errors=True)
