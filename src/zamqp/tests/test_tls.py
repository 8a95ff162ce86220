"""TLS: settings, certificates and failures, against private RabbitMQ
nodes with TLS listeners and certificates made for the test run.

Two nodes start once for the module (in parallel): ``broker`` verifies a
client certificate if one is sent; ``strict`` requires one
(``fail_if_no_peer_cert``). The server certificate is for ``localhost``
only, so 127.0.0.1 is a wrong host name. The shared broker is never
touched.
"""
import json
import logging
import os
import socket
import ssl
import time

import pytest

from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import tls
from zamqp.connection import AMQPConnection
from zamqp.consumer import AMQPThread
from zamqp.exceptions import ConfigurationError
from zamqp.exceptions import ConnectionFailed
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests import brokers
from zamqp.tests.certs import Certificates
from zamqp.tests.proxy import Proxy

#: A failure must be reported within this many seconds (no hang).
QUICK = 4.0


@pytest.fixture(scope='module')
def certs():
    made = Certificates()
    yield made
    made.cleanup()


@pytest.fixture(scope='module')
def nodes(certs):
    """Two private TLS nodes: (verify if sent, client certificate
    required)."""
    if brokers.missing():
        pytest.skip('RabbitMQ is not installed on this machine; CI '
                    'requires it')
    started = [brokers.PrivateBroker(tls=certs.broker_options()),
               brokers.PrivateBroker(tls=certs.broker_options(
                   fail_if_no_peer_cert=True))]
    try:
        for node in started:
            node.launch()
        for node in started:
            node.wait()
        yield started
    finally:
        for node in started:
            node.cleanup()


@pytest.fixture(scope='module')
def broker(nodes):
    return nodes[0]


@pytest.fixture(scope='module')
def strict(nodes):
    return nodes[1]


def tls_props(node, **kw):
    """Props for ``node``'s TLS listener on an exchange of their own."""
    kw.setdefault('host', 'localhost')
    kw.setdefault('port', node.tls_port)
    kw.setdefault('ssl', True)
    kw.setdefault('exchange', unique())
    kw.setdefault('connect_timeout', 3.0)
    kw.setdefault('timeout', 5.0)
    return AMQPProps(**kw)


def round_trip(props, start):
    """Consume and publish one message through ``props``; return the
    consumer (still running) and the producer (closed)."""
    got = []
    consumer = AMQPConsumer('tls', props, got.append)
    start(consumer)
    producer = AMQPProducer('tls', props, confirm=True)
    try:
        producer({'over': 'tls'})
    finally:
        producer.close()
    assert wait_for(lambda: got == [{'over': 'tls'}])
    return consumer, producer


def tls_connections(node):
    """(user, ssl, peer certificate subject) of ``node``'s connections."""
    out = node.ctl('list_connections', 'user', 'ssl', 'peer_cert_subject',
                   '--formatter', 'json', '--quiet')
    return [(c['user'], c['ssl'], c['peer_cert_subject'])
            for c in json.loads(out.stdout)]


def failure(props):
    """The ConnectionFailed of opening a connection with ``props``, which
    must come within QUICK seconds."""
    began = time.monotonic()
    conn = AMQPConnection('tls', props)
    with pytest.raises(ConnectionFailed) as info:
        conn.channel
    conn.close()
    assert time.monotonic() - began < QUICK
    return info.value


# end to end

def test_ssl_true_with_ca_file_publishes_and_consumes(broker, certs, start):
    props = tls_props(broker, ca_file=certs.ca)
    consumer, _ = round_trip(props, start)
    sock = consumer.connection.connection.transport.sock
    assert isinstance(sock, ssl.SSLSocket)
    assert sock.version() in ('TLSv1.2', 'TLSv1.3')
    assert sock.server_hostname == 'localhost'
    assert ('guest', True, '') in tls_connections(broker)


