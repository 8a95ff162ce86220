"""Declarations: exchanges, queues and bindings, and what a refusal means.

``declare`` (a setting of AMQPProps, producers and consumers) says what
zamqp does with the topology it uses:

``True`` (default)
    declare the exchange (and a consumer's queue, binding and dead-letter
    exchange); RabbitMQ's *configure* permission on those names is needed.
``'passive'``
    only check that the exchange and the queue exist (passive declares,
    which need no configure permission); a missing one is an error naming
    it. Bindings are not checked: AMQP 0-9-1 cannot ask for one.
``False``
    declare and check nothing: the topology is someone else's (an
    administrator declared it); the first publish or consume finds out.
"""
import re

from amqp import exceptions as amqp_errors

from zamqp.exceptions import ConfigurationError
from zamqp.exceptions import ConnectionFailed

MODES = (True, False, 'passive')
GUIDE = 'see docs/least-privilege.rst'
_INEQUIVALENT = re.compile(r"inequivalent arg '([^']*)'")
_ARGUMENT_OPTION = {'exchange': 'exchange_arguments',
                    'queue': 'queue_arguments'}
#: The plugins of exchange types (x-delayed-message is a community
#: plugin, the others ship with RabbitMQ).
PLUGINS = {
    'x-delayed-message': 'rabbitmq_delayed_message_exchange',
    'x-consistent-hash': 'rabbitmq_consistent_hash_exchange',
    'x-random': 'rabbitmq_random_exchange',
    'x-recent-history': 'rabbitmq_recent_history_exchange',
    'x-jms-topic': 'rabbitmq_jms_topic_exchange',
    'x-modulus-hash': 'rabbitmq_sharding',
}
#: Arguments zamqp adds to a queue_type='quorum' declaration.
QUORUM_ARGUMENTS = ('x-delivery-limit', 'x-dead-letter-exchange')
#: Retention arguments of a stream queue (zamqp.streams).
STREAM_ARGUMENTS = ('x-max-age', 'x-max-length-bytes',
                    'x-stream-max-segment-size-bytes')
_FLAGS = ('durable', 'auto_delete', 'exclusive', 'type', 'internal')


def check_mode(value, where):
    """``value`` if it is a declare mode (True, False or 'passive')."""
    if isinstance(value, bool) or value == 'passive':
        return value
    raise ConfigurationError(
        f"declare={value!r} is not True, False or 'passive': fix "
        f"{where}(declare=...)")


