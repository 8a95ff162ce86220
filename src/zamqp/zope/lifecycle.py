"""Start every configured consumer with the database, restart one that
ended unexpectedly, stop them at exit."""
import atexit
import logging
import signal
import threading
import time

import zope.component

from zamqp.backoff import Backoff
from zamqp.consumer import AMQPThread
from zamqp.interfaces import IConsumerSpec
from zamqp.zope import settings
from zamqp.zope.zcml import check_product_config

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_threads = {}
_supervised = {}        # name -> _Supervised, for each started consumer
_supervisor = None      # the zamqp-supervisor thread while it runs
_arranged = False
_atexit_registered = False
#: Signals that stop the consumers, then do what they did before.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_previous_handlers = {}
#: Seconds a running handler gets to finish when the process ends.
EXIT_TIMEOUT = 5.0
#: Seconds between the supervisor's checks of the consumer threads.
SUPERVISE_INTERVAL = 2.0
#: Seconds before a consumer is restarted again, from the first up to
#: the cap (doubled each time, jittered; see zamqp.backoff.Backoff).
RESTART_FIRST = 1.0
RESTART_CAP = 60.0
#: Seconds a restarted consumer must run for its backoff to start over.
RESTART_HEALTHY = 60.0


class _Supervised:
    """What the supervisor knows of one configured consumer."""

    def __init__(self, spec, database):
        self.spec = spec
        self.database = database
        self.restarts = 0
        self.restarted = None       # time.time() of the last restart
        self.started = time.monotonic()
        self.not_before = 0.0       # monotonic time of the next restart
        self.backoff = Backoff(RESTART_FIRST, RESTART_CAP)


def database_opened(event):
    """IDatabaseOpenedWithRoot subscriber: check zope.conf's section and
    every consumer's site and user, then start the consumers.

    A key of ``<product-config zamqp>`` that is not understood, or a
    consumer whose site or user is not in the database, raises: the
    instance does not start with a configuration that cannot work.
    """
    check_product_config()
    for name, spec in zope.component.getUtilitiesFor(IConsumerSpec):
        if spec.enabled:
            spec.check(event.database)
    if not settings.consumers_enabled():
        logger.info('configured consumers kept off (%s or <product-config '
                    'zamqp> consumers)', settings.CONSUMERS_VARIABLE)
        return
    start(event.database)


def start(database=None):
    """Start a thread for each configured consumer not running yet, and
    the supervisor that restarts consumers ending unexpectedly.

    Never blocks on the broker: a consumer that cannot connect logs it
    and keeps trying in its thread. Returns the names started.
    """
    started = []
    with _lock:
        for name, spec in zope.component.getUtilitiesFor(IConsumerSpec):
            if not spec.enabled:
                logger.info('consumer %s not started: enabled is off', name)
                continue
            if name in _threads and _threads[name].is_alive():
                continue
            _threads[name] = _start_consumer(name, spec, database)
            _supervised[name] = _Supervised(spec, database)
            started.append(name)
        _start_supervisor()
    if started:
        logger.info('started consumers: %s', ', '.join(sorted(started)))
    _arrange_stop()
    return sorted(started)


def _start_consumer(name, spec, database):
    thread = AMQPThread(spec.create(database), name=f'zamqp-consumer-{name}')
    thread.start(timeout=0)
    return thread


def stop(timeout=2.0):
    """Stop the supervisor and every started consumer; return True if all
    threads ended within ``timeout`` seconds (for all of them together)."""
    _stop_supervisor()
    with _lock:
        threads = dict(_threads)
        _threads.clear()
        _supervised.clear()
    for thread in threads.values():
        thread.consumer.stop()
    deadline = time.monotonic() + timeout      # one deadline for all
    ended = {name: thread.stop(max(deadline - time.monotonic(), 0.0))
             for name, thread in threads.items()}
    if ended:
        _log_stopped(ended, timeout)
    return all(ended.values())


def _start_supervisor():
    """Start the supervisor thread unless it runs (with ``_lock`` held)."""
    global _supervisor
    if _supervisor is None or not _supervisor.is_alive():
        _supervisor = Supervisor()
        _supervisor.start()


def _stop_supervisor(timeout=1.0):
    global _supervisor
    with _lock:
        supervisor, _supervisor = _supervisor, None
    if supervisor is not None:
        supervisor.stopping.set()
        if supervisor is not threading.current_thread():
            supervisor.join(timeout)