def test_amqps_url_with_query_options(strict, certs, start):
    props = AMQPProps(
        url=f'amqps://guest:guest@127.0.0.1:{strict.tls_port}/'
        f'?cacertfile={certs.ca}&certfile={certs.client_cert}'
        f'&keyfile={certs.client_key}&server_name_indication=localhost'
        '&verify=verify_peer&connect_timeout=3',
        exchange=unique())
    assert props.ssl is True and props.port == strict.tls_port
    round_trip(props, start)
    subjects = [subject for _, is_tls, subject in tls_connections(strict)
                if is_tls]
    assert subjects and all('client.zamqp.test' in s for s in subjects)


def test_server_hostname_is_the_name_checked(broker, certs, start):
    """Connecting to 127.0.0.1 works with the certificate's name given."""
    props = tls_props(broker, host='127.0.0.1', ca_file=certs.ca,
                      server_hostname='localhost')
    round_trip(props, start)


def test_an_ssl_context_is_used_as_it_is(broker, certs, start):
    context = ssl.create_default_context(cafile=certs.ca)
    props = tls_props(broker, ssl=context)
    assert tls.context(props) is context
    round_trip(props, start)
    wrong = ssl.create_default_context(cafile=certs.other_ca)
    error = failure(tls_props(broker, ssl=wrong))
    assert 'certificate verify failed' in str(error)
    assert 'SSLContext given as ssl' in str(error)


def test_client_certificate_required_and_given(strict, certs, start):
    round_trip(tls_props(strict, ca_file=certs.ca,
                         cert_file=certs.client_cert,
                         key_file=certs.client_key), start)


def test_client_certificate_and_key_in_one_file(strict, certs, start):
    round_trip(tls_props(strict, ca_file=certs.ca,
                         cert_file=certs.client_combined), start)


def test_client_certificate_required_but_missing(strict, certs):
    error = failure(tls_props(strict, ca_file=certs.ca))
    assert 'requires a client certificate' in str(error)
    assert 'cert_file and key_file' in str(error)
    assert not error.recoverable


class LateTransport(tls.TLSTransport):
    """Writes the AMQP header only after the broker had time to refuse."""

    def _setup_transport(self):
        super()._setup_transport()
        time.sleep(0.3)


def test_client_certificate_refused_before_the_first_write(strict, certs):
    """The TLS 1.3 alert is reported, not the EOF the write finds."""
    props = tls_props(strict, ca_file=certs.ca)
    address = f'localhost:{strict.tls_port}'
    transport = LateTransport(address, connect_timeout=3.0,
                              ssl=tls.options(props, address))
    with pytest.raises(ssl.SSLError) as info:
        transport.connect()
    transport.close()
    assert 'CERTIFICATE_REQUIRED' in info.value.reason
    text, recoverable = tls.diagnose(info.value, props, 'localhost')
    assert 'requires a client certificate' in text and not recoverable


