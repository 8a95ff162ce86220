"""``zamqp send`` and ``zamqp listen``."""
import base64
import datetime
import decimal
import json
import signal
import sys
import threading
import time

import click

from zamqp.cli import Failure
from zamqp.cli import cli
from zamqp.cli import props_for
from zamqp.props import EXCHANGE_TYPES

#: Messages from which ``send`` shows a progress bar (stderr a terminal).
PROGRESS_FROM = 100
PICKLE = 'application/x-python-serialize'


DECLARE = {'true': True, 'passive': 'passive', 'false': False}


def _exchange_options(func):
    func = click.option(
        '--declare', type=click.Choice(list(DECLARE)), default='true',
        show_default=True,
        help='true: declare what is used (needs the configure '
        'permission); passive: only check that it exists; false: use it '
        'as an administrator declared it.')(func)
    func = click.option(
        '--type', 'type_', type=click.Choice(EXCHANGE_TYPES),
        default='fanout', show_default=True,
        help='The exchange type; an existing exchange must have it.')(func)
    func = click.option('--exchange', '-e', required=True, metavar='NAME',
                        help='The exchange (declared durable if missing).'
                        )(func)
    return func


def _parse_header(text, option='--header'):
    name, equals, value = text.partition('=')
    if not equals or not name:
        raise click.BadParameter(f'{text!r} is not NAME=VALUE',
                                 param_hint=f"'{option}'")
    return name, value


def _json(text, where):
    try:
        return json.loads(text)
    except ValueError as exc:
        raise Failure(f'{where} is not JSON ({exc}): give each message as '
                      'JSON text, e.g. \'{"id": 1}\' or \'"text"\'',
                      code=2) from None


def _messages(arguments, stdin):
    """(where, value) of each message, in order; stdin read line by line
    where ``-`` is given (blank lines skipped)."""
    parsed = []
    for n, argument in enumerate(arguments, 1):
        if argument == '-':
            parsed.append(None)
        else:
            parsed.append((f'argument {n} ({_short(argument)})',
                           _json(argument, f'argument {n} '
                                 f'({_short(argument)})')))
    for item in parsed:
        if item is not None:
            yield item
            continue
        for line_number, line in enumerate(stdin, 1):
            if line.strip():
                yield (f'stdin line {line_number}',
                       _json(line, f'stdin line {line_number}'))


def _short(text, limit=30):
    return repr(text if len(text) <= limit else text[:limit] + '...')


@cli.command()
@_exchange_options
@click.option('--routing-key', '-k', default='', metavar='KEY',
              help='The routing key of every message (default: empty).')
@click.option('--serializer', type=click.Choice(['json', 'pickle']),
              default='json', show_default=True,
              help='How each JSON value is written into the body.')
@click.option('--header', '-H', 'headers', multiple=True,
              metavar='NAME=VALUE',
              help='An application header (a text value); repeatable. '
              'Headers exchanges route by them.')
@click.option('--persistent', is_flag=True,
              help='Ask the broker to write the messages to disk.')
@click.option('--confirm', is_flag=True,
              help="Wait for the broker's confirm of each message and fail "
              'for one that no queue took (mandatory). Without it the '
              'confirms are awaited once, at the end.')
@click.option('--confirm-timeout', type=click.FloatRange(min=0.0,
              min_open=True), default=None, metavar='SECONDS',
              help='How long a message may wait for its confirm, and a '
              'publish for a broker that went away (default: 30).')
@click.argument('messages', nargs=-1, required=True, metavar='MESSAGE...')
@click.pass_obj
def send(settings, exchange, type_, declare, routing_key, serializer,
         headers, persistent, confirm, confirm_timeout, messages):
    """Publish each MESSAGE, a JSON value, to an exchange.

    MESSAGE '-' reads one JSON value per line from stdin. All arguments
    are checked before anything is sent; a bad stdin line stops the
    command (the lines before it were sent). Exit status 0 once the
    broker confirmed every message.
    """
    from zamqp.exceptions import ZAMQPError
    from zamqp.producer import AMQPProducer
    header_values = dict(_parse_header(h) for h in headers) or None
    props = props_for(settings, exchange=exchange, type=type_,
                      declare=DECLARE[declare])
    items = _messages(messages, sys.stdin)
    producer = AMQPProducer('zamqp-cli', props, routing_key=routing_key,
                            serializer=serializer, persistent=persistent,
                            confirm=True if confirm else None,
                            mandatory=confirm,
                            confirm_timeout=confirm_timeout)
    sent = 0
    where = None
    try:
        known = len(messages) if '-' not in messages else None
        with _progress(items, known) as shown:
            for where, value in shown:
                producer(value, headers=header_values)
                sent += 1
        where = None        # all sent: close() waits for the confirms
        producer.close()
    except ZAMQPError as exc:
        _close_quietly(producer)
        if where is None:
            raise Failure(f'{exc} ({sent} message(s) sent; the broker did '
                          'not confirm those named)') from None
        raise Failure(f'{exc} (failed at {where}; {sent} message(s) sent '
                      'before it)') from None
    except KeyboardInterrupt:
        _close_quietly(producer)
        raise Failure(f'interrupted after {sent} message(s)', code=130
                      ) from None
    except Failure:
        _close_quietly(producer)
        raise
    click.echo(f'zamqp: sent {sent} message(s) to exchange {exchange!r} on '
               f'{props.url()}, confirmed', err=True)


