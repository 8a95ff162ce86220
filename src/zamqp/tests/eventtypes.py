"""Payload classes for event tests: both test process and listener.py
import them from here, so pickles name them ``zamqp.tests.eventtypes.*``.
"""


class Ping:
    """A remote event with a name."""

    def __init__(self, name):
        self.name = name

    def __eq__(self, other):
        return type(other) is type(self) and other.name == self.name

    def __repr__(self):
        return f'Ping({self.name!r})'


class NotAllowed:
    """A class no consumer allows unless told to."""

    def __init__(self, value):
        self.value = value


class Marker:
    """Pickles to a call of ``os.system``: unpickling it would run a
    shell command that creates the file ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os
        return (os.system, (f'touch {self.path}',))
