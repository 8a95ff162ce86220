"""Optional tracing hooks: a trace context carried in message headers.

Nothing happens until ``configure()`` is called: producers then let the
propagator write the current context into each message's application
headers (``propagator.inject(headers)``), and consumers let it read the
context of each message they handle (``propagator.extract(headers)``),
make it current for the handler with ``attach(context)`` (undone with
``detach(token)`` when the handler returns) and show it to the handler
as ``current_context()``.

A propagator is any object with ``inject(carrier)`` and
``extract(carrier)`` for a dict carrier; OpenTelemetry's text map
propagators are such objects, so with ``opentelemetry-api`` installed::

    from zamqp import tracing
    tracing.use_opentelemetry()

is the same as::

    from opentelemetry import context, propagate
    tracing.configure(propagate.get_global_textmap(),
                      attach=context.attach, detach=context.detach)

zamqp itself depends on no tracing package and starts no span: a
handler starts its own (``tracer.start_as_current_span(...)``), as a
child of the publisher's context once it is attached. Headers the
caller gave (``producer(obj, headers=...)``) win over injected ones.
Signed messages are signed after the injection, so the signature covers
the trace headers too.
"""
import contextlib
import threading

_propagator = None
_attach = None
_detach = None
_local = threading.local()
_NOTHING = contextlib.nullcontext()


def configure(propagator=None, attach=None, detach=None):
    """Use ``propagator`` (None: no tracing, the default) from now on;
    ``attach(context)`` returns a token that ``detach(token)`` takes."""
    global _propagator, _attach, _detach
    _propagator, _attach, _detach = propagator, attach, detach


def use_opentelemetry():
    """``configure`` with OpenTelemetry's global propagator and context
    (needs ``opentelemetry-api``)."""
    from opentelemetry import context
    from opentelemetry import propagate
    configure(propagate.get_global_textmap(), context.attach,
              context.detach)


def configured():
    """True while a propagator is configured."""
    return _propagator is not None


def inject(properties):
    """Add the current trace context to the ``application_headers`` of
    message ``properties`` (a dict); a no-op unless configured."""
    if _propagator is None:
        return
    carrier = {}
    _propagator.inject(carrier)
    if carrier:
        given = properties.get('application_headers') or {}
        properties['application_headers'] = {
            **{str(k): str(v) for k, v in carrier.items()}, **given}


def receiving(message):
    """A context manager around one handler call: the trace context of
    py-amqp ``message`` is current within it (``current_context()``,
    and ``attach`` if configured). A shared no-op unless configured."""
    if _propagator is None:
        return _NOTHING
    return _Receiving(message)


def current_context():
    """The trace context extracted from the message this thread handles
    now, or None."""
    return getattr(_local, 'context', None)


class _Receiving:

    def __init__(self, message):
        headers = (message.properties or {}).get('application_headers')
        self.headers = dict(headers or {})
        self.token = None

    def __enter__(self):
        context = _propagator.extract(self.headers)
        self.previous = current_context()
        _local.context = context
        if _attach is not None:
            self.token = _attach(context)
        return context

    def __exit__(self, *exc_info):
        _local.context = self.previous
        if self.token is not None and _detach is not None:
            _detach(self.token)
        return False