def check_arguments(value, setting, where):
    """``value`` as a dict of AMQP arguments (None: none)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
            isinstance(key, str) and key for key in value):
        raise ConfigurationError(
            f"{setting} must be a dict of argument names to values, e.g. "
            f"{{'x-max-priority': 10}}, got {value!r}: fix "
            f"{where}({setting}=...)")
    return dict(value)


class Declarer:
    """Declares on ``channel`` what ``mode`` allows; every refusal is a
    ConnectionFailed that names the exchange or queue, the virtual host,
    the user and the fix."""

    def __init__(self, channel, props, mode):
        self.channel = channel
        self.props = props
        self.mode = mode

    def exchange(self, name, type, arguments=None):
        if self.mode is False:
            return
        self._run('exchange.declare', 'exchange', name,
                  self.channel.exchange_declare, name, type,
                  passive=self.mode == 'passive', durable=True,
                  auto_delete=False, arguments=arguments)

    def queue(self, name, arguments=None, **flags):
        if self.mode is False:
            return
        self._run('queue.declare', 'queue', name,
                  self.channel.queue_declare, name,
                  passive=self.mode == 'passive', arguments=arguments,
                  **flags)

    def bind(self, queue, exchange, routing_key, arguments=None):
        if self.mode is not True:       # a passive bind does not exist
            return
        self._run('queue.bind', 'queue', queue, self.channel.queue_bind,
                  queue, exchange, routing_key, arguments=arguments,
                  exchange_name=exchange)

    def _run(self, method, kind, name, func, *args, exchange_name=None,
             **kw):
        try:
            func(*args, **kw)
        except amqp_errors.AccessRefused as exc:
            raise self._refused(method, kind, name, exc,
                                exchange_name) from exc
        except amqp_errors.NotFound as exc:
            raise self._not_found(method, kind, name, exc,
                                  exchange_name) from exc
        except amqp_errors.PreconditionFailed as exc:
            raise self._inequivalent(kind, name, exc) from exc
        except amqp_errors.AMQPError as exc:
            if method == 'exchange.declare' and \
                    'exchange type' in (exc.reply_text or ''):
                raise self._unknown_type(name, args[1], exc) from exc
            raise

    def _where(self):
        return (f"{self.props.url()}: virtual host "
                f"{self.props.virtual_host!r}, user {self.props.user!r}")

    def _refused(self, method, kind, name, exc, exchange_name):
        vhost, user = self.props.virtual_host, self.props.user
        if method == 'queue.bind':
            need = (f"binding queue {name!r} to exchange {exchange_name!r} "
                    f"needs write permission on the queue and read "
                    f"permission on the exchange")
        else:
            need = (f"the user may not configure (declare) {kind} "
                    f"{name!r}")
        return ConnectionFailed(
            f"declare: {self._where()}: {method} refused "
            f"({exc.reply_text}): {need}. Fix: grant it, e.g. rabbitmqctl "
            f"set_permissions -p {_shell(vhost)} {_shell(user)} "
            f"'<configure>' '<write>' '<read>' with patterns that match "
            f"{name!r} (rabbitmqctl list_user_permissions {_shell(user)} "
            f"shows the current ones), or have an administrator declare "
            f"the topology and set declare=False ({GUIDE})",
            recoverable=False)

    def _not_found(self, method, kind, name, exc, exchange_name):
        if 'down or inaccessible' in (exc.reply_text or ''):
            return ConnectionFailed(
                f"declare: {self._where()}: {kind} {name!r} is on a node "
                f"that is down or still starting ({exc.reply_text}); "
                "trying again", recoverable=True)
        if method == 'queue.bind':
            text = (f"binding queue {name!r} to exchange "
                    f"{exchange_name!r}: one of them does not exist")
        else:
            text = f"{kind} {name!r} does not exist"
        fix = ("have an administrator declare it, or set declare=True "
               "so zamqp declares it" if self.mode == 'passive' else
               "declare it first")
        return ConnectionFailed(
            f"declare: {self._where()}: {text} ({exc.reply_text}): {fix} "
            f"({GUIDE})", recoverable=False)

    def _inequivalent(self, kind, name, exc):
        text = exc.reply_text or ''
        match = _INEQUIVALENT.search(text)
        argument = match.group(1) if match else None
        if argument is None:
            fix = "use another name or delete it on the broker"
        elif argument in QUORUM_ARGUMENTS and 'current is none' in text:
            fix = (f"the existing queue has no {argument!r}, which zamqp "
                   "adds for queue_type='quorum': to attach to a quorum "
                   "queue declared by others give queue_arguments="
                   "{'x-queue-type': 'quorum'} instead of queue_type, or "
                   "set declare=False")
        elif argument in STREAM_ARGUMENTS:
            fix = (f"the stream's retention ({argument!r}) differs from "
                   "this reader's: give every reader of a stream the same "
                   "max_age, max_length_bytes and max_segment_size_bytes "
                   "(the broker says which value is current), or "
                   "declare='passive' to read the stream as it is; to "
                   "change a stream's retention, use a RabbitMQ policy")
        elif argument in _FLAGS:
            fix = (f"its {argument!r} differs from what zamqp declares: use "
                   "another name, delete it on the broker, or set "
                   "declare=False to use it as it is")
        else:
            option = _ARGUMENT_OPTION[kind]
            fix = (f"its argument {argument!r} differs: declare it with "
                   f"the same value ({option}={{{argument!r}: ...}}, the "
                   "value the broker says is current), or set "
                   "declare=False to use it as it is, or delete it on the "
                   "broker")
        return ConnectionFailed(
            f"declare: {self._where()}: {kind} {name!r} exists with other "
            f"settings ({text}): {fix}", recoverable=False)

    def _unknown_type(self, name, type, exc):
        plugin = PLUGINS.get(type, 'the plugin that provides it')
        return ConnectionFailed(
            f"declare: {self._where()}: the broker refused the type of "
            f"exchange {name!r} ({exc.reply_text}): exchange types other "
            "than fanout, direct, topic and headers come from plugins; "
            f"enable {plugin} on the broker (rabbitmq-plugins enable ...) "
            "or fix AMQPProps(type=...)", recoverable=False)


def _shell(word):
    """``word`` quoted for a shell if it needs it."""
    if re.fullmatch(r'[A-Za-z0-9_.@%+=:,/-]+', word or ''):
        return word
    return "'" + (word or '').replace("'", "'\\''") + "'"
