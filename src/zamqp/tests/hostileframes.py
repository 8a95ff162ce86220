"""Hand-made AMQP 0-9-1 frames: encoders, a hostile content corpus and a
tiny raw publisher.

Everything here is built with struct, not with py-amqp's encoder, so it
can say what py-amqp would never write: shortstrs that are not UTF-8,
timestamps past year 9999, unknown field types, tables nested thousands
of levels, property flags with bits Basic does not define.

``CASES`` are ``Case(name, properties, body, fault, routing_key)``:
``properties`` is the raw property flags and list of a Basic content
header, ``fault`` whether zamqp.frames passes the message on with a
``zamqp_fault``: py-amqp alone would raise while decoding it, except for
the ``policy`` cases, which py-amqp decodes (tables nested more than
HEADER_DEPTH levels; the flag continuation bit, which it ignores and so
misreads the properties).
``RawPublisher`` publishes them with publisher confirms, on a plain
socket, and says for each whether RabbitMQ took it (acked) or closed
the channel or the connection.
"""
import collections
import socket
import struct

import amqp

FRAME_END = b'\xce'
FRAME_MAX = 131072      # RabbitMQ's default, what Tune offers
#: py-amqp before 5.4 (5.3.1 is the newest for Python 3.9) reads a
#: table's 's' as a short string, not as RabbitMQ's 16-bit int, and
#: raises for a table key that is not UTF-8 (5.4 keeps it as bytes): with
#: it, the cases of such content are faults.
OLD_PY_AMQP = amqp.VERSION[:2] < (5, 4)

# Basic property flag bits, in header order, with their value types.
PROPERTIES = (
    ('content_type', 0x8000, 's'), ('content_encoding', 0x4000, 's'),
    ('application_headers', 0x2000, 'F'), ('delivery_mode', 0x1000, 'o'),
    ('priority', 0x0800, 'o'), ('correlation_id', 0x0400, 's'),
    ('reply_to', 0x0200, 's'), ('expiration', 0x0100, 's'),
    ('message_id', 0x0080, 's'), ('timestamp', 0x0040, 'T'),
    ('type', 0x0020, 's'), ('user_id', 0x0010, 's'),
    ('app_id', 0x0008, 's'), ('cluster_id', 0x0004, 's'),
)
SHORTSTR_PROPERTIES = tuple(name for name, _, t in PROPERTIES if t == 's')
BAD_UTF8 = b'bad\xff\xfe\xc3('


# encoders of values

def shortstr(raw):
    raw = raw.encode() if isinstance(raw, str) else raw
    return struct.pack('>B', len(raw)) + raw


def longstr(raw):
    raw = raw.encode() if isinstance(raw, str) else raw
    return struct.pack('>I', len(raw)) + raw


def table(*items):
    """A field table of ``(key, field)`` items, ``field`` from ``field``
    (type byte and value bytes)."""
    data = b''.join(shortstr(key) + value for key, value in items)
    return struct.pack('>I', len(data)) + data


def array(*fields):
    data = b''.join(fields)
    return struct.pack('>I', len(data)) + data


def field(ftype, value=b''):
    """A table field: type letter and the value's bytes (for the fixed
    size types, a Python value packed as py-amqp reads the letter)."""
    formats = {'t': '>B', 'b': '>b', 'B': '>B', 's': '>h', 'U': '>h',
               'u': '>H', 'I': '>i', 'i': '>I', 'L': '>q', 'l': '>q',
               'f': '>f', 'd': '>d', 'T': '>Q'}
    if ftype in formats and not isinstance(value, bytes):
        value = struct.pack(formats[ftype], value)
    return ftype.encode('latin-1') + value


def decimal(scale, value):
    return field('D', struct.pack('>Bi', scale, value))


