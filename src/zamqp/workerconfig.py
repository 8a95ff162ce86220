"""The config file of ``zamqp worker`` / ``check`` / ``status``: INI sections.

Contract
--------

``load(path, default_url=None)`` reads one INI file (configparser, no
interpolation, no ``[DEFAULT]`` inheritance) and returns a WorkerConfig,
or raises ConfigError (a zamqp ConfigurationError) whose text names the
file, the line, the section, the key and, for an unknown section or key,
the nearest known one (difflib). Nothing is ever silently defaulted: an
unknown section or key, a duplicate, a value its option refuses, a
handler that cannot be imported is an error. It never imports Zope
(``zamqp.zope``, zope.schema, zope.configuration) and opens no socket.

Sections (names are case-sensitive, keys are not):

``[connection NAME]`` (``[connection]`` is ``[connection default]``)
    The options of ``<zamqp:connection>``: url, host, hosts, port, user,
    password, virtual_host, ssl, heartbeat, connect_timeout, timeout,
    ca_file, cert_file, key_file, server_hostname, verify, secret,
    secret_env, accepted_secrets, accept_unsigned, signature_max_age,
    max_size, max_depth, declare, connection_name, channel_max,
    frame_max, auth_mechanism; and ``exchange`` and ``type``, the defaults of
    the consumers on this connection. A connection without url, host or
    hosts connects to ``default_url`` (the command's ``--url``). The
    connection ``default`` need not be declared: it is ``default_url``.
``[consumer NAME]``
    The options of ``<zamqp:consumer>`` with the same meanings:
    connection, exchange, type, exchange_arguments, declare,
    routing_key, queue, handler, events, shared, durable, ack, prefetch,
    max_retries, dead_letter_exchange (``none`` drops), queue_arguments,
    binding_arguments, queue_type, accept, allow, signed_allow, max_size,
    max_depth, untyped, enabled; and those of stream readers: stream,
    reader, offsets (a directory, required with stream), start,
    max_age (``none``: no limit), max_length_bytes,
    max_segment_size_bytes. ``handler`` is the dotted name of a callable
    called with a MessageReceived event (``consumer``, ``body``,
    ``message``, ``site`` None), as in Zope; ``events = true`` notifies
    the body as a zope event instead; one of the two is required.
    ``site`` and ``user`` are Zope's and refused here.
``[worker]``
    ``stop_timeout`` (seconds a running handler gets after SIGTERM,
    default 5), ``log_level`` (DEBUG, INFO, WARNING, ERROR; default
    INFO), ``imports`` (modules imported first, e.g. those that add
    ``zope.event`` subscribers for ``events = true``), ``metrics_port``
    (serve zamqp.metrics' Prometheus text at
    ``http://metrics_host:metrics_port/metrics``; default: no endpoint)
    and ``metrics_host`` (default 127.0.0.1).

Values: booleans true/yes/on/1 or false/no/off/0; whole numbers and
numbers with the ZCML bounds; lists separated by spaces or newlines;
``0`` for max_size / max_depth is "no limit". Values of url, password,
secret and accepted_secrets never appear in an error.
"""
import configparser
import difflib
import importlib
import re

from zamqp.exceptions import ConfigurationError
from zamqp.props import AMQPProps
from zamqp.props import AUTH_MECHANISMS
from zamqp.props import EXCHANGE_TYPES

TRUE = ('true', 'yes', 'on', '1')
FALSE = ('false', 'no', 'off', '0')
SECRET_KEYS = ('url', 'password', 'secret', 'accepted_secrets')
DEFAULT_EXCHANGE = 'zamqp.broadcast.fanout'
LOG_LEVELS = ('DEBUG', 'INFO', 'WARNING', 'ERROR')


class ConfigError(ConfigurationError):
    """A config file that cannot be used; the text says where and why."""


# converters: text -> value, ValueError with the expected form


def text(value):
    return value


