"""The ``zamqp`` command: send, listen, worker, check, status, topology.

Exit statuses: 0 success; 1 an error of the broker, the connection or
the config (one line ``zamqp: error: ...`` on stderr); 2 a usage error
(bad option or argument, bad JSON); 130 interrupted while sending.
Passwords never appear: URLs are shown as ``AMQPProps.url()`` shows them
and error texts are scrubbed of the password of ``--url``.
"""
import logging
import os
import sys
from urllib.parse import unquote
from urllib.parse import urlsplit

import click

from zamqp.exceptions import ZAMQPError

DEFAULT_URL = 'amqp://guest:guest@127.0.0.1:5672/'
URL_VARIABLE = 'ZAMQP_URL'


class Failure(click.ClickException):
    """An expected error: one line on stderr, exit status ``code``."""

    exit_code = 1

    def __init__(self, message, code=1):
        super().__init__(message)
        self.exit_code = code


class Settings:
    def __init__(self, url, verbose):
        self.url = url
        self.verbose = verbose


def scrub(text, urls):
    """``text`` without the passwords of ``urls``."""
    for url in urls:
        if not url:
            continue
        try:
            netloc = urlsplit(url).netloc
        except ValueError:
            netloc = ''
        userinfo = netloc.rpartition('@')[0]
        _, colon, password = userinfo.partition(':')
        user = unquote(userinfo.partition(':')[0])
        if colon and password:
            for form in {password, unquote(password)}:
                text = text.replace(f':{form}@', '@')
                # a password that is the user name (guest) shows anyway
                if len(form) >= 4 and form != user:
                    text = text.replace(form, '***')
        if url in text:
            text = text.replace(url, '<the --url>')
    return text


class LogLines(logging.Handler):
    """zamqp's log records on stderr: ``zamqp: LEVEL: text`` lines, or
    with ``detailed`` (the worker) time, level, logger and message with
    its traceback."""

    detailed = False
    layout = logging.Formatter(
        '%(asctime)s %(levelname)s %(name)s: %(message)s')

    def emit(self, record):
        try:
            if self.detailed:
                text = self.layout.format(record)
            else:
                message = record.getMessage()
                first = message.splitlines()[0] if message else ''
                text = f'zamqp: {record.levelname.lower()}: {first}'
            click.echo(text, err=True)
        except Exception:
            pass


_handler = None


def show_log(level, detailed=False):
    """Show zamqp's log records of ``level`` and above on stderr (None:
    none: the command reports errors itself)."""
    global _handler
    logger = logging.getLogger('zamqp')
    if _handler is None:
        _handler = LogLines()
        logger.addHandler(_handler)
        logger.propagate = False
    _handler.detailed = detailed
    if level is None:
        _handler.setLevel(logging.CRITICAL + 1)
        logger.setLevel(logging.CRITICAL + 1)
    else:
        _handler.setLevel(level)
        logger.setLevel(level)


def props_for(settings, **kw):
    """AMQPProps of ``--url`` with ``kw``; Failure for a bad URL."""
    from zamqp.props import AMQPProps
    try:
        return AMQPProps(url=settings.url, **kw)
    except ZAMQPError as exc:
        raise Failure(f'--url: {exc}', code=2) from None


@click.group(context_settings=dict(help_option_names=['-h', '--help'],
                                   max_content_width=78))
@click.option('--url', envvar=URL_VARIABLE, default=DEFAULT_URL,
              show_default=False, metavar='URL',
              help='The broker: amqp://user:password@host:port/vhost '
              '(amqps:// for TLS). Default: $ZAMQP_URL, else '
              'amqp://guest:guest@127.0.0.1:5672/.')
@click.option('-v', '--verbose', is_flag=True,
              help="Show zamqp's log (INFO and above) on stderr.")
@click.version_option(package_name='zamqp', prog_name='zamqp',
                      message='%(prog)s %(version)s')
@click.pass_context
def cli(ctx, url, verbose):
    """Send, receive and consume AMQP messages with zamqp, and check a
    broker and a worker config file.

    Exit status 0 on success, 1 on an error of the broker, connection or
    config, 2 on a usage error; errors are one line on stderr.
    """
    ctx.obj = Settings(url, verbose)
    show_log(logging.INFO if verbose else None)


def _register():
    from zamqp.cli import broker   # noqa: F401
    from zamqp.cli import messaging    # noqa: F401
    from zamqp.cli import run      # noqa: F401


_register()


def _one_line(text):
    return ' '.join(str(text).split())


def main(argv=None):
    """The console script: run the command, turn errors into one line."""
    args = sys.argv[1:] if argv is None else list(argv)
    url = os.environ.get(URL_VARIABLE)
    urls = [u for u in (url, _given_url(args)) if u]
    code = 0
    try:
        code = cli.main(args=args, prog_name='zamqp', standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else 'zamqp'
        message = _one_line(exc.format_message()).rstrip('.')
        _error(f"{message} (see '{where} --help')", urls)
        code = 2
    except click.ClickException as exc:
        _error(_one_line(exc.format_message()), urls)
        code = exc.exit_code
    except click.Abort:
        _error('interrupted', urls)
        code = 130
    except ZAMQPError as exc:
        _error(_one_line(exc), urls)
        code = 1
    except KeyboardInterrupt:
        _error('interrupted', urls)
        code = 130
    except BrokenPipeError:
        _quiet_stdout()
        code = 0
    _flush()
    sys.exit(code or 0)


def _flush():
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        _quiet_stdout()


def _quiet_stdout():
    """stdout was closed by the reader (``| head``): stop writing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _given_url(args):
    for n, arg in enumerate(args):
        if arg == '--url' and n + 1 < len(args):
            return args[n + 1]
        if arg.startswith('--url='):
            return arg[len('--url='):]
    return None


def _error(text, urls):
    click.echo(f'zamqp: error: {scrub(text, urls)}', err=True)
