"""Payload classes and traps for test_fuzz.py.

Pickles name them ``zamqp.tests.fuzzmessages.*``. ``Allowed`` and
``AllowedToo`` are in the fuzzed consumers' allow rules, ``SignedOnly`` only
in their ``signed_allow`` rules; ``Touching``, ``touch`` and
``AllowedButFunction`` create the file they are given when unpickling calls
them, and must never be called.
"""


def touch(path):
    """Create the file ``path`` (a side effect no pickle may cause)."""
    open(path, 'w').close()


def AllowedButFunction(path):  # noqa: N802 - matches the 'Allowed*' pattern
    """A function whose name matches the pattern ``...Allowed*``: patterns
    allow only classes, so a pickle naming it is refused."""
    touch(path)


class _Value:
    """Compares by type and attributes."""

    def __init__(self, value=None):
        self.value = value

    def __eq__(self, other):
        return type(other) is type(self) and other.__dict__ == self.__dict__

    def __hash__(self):
        return hash(type(self))

    def __repr__(self):
        return f'{type(self).__name__}({self.value!r})'


class Allowed(_Value):
    """In the allow rules of every fuzzed consumer."""


class AllowedToo(_Value):
    """Allowed only by the pattern ``zamqp.tests.fuzzmessages.Allowed*``."""


class SignedOnly(_Value):
    """In ``signed_allow`` only: decoded from verified messages alone."""


class Touching:
    """Creates the file named by its state when unpickled (never allowed)."""

    def __init__(self, path):
        self.path = path

    def __setstate__(self, state):
        touch(state['path'])


class Sneaky:
    """Pickles as a call of ``touch``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return touch, (self.path,)
