"""Message signatures: HMAC-SHA256 with shared secrets, key rotation.

A producer whose props have a secret adds the header ``x-zamqp-signature``
(``v1:<key id>:<hex HMAC-SHA256>``) to every message. The MAC covers the
body and what says how to read it or what it is: ``content_type``,
``content_encoding``, ``type``, ``message_id``, ``timestamp`` and every
application header whose name does not start with ``x-``. Headers
starting with ``x-`` are bookkeeping that brokers and consumers add on the
way (``x-death``, ``x-zamqp-retries``, ``x-zamqp-error``, ...) and are not
covered, so retried and dead-lettered copies keep a valid signature.
Exchange and routing key are not covered either: a signed message means
"a peer holding the secret wrote this", not "it was sent here".

The key id (8 hex digits) is derived from the secret by HMAC, so it names
a secret in logs without revealing it; the consumer uses it to pick the
secret to check with, so rotation costs one MAC per message.
"""
import binascii
import calendar
import datetime
import decimal
import hashlib
import hmac
import time

from zamqp.exceptions import ConfigurationError
from zamqp.exceptions import MessageRefused

#: The header that carries the signature.
HEADER = 'x-zamqp-signature'
VERSION = 'v1'
#: Shortest secret accepted (characters, or bytes for a bytes secret).
MIN_SECRET = 16
_KEY_ID_LABEL = b'zamqp key id'
_HEX = frozenset('0123456789abcdef')
_V1 = VERSION + ':'


def key_id(secret):
    """The public name of ``secret``: 8 hex digits, not reversible."""
    return hmac.new(_key(secret), _KEY_ID_LABEL,
                    hashlib.sha256).hexdigest()[:8]


def _key(secret):
    return secret if isinstance(secret, bytes) else secret.encode('utf-8')


def check_secret(secret, setting):
    """Raise ConfigurationError naming ``setting`` for an unusable secret
    (the message never shows the secret)."""
    if not isinstance(secret, (str, bytes)):
        raise ConfigurationError(
            f"{setting} must be a string, got a {type(secret).__name__}")
    if len(secret.strip()) < MIN_SECRET:
        raise ConfigurationError(
            f"{setting} is shorter than {MIN_SECRET} characters: use a "
            "long random secret, e.g. the output of python -c "
            "\"import secrets; print(secrets.token_urlsafe(32))\"")


class Signer:
    """Signs with one secret, verifies with any of the accepted ones.

    ``secret`` signs (and verifies); ``accepted`` are further secrets
    whose signatures are accepted (the next secret before every peer
    signs with it, or the previous one until no message signed with it
    is left). ``max_age`` (seconds, or None) refuses signed messages
    whose timestamp is older than that, or more than ``max_age`` in the
    future, which limits replays.
    """

    def __init__(self, secret, accepted=(), max_age=None):
        check_secret(secret, 'secret')
        for other in accepted:
            check_secret(other, 'accepted_secrets')
        self._signing_key = _hmac(secret)
        self.key_id = key_id(secret)
        self._keys = {}
        for one in (secret, *accepted):
            self._keys.setdefault(key_id(one), []).append(_hmac(one))
        self.max_age = max_age
        self._prefix = f'{VERSION}:{self.key_id}:'

    @property
    def key_ids(self):
        """Ids of every accepted secret, the signing one first."""
        return tuple(self._keys)

    def sign(self, body, properties):
        """The signature header value for ``body`` with ``properties``
        (a py-amqp properties dict; ``application_headers`` as sent)."""
        return self._prefix + _mac(self._signing_key, body, properties)

    def verify(self, body, properties):
        """Return normally if the message carries a valid signature by an
        accepted secret; raise MessageRefused saying why otherwise."""
        headers = properties.get('application_headers') or {}
        value = headers.get(HEADER)
        if value is None:
            raise MessageRefused(
                f"the message is not signed (no {HEADER} header) and this "
                "consumer accepts only signed messages: sign it with one "
                "of the accepted secrets (or set accept_unsigned)")
        version, kid, mac = _parse(value)
        keys = self._keys.get(kid)
        if keys is None:
            raise MessageRefused(
                f"the message is signed with key id {kid}, which is not "
                f"one of the accepted secrets (key ids "
                f"{', '.join(self._keys)}): add that secret to "
                "accepted_secrets or fix the sender's secret")
        for key in keys:    # usually one: rotation adds a second
            if hmac.compare_digest(_mac(key, body, properties), mac):
                break
        else:
            raise MessageRefused(
                f"the signature (key id {kid}) does not match: the "
                "message was changed on the way or signed with another "
                "secret")
        if self.max_age is not None:
            self._check_age(properties.get('timestamp'))

    def _check_age(self, timestamp):
        if timestamp is None:
            raise MessageRefused(
                "the signed message has no timestamp and this consumer "
                "checks signature_max_age: sign it with zamqp 1.0 or later")
        age = time.time() - _seconds(timestamp)
        if abs(age) > self.max_age:
            raise MessageRefused(
                f"the signed message is {age:.0f} s old (timestamp), more "
                f"than signature_max_age={self.max_age:g}: a replay, or "
                "clocks out of step")

    def __repr__(self):
        others = ', '.join(k for k in self._keys if k != self.key_id)
        also = f', also accepting {others}' if others else ''
        return f'<Signer signing key id {self.key_id}{also}>'


