"""Classes and functions the unpickling tests allow or refuse."""
from os import system  # noqa: F401  (a name a pattern must not allow)


class Plain:
    """A value class."""

    def __init__(self, value):
        self.value = value


def make_plain(value):
    """A function: exact rules may allow it, patterns never."""
    return Plain(value)