def boolean(value):
    word = value.lower()
    if word in TRUE:
        return True
    if word in FALSE:
        return False
    raise ValueError(f'a boolean: {"/".join(TRUE)} or {"/".join(FALSE)}')


def whole(minimum=None, maximum=None):
    def convert(value):
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or (minimum is not None and number < minimum) or (
                maximum is not None and number > maximum):
            bounds = ''.join(
                [f', at least {minimum}' if minimum is not None else '',
                 f', at most {maximum}' if maximum is not None else ''])
            raise ValueError(f'a whole number{bounds}')
        return number
    return convert


def number(minimum):
    def convert(value):
        try:
            result = float(value)
        except ValueError:
            result = None
        if result is None or result != result or result < minimum:
            raise ValueError(f'a number of at least {minimum}')
        return result
    return convert


def choice(*values, lower=True):
    def convert(value):
        word = value.lower() if lower else value
        if word not in values:
            raise ValueError(f'one of {", ".join(values)}')
        return word
    return convert


def words(value):
    return tuple(value.split())


def exchange_type(value):
    if value not in EXCHANGE_TYPES and not (
            value.startswith('x-') and len(value) > 2):
        raise ValueError(f'one of {", ".join(EXCHANGE_TYPES)} or a '
                         "plugin's type (x-...)")
    return value


def declare_mode(value):
    if value.lower() == 'passive':
        return 'passive'
    try:
        return boolean(value)
    except ValueError:
        raise ValueError('a boolean or passive') from None


def arguments(value):
    """AMQP arguments from name=value words: whole numbers become
    integers, true and false booleans, the rest text (as in ZCML)."""
    found = {}
    for word in value.split():
        name, equals, text_ = word.partition('=')
        if not equals or not name:
            raise ValueError(f'name=value words, e.g. x-max-priority=10 '
                             f'({word!r} is not)')
        if text_.lstrip('-').isdigit():
            found[name] = int(text_)
        elif text_.lower() in ('true', 'false'):
            found[name] = text_.lower() == 'true'
        else:
            found[name] = text_
    return found


def modules(value):
    """Import each dotted module name of ``value`` (for what they
    register on import, such as zope.event subscribers)."""
    imported = []
    for name in value.split():
        try:
            imported.append(importlib.import_module(name))
        except Exception as exc:
            raise ValueError(f'importable modules; importing {name} '
                             f'failed: {type(exc).__name__}: {exc}'
                             ) from None
    return tuple(imported)


def limit(value):
    result = whole(0)(value)
    return None if result == 0 else result


def start_position(value):
    """A stream reader's start: an offset as a whole number, else the
    text (checked by the consumer)."""
    return int(value) if value.isdigit() else value


def interval_or_none(value):
    return None if value.lower() == 'none' else value


def dotted(value):
    if not re.fullmatch(r'[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+', value):
        raise ValueError('a dotted name such as mypackage.handlers.on_order')
    module_name, _, name = value.rpartition('.')
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except Exception as exc:
        raise ValueError(f'an importable callable; importing it failed: '
                         f'{type(exc).__name__}: {exc}') from None
    if not callable(obj):
        raise ValueError('a callable')
    return obj


