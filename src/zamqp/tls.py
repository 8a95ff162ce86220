"""TLS for broker connections: the settings' check, the SSLContext, the
name the broker's certificate must carry, and the failures explained.

py-amqp 5.4 ignores an ``ssl.SSLContext`` given as ``ssl=`` (only a dict
of options reaches its SSLTransport, and without ``server_hostname`` it
checks no host name). Connections with TLS therefore use
``TLSTransport``, which wraps the socket with the context of
``context(props)`` and the name of ``server_hostname(props, host)``.
"""
import functools
import logging
import os
import ssl

import amqp
from amqp.transport import SSLTransport
from amqp.transport import to_host_port

from zamqp.exceptions import ConfigurationError

logger = logging.getLogger(__name__)

#: The file settings: attribute, URL option, what the file must hold.
FILES = (
    ('ca_file', 'cacertfile', "the CA certificate(s) that signed the "
     "broker's certificate"),
    ('cert_file', 'certfile', "the client certificate (and its chain)"),
    ('key_file', 'keyfile', "the client certificate's private key"),
)
#: TLS settings and their values when left out.
OPTIONS = dict(ca_file=None, cert_file=None, key_file=None,
               server_hostname=None, verify=True)

# OpenSSL's X509_V_ERR_* codes of the failures explained below.
_HOSTNAME_MISMATCH = {62, 64}
_EXPIRED = {9, 10}
_UNTRUSTED = {2, 18, 19, 20, 21, 27}
# Words of OpenSSL's reasons for a non-TLS answer (a plain AMQP port).
_NOT_TLS = ('WRONG_VERSION_NUMBER', 'PACKET_LENGTH_TOO_LONG',
            'RECORD_LAYER_FAILURE', 'UNKNOWN_PROTOCOL', 'HTTP_REQUEST')


def check(props):
    """Raise ConfigurationError if the TLS settings of ``props`` cannot
    work: ``ssl`` neither a bool nor an SSLContext, TLS options without
    TLS, options that an SSLContext given as ``ssl`` would ignore, a
    ``verify`` or ``server_hostname`` of the wrong kind, ``key_file``
    without ``cert_file``, a file that is missing or not readable. Reads
    no file's contents (``context`` does)."""
    _check_ssl(props)
    _check_values(props)
    for name, option, holds in FILES:
        _check_file(getattr(props, name), name, option, holds)


def _check_ssl(props):
    if not isinstance(props.ssl, (bool, ssl.SSLContext)):
        raise ConfigurationError(
            f"ssl must be True, False or an ssl.SSLContext, got "
            f"{props.ssl!r}: for a CA, client certificate or host name "
            "use ca_file, cert_file, key_file, server_hostname")
    given = [name for name, default in OPTIONS.items()
             if getattr(props, name, default) != default]
    if given and not props.ssl:
        raise ConfigurationError(
            f"{', '.join(given)} given but TLS is off: use amqps:// or "
            "ssl=True, or leave out the TLS settings")
    ignored = [name for name in given if name != 'server_hostname']
    if ignored and isinstance(props.ssl, ssl.SSLContext):
        raise ConfigurationError(
            f"{', '.join(ignored)} given with an ssl.SSLContext as ssl: the "
            "context is used as it is; load the CA and certificates into "
            "it (or pass ssl=True with these settings instead)")


def _check_values(props):
    if not isinstance(props.verify, bool):
        raise ConfigurationError(
            f"verify must be True or False, got {props.verify!r}")
    name = props.server_hostname
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigurationError(
            f"server_hostname must be a host name, got {name!r}: give the "
            "name in the broker's certificate, or None for the host "
            "connected to")
    if props.key_file is not None and props.cert_file is None:
        raise ConfigurationError(
            "key_file given without cert_file: give the client certificate "
            "as cert_file (or a file holding certificate and key as "
            "cert_file alone)")


def _check_file(path, name, option, holds):
    if path is None:
        return
    where = f"AMQPProps({name}=...) or ?{option}= in the URL"
    if not isinstance(path, str) or not path:
        raise ConfigurationError(
            f"{name} must be the path of a PEM file, got {path!r}: "
            f"fix {where}")
    if not os.path.isfile(path):
        raise ConfigurationError(
            f"{name} {path!r} does not exist or is not a file: give the "
            f"path of the PEM file with {holds} ({where})")
    if not os.access(path, os.R_OK):
        raise ConfigurationError(
            f"{name} {path!r} is not readable by this process (user id "
            f"{os.getuid()}): fix the file's permissions or {where}")