def _close_quietly(producer):
    try:
        producer.close(timeout=1.0)
    except Exception:
        pass


class _Plain:
    def __init__(self, items):
        self.items = items

    def __enter__(self):
        return self.items

    def __exit__(self, *exc):
        return False


def _progress(items, known):
    """``items`` with a progress bar on stderr when it is a terminal and
    there are many (or an unknown number, from stdin)."""
    if not sys.stderr.isatty() or (known is not None
                                   and known < PROGRESS_FROM):
        return _Plain(items)
    return click.progressbar(items, length=known, label='sending',
                             file=sys.stderr, show_pos=True)


# listen


def jsonable(value):
    """``value`` as JSON can carry it: bytes as text or base64, dates as
    ISO text, other objects as their repr, marked."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float('inf') \
            else repr(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode('utf-8')
        except UnicodeDecodeError:
            return {'base64': base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return {'repr': repr(value)}


class Renderer:
    """A received py-amqp message as one JSON object.

    ``body``: the value zamqp's decoder (``decoder``, the consumer's:
    content types, charsets, compression, limits) makes of the body, or
    the body parsed as JSON when the decoder refuses it (no content
    type, another one); a pickle only when ``unpickle`` (allow rules were
    given), by zamqp's restricted unpickler. Otherwise ``body_text``
    (UTF-8 text) or ``body_base64``, and ``body_note`` saying why.
    """

    def __init__(self, decoder, unpickle):
        self.decoder = decoder
        self.unpickle = unpickle

    def __call__(self, message):
        body = message.body
        if isinstance(body, str):
            body = body.encode('utf-8')
        properties = dict(message.properties)
        info = getattr(message, 'delivery_info', None) or {}
        record = {}
        content_type = properties.get('content_type') or ''
        pickled = content_type.split(';')[0].strip().lower() == PICKLE
        note = None
        if pickled and not self.unpickle:
            note = ('a pickle, not unpickled: give --allow NAME (the '
                    'classes to allow) to unpickle it with the restricted '
                    'unpickler')
        else:
            try:
                record['body'] = jsonable(self.decoder(message))
            except Exception as exc:    # MessageRefused, mostly
                note = f'not decoded: {exc}'
                if not pickled:
                    try:
                        record['body'] = json.loads(body)
                    except ValueError:
                        pass
        if 'body' not in record:
            try:
                if pickled:
                    raise UnicodeDecodeError('utf-8', b'', 0, 1, 'pickle')
                record['body_text'] = body.decode('utf-8')
            except UnicodeDecodeError:
                record['body_base64'] = base64.b64encode(body).decode()
            record['body_note'] = note
        record['routing_key'] = info.get('routing_key')
        record['exchange'] = info.get('exchange')
        record['redelivered'] = info.get('redelivered')
        record['properties'] = jsonable(properties)
        return record


def _raw_decoder(decoder):
    """A copy of the consumer's Decoder (its limits, its rules) that
    decodes nothing: ``listen`` decides how to show each body."""
    from zamqp.serializers import Decoder

    class RawDecoder(Decoder):
        def __init__(self, decoder):
            self.__dict__.update(decoder.__dict__)

        def __call__(self, message):
            return None

    return RawDecoder(decoder)


@cli.command()
@_exchange_options
@click.option('--routing-key', '-k', default=None, metavar='KEY',
              help="The binding's routing key (a pattern on topic "
              "exchanges). Default: '#' on topic exchanges, else empty.")
@click.option('--count', '-n', type=click.IntRange(min=1), default=None,
              metavar='N', help='Exit 0 after N messages.')
@click.option('--timeout', '-t', type=click.FloatRange(min=0.0,
              min_open=True), default=None, metavar='SECONDS',
              help='Exit 0 after SECONDS (the count goes to stderr).')
@click.option('--queue', '-q', default=None, metavar='NAME',
              help='Consume the shared, durable queue NAME (declared and '
              'bound if missing; each message goes to one of its '
              'consumers, acknowledged once printed). Default: a queue of '
              'its own, deleted on exit.')
@click.option('--match', 'matches', multiple=True, metavar='NAME=VALUE',
              help='Headers exchanges: receive only messages with this '
              'header (text); repeatable, all must match unless '
              '--match-any.')
@click.option('--match-any', is_flag=True,
              help='With --match: any one header suffices (x-match=any).')
@click.option('--allow', multiple=True, metavar='RULE',
              help="Unpickle pickled bodies, allowing RULE (a dotted name "
              "or pattern such as 'myapp.events.*'; repeatable) besides "
              'basic values. Without it pickles are never unpickled.')
@click.pass_obj
def listen(settings, exchange, type_, declare, routing_key, count,
           timeout, queue, matches, match_any, allow):
    """Print each message an exchange routes to us as one JSON line:
    {"body": ..., "routing_key": ..., "exchange": ..., "redelivered": ...,
    "properties": {...}}.

    A body that is not JSON (or a pickle without --allow) comes as
    "body_text" or "body_base64" with a "body_note". Says "listening" on
    stderr once it consumes; stops with exit status 0 after --count
    messages, after --timeout seconds, or on SIGINT/SIGTERM.
    """
    from zamqp.consumer import AMQPConsumer
    from zamqp.consumer import AMQPThread
    from zamqp.exceptions import ZAMQPError
    from zamqp.status import State
    from zamqp.unpickling import AllowRules
    from zamqp import cli as package
    if declare != 'true' and queue is None:
        raise click.UsageError(f'--declare {declare} needs --queue NAME: '
                               'a queue of its own is made anew by each '
                               'listen, so nobody can declare it before')
    props = props_for(settings, exchange=exchange, type=type_,
                      declare=DECLARE[declare])
    if routing_key is None:
        routing_key = '#' if type_ == 'topic' else ''
    binding = None
    if matches or match_any:
        if type_ != 'headers':
            raise click.UsageError('--match and --match-any need --type '
                                   'headers')
        if not matches:
            raise click.UsageError('--match-any needs --match NAME=VALUE')
        binding = dict(_parse_header(m, '--match') for m in matches)
        binding['x-match'] = 'any' if match_any else 'all'
    done = threading.Event()
    lock = threading.Lock()
    received = [0]
    reason = []

    def finish(why):
        if not done.is_set():
            reason.append(why)
            done.set()

    consumer = None

    def on_message(_body, message):
        with lock:
            if done.is_set():
                return
            try:
                line = json.dumps(render(message), ensure_ascii=False)
                sys.stdout.write(line + '\n')
                sys.stdout.flush()
            except BrokenPipeError:
                finish('stdout closed')
                return
            received[0] += 1
            if count is not None and received[0] >= count:
                consumer.stop()     # later messages go back to the queue
                finish(f'--count {count} reached')

    try:
        consumer = AMQPConsumer(
            queue or 'zamqp-listen', props, on_message,
            routing_key=routing_key, shared=queue is not None,
            pass_message=True, dead_letter_exchange=None,
            allow=AllowRules.from_spec(list(allow)),
            prefetch=min(count, 100) if count and queue else None,
            **({'binding_arguments': binding} if binding else {}))
    except ZAMQPError as exc:
        raise Failure(str(exc), code=2) from None
    render = Renderer(consumer.decoder, bool(allow))
    consumer.decoder = _raw_decoder(consumer.decoder)
    thread = AMQPThread(consumer, name='zamqp-consumer-listen')
    previous = {sig: signal.signal(sig, lambda *a: finish('stopped by a '
                                                         'signal'))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        thread.start()
        if consumer.state is not State.CONSUMING:
            thread.stop(1.0)
            raise Failure(str(consumer.error or 'could not start consuming'))
        started = time.monotonic()
        where = f'queue {queue!r}' if queue else 'a queue of its own'
        click.echo(f'zamqp: listening on exchange {exchange!r} ({type_}, '
                   f'routing key {routing_key!r}) with {where} on '
                   f'{props.url()}', err=True)
        package.show_log(None if not settings.verbose else 20)
        if not settings.verbose:
            package.show_log(30)     # warnings while it runs: reconnects
        deadline = None if timeout is None else started + timeout
        while not done.is_set():
            wait = 0.2 if deadline is None else \
                min(0.2, deadline - time.monotonic())
            if wait <= 0:
                finish(f'timeout after {timeout:g} s')
                break
            done.wait(wait)
            if consumer.state is State.FAILED:
                finish(None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        thread.stop(2.0)
    if reason and reason[0] is None:
        raise Failure(f'the consumer failed: '
                      f'{consumer.status()["last_error"]}')
    click.echo(f'zamqp: {reason[0]}: received {received[0]} message(s)',
               err=True)
