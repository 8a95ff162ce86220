"""The ``zamqp`` command, run as ``python -m zamqp`` in subprocesses,
against the test broker ($ZAMQP_TEST_URL); the permission checks that
must be refused run on a private node with a restricted user."""
import json
import os
import pickle
import pty
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import amqp
import pytest

from zamqp import workerconfig
from zamqp.testhelpers import Admin
from zamqp.testhelpers import broker_url
from zamqp.testhelpers import free_port
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests import brokers

TIMEOUT = 60


def command(*args):
    return [sys.executable, '-m', 'zamqp', '--url', broker_url(), *args]


def run(*args, input=None, env=None, url=True, timeout=TIMEOUT):
    argv = command(*args) if url else [sys.executable, '-m', 'zamqp', *args]
    environment = dict(os.environ, **(env or {}))
    return subprocess.run(argv, input=input, capture_output=True, text=True,
                          env=environment, timeout=timeout)


def one_error_line(result, code=None):
    """The single ``zamqp: error:`` line of a failed run."""
    assert result.returncode != 0, result
    if code is not None:
        assert result.returncode == code, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('zamqp: error: '), result.stderr
    assert 'Traceback' not in result.stderr
    return lines[0]


class Process:
    """A ``zamqp`` subprocess whose stderr lines are collected as they
    come (to wait for its "listening" line)."""

    def __init__(self, *args, env=None):
        self.began = time.monotonic()
        self.popen = subprocess.Popen(
            command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=dict(os.environ, **(env or {})))
        self.lines = queue.Queue()
        self.stderr = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.popen.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def wait_for_line(self, word, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.popen.poll() is not None and self.lines.empty():
                    break
                continue
            if word in line:
                return line
        raise AssertionError(f'no {word!r} line; stderr: '
                             f'{"".join(self.stderr)}')

    def finish(self, timeout=30):
        """(exit status, stdout lines, stderr text)."""
        out = self.popen.stdout.read() if timeout else ''
        code = self.popen.wait(timeout)
        self.reader.join(5)
        return code, out.splitlines(), ''.join(self.stderr)

    def kill(self):
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


@pytest.fixture
def exchange(admin):
    name = unique('zamqp.test.cli')
    yield name
    admin.delete_exchange(name)


@pytest.fixture
def processes():
    started = []
    yield started.append
    for process in started:
        process.kill()


def listener(processes, *args):
    process = Process('listen', *args)
    processes(process)
    process.wait_for_line('listening')
    return process


# send and listen


def test_send_and_listen_between_two_processes(exchange, processes):
    listening = listener(processes, '-e', exchange, '--count', '3',
                         '--timeout', '30')
    sent = run('send', '-e', exchange, '-H', 'origin=test', '{"id": 1}',
               '"two"', '[3, null]')
    assert sent.returncode == 0, sent.stderr
    assert 'sent 3 message(s)' in sent.stderr
    code, out, err = listening.finish()
    assert code == 0, err
    records = [json.loads(line) for line in out]
    assert [r['body'] for r in records] == [{'id': 1}, 'two', [3, None]]
    assert records[0]['exchange'] == exchange
    assert records[0]['properties']['application_headers'] == {
        'origin': 'test'}
    assert records[0]['properties']['content_type'] == 'application/json'
    assert '--count 3 reached: received 3 message(s)' in err


def test_send_reads_json_lines_from_stdin(exchange, processes):
    listening = listener(processes, '-e', exchange, '-n', '3', '-t', '30')
    sent = run('send', '-e', exchange, '-', input='1\n\n{"a": 2}\n"x"\n')
    assert sent.returncode == 0, sent.stderr
    code, out, _ = listening.finish()
    assert code == 0
    assert [json.loads(line)['body'] for line in out] == [1, {'a': 2}, 'x']


def test_topic_routing_keys(exchange, processes):
    listening = listener(processes, '-e', exchange, '--type', 'topic',
                         '-k', 'orders.eu.*', '-n', '1', '-t', '30')
    for key in 'orders.us.ny', 'orders.eu.fr':
        assert run('send', '-e', exchange, '--type', 'topic', '-k', key,
                   json.dumps(key)).returncode == 0
    code, out, _ = listening.finish()
    assert code == 0
    assert [json.loads(line)['routing_key'] for line in out] == [
        'orders.eu.fr']


def test_headers_exchange(exchange, processes):
    listening = listener(processes, '-e', exchange, '--type', 'headers',
                         '-n', '1', '-t', '30')
    sent = run('send', '-e', exchange, '--type', 'headers', '-H',
               'color=red', '-H', 'size=10', '{"shirt": 1}')
    assert sent.returncode == 0, sent.stderr
    code, out, _ = listening.finish()
    assert code == 0
    record = json.loads(out[0])
    assert record['body'] == {'shirt': 1}
    assert record['properties']['application_headers'] == {
        'color': 'red', 'size': '10'}


def test_headers_exchange_match(exchange, processes):
    listening = listener(processes, '-e', exchange, '--type', 'headers',
                         '--match', 'color=red', '--match', 'size=10',
                         '-n', '1', '-t', '30')
    for headers in (['color=red'], ['color=blue', 'size=10'],
                    ['color=red', 'size=10']):
        args = [arg for header in headers for arg in ('-H', header)]
        assert run('send', '-e', exchange, '--type', 'headers', *args,
                   json.dumps(headers)).returncode == 0
    code, out, _ = listening.finish()
    assert code == 0
    assert [json.loads(line)['body'] for line in out] == [
        ['color=red', 'size=10']]
    line = one_error_line(run('listen', '-e', exchange, '--match', 'a=b'), 2)
    assert '--match and --match-any need --type headers' in line


def test_listen_timeout_exits_0_and_says_how_many(exchange):
    began = time.monotonic()
    result = run('listen', '-e', exchange, '--timeout', '1')
    took = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    assert result.stdout == ''
    assert 'timeout after 1 s: received 0 message(s)' in result.stderr
    print(f'listen --timeout 1: exited after {took:.2f} s (process start '
          'included)')
    assert took < 10


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_listen_stops_cleanly_on_signals(exchange, processes, signum):
    listening = listener(processes, '-e', exchange)
    assert run('send', '-e', exchange, '"one"').returncode == 0
    wait_for(lambda: False, timeout=0.5)
    began = time.monotonic()
    listening.popen.send_signal(signum)
    code, out, err = listening.finish()
    took = time.monotonic() - began
    assert code == 0, err
    assert [json.loads(line)['body'] for line in out] == ['one']
    assert 'stopped by a signal: received 1 message(s)' in err
    assert 'Traceback' not in err
    print(f'listen stopped {took:.2f} s after {signum.name}')
    assert took < 5


def test_listen_on_a_shared_queue_leaves_the_rest(exchange, admin,
                                                  processes):
    name = unique('zamqp.test.cli.jobs')
    try:
        listening = listener(processes, '-e', exchange, '--type', 'direct',
                             '-k', 'jobs', '--queue', name, '-n', '2')
        sent = run('send', '-e', exchange, '--type', 'direct', '-k', 'jobs',
                   '1', '2', '3', '4', '5')
        assert sent.returncode == 0
        code, out, _ = listening.finish()
        assert code == 0
        assert [json.loads(line)['body'] for line in out] == [1, 2]
        assert wait_for(lambda: admin.queue_depth(name) == 3)
        taken = sorted(json.loads(m.body) for m in admin.take(name))
        assert taken == [3, 4, 5]
    finally:
        admin.delete_queue(name)


def test_pickles_are_never_unpickled_without_allow(exchange, processes,
                                                   tmp_path):
    marker = tmp_path / 'unpickled'
    # a pickle that would create a file if it were unpickled
    evil = (b'cbuiltins\nopen\n(' + pickle.dumps(str(marker), 0)[:-1]
            + b"S'w'\ntR.")
    plain = pickle.dumps({'a': (1, 2)})
    listening = listener(processes, '-e', exchange, '-n', '2', '-t', '30')
    admin = Admin()
    try:
        for body in evil, plain:
            admin.channel.basic_publish(amqp.Message(
                body, content_type='application/x-python-serialize'),
                exchange, '')
    finally:
        admin.close()
    code, out, _ = listening.finish()
    assert code == 0
    for line in out:
        record = json.loads(line)
        assert 'body' not in record
        assert 'body_base64' in record
        assert 'give --allow' in record['body_note']
    allowed = listener(processes, '-e', exchange, '-n', '2', '-t', '30',
                       '--allow', 'zamqp.tests.*')
    admin = Admin()
    try:
        for body in evil, plain:
            admin.channel.basic_publish(amqp.Message(
                body, content_type='application/x-python-serialize'),
                exchange, '')
    finally:
        admin.close()
    code, out, _ = allowed.finish()
    assert code == 0
    first, second = (json.loads(line) for line in out)
    assert 'refused to unpickle builtins.open' in first['body_note']
    assert second['body'] == {'a': [1, 2]}
    assert not marker.exists()


def test_bodies_that_are_not_json_are_shown_safely(exchange, processes):
    listening = listener(processes, '-e', exchange, '-n', '3', '-t', '30')
    admin = Admin()
    try:
        for body, properties in ((b'hello world', {'content_type':
                                                   'text/plain'}),
                                 (b'{"x": 1}', {}),
                                 (b'\xff\x00', {'content_type':
                                                'application/octet-stream'})):
            admin.channel.basic_publish(amqp.Message(body, **properties),
                                        exchange, '')
    finally:
        admin.close()
    code, out, _ = listening.finish()
    assert code == 0
    text, untyped, binary = (json.loads(line) for line in out)
    assert text['body_text'] == 'hello world' and 'body' not in text
    assert "not decoded: content type 'text/plain'" in text['body_note']
    assert untyped['body'] == {'x': 1}
    assert binary['body_base64'] == '/wA=' and 'body' not in binary


def on_a_terminal(args, input=None):
    """(exit status, what the command wrote to stderr, a pty)."""
    leader, follower = pty.openpty()
    try:
        result = subprocess.run(command(*args), input=input,
                                stdout=subprocess.PIPE, stderr=follower,
                                timeout=TIMEOUT)
        os.close(follower)
        follower = None
        seen = b''
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if follower is not None:
            os.close(follower)
        os.close(leader)
    return result.returncode, seen


def test_progress_bar_only_on_a_terminal(exchange):
    messages = [str(n) for n in range(150)]
    plain = run('send', '-e', exchange, *messages)
    assert plain.returncode == 0
    assert 'sending' not in plain.stderr
    code, seen = on_a_terminal(['send', '-e', exchange, *messages])
    assert code == 0
    assert b'sending' in seen and b'150/150' in seen
    code, seen = on_a_terminal(['send', '-e', exchange, '1', '2'])
    assert code == 0 and b'sending' not in seen     # only 2
    code, seen = on_a_terminal(['send', '-e', exchange, '-'],
                               input=b'1\n2\n3\n')
    assert code == 0
    assert b'sending' in seen and b'] 3' in seen.replace(b'  ', b' ')


def test_send_with_confirm_fails_for_unroutable_messages(exchange):
    result = run('send', '-e', exchange, '--type', 'direct', '-k', 'nobody',
                 '--confirm', '1')
    line = one_error_line(result, 1)
    assert 'unroutable' in line and 'argument 1' in line


def test_declare_passive_and_false(exchange, admin, processes):
    line = one_error_line(run('send', '-e', exchange, '--declare',
                              'passive', '1'), 1)
    assert f"exchange {exchange!r} does not exist" in line
    began = time.monotonic()
    line = one_error_line(run('send', '-e', exchange, '--declare', 'false',
                              '--confirm-timeout', '2', '1'), 1)
    took = time.monotonic() - began
    assert 'NOT_FOUND' in line and exchange in line
    assert "1 message(s) sent; the broker did not confirm" in line
    print(f'send --declare false to a missing exchange, --confirm-timeout '
          f'2: failed after {took:.2f} s')
    assert took < 10
    line = one_error_line(run('listen', '-e', exchange, '--declare',
                              'false'), 2)
    assert '--declare false needs --queue NAME' in line
    # declared by an administrator: passive and false use it
    name = unique('zamqp.test.cli.given')
    admin.channel.exchange_declare(exchange, 'fanout', durable=True,
                                   auto_delete=False)
    admin.channel.queue_declare(name, durable=True, auto_delete=False)
    admin.channel.queue_bind(name, exchange, '')
    try:
        listening = listener(processes, '-e', exchange, '--declare',
                             'passive', '--queue', name, '-n', '1')
        assert run('send', '-e', exchange, '--declare', 'false',
                   '"given"').returncode == 0
        code, out, _ = listening.finish()
        assert code == 0
        assert [json.loads(line)['body'] for line in out] == ['given']
    finally:
        admin.delete_queue(name)


# errors: one line, no traceback, no password


def test_bad_json_names_the_argument(exchange):
    line = one_error_line(run('send', '-e', exchange, '1', '{oops'), 2)
    assert "argument 2 ('{oops') is not JSON" in line


def test_bad_json_names_the_stdin_line(exchange):
    line = one_error_line(run('send', '-e', exchange, '-',
                              input='1\n[2]\nnope\n'), 2)
    assert 'stdin line 3 is not JSON' in line


def test_bad_option_and_missing_option():
    line = one_error_line(run('send', '--exchnge', 'x', '1'), 2)
    assert 'Did you mean' in line and '--exchange' in line
    assert "'zamqp send --help'" in line
    line = one_error_line(run('listen'), 2)
    assert '--exchange' in line


def test_bad_url(exchange):
    line = one_error_line(run('--url', 'http://guest:s3cret-pw@host/',
                              'send', '-e', exchange, '1', url=False), 2)
    assert 'amqp' in line and 's3cret-pw' not in line


@pytest.mark.parametrize('subcommand', ['send', 'listen'])
def test_refused_connection(exchange, subcommand):
    url = f'amqp://guest:s3cret-pw@127.0.0.1:{free_port()}/'
    args = ['--url', url, subcommand, '-e', exchange]
    if subcommand == 'send':
        args.append('1')
    line = one_error_line(run(*args, url=False), 1)
    assert 'refused the connection' in line
    assert 's3cret-pw' not in line


@pytest.mark.parametrize('subcommand', ['send', 'listen', 'check'])
def test_refused_login_hides_the_password(exchange, subcommand):
    props_url = broker_url()
    host = props_url.split('@', 1)[1]
    url = f'amqp://guest:wr0ng-s3cret@{host}'
    args = [subcommand] + ([] if subcommand == 'check' else ['-e', exchange])
    if subcommand == 'send':
        args.append('1')
    for result in (run('--url', url, *args, url=False),
                   run(*args, url=False, env={'ZAMQP_URL': url})):
        line = one_error_line(result, 1)
        assert 'refused the login' in line
        assert 'wr0ng-s3cret' not in result.stderr + result.stdout


def test_scrub_removes_passwords_in_every_form():
    from zamqp.cli import scrub
    url = 'amqp://app:p%40ss-w0rd@rabbit:5672/shop'
    for text in (f'failed: {url}', 'amqp://app:p@ss-w0rd@rabbit',
                 'login p@ss-w0rd refused', 'login p%40ss-w0rd refused'):
        cleaned = scrub(text, [url])
        assert 'ss-w0rd' not in cleaned, cleaned
    # guest/guest: the user name stays readable
    assert scrub("user 'guest' refused", ['amqp://guest:guest@h/']) == \
        "user 'guest' refused"


def test_every_subcommand_has_help():
    for subcommand in ('send', 'listen', 'worker', 'check', 'status',
                       'topology'):
        result = run(subcommand, '--help')
        assert result.returncode == 0
        assert f'Usage: zamqp {subcommand}' in result.stdout


def test_runner_module_says_what_to_use():
    result = subprocess.run([sys.executable, '-m', 'zamqp.runner'],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert 'zamqp worker' in result.stderr


# the worker


def write_config(tmp_path, text, name='worker.ini'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def worker_config(tmp_path, exchange, queue_name, extra=''):
    return write_config(tmp_path, f"""
[connection]
exchange = {exchange}

[consumer jobs]
handler = zamqp.tests.clihandlers.slow
shared = true
queue = {queue_name}
dead_letter_exchange = none

[consumer news]
handler = zamqp.tests.clihandlers.record

[consumer idle]
events = on
enabled = off

[worker]
stop_timeout = 5
{extra}""")


def read_output(path):
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return [json.loads(line) for line in file]


def test_worker_runs_handlers_and_stops_on_sigterm(exchange, admin,
                                                   processes, tmp_path):
    name = unique('zamqp.test.cli.work')
    output = str(tmp_path / 'handled.jsonl')
    port = free_port()
    config = worker_config(tmp_path, exchange, name,
                           extra=f'metrics_port = {port}')
    try:
        worker = Process('worker', config, env={'ZAMQP_TEST_OUTPUT': output})
        processes(worker)
        line = worker.wait_for_line('worker consuming')
        assert f'metrics at http://127.0.0.1:{port}/metrics' in line
        assert 'INFO zamqp.cli.run: consumer idle: not enabled (enabled = ' \
            'off)' in ''.join(worker.stderr)
        assert run('send', '-e', exchange, '{"n": 1}', '{"n": 2}'
                   ).returncode == 0
        assert wait_for(lambda: len(read_output(output)) == 4, timeout=10)
        assert sorted((r['consumer'], r['body']['n'])
                      for r in read_output(output)) == [
            ('jobs', 1), ('jobs', 2), ('news', 1), ('news', 2)]
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics',
                                    timeout=10) as response:
            page = response.read().decode()
        for consumer in 'jobs', 'news':
            assert re.search(r'^zamqp_handled_total\{[^}]*name="%s"[^}]*\}'
                             r' 2$' % consumer, page, re.M), page
        status = run('status', config)
        assert status.returncode == 0
        assert f'jobs: worker consuming (http://127.0.0.1:{port}/metrics): ' \
            'received 2, handled 2, failed 0' in status.stdout, status.stdout
        began = time.monotonic()
        worker.popen.send_signal(signal.SIGTERM)
        code, _, err = worker.finish()
        took = time.monotonic() - began
        assert code == 0, err
        assert 'worker stopped 2 of 2 consumer(s)' in err
        status = run('status', config)
        assert f'worker at http://127.0.0.1:{port}/metrics: not reachable' \
            in status.stdout
        print(f'worker (idle) exited {took:.2f} s after SIGTERM')
        assert took < 5
        assert admin.queue_depth(name) == 0
    finally:
        admin.delete_queue(name)


def test_worker_lets_a_running_handler_finish(exchange, admin, processes,
                                             tmp_path):
    name = unique('zamqp.test.cli.work')
    output = str(tmp_path / 'handled.jsonl')
    config = worker_config(tmp_path, exchange, name)
    try:
        worker = Process('worker', config, env={'ZAMQP_TEST_OUTPUT': output})
        processes(worker)
        worker.wait_for_line('worker consuming')
        assert run('send', '-e', exchange,
                   '{"n": 1, "sleep": 1.5}').returncode == 0
        # news handles it at once; jobs sleeps 1.5 s first
        assert wait_for(lambda: len(read_output(output)) == 1, timeout=10)
        began = time.monotonic()
        worker.popen.send_signal(signal.SIGTERM)
        code, _, err = worker.finish()
        took = time.monotonic() - began
        assert code == 0, err
        assert len(read_output(output)) == 2
        print(f'worker with a 1.5 s handler running exited {took:.2f} s '
              'after SIGTERM')
        assert 0.5 < took < 5
        assert admin.queue_depth(name) == 0      # acknowledged
    finally:
        admin.delete_queue(name)


def test_worker_notifies_events_to_imported_subscribers(
        exchange, processes, tmp_path):
    output = str(tmp_path / 'notified.jsonl')
    config = write_config(tmp_path, f"""
[worker]
imports = zamqp.tests.clisubscribers

[consumer events]
exchange = {exchange}
events = on
""")
    worker = Process('worker', config, env={'ZAMQP_TEST_OUTPUT': output})
    processes(worker)
    worker.wait_for_line('worker consuming')
    assert run('send', '-e', exchange, '{"event": 1}').returncode == 0
    assert wait_for(lambda: read_output(output) == [
        {'notified': {'event': 1}}], timeout=10), read_output(output)
    worker.popen.send_signal(signal.SIGTERM)
    assert worker.finish()[0] == 0


def test_worker_logs_handler_errors_with_tracebacks(exchange, processes,
                                                   tmp_path):
    config = write_config(tmp_path, f"""
[consumer broken]
exchange = {exchange}
handler = zamqp.tests.clihandlers.fail
""")
    worker = Process('worker', config)
    processes(worker)
    worker.wait_for_line('worker consuming')
    assert run('send', '-e', exchange, '"boom"').returncode == 0
    worker.wait_for_line("ValueError: handler failed on purpose: 'boom'")
    worker.popen.send_signal(signal.SIGTERM)
    code, _, err = worker.finish()
    assert code == 0, err
    assert 'Traceback (most recent call last)' in err
    assert "ERROR zamqp.consumer: consumer broken." in err


def test_worker_exits_1_when_a_consumer_fails_for_good(exchange, admin,
                                                      processes, tmp_path):
    name = unique('zamqp.test.cli.work')
    config = worker_config(tmp_path, exchange, name)
    try:
        worker = Process('worker', config)
        processes(worker)
        worker.wait_for_line('worker consuming')
        # someone declares the queue anew with other settings: the
        # consumer is cancelled, and its declaration now conflicts
        admin.delete_queue(name)
        admin.channel.queue_declare(name, durable=True, auto_delete=False,
                                    arguments={'x-max-length': 5})
        code, _, err = worker.finish()
        assert code == 1
        last = err.splitlines()[-1]
        print(last)
        assert last.startswith('zamqp: error: consumer jobs failed: ')
        assert "inequivalent arg 'x-max-length'" in last
    finally:
        admin.delete_queue(name)


def test_worker_config_typo_names_the_nearest_key(tmp_path):
    config = write_config(tmp_path, """
[consumer orders]
hanlder = zamqp.tests.clihandlers.record
""")
    line = one_error_line(run('worker', config), 1)
    assert f"{config}:3: [consumer orders] hanlder: unknown key; did you " \
        "mean 'handler'?" in line


def test_worker_refused_connection_is_one_line(tmp_path):
    config = write_config(tmp_path, f"""
[connection]
url = amqp://guest:s3cret-pw@127.0.0.1:{free_port()}/

[consumer orders]
handler = zamqp.tests.clihandlers.record
""")
    line = one_error_line(run('worker', config), 1)
    assert 'refused the connection' in line and 's3cret-pw' not in line


# workerconfig, without a broker


def parse(text):
    return workerconfig.parse(text, 'test.ini',
                              default_url='amqp://u:p@h/')


def error(text):
    with pytest.raises(workerconfig.ConfigError) as info:
        parse(text)
    return str(info.value)


def test_config_values_are_converted():
    config = parse("""
[connection shop]
url = amqp://app:secret@rabbit.example:5673/shop
heartbeat = 30
exchange = shop.orders
type = topic

[consumer orders]
connection = shop
handler = zamqp.tests.clihandlers.record
shared = yes
routing_key = orders.#
prefetch = 10
max_retries = 1
allow = myapp.events.* other.Class
queue_arguments = x-max-priority=10 x-single-active-consumer=true

[consumer local]
events = on
enabled = off

[worker]
stop_timeout = 2.5
log_level = WARNING
""")
    orders = config.consumers['orders']
    assert orders.props.url() == 'amqp://app@rabbit.example:5673/shop'
    assert orders.props.heartbeat == 30
    assert (orders.props.exchange, orders.props.type) == ('shop.orders',
                                                          'topic')
    assert orders.queue == 'orders' and orders.routing_key == 'orders.#'
    assert orders.handler.__name__ == 'record'
    assert orders.options == {
        'shared': True, 'prefetch': 10, 'max_retries': 1,
        'allow': ('myapp.events.*', 'other.Class'),
        'queue_arguments': {'x-max-priority': 10,
                            'x-single-active-consumer': True}}
    local = config.consumers['local']
    assert local.events and not local.enabled
    assert local.props.url() == 'amqp://u@h:5672/%2F'   # the default URL
    assert local.props.exchange == 'zamqp.broadcast.fanout'
    assert (config.stop_timeout, config.log_level) == (2.5, 'WARNING')


@pytest.mark.parametrize('text, expected', [
    ('[consumer a]\nhandler = zamqp.tests.clihandlers.record\n'
     'prefech = 3\n',
     "test.ini:3: [consumer a] prefech: unknown key; did you mean "
     "'prefetch'?"),
    ('[consumr a]\nevents = on\n',
     "test.ini:1: [consumr a]: unknown section; did you mean 'consumer'?"),
    ('[connection]\nhaertbeat = 3\n',
     "test.ini:2: [connection] haertbeat: unknown key; did you mean "
     "'heartbeat'?"),
    ('[consumer a]\nevents = on\nprefetch = many\n',
     "test.ini:3: [consumer a] prefetch: value 'many' is not valid: "
     "expected a whole number, at least 0, at most 65535"),
    ('[consumer a]\nevents = maybe\n',
     "[consumer a] events: value 'maybe' is not valid: expected a "
     "boolean"),
    ('[consumer a]\nevents = on\nconnection = shpo\n[connection shop]\n',
     "[consumer a] connection: no [connection shpo] is declared; did you "
     "mean 'shop'?"),
    ('[consumer a]\nhandler = zamqp.tests.clihandlers.missing\n',
     "handler: value 'zamqp.tests.clihandlers.missing' is not valid: "
     "expected an importable callable"),
    ('[consumer a]\nhandler = zamqp.tests.clihandlers.not_callable\n',
     'expected a callable'),
    ('[consumer a]\nevents = on\nsite = /plone\n',
     "[consumer a] site: 'site' is a Zope option"),
    ('[consumer a]\nshared = true\n',
     '[consumer a]: say what to do with a message'),
    ('[consumer a]\nevents = on\nshared = true\ndurable = false\n',
     '[consumer a]: durable=False with shared=True'),
    ('[consumer a]\nevents = on\n[consumer a]\n',
     'test.ini:3: section [consumer a] appears twice'),
    ('[consumer a]\nevents = on\nevents = off\n',
     "test.ini:3: [consumer a] key 'events' appears twice"),
    ('[DEFAULT]\nshared = true\n',
     '[DEFAULT]: unknown section'),
    ('[worker]\nlog_level = LOUD\n',
     'expected one of DEBUG, INFO, WARNING, ERROR'),
    ('[worker]\nimports = zamqp.tests.nothing_here\n',
     "test.ini:2: [worker] imports: value 'zamqp.tests.nothing_here' is not "
     "valid: expected importable modules; importing "
     "zamqp.tests.nothing_here failed: ModuleNotFoundError"),
    ('[worker]\nmetrics_host = 0.0.0.0\n',
     'test.ini:2: [worker] metrics_host: give metrics_port too'),
    ('[worker]\nmetrics_port = 70000\n',
     "[worker] metrics_port: value '70000' is not valid: expected a whole "
     "number, at least 0, at most 65535"),
])
def test_config_errors(text, expected):
    assert expected in error(text)


def test_config_errors_never_show_secrets():
    text = error('[connection]\nurl = http://app:t0p-s3cret@host/\n'
                 '[consumer a]\nevents = on\n')
    assert 't0p-s3cret' not in text and 'is not amqp' in text
    text = error('[connection]\nport = 99999\npassword = t0p-s3cret\n')
    assert 't0p-s3cret' not in text


@pytest.mark.zope     # not in the core suite (conftest.py)
def test_config_options_are_those_of_the_zcml_directives():
    from zamqp.zope import schemas
    connection = set(schemas.IConnectionDirective.names(all=True))
    consumer = set(schemas.IConsumerDirective.names(all=True))
    assert set(workerconfig.CONNECTION_OPTIONS) == \
        connection - {'name'} | {'exchange', 'type'}
    assert set(workerconfig.CONSUMER_OPTIONS) == \
        consumer - {'name'} - set(workerconfig.ZOPE_ONLY)


def test_the_command_and_the_config_import_no_zope(tmp_path):
    config = write_config(tmp_path, """
[consumer orders]
handler = zamqp.tests.clihandlers.record
shared = true
""")
    code = (f'import sys, zamqp.cli, zamqp.cli.run, zamqp.workerconfig\n'
            f'zamqp.workerconfig.load({config!r})\n'
            'print(sorted(m for m in sys.modules if m.startswith(('
            '"zamqp.zope", "zope.schema", "zope.configuration", "Zope", '
            '"App"))))')
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'


# check, status, topology


def test_worker_metrics_are_read_from_the_prometheus_text():
    from zamqp.cli.broker import worker_metrics
    labels = 'kind="consumer",name="a \\"b\\"",exchange="x",queue="q"'
    text = '\n'.join([
        '# HELP zamqp_handled_total Messages whose handler returned.',
        f'zamqp_handled_total{{{labels}}} 7',
        f'zamqp_failed_total{{{labels}}} 1',
        f'zamqp_state{{{labels},state="consuming"}} 1',
        f'zamqp_state{{{labels},state="failed"}} 0',
        'zamqp_published_total{kind="producer",name="p"} 3'])
    assert worker_metrics(text) == {
        'a "b"': {'handled': 7, 'failed': 1, 'state': 'consuming'}}


def test_check_status_topology_change_nothing(exchange, admin, tmp_path):
    name = unique('zamqp.test.cli.q')
    config = worker_config(tmp_path, exchange, name)
    try:
        result = run('check', config)
        assert result.returncode == 0, result.stdout + result.stderr
        assert 'idle' not in result.stdout     # declares nothing
        lines = result.stdout.splitlines()
        assert lines[0].startswith('broker: RabbitMQ ')
        assert all(line.startswith('ok ') for line in lines[1:]), lines
        assert any(f"configure queue '{name}': does not exist" in line
                   for line in lines)
        assert not admin.queue_exists(name)
        with pytest.raises(amqp.exceptions.NotFound):
            Admin().channel.exchange_declare(exchange, 'fanout',
                                             passive=True)
        status = run('status', config)
        assert status.returncode == 0
        assert f"jobs: exchange {exchange!r} MISSING; shared queue " \
            f"{name!r} MISSING" in status.stdout
        assert 'idle: not enabled (enabled = off), not checked' in \
            status.stdout
        # now the topology exists, with two messages waiting
        admin.channel.exchange_declare(exchange, 'fanout', durable=True,
                                       auto_delete=False)
        admin.channel.queue_declare(name, durable=True, auto_delete=False)
        admin.channel.queue_bind(name, exchange, 'jobs')
        for n in 1, 2:
            admin.channel.basic_publish(amqp.Message(b'%d' % n), exchange,
                                        '')
        assert wait_for(lambda: admin.queue_depth(name) == 2)
        result = run('check', config)
        assert result.returncode == 0, result.stdout
        assert f"ok       configure queue '{name}': exists" in result.stdout
        assert f"ok       read      queue '{name}' (to consume): " \
            "permitted" in result.stdout
        status = run('status', '--json', config)
        records = {r['consumer']: r for r in map(json.loads,
                                                  status.stdout.splitlines())}
        assert records['jobs']['messages'] == 2
        assert records['jobs']['consumers'] == 0
        assert records['news']['exchange_exists'] is True
        topology = run('topology', config)
        assert topology.returncode == 0
        assert f"queue {name!r} of jobs (durable): exists, 2 message(s), " \
            "0 consumer(s)" in topology.stdout
        assert f"exchange {exchange!r} (fanout, durable): exists" in \
            topology.stdout
        assert "queue 'news.<random>' of news" in topology.stdout
        # the probes took nothing and redelivered nothing
        taken = admin.take(name)
        assert [m.body for m in taken] == [b'1', b'2']
        assert not any(m.delivery_info['redelivered'] for m in taken)
    finally:
        admin.delete_queue(name)


def test_check_status_topology_of_a_stream_reader(exchange, admin,
                                                 tmp_path):
    stream = unique('zamqp.test.cli.stream')
    config = write_config(tmp_path, f"""
[connection]
exchange = {exchange}

[consumer news]
handler = zamqp.tests.clihandlers.record
stream = yes
reader = worker1
offsets = {tmp_path / 'offsets'}
""")
    try:
        result = run('check', config)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"configure queue {stream!r}" not in result.stdout
        assert "configure queue 'news': does not exist" in result.stdout
        assert '<random>' not in result.stdout
        assert 'retries' not in result.stdout   # retried in the reader
        topology = run('topology', config)
        assert "queue 'news' of news (durable) arguments {'x-queue-type': " \
            "'stream'" in topology.stdout
        status = run('status', config)
        assert "news: exchange " in status.stdout and \
            "stream 'news' MISSING" in status.stdout
    finally:
        admin.delete_queue('news')
        admin.delete_exchange(exchange + '.dead')
        admin.delete_queue(exchange + '.dead')


def test_check_without_config_only_connects():
    result = run('check')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith('broker: RabbitMQ ')
    assert ", user '" in lines[0] and 'virtual host' in lines[0]


def test_check_conflict(exchange, admin):
    admin.channel.exchange_declare(exchange, 'direct', durable=True,
                                   auto_delete=False)
    result = run('check', '-e', exchange, '--type', 'topic')
    assert result.returncode == 1
    assert "conflict configure exchange" in result.stdout
    assert "inequivalent arg 'type'" in result.stdout
    one_error_line(result)


@pytest.mark.skipif(brokers.missing(), reason='RabbitMQ is not installed '
                    'here (ZAMQP_TEST_URL points elsewhere); CI requires it')
def test_check_reports_refusals_on_a_restricted_user(tmp_path):
    broker = brokers.PrivateBroker()
    broker.start()
    try:
        password = f'pw-{uuid.uuid4().hex}'
        broker.ctl('add_user', 'cli-user', password)
        # may configure, write and read zamqp.ok.* only
        broker.ctl('set_permissions', '-p', '/', 'cli-user',
                   r'^zamqp\.ok\.', r'^zamqp\.ok\.', r'^zamqp\.ok\.')
        url = f'amqp://cli-user:{password}@127.0.0.1:{broker.port}/'
        consumers = ''.join(f"""
[consumer {name}]
exchange = {exchange}
queue = {queue_name}
handler = zamqp.tests.clihandlers.record
shared = true
dead_letter_exchange = none
""" for name, exchange, queue_name in (
            ('jobs', 'zamqp.ok.jobs', 'zamqp.ok.jobs'),
            ('other', 'zamqp.no.other', 'zamqp.no.other'),
            ('mixed', 'zamqp.no.mixed', 'zamqp.ok.mixed')))
        config = write_config(tmp_path, consumers)
        result = run('--url', url, 'check', config, url=False)
        assert result.returncode == 1
        out = result.stdout
        print(out)
        refused = "ACCESS_REFUSED - access to {} in vhost '/' refused for " \
            "user 'cli-user'"
        expected = [
            "ok       configure exchange 'zamqp.ok.jobs' (fanout): does not "
            "exist (the worker would declare it)",
            "refused  configure exchange 'zamqp.no.other' (fanout): "
            + refused.format("exchange 'zamqp.no.other'"),
            "refused  configure exchange 'zamqp.no.mixed' (fanout): "
            + refused.format("exchange 'zamqp.no.mixed'"),
            "ok       configure queue 'zamqp.ok.jobs': does not exist",
            "refused  configure queue 'zamqp.no.other': "
            + refused.format("queue 'zamqp.no.other'"),
            "ok       configure queue 'zamqp.ok.mixed': does not exist",
            "ok       write     queue 'zamqp.ok.jobs' (to bind it): "
            "permitted",
            "ok       read      exchange 'zamqp.ok.jobs' (to bind "
            "'zamqp.ok.jobs'): permitted",
            "refused  write     queue 'zamqp.no.other' (to bind it): "
            + refused.format("queue 'zamqp.no.other'"),
            "unknown  read      exchange 'zamqp.no.other' (to bind "
            "'zamqp.no.other'): not checked: the probe needs write on a "
            "queue named like 'zamqp.no.other'.*",
            "ok       write     queue 'zamqp.ok.mixed' (to bind it): "
            "permitted",
            "refused  read      exchange 'zamqp.no.mixed' (to bind "
            "'zamqp.ok.mixed'): " + refused.format(
                "exchange 'zamqp.no.mixed'"),
            "ok       read      queue 'zamqp.ok.jobs' (to consume): does "
            "not exist",
            "refused  read      queue 'zamqp.no.other' (to consume): "
            + refused.format("queue 'zamqp.no.other'"),
            "refused  write     exchange '' (the default exchange) "
            "(retries): " + refused.format("exchange 'amq.default'"),
        ]
        for line in expected:
            assert line in out
        assert len(out.splitlines()) == 1 + 16
        assert password not in out + result.stderr
        one_error_line(result)
        # nothing was declared
        node = Admin(broker.url)
        try:
            for queue_name in 'zamqp.ok.jobs', 'zamqp.no.other', \
                    'zamqp.ok.mixed':
                assert not node.queue_exists(queue_name)
            for exchange in 'zamqp.ok.jobs', 'zamqp.no.mixed':
                with pytest.raises(amqp.exceptions.NotFound):
                    node.channel.exchange_declare(exchange, 'fanout',
                                                  passive=True)
                node.channel = node.connection.channel()
        finally:
            node.close()
    finally:
        broker.cleanup()