#: [connection NAME]: the attributes of <zamqp:connection>, plus the
#: consumers' default exchange and type.
CONNECTION_OPTIONS = {
    'url': text, 'host': text, 'hosts': words, 'port': whole(1, 65535),
    'user': text, 'password': text, 'virtual_host': text, 'ssl': boolean,
    'heartbeat': whole(0), 'connect_timeout': number(0.0),
    'timeout': number(0.0), 'ca_file': text, 'cert_file': text,
    'key_file': text, 'server_hostname': text, 'verify': boolean,
    'secret': text, 'secret_env': text, 'accepted_secrets': words,
    'accept_unsigned': boolean, 'signature_max_age': number(0.001),
    'max_size': limit, 'max_depth': limit, 'declare': declare_mode,
    'connection_name': text, 'channel_max': whole(0, 65535),
    'frame_max': whole(0), 'auth_mechanism': choice(*AUTH_MECHANISMS,
                                                    lower=False),
    'exchange': text, 'type': exchange_type,
}
#: [consumer NAME]: the attributes of <zamqp:consumer> (site and user are
#: Zope's, refused with a reason).
CONSUMER_OPTIONS = {
    'connection': text, 'exchange': text, 'type': exchange_type,
    'exchange_arguments': arguments, 'declare': declare_mode,
    'routing_key': text, 'queue': text, 'handler': dotted, 'events': boolean,
    'shared': boolean, 'durable': boolean, 'ack': boolean,
    'prefetch': whole(0, 65535), 'max_retries': whole(0),
    'dead_letter_exchange': text, 'queue_type': choice('classic', 'quorum'),
    'accept': words, 'allow': words, 'signed_allow': words,
    'max_size': limit, 'max_depth': limit, 'enabled': boolean,
    'queue_arguments': arguments, 'binding_arguments': arguments,
    'untyped': choice('refuse', 'json', 'bytes', lower=False),
    'stream': boolean, 'reader': text, 'offsets': text,
    'start': start_position, 'max_age': interval_or_none,
    'max_length_bytes': limit, 'max_segment_size_bytes': limit,
}
ZOPE_ONLY = ('site', 'user')
WORKER_OPTIONS = {
    'stop_timeout': number(0.0),
    'log_level': choice(*LOG_LEVELS, lower=False),
    'metrics_port': whole(0, 65535),
    'metrics_host': text,
    'imports': modules,
}
SECTION_KINDS = ('connection', 'consumer', 'worker')


class ConnectionConfig:
    """A ``[connection NAME]`` section: ``props`` and the consumers'
    default ``exchange`` and ``type`` (None: not given)."""

    def __init__(self, name, props, exchange=None, type=None):
        self.name = name
        self.props = props
        self.exchange = exchange
        self.type = type


class ConsumerConfig:
    """A ``[consumer NAME]`` section, converted.

    ``props``: the connection's props on the consumer's exchange;
    ``queue``, ``routing_key``, ``handler``, ``events``, ``enabled``;
    ``options``: the other AMQPConsumer keywords given.
    """

    def __init__(self, name, connection, props, queue, routing_key,
                 handler, events, enabled, options):
        self.name = name
        self.connection = connection
        self.props = props
        self.queue = queue
        self.routing_key = routing_key
        self.handler = handler
        self.events = events
        self.enabled = enabled
        self.options = options

    @property
    def shared(self):
        return bool(self.options.get('shared'))

    @property
    def ack(self):
        ack = self.options.get('ack')
        return bool(self.shared or self.options.get('stream')) \
            if ack is None else ack

    @property
    def dead_letter_exchange(self):
        """The dead-letter exchange the consumer would declare, or None."""
        if 'dead_letter_exchange' in self.options:
            return self.options['dead_letter_exchange']
        return f'{self.props.exchange}.dead' if self.ack else None

    def __repr__(self):
        return f'<ConsumerConfig {self.name!r} queue={self.queue!r}>'


class WorkerConfig:
    """What a config file declares: ``connections`` and ``consumers``
    (dicts by name, in file order), ``stop_timeout``, ``log_level``,
    ``metrics_port`` (None: no endpoint) and ``metrics_host``."""

    def __init__(self, path, connections, consumers, stop_timeout=5.0,
                 log_level='INFO', metrics_port=None,
                 metrics_host='127.0.0.1'):
        self.path = path
        self.connections = connections
        self.consumers = consumers
        self.stop_timeout = stop_timeout
        self.log_level = log_level
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host


