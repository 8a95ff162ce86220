"""Start every configured consumer with the database, stop them at exit."""
import atexit
import logging
import signal
import threading
import time

import zope.component

from zamqp import settings
from zamqp.consumer import AMQPThread
from zamqp.interfaces import IConsumerSpec

logger = logging.getLogger('zamqp')
_lock = threading.Lock()
_threads = {}
_arranged = False
_atexit_registered = False
#: Signals that stop the consumers, then do what they did before.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_previous_handlers = {}
#: Seconds a running handler gets to finish when the process ends.
EXIT_TIMEOUT = 5.0


def database_opened(event):
    """IDatabaseOpenedWithRoot subscriber: start the consumers."""
    if not settings.consumers_enabled():
        logger.info('configured consumers kept off (%s or <product-config '
                    'zamqp> consumers)', settings.CONSUMERS_VARIABLE)
        return
    start(event.database)


def start(database=None):
    """Start a thread for each configured consumer not running yet.

    Never blocks on the broker: a consumer that cannot connect logs it
    and keeps trying in its thread. Returns the names started.
    """
    started = []
    with _lock:
        for name, spec in zope.component.getUtilitiesFor(IConsumerSpec):
            if name in _threads and _threads[name].is_alive():
                continue
            thread = AMQPThread(spec.create(database),
                                name=f'zamqp-consumer-{name}')
            thread.start(timeout=0)
            _threads[name] = thread
            started.append(name)
    if started:
        logger.info('started consumers: %s', ', '.join(sorted(started)))
    _arrange_stop()
    return sorted(started)


def stop(timeout=2.0):
    """Stop every started consumer; return True if all threads ended
    within ``timeout`` seconds (for all of them together)."""
    with _lock:
        threads = dict(_threads)
        _threads.clear()
    for thread in threads.values():
        thread.consumer.stop()
    deadline = time.monotonic() + timeout      # one deadline for all
    ended = {name: thread.stop(max(deadline - time.monotonic(), 0.0))
             for name, thread in threads.items()}
    if ended:
        _log_stopped(ended, timeout)
    return all(ended.values())


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
