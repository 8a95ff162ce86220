"""Retries and dead letters: copies of a failed message, with headers."""
import amqp

#: Header counting the handler failures of a message (zamqp republishes).
RETRIES = 'x-zamqp-retries'
#: Headers of a dead letter: the error, the queue and the routing key.
ERROR = 'x-zamqp-error'
QUEUE = 'x-zamqp-queue'
ROUTING_KEY = 'x-zamqp-routing-key'
EXCHANGE = 'x-zamqp-exchange'
#: Set on a copy whose original headers did not fit in a frame.
HEADERS_DROPPED = 'x-zamqp-headers-dropped'
#: Characters of an error message kept in the ERROR header.
MAX_ERROR = 500
#: Bytes of a content header frame besides its properties: frame header
#: and end (8), class, weight and body size (12).
HEADER_OVERHEAD = 20


def retries(message):
    """How often handlers failed on ``message`` so far."""
    headers = message.headers or {}
    try:
        return max(int(headers.get(RETRIES, 0)), 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def error_text(exc):
    """``Type: message``, truncated to MAX_ERROR characters."""
    text = exc if isinstance(exc, str) else f'{type(exc).__name__}: {exc}'
    return text if len(text) <= MAX_ERROR else text[:MAX_ERROR - 3] + '...'


def copy(message, frame_max=None, **headers):
    """A new message with ``message``'s body and properties, and
    ``headers`` added to its application headers.

    With ``frame_max`` the copy's content header fits in one frame of
    that size: if the original headers and the new ones do not, the
    original application headers are left out (``HEADERS_DROPPED`` says
    so). A message whose properties could not be decoded has none
    (zamqp.frames): its copy has the new headers only.
    """
    original = dict(message.properties)
    properties = dict(original)
    properties['application_headers'] = dict(
        original.get('application_headers') or {}, **headers)
    body = message.body
    if isinstance(body, str):   # py-amqp's '' for a message without body
        body = body.encode('utf-8', 'surrogateescape')
    result = amqp.Message(body, **properties)
    if frame_max and not fits(result, frame_max):
        properties['application_headers'] = dict(headers,
                                                 **{HEADERS_DROPPED: True})
        result = amqp.Message(body, **properties)
    return result


def fits(message, frame_max):
    """Whether the content header of ``message`` fits in a frame."""
    return len(message._serialize_properties()) + HEADER_OVERHEAD \
        <= frame_max


def retry_copy(message, frame_max=None):
    """The copy to put back in the queue: its retry count raised."""
    return copy(message, frame_max, **{RETRIES: retries(message) + 1})


def dead_letter(message, exc, queue, frame_max=None):
    """The copy for the dead-letter exchange: what failed, and where."""
    info = message.delivery_info or {}
    return copy(message, frame_max, **{
        ERROR: error_text(exc), QUEUE: queue,
        ROUTING_KEY: info.get('routing_key') or '',
        EXCHANGE: info.get('exchange') or ''})