#: One field of each AMQP type py-amqp reads, with its decoded value.
EVERY_TYPE = (
    ('t', field('t', 1), True), ('b', field('b', -5), -5),
    ('B', field('B', 250), 250), ('U', field('U', -300), -300),
    ('u', field('u', 65000), 65000), ('I', field('I', -70000), -70000),
    ('i', field('i', 4000000000), 4000000000),
    ('L', field('L', -2 ** 40), -2 ** 40), ('l', field('l', 2 ** 62), 2 ** 62),
    ('f', field('f', 1.5), 1.5), ('d', field('d', -2.25), -2.25),
    ('D', decimal(2, 12345), None), ('s', field('s', -7), -7),
    ('S', field('S', longstr('text')), 'text'),
    ('A', field('A', array(field('I', 1), field('S', longstr('a')))),
     [1, 'a']),
    ('T', field('T', 1700000000), None),
    ('F', field('F', table(('k', field('V')))), {'k': None}),
    ('V', field('V'), None), ('x', field('x', longstr(b'\x00\xff')),
                             b'\x00\xff'),
)


def nested(depth, kind='F'):
    """A header value nesting tables (``kind='F'``) or arrays ``depth``
    levels, built as bytes from the inside out (no recursion)."""
    value = field('V')
    for _ in range(depth):
        value = field('F', table(('k', value))) if kind == 'F' \
            else field('A', array(value))
    return value


def properties(flags_extra=0, **values):
    """Raw property flags and list: ``values`` are raw bytes by property
    name (a shortstr without its length byte, a table with its length,
    an octet or timestamp as int), ``flags_extra`` ored into the flags."""
    flags, parts = flags_extra, []
    for name, bit, ptype in PROPERTIES:
        if name not in values:
            continue
        value = values[name]
        flags |= bit
        if ptype == 's':
            parts.append(shortstr(value))
        elif ptype == 'o':
            parts.append(struct.pack('>B', value))
        elif ptype == 'T':
            parts.append(struct.pack('>Q', value))
        else:
            parts.append(value)
    return struct.pack('>H', flags) + b''.join(parts)


def headers(*items, **values):
    """Properties with application headers of ``items``."""
    return properties(application_headers=table(*items), **values)


# encoders of frames

def frame(ftype, channel, payload):
    return struct.pack('>BHI', ftype, channel, len(payload)) + payload \
        + FRAME_END


def method(channel, class_id, method_id, args=b''):
    return frame(1, channel, struct.pack('>HH', class_id, method_id) + args)


def content_header(body_size, props, class_id=60):
    """The payload of a content header frame."""
    return struct.pack('>HHQ', class_id, 0, body_size) + props


def body_frames(channel, body, frame_max=FRAME_MAX):
    size = frame_max - 8
    return [frame(3, channel, body[i:i + size])
            for i in range(0, len(body), size)]


def deliver_args(delivery_tag, exchange=b'ex', routing_key=b'rk',
                 consumer_tag=b'ctag', redelivered=False):
    return (shortstr(consumer_tag) + struct.pack('>QB', delivery_tag,
                                                 redelivered)
            + shortstr(exchange) + shortstr(routing_key))


def get_ok_args(delivery_tag, exchange=b'ex', routing_key=b'rk',
                redelivered=False, message_count=0):
    return (struct.pack('>QB', delivery_tag, redelivered) + shortstr(exchange)
            + shortstr(routing_key) + struct.pack('>I', message_count))


def return_args(reply_code=312, reply_text=b'NO_ROUTE', exchange=b'ex',
                routing_key=b'rk'):
    return (struct.pack('>H', reply_code) + shortstr(reply_text)
            + shortstr(exchange) + shortstr(routing_key))


def delivery(channel, delivery_tag, props, body, frame_max=FRAME_MAX,
             **args):
    """The frames (type, channel, payload) of one Basic.Deliver, as a
    transport's read_frame returns them."""
    frames = [(1, channel, struct.pack('>HH', 60, 60)
               + deliver_args(delivery_tag, **args)),
              (2, channel, content_header(len(body), props))]
    size = frame_max - 8
    frames += [(3, channel, body[i:i + size])
               for i in range(0, len(body), size)]
    return frames


# the corpus