def _parse(value):
    if type(value) is str and len(value) == 76 and value[11] == ':' \
            and value.startswith(_V1) and ':' not in value[3:11] \
            and _HEX.issuperset(value[12:]):
        return VERSION, value[3:11], value[12:]     # the usual form
    if isinstance(value, bytes):
        value = value.decode('ascii', 'replace')
    parts = value.split(':') if isinstance(value, str) else ()
    if len(parts) != 3 or parts[0] != VERSION or len(parts[1]) != 8 \
            or len(parts[2]) != 64 or not _HEX.issuperset(parts[2]):
        raise MessageRefused(
            f"the {HEADER} header is malformed (expected "
            f"'{VERSION}:<key id>:<64 hex digits>'): the sender is not "
            "zamqp or the header was changed")
    return parts


def _hmac(secret):
    """An HMAC-SHA256 keyed with ``secret``, to be copied per message:
    OpenSSL's own object where the stdlib wraps one (its ``copy`` skips
    a Python wrapper per message), else the stdlib's."""
    keyed = hmac.new(_key(secret), digestmod=hashlib.sha256)
    inner = getattr(keyed, '_hmac', None)
    return keyed if inner is None or not hasattr(inner, 'copy') else inner


def _mac(keyed, body, properties):
    """Hex HMAC of the message with ``keyed`` (from ``_hmac``).

    A copy of a keyed HMAC object, not ``hmac.digest()``: the one-shot
    function releases the GIL for every message, however small, and the
    consumer's threads then queue for it (a third of the throughput)."""
    mac = keyed.copy()
    if isinstance(body, str):       # a channel that decoded text bodies
        body = body.encode('utf-8', 'surrogatepass')
    fields = signed_fields(properties)
    if len(body) <= _JOIN:          # one update: cheaper for small ones
        mac.update(b'%b\0%b' % (fields, body))
    else:
        mac.update(fields)
        mac.update(b'\0')
        mac.update(body)
    return mac.hexdigest()


#: Bodies up to this size are joined to the fields for one MAC update.
_JOIN = 4096


def signed_fields(properties):
    """The canonical bytes of the signed properties and headers: the
    same on both ends, whatever types the AMQP round trip gives back
    (bytes and str, naive and aware datetimes, ints of any size).

    They are ``ascii()`` of a list of strings, ints, None and lists: all
    non-ASCII characters escaped, so the same on every Python 3. The walk
    recurses along nested headers: received headers are at most
    zamqp.frames.HEADER_DEPTH deep, and deeper ones are refused here.
    """
    try:
        return _signed_fields(properties)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise MessageRefused(
            f"cannot sign or verify the message's properties: {exc}"
        ) from None


def _signed_fields(properties):
    get = properties.get
    headers = get('application_headers')
    signed = [[str(name), _canonical(headers[name])]
              for name in sorted(headers)
              if not str(name).lower().startswith('x-')] if headers else []
    timestamp = get('timestamp')
    fields = [VERSION, _text(get('content_type')),
              _text(get('content_encoding')), _text(get('type')),
              _text(get('message_id')),
              None if timestamp is None else _seconds(timestamp), signed]
    return ascii(fields).encode('ascii')


def _text(value):
    if value is None or isinstance(value, str):
        return value or ''
    raise TypeError(f'a property of type {type(value).__name__}')


def _canonical(value):
    if isinstance(value, bool):
        return ['b', value]
    if isinstance(value, int):
        return ['i', str(value)]
    if isinstance(value, float):
        return ['f', repr(value)]
    if isinstance(value, str):
        value = value.encode('utf-8', 'surrogatepass')
    if isinstance(value, (bytes, bytearray)):
        return ['s', binascii.hexlify(value).decode('ascii')]
    if value is None:
        return ['n']
    if isinstance(value, decimal.Decimal):
        # AMQP keeps the value, not the notation: 1.50 arrives as 1.5
        return ['d', str(value.normalize()) if value else '0']
    if isinstance(value, datetime.datetime):
        return ['t', _seconds(value)]
    if isinstance(value, (list, tuple)):
        return ['l', [_canonical(item) for item in value]]
    if isinstance(value, dict):
        return ['m', [[str(k), _canonical(v)]
                      for k, v in sorted(value.items())]]
    raise TypeError(f"header value of type {type(value).__name__} cannot "
                    "be signed (not an AMQP field type)")


def _seconds(timestamp):
    if isinstance(timestamp, datetime.datetime):
        return calendar.timegm(timestamp.utctimetuple())
    return int(timestamp)
