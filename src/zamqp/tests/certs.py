"""Certificates for TLS tests, made with trustme in a temporary directory.

``Certificates()`` writes PEM files: a CA (``ca``), a server certificate
for ``localhost`` only (``server_cert``, ``server_key``; no IP address,
so connecting to 127.0.0.1 is a hostname mismatch), a client certificate
of the same CA (``client_cert``, ``client_key``, and ``client_combined``
with key and chain in one file), a second, unrelated CA (``other_ca``)
and a client certificate of that CA (``stranger_cert``,
``stranger_key``). Keys are ECDSA P-256, which Erlang/OTP 25's ssl (and
so RabbitMQ) and OpenSSL both accept. ``cleanup()`` removes the files.
"""
import os
import shutil
import tempfile

import trustme

SERVER_NAME = 'localhost'
CLIENT_NAME = 'client.zamqp.test'


class Certificates:
    """PEM files of two CAs and their certificates (see the module)."""

    def __init__(self, directory=None):
        self._own_dir = directory is None
        self.dir = directory or tempfile.mkdtemp(prefix='zamqp-certs-')
        ca = trustme.CA(organization_name='zamqp test CA')
        other = trustme.CA(organization_name='zamqp unrelated CA')
        server = ca.issue_cert(SERVER_NAME)
        client = ca.issue_cert(CLIENT_NAME, common_name=CLIENT_NAME)
        stranger = other.issue_cert(CLIENT_NAME, common_name=CLIENT_NAME)
        self.ca = self._write('ca.pem', ca.cert_pem)
        self.other_ca = self._write('other-ca.pem', other.cert_pem)
        self.server_cert, self.server_key = self._leaf('server', server)
        self.client_cert, self.client_key = self._leaf('client', client)
        self.stranger_cert, self.stranger_key = self._leaf('stranger',
                                                           stranger)
        self.client_combined = self._write(
            'client-combined.pem', client.private_key_and_cert_chain_pem)

    def _leaf(self, name, leaf):
        chain = b''.join(blob.bytes() for blob in leaf.cert_chain_pems)
        cert = os.path.join(self.dir, f'{name}-cert.pem')
        with open(cert, 'wb') as f:
            f.write(chain)
        return cert, self._write(f'{name}-key.pem', leaf.private_key_pem)

    def _write(self, name, blob):
        path = os.path.join(self.dir, name)
        blob.write_to_path(path)
        return path

    def broker_options(self, verify='verify_peer',
                       fail_if_no_peer_cert=False):
        """The ``tls`` argument of PrivateBroker for the server certificate."""
        return dict(cacertfile=self.ca, certfile=self.server_cert,
                    keyfile=self.server_key, verify=verify,
                    fail_if_no_peer_cert=fail_if_no_peer_cert)

    def cleanup(self):
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