Case = collections.namedtuple(
    'Case', 'name properties body fault routing_key policy')
Case.__new__.__defaults__ = (b'rk', False)


def _cases():
    body = b'{"hostile": true}'
    yield Case('no properties', properties(), body, False)
    for name, value, _ in EVERY_TYPE:
        yield Case(f'header type {name}', headers(('v', value)), body,
                   OLD_PY_AMQP and name == 's')
    yield Case('header array of every type', headers(
        ('a', field('A', array(*(v for _, v, _ in EVERY_TYPE))))),
        body, OLD_PY_AMQP)
    for stamp in (2 ** 63, 2 ** 64 - 1, 253402300800):
        yield Case(f'header timestamp {stamp}',
                   headers(('t', field('T', stamp))), body, True)
    yield Case('timestamp property 2**64-1',
               properties(timestamp=2 ** 64 - 1), body, False)
    yield Case('decimal scale 255', headers(('d', decimal(255, -2 ** 31))),
               body, False)
    yield Case('float NaN', headers(('f', field('f', b'\x7f\xc0\0\0'))),
               body, False)
    yield Case('double infinity', headers(('d', field('d', float('inf')))),
               body, False)
    yield Case('double NaN', headers(('d', field('d', float('nan')))),
               body, False)
    for name in SHORTSTR_PROPERTIES:
        yield Case(f'bad UTF-8 {name}', properties(**{name: BAD_UTF8}),
                   body, True)
    yield Case('bad UTF-8 header key', headers((BAD_UTF8, field('V'))),
               body, OLD_PY_AMQP)
    yield Case('bad UTF-8 longstr header value',
               headers(('v', field('S', longstr(BAD_UTF8)))), body, False)
    yield Case('unknown header type Z', headers(('z', b'Z\x00')), body, True)
    yield Case('unknown type in a nested array', headers(
        ('a', field('A', array(field('I', 1), b'?')))), body, True)
    yield Case('headers nested 32 levels', headers(('n', nested(31))),
               body, False)
    yield Case('headers nested 33 levels', headers(('n', nested(32))),
               body, True, policy=True)
    yield Case('arrays nested 33 levels', headers(('n', nested(32, 'A'))),
               body, True, policy=True)
    yield Case('headers nested 2000 levels', headers(('n', nested(1999))),
               body, True)
    yield Case('table length past the end', properties(
        application_headers=struct.pack('>I', 50) + shortstr('k') + b'V'),
        body, True)
    yield Case('flag bit 0x0002', properties(0x0002), body, False)
    yield Case('flag continuation bit', properties(0x0001) + b'\x00\x00',
               body, True, policy=True)
    yield Case('bad UTF-8 routing key', properties(), body, True,
               routing_key=BAD_UTF8)
    for size, label in ((0, 'empty body'), (FRAME_MAX - 8, 'body of one '
                        'full frame'), (FRAME_MAX - 7, 'body one byte '
                        'over a frame'), (1000000, 'body of 1 MB')):
        yield Case(label, properties(), b'b' * size, False)
    # a header frame whose payload is frame_max - 8 bytes exactly
    fill = FRAME_MAX - 8 - len(content_header(0, headers(('p', field(
        'S', longstr(b''))))))
    yield Case('header frame of frame_max', headers(
        ('p', field('S', longstr(b'p' * fill)))), body, False)


CASES = tuple(_cases())


# a raw publisher

class Closed(Exception):
    """The broker closed the channel or the connection."""

    def __init__(self, scope, code, text):
        super().__init__(f'{scope} closed: {code} {text}')
        self.scope, self.code, self.text = scope, code, text


