"""Sender-controlled text made safe for log lines."""


def message_id(message):
    """The message id for a log line, else its delivery tag."""
    message_id = (message.properties or {}).get('message_id')
    if message_id:
        return loggable(message_id, 100)
    info = message.delivery_info or {}
    return f"(delivery tag {info.get('delivery_tag')})"


def loggable(value, limit=1000):
    """``str(value)`` made safe for a log line: control characters (a
    sender's newline could fake log lines) escaped, at most ``limit``
    characters kept."""
    try:
        text = str(value)
    except Exception as exc:    # a hostile __str__ (never from pickles)
        text = f'<unprintable {type(value).__name__}: {type(exc).__name__}>'
    if len(text) > limit:
        text = text[:limit] + '...'
    if text.isprintable():
        return text
    return text.encode('unicode_escape').decode('ascii')


def broker_closed(exc):
    """The broker's own reason, as one line, when ``exc`` is the error
    py-amqp raised for a ``connection.close`` or ``channel.close`` the
    broker sent, e.g. ``the broker closed the connection: 320
    CONNECTION_FORCED - broker forced connection closure with reason
    'shutdown'``; None for any other error."""
    import amqp.exceptions as amqp_errors   # zamqp.logtext stays light
    code = getattr(exc, 'reply_code', None)
    if not isinstance(exc, amqp_errors.AMQPError) or not code:
        return None
    if getattr(exc, 'method_sig', None) is None:
        return None     # raised here (a broken frame), not sent by it
    what = ('connection' if isinstance(exc, amqp_errors.ConnectionError)
            else 'channel')
    method = getattr(exc, 'method_name', None)
    after = f' (after {method})' if method else ''
    return (f'the broker closed the {what}{after}: {code} '
            f'{loggable(exc.reply_text, 500)}')
