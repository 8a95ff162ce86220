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
        raise MessageRefused(too_large(len(body), max_size))


def too_large(size, max_size):
    """Why a body of ``size`` bytes is refused (zamqp.frames says it
    before the body arrives, check_size after)."""
    return (f"the body has {size} bytes, more than max_size={max_size}: "
            "not decoded; raise max_size on the consumer or props if such "
            "messages are expected")


def check_depth(value, max_depth):
    """Raise MessageRefused if ``value`` nests containers or instances
    (their ``__dict__``) more than ``max_depth`` levels deep.

    The depth is that of the longest path, as ``repr`` or ``==`` would
    recurse along it, also where shared references make the value a
    graph; a reference back to an enclosing container (a cycle) ends a
    path, as it does for ``repr``. Each container is visited once.
    """
    if max_depth is None or max_depth >= 2 and _two_levels(value):
        return
    children = _children(value)
    if children is None or max_depth >= 2 and _shallow(children):
        return
    if _height(value, children, max_depth) > max_depth:
        raise MessageRefused(
            f"the decoded message nests more than max_depth={max_depth} "
            "levels: not delivered; raise max_depth on the consumer or "
            "props if such messages are expected")


def _height(root, children, limit):
    """Levels below and including ``root``, or ``limit + 1`` as soon as
    it is known to be more than ``limit``."""
    if _flat(children):
        return 1
    heights = {}                    # id -> height of finished containers
    path = {id(root)}               # ids of the containers on the stack
    stack = [[root, iter(children), 1]]     # container, children, height
    while stack:
        frame = stack[-1]
        for child in frame[1]:
            if type(child) in _SCALARS or id(child) in path:
                continue
            known = heights.get(id(child))
            if known is None:
                grandchildren = _children(child)
                if grandchildren is None:
                    continue
                if not _flat(grandchildren):
                    if len(stack) >= limit:
                        return limit + 1
                    path.add(id(child))
                    stack.append([child, iter(grandchildren), 1])
                    break
                known = heights[id(child)] = 1
            if len(stack) + known > limit:
                return limit + 1
            if known >= frame[2]:
                frame[2] = known + 1
        else:
            stack.pop()
            path.discard(id(frame[0]))
            height = heights[id(frame[0])] = frame[2]
            if stack and height >= stack[-1][2]:
                stack[-1][2] = height + 1
    return heights[id(root)]


_SEQUENCES = frozenset((list, tuple, set, frozenset))


def _two_levels(value):
    """Whether ``value`` is a scalar, or a dict, list, tuple, set or
    frozenset (exactly those types) of scalars and of such containers of
    scalars: at most two levels, most messages (the quickest way out;
    False says nothing)."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is dict:
        if not _scalars(value):
            return False
        value = value.values()
    elif kind not in _SEQUENCES:
        return False
    scalars = _SCALARS
    for child in value:
        kind = type(child)
        if kind in scalars:
            continue
        if kind is dict:
            if not (_scalars(child) and _scalars(child.values())):
                return False
        elif kind not in _SEQUENCES or not _scalars(child):
            return False
    return True


def _scalars(items):
    return set(map(type, items)) <= _SCALARS


def _shallow(children):
    """Whether ``children`` are scalars and containers of scalars (most
    messages: the quick way out)."""
    for child in children:
        if type(child) not in _SCALARS:
            grandchildren = _children(child)
            if grandchildren is not None and not _flat(grandchildren):
                return False
    return True


def _flat(children):
    """Whether ``children`` are all scalars."""
    return set(map(type, children)) <= _SCALARS


def _children(item):
    """What ``item`` holds (a sequence that can be iterated again), or
    None for a leaf."""
    if isinstance(item, dict):
        return (*item, *item.values())
    if isinstance(item, (list, tuple, set, frozenset)):
        return item
    if isinstance(item, type):
        return None
    state = getattr(item, '__dict__', None)
    if isinstance(state, dict):
        return (*state, *state.values())
    if type(item).__module__ == 'collections':     # deque
        try:
            return tuple(item)
        except TypeError:
            return None
    return None