def test_client_certificate_missing_with_tls_1_2(strict, certs):
    """With TLS 1.2 the broker refuses in the handshake itself."""
    context = ssl.create_default_context(cafile=certs.ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    error = failure(tls_props(strict, ssl=context))
    assert 'requires a client certificate' in str(error)
    assert not error.recoverable


def test_client_certificate_of_an_unknown_ca(strict, certs):
    error = failure(tls_props(strict, ca_file=certs.ca,
                              cert_file=certs.stranger_cert,
                              key_file=certs.stranger_key))
    assert 'refused the client certificate' in str(error)
    assert certs.stranger_cert in str(error)
    assert not error.recoverable


# the broker's certificate refused

def test_wrong_ca_is_a_setting_to_fix(broker, certs):
    error = failure(tls_props(broker, ca_file=certs.other_ca))
    message = str(error)
    assert 'certificate verify failed' in message
    assert 'not signed by a CA this client trusts' in message
    assert 'check ca_file' in message and certs.other_ca in message
    assert f'localhost:{broker.tls_port}' in message
    assert not error.recoverable


def test_system_trust_store_does_not_know_the_test_ca(broker):
    error = failure(tls_props(broker))
    assert 'certificate verify failed' in str(error)
    assert "system's trust store" in str(error)
    assert not error.recoverable


def test_ip_address_not_in_the_certificate(broker, certs):
    error = failure(tls_props(broker, host='127.0.0.1', ca_file=certs.ca))
    message = str(error)
    assert "not valid for '127.0.0.1'" in message
    assert 'fix host' in message and 'server_hostname' in message
    assert not error.recoverable


def test_wrong_server_hostname(broker, certs):
    error = failure(tls_props(broker, ca_file=certs.ca,
                              server_hostname='wrong.example'))
    assert "not valid for 'wrong.example'" in str(error)
    assert not error.recoverable


def test_verify_false_connects_and_warns(broker, start, caplog):
    props = tls_props(broker, host='127.0.0.1', verify=False)
    with caplog.at_level(logging.WARNING, logger='zamqp'):
        round_trip(props, start)
    warnings = [r for r in caplog.records if 'verify=False' in r.message]
    assert len(warnings) == 1       # once per props, not per connection


# the wrong port

def test_tls_to_the_plain_port(broker, certs):
    error = failure(tls_props(broker, port=broker.port, ca_file=certs.ca))
    assert 'did not answer with TLS' in str(error)
    assert 'TLS port' in str(error)
    assert not error.recoverable


def test_plain_to_the_tls_port(broker):
    props = AMQPProps(host='localhost', port=broker.tls_port,
                      exchange=unique(), connect_timeout=3.0, timeout=5.0)
    error = failure(props)
    assert 'use amqps:// or ssl=True' in str(error)


def test_a_silent_tls_port_times_out(certs):
    """A listener that accepts but never answers the TLS handshake."""
    with socket.socket() as silent:
        silent.bind(('127.0.0.1', 0))
        silent.listen()
        props = AMQPProps(host='localhost', port=silent.getsockname()[1],
                          ssl=True, ca_file=certs.ca, connect_timeout=1.0,
                          exchange=unique())
        error = failure(props)
    assert 'did not answer in time' in str(error)


def test_after_the_handshake_timeout_bounds_reads(broker, certs):
    """connect_timeout bounds the handshake, timeout later reads."""
    props = tls_props(broker, ca_file=certs.ca, connect_timeout=2.0,
                      timeout=7.0)
    with AMQPConnection('tls', props) as conn:
        conn.channel
        assert conn.connection.transport.sock.gettimeout() == 7.0


def test_closing_when_the_broker_went_silent(broker, certs):
    """No read waits forever on a stalled TLS connection."""
    with Proxy(broker.tls_port) as proxy:
        props = tls_props(broker, host='127.0.0.1', port=proxy.port,
                          server_hostname='localhost', ca_file=certs.ca,
                          connect_timeout=1.0, timeout=2.0)
        conn = AMQPConnection('tls', props)
        conn.channel
        proxy.stall()
        began = time.monotonic()
        conn.close()    # waits timeout for close-ok, then for TLS
        assert time.monotonic() - began < 2.0 + 1.0 + 1.0


# consumers

def test_consumer_with_wrong_ca_stops_with_its_error(broker, certs):
    props = tls_props(broker, ca_file=certs.other_ca)
    consumer = AMQPConsumer('tls', props, lambda body: None)
    consumer.min_backoff = consumer.max_backoff = 0.05
    thread = AMQPThread(consumer)
    try:
        with pytest.raises(ConnectionFailed) as info:
            thread.start()
        assert 'check ca_file' in str(info.value)
        assert not thread.is_alive()
        assert consumer.error is info.value
    finally:
        consumer.stop()
        thread.stop()


def test_an_idle_consumer_stays_connected(broker, certs, start):
    """Idle longer than timeout, the consumer neither drops nor
    reconnects."""
    props = tls_props(broker, ca_file=certs.ca, timeout=1.0)
    consumer, _ = round_trip(props, start)
    before = consumer.connection
    time.sleep(2.5)
    got = []
    consumer.callback = got.append
    producer = AMQPProducer('tls', props)
    producer('later')
    producer.close()
    assert wait_for(lambda: got == ['later'])
    assert consumer.connection is before and consumer.error is None


def test_consumer_and_producer_use_the_tls_transport(broker, certs, start):
    consumer, producer = round_trip(tls_props(broker, ca_file=certs.ca),
                                    start)
    transport = consumer.connection.connection.transport
    assert isinstance(transport, tls.TLSTransport)
    assert type(consumer.connection.connection).__name__ == \
        'TLSConsumerConnection'


# settings (no broker needed)

def test_options_name_each_host_of_a_cluster(certs):
    props = AMQPProps(hosts=['localhost:5671', '127.0.0.1:5672',
                             '[::1]:5673'], ssl=True, ca_file=certs.ca)
    names = [tls.options(props, address)['server_hostname']
             for address in props.addresses]
    assert names == ['localhost', '127.0.0.1', '::1']
    fixed = props.replace(server_hostname='broker.example')
    assert tls.options(fixed, '127.0.0.1:5671')['server_hostname'] == \
        'broker.example'


def test_context_defaults(certs):
    context = tls.context(AMQPProps(ssl=True, ca_file=certs.ca))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    loose = tls.context(AMQPProps(ssl=True, verify=False))
    assert loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname


def test_context_is_kept_until_a_file_changes(certs, tmp_path):
    ca = tmp_path / 'ca.pem'
    ca.write_bytes(open(certs.ca, 'rb').read())
    props = AMQPProps(ssl=True, ca_file=str(ca))
    first = tls.context(props)
    assert tls.context(props) is first
    later = time.time() + 5
    os.utime(ca, (later, later))
    assert tls.context(props) is not first


@pytest.mark.parametrize('settings, words', [
    (dict(ca_file='/nonexistent/ca.pem'),
     ["ca_file '/nonexistent/ca.pem' does not exist", 'cacertfile']),
    (dict(cert_file='/nonexistent/c.pem'), ['cert_file', 'does not exist']),
    (dict(key_file='k.pem'), ['key_file given without cert_file']),
    (dict(ssl=False, ca_file='ca.pem'), ['use amqps:// or ssl=True']),
    (dict(ssl=False, verify=False), ['verify given but TLS is off']),
    (dict(ssl={'ca_certs': 'ca.pem'}), ['ssl.SSLContext', 'ca_file']),
    (dict(ssl=ssl.create_default_context(), ca_file='ca.pem'),
     ['used as it is']),
    (dict(server_hostname=''), ['server_hostname must be a host name']),
])
def test_settings_refused(settings, words):
    settings.setdefault('ssl', True)
    with pytest.raises(ConfigurationError) as info:
        AMQPProps(**settings)
    for word in words:
        assert word in str(info.value)


def test_url_tls_option_without_amqps():
    with pytest.raises(ConfigurationError) as info:
        AMQPProps(url='amqp://localhost/?cacertfile=/etc/ssl/ca.pem')
    assert 'use amqps:// or ssl=True' in str(info.value)


def test_files_that_do_not_load_are_not_recoverable(certs, tmp_path):
    garbage = tmp_path / 'garbage.pem'
    garbage.write_text('not a certificate\n')
    error = failure(AMQPProps(ssl=True, ca_file=str(garbage),
                              port=1, exchange=unique()))
    assert f"ca_file '{garbage}' cannot be loaded" in str(error)
    assert not error.recoverable
    error = failure(AMQPProps(ssl=True, cert_file=certs.client_cert,
                              key_file=certs.server_key, port=1,
                              exchange=unique()))
    assert 'the key must match the certificate' in str(error)
    assert not error.recoverable


def test_an_encrypted_key_is_refused_not_prompted_for(certs, tmp_path):
    from cryptography.hazmat.primitives import serialization
    with open(certs.client_key, 'rb') as f:
        key = serialization.load_pem_private_key(f.read(), None)
    encrypted = tmp_path / 'encrypted-key.pem'
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b'secret')))
    error = failure(AMQPProps(ssl=True, cert_file=certs.client_cert,
                              key_file=str(encrypted), port=1,
                              exchange=unique()))
    assert f"key_file '{encrypted}' is encrypted" in str(error)
    assert not error.recoverable