def _line_numbers(lines):
    """``{(section, key or None): line number}`` of a config file."""
    numbers, section = {}, None
    for number_, line in enumerate(lines, 1):
        header = re.match(r'\s*\[([^\]]*)\]', line)
        if header:
            section = header.group(1).strip()
            numbers.setdefault((section, None), number_)
            continue
        key = re.match(r'([^\s=:#;][^=:]*?)\s*[=:]', line)
        if key and section is not None:
            numbers.setdefault((section, key.group(1).strip().lower()),
                               number_)
    return numbers


class _Reader:
    def __init__(self, path, lines):
        self.path = path
        self.lines = _line_numbers(lines)

    def error(self, section, key, text):
        line = self.lines.get((section, key)) or \
            self.lines.get((section, None))
        where = f'{self.path}:{line}' if line else self.path
        key_text = f' {key}' if key else ''
        return ConfigError(f'{where}: [{section}]{key_text}: {text}')

    def options(self, section, values, table, extra=()):
        converted = {}
        for key, value in values.items():
            if key not in table:
                if key in extra:
                    raise self.error(section, key, extra[key])
                hint = _nearest(key, table)
                raise self.error(section, key, f'unknown key{hint} (known: '
                                 f'{", ".join(sorted(table))})')
            value = value.strip()
            try:
                converted[key] = table[key](value)
            except ValueError as exc:
                shown = '' if key in SECRET_KEYS else f' {value!r}'
                raise self.error(section, key,
                                 f'value{shown} is not valid: expected {exc}')
        return converted


def _nearest(word, known):
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f'; did you mean {close[0]!r}?' if close else ''


def load(path, default_url=None):
    """The WorkerConfig of the file at ``path`` (see the module's
    docstring); ConfigError if it cannot be used."""
    try:
        with open(path, encoding='utf-8') as file:
            source = file.read()
    except OSError as exc:
        raise ConfigError(f'cannot read config file {path}: '
                          f'{exc.strerror or exc}') from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f'{path}: not UTF-8 text ({exc})') from None
    return parse(source, path, default_url)


def parse(source, path='<config>', default_url=None):
    """The WorkerConfig of the text ``source`` (``path`` for errors)."""
    parser = configparser.ConfigParser(
        interpolation=None, default_section='\x00default', strict=True,
        empty_lines_in_values=False)
    try:
        parser.read_string(source, source=path)
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(f'{path}:{exc.lineno}: section [{exc.section}] '
                          'appears twice: merge them') from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(f'{path}:{exc.lineno}: [{exc.section}] key '
                          f'{exc.option!r} appears twice: keep one') from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(f'{path}:{exc.lineno}: a key before any section: '
                          'begin with [consumer NAME] or [connection NAME]'
                          ) from None
    except configparser.Error as exc:
        raise ConfigError(f'{path}: not an INI file: '
                          f'{str(exc).splitlines()[0]}') from None
    reader = _Reader(path, source.splitlines())
    sections = {'connection': {}, 'consumer': {}, 'worker': None}
    for section in parser.sections():
        kind, _, name = section.partition(' ')
        name = name.strip()
        if kind not in SECTION_KINDS:
            hint = _nearest(kind, SECTION_KINDS)
            raise reader.error(
                section, None, f'unknown section{hint} (sections: '
                '[connection NAME], [consumer NAME], [worker])')
        values = dict(parser.items(section))
        if kind == 'worker':
            if name:
                raise reader.error(section, None,
                                   'the [worker] section takes no name')
            sections['worker'] = reader.options(section, values,
                                                WORKER_OPTIONS)
            continue
        if kind == 'connection':
            name = name or 'default'
        elif not name:
            raise reader.error(section, None,
                               'a consumer needs a name: [consumer NAME]')
        if name in sections[kind]:
            raise reader.error(section, None, f'a second {kind} named '
                               f'{name!r}: rename one')
        sections[kind][name] = (section, values)

    connections = {}
    for name, (section, values) in sections['connection'].items():
        connections[name] = _connection(reader, section, name, values,
                                        default_url)
    if 'default' not in connections:
        connections['default'] = ConnectionConfig(
            'default', _props(reader, '<default connection>', {},
                              default_url))
    consumers = {}
    for name, (section, values) in sections['consumer'].items():
        consumers[name] = _consumer(reader, section, name, values,
                                    connections)
    worker = sections['worker'] or {}
    if 'metrics_host' in worker and 'metrics_port' not in worker:
        raise reader.error('worker', 'metrics_host', 'give metrics_port '
                           'too (the port of the /metrics endpoint)')
    return WorkerConfig(path, connections, consumers,
                        worker.get('stop_timeout', 5.0),
                        worker.get('log_level', 'INFO'),
                        worker.get('metrics_port'),
                        worker.get('metrics_host', '127.0.0.1'))