def context(props):
    """The ``ssl.SSLContext`` for connections of ``props``.

    An SSLContext given as ``props.ssl`` is returned as it is. Otherwise
    a client context: the CAs of ``ca_file`` (None: the system's trust
    store), TLS 1.2 or later, the client certificate of
    ``cert_file``/``key_file``, and unless ``verify`` is False the
    certificate chain and host name checked (verify=False logs a
    warning each time a context is made). The context is kept on
    ``props`` and made again only when one of the files changed (a
    renewed certificate is used from the next connection on). Raises
    ConfigurationError if a file cannot be loaded.
    """
    if isinstance(props.ssl, ssl.SSLContext):
        return props.ssl
    stamp = _stamp(props)
    cached = props.__dict__.get('_tls_context')
    if cached is not None and cached[0] == stamp:
        return cached[1]
    made = _make_context(props)
    props.__dict__['_tls_context'] = (stamp, made)
    return made


def _stamp(props):
    """What the context of ``props`` depends on, files' mtimes included."""
    stamp = [props.verify]
    for name, _, _ in FILES:
        path = getattr(props, name)
        try:
            info = os.stat(path) if path else None
        except OSError:
            info = None
        stamp.append((path, info and (info.st_mtime_ns, info.st_size)))
    return tuple(stamp)


def _make_context(props):
    try:
        made = ssl.create_default_context(cafile=props.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"ca_file {props.ca_file!r} cannot be loaded ({exc}): it must "
            "hold the CA certificate(s) in PEM format") from None
    made.minimum_version = ssl.TLSVersion.TLSv1_2
    if props.cert_file is not None:
        _load_client_certificate(made, props.cert_file, props.key_file)
    if not props.verify:
        made.check_hostname = False
        made.verify_mode = ssl.CERT_NONE
        logger.warning(
            'TLS to %s does not verify the broker\'s certificate '
            '(verify=False): anyone between here and the broker can read '
            'and change the messages; use it only for tests', props.url())
    return made


def _load_client_certificate(made, cert_file, key_file):
    def no_password():
        # OpenSSL would prompt on the terminal; a server cannot answer
        raise ConfigurationError(
            f"key_file {key_file or cert_file!r} is encrypted: give an "
            "unencrypted key (readable only by this process's user)")

    try:
        made.load_cert_chain(cert_file, key_file, password=no_password)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"client certificate cannot be loaded from cert_file "
            f"{cert_file!r} and key_file {key_file!r} ({exc}): both must be "
            "PEM, the key must match the certificate, and without key_file "
            "cert_file must hold the key too") from None


def server_hostname(props, host):
    """The name the broker's certificate is checked against and sent as
    SNI: ``props.server_hostname``, or else ``host``, the host name or IP
    address connected to (without port; each broker of a cluster its
    own)."""
    return props.server_hostname or host


def options(props, address):
    """The ``ssl=`` argument of a ``connection_class`` connection to
    ``address`` (``host:port``). Raises ConfigurationError if the
    context cannot be made."""
    host, _ = to_host_port(address)
    return dict(context=context(props),
                server_hostname=server_hostname(props, host))


class TLSTransport(SSLTransport):
    """py-amqp's SSL transport, with the socket wrapped by a given context.

    ``ssl`` is ``options(props, address)``: the SSLContext and the name
    to check and send as SNI. The handshake stays py-amqp's (after the
    TCP connect, bounded by connect_timeout). After it, reads and writes
    may block for ``read_timeout`` (zamqp passes ``props.timeout``), as
    on a plain TCP connection; py-amqp would leave connect_timeout
    (py-amqp issue 474). The socket must keep a timeout: the ssl module
    retries a read that the socket's SO_RCVTIMEO ended, so a blocking
    TLS socket would wait forever for a broker that went silent.
    """

    def _setup_transport(self):
        super()._setup_transport()
        if self.read_timeout:
            self.sock.settimeout(self.read_timeout)

    def _shutdown_transport(self):
        """Unwrap TLS before closing (py-amqp does), waiting at most
        connect_timeout for the broker's close_notify."""
        if self.sock is not None and self.connect_timeout:
            self.sock.settimeout(self.connect_timeout)
        super()._shutdown_transport()

    def _wrap_socket(self, sock, context, server_hostname):
        return context.wrap_socket(sock, server_hostname=server_hostname,
                                   do_handshake_on_connect=False)

    def _write(self, s):
        """Write ``s``. If the broker closed the connection, raise the
        alert it sent before, if any: with TLS 1.3 the broker refuses a
        missing or unknown client certificate only after the client's
        handshake is done, and the first write may find it gone."""
        try:
            super()._write(s)
        except (ssl.SSLEOFError, ConnectionResetError) as exc:
            # or as a reset (seen on Python 3.9 and, always, on 3.13)
            alert = self._alert()
            if alert is None:
                raise
            raise alert from exc

    def _alert(self):
        """The SSLError of a TLS alert waiting on the socket, or None."""
        try:
            self.sock.settimeout(1.0)
            self.sock.read(1)
        except ssl.SSLError as exc:
            if 'ALERT' in (exc.reason or ''):
                return exc
        except OSError:
            pass
        return None


