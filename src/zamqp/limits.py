"""Limits on received messages: body size before decoding, depth after.

The size is checked before anything else reads the body (signature,
decoder). The depth is checked on the decoded value, before a handler
sees it: a pickle or JSON text of a few kilobytes can nest lists ten
thousand levels deep, which decodes without trouble but makes ``repr``,
comparisons and pickling in the handler fail with RecursionError.
"""
from zamqp.exceptions import ConfigurationError
from zamqp.exceptions import MessageRefused

#: Default largest body a consumer decodes (RabbitMQ 4's own default
#: ``max_message_size`` is the same).
MAX_SIZE = 16 * 1024 * 1024
#: Default deepest nesting of containers and instances in a message.
MAX_DEPTH = 100

_SCALARS = frozenset((str, bytes, int, float, bool, type(None), complex))


def check_limit(value, setting):
    """``value`` if it is None or a positive int; else ConfigurationError
    naming ``setting``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"{setting} must be a whole number >= 1 (or None for no "
            f"limit), got {value!r}")
    return value


def check_size(body, max_size):
    """Raise MessageRefused if ``body`` is longer than ``max_size``."""
    if max_size is not None and len(body) > max_size:
        raise MessageRefused(
            f"the body has {len(body)} bytes, more than max_size="
            f"{max_size}: not decoded; raise max_size on the consumer or "
            "props if such messages are expected")


def check_depth(value, max_depth):
    """Raise MessageRefused if ``value`` nests containers or instances
    (their ``__dict__``) more than ``max_depth`` levels deep. Shared and
    cyclic references are visited once."""
    if max_depth is None or type(value) in _SCALARS:
        return
    seen = set()
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        children = _children(item)
        if children is None:
            continue
        if depth > max_depth:
            raise MessageRefused(
                f"the decoded message nests more than max_depth="
                f"{max_depth} levels: not delivered; raise max_depth on "
                "the consumer or props if such messages are expected")
        depth += 1
        stack.extend((child, depth) for child in children
                     if type(child) not in _SCALARS)


def _children(item):
    """What ``item`` holds, or None for a leaf."""
    kind = type(item)
    if kind is dict:
        return (*item, *item.values())
    if kind in (list, tuple, set, frozenset):
        return item
    if isinstance(item, dict):
        return (*item, *item.values())
    if isinstance(item, (list, tuple, set, frozenset)):
        return item
    if isinstance(item, type):
        return None
    state = getattr(item, '__dict__', None)
    if isinstance(state, dict):
        return (*state, *state.values())
    try:
        return iter(item) if kind.__module__ == 'collections' else None
    except TypeError:
        return None
