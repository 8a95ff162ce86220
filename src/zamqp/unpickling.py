"""Restricted unpickling: a pickle may only name globals that are allowed."""
import _compat_pickle
import decimal
import fnmatch
import fractions
import io
import pickle
import re
import types

from zope.interface import implementer

from zamqp.exceptions import UnpicklingRefused
from zamqp.interfaces import IAllowRules


def _bytes(*args):
    """``bytes`` for unpickling: copies data, never allocates from a size."""
    if args and isinstance(args[0], int):
        raise UnpicklingRefused("bytes(size) is refused in pickles")
    return bytes(*args)


def _bytearray(*args):
    """``bytearray`` for unpickling: copies data, never allocates a size."""
    if args and isinstance(args[0], int):
        raise UnpicklingRefused("bytearray(size) is refused in pickles")
    return bytearray(*args)


#: Most decimal digits of a number a pickle may make an int of (Python's
#: own limit for int(str), which int(Decimal) and Fraction() lack).
MAX_DIGITS = 4300
_EXPONENT = re.compile(r'[eE]\s*([+-]?\d+)')


def _digits_ok(value):
    """Whether turning ``value`` into an int or a Fraction stays cheap:
    a Decimal or a numeric text whose exponent makes at most MAX_DIGITS
    digits (``int(Decimal('1E+1000000'))`` takes minutes)."""
    if isinstance(value, decimal.Decimal):
        return not value.is_finite() or abs(value.adjusted()) <= MAX_DIGITS
    if isinstance(value, str):
        found = _EXPONENT.search(value)
        return found is None or abs(int(found.group(1))) <= MAX_DIGITS
    return True


def _int(*args):
    """``int`` for unpickling: refuses numbers of huge exponents."""
    if args and isinstance(args[0], decimal.Decimal) and \
            not _digits_ok(args[0]):
        raise UnpicklingRefused(
            f"int() of a number with more than {MAX_DIGITS} digits is "
            "refused in pickles")
    return int(*args)


def _fraction(*args):
    """``Fraction`` for unpickling: refuses numbers of huge exponents."""
    if not all(_digits_ok(arg) for arg in args):
        raise UnpicklingRefused(
            f"Fraction() of a number with more than {MAX_DIGITS} digits is "
            "refused in pickles")
    return fractions.Fraction(*args)


def _latin1(text, encoding):
    """``_codecs.encode`` as protocol 2 uses it for bytes: latin-1 only."""
    if encoding not in ('latin1', 'latin-1'):
        raise UnpicklingRefused(f"encoding {encoding!r} is refused in pickles")
    return text.encode('latin-1')


#: Value types any consumer may unpickle, with safe stand-ins where the
#: real callable could be abused (``bytes(10**12)``).
SAFE_GLOBALS = {
    'builtins.bool': bool, 'builtins.int': _int, 'builtins.float': float,
    'builtins.complex': complex, 'builtins.str': str,
    'builtins.bytes': _bytes, 'builtins.bytearray': _bytearray,
    'builtins.list': list, 'builtins.tuple': tuple, 'builtins.dict': dict,
    'builtins.set': set, 'builtins.frozenset': frozenset,
    'builtins.slice': slice, '_codecs.encode': _latin1,
    'datetime.date': None, 'datetime.time': None,
    'datetime.datetime': None, 'datetime.timedelta': None,
    'datetime.timezone': None,
    'decimal.Decimal': None, 'fractions.Fraction': _fraction,
    'uuid.UUID': None,
    'collections.OrderedDict': None, 'collections.deque': None,
    'collections.Counter': None, 'collections.defaultdict': None,
}


def rule_for(item):
    """Turn one allow item into a rule string.

    A class or function becomes its exact dotted name, a module becomes
    ``'module.*'``; strings are taken as they are.
    """
    if isinstance(item, str):
        return item
    if isinstance(item, types.ModuleType):
        return item.__name__ + '.*'
    qualname = getattr(item, '__qualname__', None)
    module = getattr(item, '__module__', None)
    if qualname and module:
        return f'{module}.{qualname}'
    raise TypeError(
        f"cannot allow {item!r}: give a class, a function, a module or a "
        "dotted name such as 'myapp.events.MyEvent' or 'myapp.events.*'")