class _TLSConnection:
    """Mixin of a py-amqp Connection whose TLS goes through TLSTransport."""

    def Transport(self, host, connect_timeout, ssl=False,
                  read_timeout=None, write_timeout=None, **kwargs):
        if not ssl:
            return super().Transport(host, connect_timeout, ssl,
                                     read_timeout, write_timeout, **kwargs)
        return TLSTransport(host, connect_timeout=connect_timeout, ssl=ssl,
                            read_timeout=read_timeout,
                            write_timeout=write_timeout, **kwargs)


@functools.lru_cache(maxsize=None)
def connection_class(base=amqp.Connection):
    """``base`` (a py-amqp Connection class) with TLS through TLSTransport;
    its ``ssl`` argument must be ``options(props, address)``."""
    return type(f'TLS{base.__name__}', (_TLSConnection, base),
                {'__module__': __name__, '__doc__': base.__doc__})


def diagnose(exc, props, host):
    """Why a TLS handshake with ``host`` failed: ``(text, recoverable)``,
    or None if ``exc`` is no TLS failure this module knows.

    Failures a setting must fix (the broker's certificate not trusted or
    not for this name, a port without TLS, the broker refusing the
    client's certificate or its absence) are not recoverable: trying
    again cannot help.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _verify_failed(exc, props, host), False
    if not isinstance(exc, ssl.SSLError):
        return None
    reason = exc.reason or ''
    if any(word in reason for word in _NOT_TLS):
        return (f"the broker did not answer with TLS ({reason}): the port "
                "is probably a plain AMQP port (RabbitMQ's default 5672); "
                "use the broker's TLS port (default 5671), or amqp:// "
                "without TLS"), False
    if 'CERTIFICATE_REQUIRED' in reason or (
            'HANDSHAKE_FAILURE' in reason and props.cert_file is None):
        return (f"the broker requires a client certificate ({reason}): "
                "give cert_file and key_file (?certfile=&keyfile= in the "
                "URL)"), False
    if 'UNKNOWN_CA' in reason or 'BAD_CERTIFICATE' in reason or \
            'CERTIFICATE_UNKNOWN' in reason:
        return (f"the broker refused the client certificate ({reason}): "
                f"cert_file {props.cert_file!r} must be signed by a CA in "
                "the broker's ssl_options.cacertfile"), False
    if 'CERTIFICATE_EXPIRED' in reason:
        return (f"the broker refused the client certificate as expired "
                f"({reason}): renew cert_file {props.cert_file!r}"), False
    if 'ALERT' in reason:
        return (f"the broker refused the TLS handshake ({reason}): check "
                "the broker's ssl_options (TLS versions, ciphers, client "
                "certificates) against cert_file and key_file"), False
    return None


def _verify_failed(exc, props, host):
    code, message = exc.verify_code, exc.verify_message
    if code in _HOSTNAME_MISMATCH:
        expected = server_hostname(props, host)
        return (f"certificate verify failed: the broker's certificate is "
                f"not valid for {expected!r} ({message}): connect by a "
                "name the certificate holds (fix host) or set "
                "server_hostname (?server_name_indication= in the URL) to "
                "that name")
    if code in _EXPIRED:
        return (f"certificate verify failed: the broker's certificate is "
                f"expired or not yet valid ({message}): renew it on the "
                "broker, or check this machine's clock")
    if isinstance(props.ssl, ssl.SSLContext):
        trusted = "the CAs of the SSLContext given as ssl"
    elif props.ca_file:
        trusted = f"ca_file {props.ca_file!r}"
    else:
        trusted = "the system's trust store (no ca_file given)"
    why = "is not signed by a CA this client trusts" \
        if code in _UNTRUSTED else "was refused"
    return (f"certificate verify failed: the broker's certificate {why} "
            f"({message}): check ca_file, which must hold the CA that "
            f"signed the broker's certificate; now {trusted} is used")