class RawPublisher:
    """An AMQP 0-9-1 client on a plain socket: handshake, a channel in
    confirm mode, publishes of hand-made frames."""

    def __init__(self, host='127.0.0.1', port=5672, user='guest',
                 password='guest', vhost='/', timeout=10):
        self.address = (host, port)
        self.credentials = (user, password, vhost)
        self.timeout = timeout
        self.sock = None
        self.channel = 0
        self.frame_max = FRAME_MAX
        self.connect()

    def connect(self):
        user, password, vhost = self.credentials
        self.sock = socket.create_connection(self.address, self.timeout)
        self._buffer = b''
        self.sock.sendall(b'AMQP\x00\x00\x09\x01')
        self._expect(0, (10, 10))                   # Connection.Start
        response = b'\x00' + user.encode() + b'\x00' + password.encode()
        self._send(method(0, 10, 11, table(
            ('product', field('S', longstr('zamqp hostile frames'))))
            + shortstr('PLAIN') + longstr(response) + shortstr('en_US')))
        args = self._expect(0, (10, 30))            # Connection.Tune
        channel_max, frame_max, _ = struct.unpack_from('>HIH', args)
        self.frame_max = min(frame_max or FRAME_MAX, FRAME_MAX)
        self._send(method(0, 10, 31, struct.pack(
            '>HIH', channel_max, self.frame_max, 0)))
        self._send(method(0, 10, 40, shortstr(vhost) + shortstr('') + b'\0'))
        self._expect(0, (10, 41))
        self.channel = 0
        self.open_channel()

    def open_channel(self):
        self.channel += 1
        self._send(method(self.channel, 20, 10, shortstr('')))
        self._expect(self.channel, (20, 11))
        self._send(method(self.channel, 85, 10, b'\0'))     # Confirm.Select
        self._expect(self.channel, (85, 11))
        self.published = 0

    def declare_exchange(self, name, kind='fanout'):
        self._send(method(self.channel, 40, 10, struct.pack('>H', 0)
                          + shortstr(name) + shortstr(kind) + b'\x02'
                          + table()))               # durable
        self._expect(self.channel, (40, 11))

    def publish(self, exchange, routing_key, props, body, class_id=60,
                header=None):
        """Publish; return 'passed' (acked) or 'refused: <reason>' (the
        channel or the connection closed; both are opened again)."""
        ch = self.channel
        payload = header if header is not None else content_header(
            len(body), props, class_id)
        data = [method(ch, 60, 40, b'\0\0' + shortstr(exchange)
                       + shortstr(routing_key) + b'\0'),
                frame(2, ch, payload)]
        data += body_frames(ch, body, self.frame_max)
        try:
            self.sock.sendall(b''.join(data))
            self.published += 1
            self._expect(ch, (60, 80))                  # Basic.Ack
        except Closed as exc:
            self._recover(exc)
            return f'refused: {exc}'
        except OSError as exc:
            self.close()
            self.connect()
            return f'refused: connection lost ({exc})'
        return 'passed'

    def _recover(self, exc):
        if exc.scope == 'connection':
            self.close()
            self.connect()
        else:
            self.open_channel()

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    # frames

    def _send(self, data):
        self.sock.sendall(data)

    def _read(self, n):
        while len(self._buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError('the broker closed the socket')
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def read_frame(self):
        ftype, channel, size = struct.unpack('>BHI', self._read(7))
        payload = self._read(size + 1)[:-1]
        return ftype, channel, payload

    def _expect(self, channel, sig):
        """Read frames until method ``sig`` on ``channel``; the arguments.
        Closed if the broker closes the channel or connection first."""
        while True:
            ftype, ch, payload = self.read_frame()
            if ftype != 1:
                continue
            got = struct.unpack_from('>HH', payload)
            if got == (10, 50):                 # Connection.Close
                code, = struct.unpack_from('>H', payload, 4)
                text = payload[7:7 + payload[6]].decode('utf-8', 'replace')
                self._send(method(0, 10, 51))
                raise Closed('connection', code, text)
            if got == (20, 40):                 # Channel.Close
                code, = struct.unpack_from('>H', payload, 4)
                text = payload[7:7 + payload[6]].decode('utf-8', 'replace')
                self._send(method(ch, 20, 41))
                raise Closed('channel', code, text)
            if ch == channel and got == sig:
                return payload[4:]