class Supervisor(threading.Thread):
    """Every SUPERVISE_INTERVAL seconds, restart the consumers that ended
    although nobody stopped them (see ``supervise``)."""

    def __init__(self):
        super().__init__(name='zamqp-supervisor', daemon=True)
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.wait(SUPERVISE_INTERVAL):
            try:
                supervise()
            except Exception:       # never let the supervisor die
                logger.exception('zamqp supervisor: unexpected error; it '
                                 'goes on')


def supervise():
    """Restart each consumer whose thread ended although no stop was
    requested, from its IConsumerSpec and with the database it was
    started with; a consumer that ends again is restarted after a
    growing pause (RESTART_FIRST up to RESTART_CAP seconds). Returns the
    names restarted (the supervisor thread calls it; tests may too)."""
    restarted = []
    with _lock:
        now = time.monotonic()
        for name, thread in list(_threads.items()):
            record = _supervised.get(name)
            if (record is None or thread.is_alive()
                    or thread.consumer.stop_requested
                    or now < record.not_before):
                continue
            if now - record.started >= RESTART_HEALTHY:
                record.backoff.reset()      # it ran long enough
            error = thread.consumer.error
            record.restarts += 1
            logger.error(
                'consumer %s ended although no stop was requested (last '
                'error: %s); restarting it (restart %d)', name,
                f'{type(error).__name__}: {error}' if error is not None
                else 'none', record.restarts)
            record.not_before = now + record.backoff.delay()
            record.started = now
            record.restarted = time.time()
            try:
                _threads[name] = _start_consumer(name, record.spec,
                                                 record.database)
            except Exception:
                logger.exception('consumer %s: restart failed; trying again '
                                 'in %.1f s', name, record.not_before - now)
                continue
            restarted.append(name)
    return restarted


def _log_stopped(ended, timeout):
    """Log which consumers stopped and which still run."""
    stopped = sorted(name for name, done in ended.items() if done)
    alive = sorted(name for name, done in ended.items() if not done)
    if stopped:
        logger.info('stopped consumers: %s', ', '.join(stopped))
    if alive:
        logger.warning('consumers still running %s s after stop: %s',
                       timeout, ', '.join(alive))


def wait(timeout=10.0):
    """Wait until every started consumer consumes or failed to connect;
    return True if all consume (tests use it before publishing)."""
    with _lock:
        consumers = [thread.consumer for thread in _threads.values()]
    deadline = time.monotonic() + timeout
    for consumer in consumers:
        consumer.attempted.wait(max(deadline - time.monotonic(), 0))
    return all(c.attempted.is_set() and c.error is None for c in consumers)


def running():
    """Names of the consumers whose threads are alive."""
    with _lock:
        return sorted(n for n, t in _threads.items() if t.is_alive())


def status():
    """Per started consumer: its ``status()`` snapshot (state,
    last_error, counts) with ``alive`` (its thread runs), ``restarts``
    (by the supervisor) and ``restarted`` (``time.time()`` of the last
    restart, or None)."""
    with _lock:
        entries = [(name, thread, _supervised.get(name))
                   for name, thread in _threads.items()]
    result = {}
    for name, thread, record in sorted(entries, key=lambda e: e[0]):
        result[name] = dict(
            thread.consumer.status(), alive=thread.is_alive(),
            restarts=record.restarts if record else 0,
            restarted=record.restarted if record else None)
    return result


def _arrange_stop():
    """Stop consumers at exit, and on SIGTERM and SIGINT unless ignored
    (once, from MainThread): before Zope closes the databases."""
    global _arranged, _atexit_registered
    if _arranged:
        return
    _arranged = True
    if not _atexit_registered:
        atexit.register(stop, EXIT_TIMEOUT)
        _atexit_registered = True
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                _previous_handlers[signum] = signal.signal(signum,
                                                           _on_signal)


def _on_signal(signum, frame):
    """Stop the consumers, then do what the signal did before (SIGINT:
    raise KeyboardInterrupt)."""
    logger.info('%s: stopping consumers', signal.Signals(signum).name)
    stop(EXIT_TIMEOUT)
    previous = _previous_handlers.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        # the default action, but with atexit handlers and finally
        # blocks run: exit as a process killed by SIGTERM reports
        raise SystemExit(128 + signum)


def restore_sigterm():
    """Put back the SIGTERM and SIGINT handlers found before (tests)."""
    global _arranged
    if _arranged and threading.current_thread() is threading.main_thread():
        for signum, previous in _previous_handlers.items():
            signal.signal(signum, previous or signal.SIG_DFL)
        _previous_handlers.clear()
    _arranged = False