@implementer(IAllowRules)
class AllowRules:
    """Exact dotted names and glob patterns of globals a pickle may use.

    An exact name (``'myapp.events.MyEvent'``) allows that one object,
    whatever it is. A pattern (``'myapp.events.*'``) allows only classes,
    and only when both the name in the pickle and the class's own
    ``__module__.__qualname__`` match it, so a function or a class that
    a matching module merely imports stays refused. Names with a
    ``__dunder__`` part never match a pattern.
    """

    #: How to allow a refused name, with ``{dotted}`` for the name: what
    #: a refusal tells the user to change (None: the Python keywords).
    hint = None

    def __init__(self, exact=(), patterns=(), hint=None):
        self.exact = frozenset(exact)
        self.patterns = frozenset(patterns)
        self.hint = hint

    def with_hint(self, hint):
        """The same rules, refusals telling ``hint`` (a format string
        with ``{dotted}``), e.g. in terms of the ZCML that declared them."""
        return AllowRules(self.exact, self.patterns, hint)

    @classmethod
    def from_spec(cls, spec=()):
        """Rules from an iterable of allow items, or from other rules."""
        if isinstance(spec, AllowRules):
            return spec
        if isinstance(spec, (str, type, types.ModuleType)):
            spec = [spec]
        rules = [rule_for(item) for item in spec]
        return cls([r for r in rules if '*' not in r and '?' not in r],
                   [r for r in rules if '*' in r or '?' in r])

    def __or__(self, other):
        return AllowRules(self.exact | other.exact,
                          self.patterns | other.patterns,
                          self.hint or other.hint)

    def _matches(self, dotted):
        if any(part.startswith('__') for part in dotted.split('.')):
            return False
        return any(fnmatch.fnmatchcase(dotted, p) for p in self.patterns)

    def allows(self, module, name):
        dotted = f'{module}.{name}'
        if dotted in SAFE_GLOBALS or dotted in self.exact:
            return True
        return self._matches(dotted)

    def accepts(self, obj, module, name):
        dotted = f'{module}.{name}'
        if dotted in SAFE_GLOBALS or dotted in self.exact:
            return True
        real = f'{getattr(obj, "__module__", "")}.' \
               f'{getattr(obj, "__qualname__", "")}'
        return isinstance(obj, type) and self._matches(real)

    def _key(self):
        return (self.exact, self.patterns)

    def __eq__(self, other):
        return isinstance(other, AllowRules) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return f'AllowRules({sorted(self.exact | self.patterns)!r})'


PYTHON_HINT = ("add allow=[{dotted!r}] to the AMQPConsumer or AMQPProps "
               "(see 'Allow rules' in the docs)")


def refusal(module, name, hint=None):
    """The message for a refused global, naming the setting to change
    (``hint``, see AllowRules.hint)."""
    dotted = f'{module}.{name}'
    return (f"refused to unpickle {dotted}: it is not in the allow rules. "
            f"If you trust it, {(hint or PYTHON_HINT).format(dotted=dotted)}")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only globals its rules allow.

    The rules are checked before the module is imported, so a refused
    pickle imports nothing and calls nothing.
    """

    def __init__(self, file, rules):
        super().__init__(file, fix_imports=False)
        self.rules = rules

    def find_class(self, module, name):
        module, name = python3_name(module, name)
        dotted = f'{module}.{name}'
        if not self.rules.allows(module, name):
            raise UnpicklingRefused(refusal(module, name, self.rules.hint))
        if SAFE_GLOBALS.get(dotted) is not None:
            return SAFE_GLOBALS[dotted]
        obj = super().find_class(module, name)
        if not self.rules.accepts(obj, module, name):
            raise UnpicklingRefused(refusal(module, name, self.rules.hint))
        return obj

    def persistent_load(self, pid):
        raise UnpicklingRefused(
            "refused to unpickle a persistent reference: zamqp messages "
            "cannot refer to objects of a database")


def python3_name(module, name):
    """The Python 3 name of a global a protocol 0-2 pickle may name."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def loads(body, rules):
    """Unpickle ``body`` resolving only globals that ``rules`` allow."""
    return _unpickler_for(rules)(io.BytesIO(body), fix_imports=False).load()


def _unpickler_for(rules):
    """A RestrictedUnpickler class bound to ``rules`` (kept on them):
    made once, it runs without a Python ``__init__`` per message (which
    cost as much as unpickling a small message)."""
    cls = getattr(rules, '_zamqp_unpickler', None)
    if cls is not None and cls.rules is rules:
        return cls
    cls = type('RestrictedUnpickler', (RestrictedUnpickler,), {
        'rules': rules, '__init__': pickle.Unpickler.__init__,
        '__module__': __name__})
    try:
        rules._zamqp_unpickler = cls
    except AttributeError:      # rules of a class without a __dict__
        pass
    return cls