def _props(reader, section, options, default_url, exchange=None,
           type=None):
    options = dict(options)
    if not {'url', 'host', 'hosts'} & set(options) and default_url:
        options['url'] = default_url
    if exchange is not None:
        options['exchange'] = exchange
    if type is not None:
        options['type'] = type
    try:
        return AMQPProps(**options)
    except ConfigurationError as exc:
        raise reader.error(section, None, str(exc)) from None


def _connection(reader, section, name, values, default_url):
    options = reader.options(section, values, CONNECTION_OPTIONS)
    exchange = options.pop('exchange', None)
    type_ = options.pop('type', None)
    props = _props(reader, section, options, default_url)
    return ConnectionConfig(name, props, exchange, type_)


def _consumer(reader, section, name, values, connections):
    options = reader.options(
        section, values, CONSUMER_OPTIONS,
        extra={key: f'{key!r} is a Zope option (<zamqp:consumer>): the '
               'standalone worker runs handlers without Zope; remove it'
               for key in ZOPE_ONLY})
    connection_name = options.pop('connection', 'default')
    if connection_name not in connections:
        hint = _nearest(connection_name, connections)
        raise reader.error(
            section, 'connection', f'no [connection {connection_name}] is '
            f'declared{hint} (declared: {", ".join(sorted(connections))})')
    connection = connections[connection_name]
    exchange = options.pop('exchange', None) or connection.exchange or \
        DEFAULT_EXCHANGE
    type_ = options.pop('type', None) or connection.type or 'fanout'
    exchange_settings = dict(exchange=exchange, type=type_)
    if 'exchange_arguments' in options:
        exchange_settings['exchange_arguments'] = \
            options.pop('exchange_arguments')
    try:
        props = connection.props.replace(**exchange_settings)
    except ConfigurationError as exc:
        raise reader.error(section, 'exchange', str(exc)) from None
    handler = options.pop('handler', None)
    events = options.pop('events', False)
    if handler is not None and events:
        raise reader.error(section, 'handler',
                           'give handler or events = true, not both')
    if handler is None and not events:
        raise reader.error(section, None, 'say what to do with a message: '
                           'handler = dotted.name.of.callable, or events = '
                           'true')
    enabled = options.pop('enabled', True)
    queue = options.pop('queue', None) or name
    routing_key = options.pop('routing_key', None)
    dlx = options.get('dead_letter_exchange')
    if dlx is not None and dlx.lower() == 'none':
        options['dead_letter_exchange'] = None
    config = ConsumerConfig(name, connection_name, props, queue, routing_key,
                            handler, events, enabled, options)
    try:        # the consumer's own checks (durable with shared, ...)
        make_consumer(config, lambda body, message: None)
    except (ConfigurationError, TypeError) as exc:
        raise reader.error(section, None, str(exc)) from None
    return config


def make_consumer(config, callback):
    """The AMQPConsumer of ``config`` (a ConsumerConfig) calling
    ``callback(body, message)``."""
    from zamqp.consumer import AMQPConsumer
    return AMQPConsumer(config.queue, config.props, callback,
                        routing_key=config.routing_key, pass_message=True,
                        **config.options)
