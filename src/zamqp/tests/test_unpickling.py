"""The restricted unpickler: allowed values load, nothing else runs."""
import collections
import datetime
import decimal
import fractions
import os
import pickle
import sys
import uuid

import pytest

from zamqp.exceptions import UnpicklingRefused
from zamqp.tests import eventtypes_unpickling as types_
from zamqp.unpickling import AllowRules
from zamqp.unpickling import loads

NOTHING = AllowRules()
PROTOCOLS = range(2, pickle.HIGHEST_PROTOCOL + 1)

SAFE_VALUES = [
    None, True, 1, 2.5, 3 + 4j, 'text', b'bytes', bytearray(b'ba'),
    [1, [2]], (1, 2), {'a': {1, 2}}, frozenset({3}), slice(1, 5, 2),
    datetime.date(2026, 11, 27), datetime.time(12, 30),
    datetime.datetime(2026, 11, 27, 21, 0, tzinfo=datetime.timezone.utc),
    datetime.timedelta(days=2),
    decimal.Decimal('1.10'), fractions.Fraction(1, 3),
    uuid.UUID('12345678123456781234567812345678'),
    collections.OrderedDict(a=1), collections.deque([1, 2], maxlen=5),
    collections.Counter('hello'), collections.defaultdict(list, a=[1]),
]


@pytest.mark.parametrize('protocol', PROTOCOLS)
@pytest.mark.parametrize('value', SAFE_VALUES, ids=repr)
def test_safe_values_load_without_rules(value, protocol):
    assert loads(pickle.dumps(value, protocol), NOTHING) == value


class Reduce:
    """Pickles as a call of ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / 'marker'
    yield path
    assert not path.exists(), 'a refused pickle ran code'


def attacks(marker):
    import subprocess
    command = f'touch {marker}'
    return {
        'os.system': Reduce(os.system, command),
        'subprocess.Popen': Reduce(subprocess.Popen, ['touch', str(marker)]),
        'eval': Reduce(eval, f'open({str(marker)!r}, "w")'),
        'exec': Reduce(exec, f'open({str(marker)!r}, "w")'),
        'nested pickle.loads': Reduce(
            pickle.loads, pickle.dumps(Reduce(os.system, command))),
        '__import__': Reduce(__import__, 'antigravity'),
        'getattr chain': Reduce(getattr, types_.Plain, '__init__'),
    }


@pytest.mark.parametrize('protocol', [0, 1] + list(PROTOCOLS))
@pytest.mark.parametrize('name', sorted(attacks('x')))
def test_attacks_are_refused_and_run_nothing(name, protocol, marker):
    payload = pickle.dumps(attacks(marker)[name], protocol)
    with pytest.raises(UnpicklingRefused, match='allow='):
        loads(payload, NOTHING)


def call(module, name, arg):
    """A hand-made protocol 0 pickle that calls ``module.name(arg)``."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


def test_refused_module_is_not_imported():
    sys.modules.pop('zamqp.tests.never_imported', None)
    with pytest.raises(UnpicklingRefused):
        loads(call('zamqp.tests.never_imported', 'Plain', 'x'), NOTHING)
    assert 'zamqp.tests.never_imported' not in sys.modules


def test_refusal_names_class_and_setting():
    with pytest.raises(UnpicklingRefused) as info:
        loads(pickle.dumps(types_.Plain(1)), NOTHING)
    name = 'zamqp.tests.eventtypes_unpickling.Plain'
    assert f"add allow=[{name!r}] to the AMQPConsumer" in str(info.value)


@pytest.mark.parametrize('rule', [
    types_.Plain, 'zamqp.tests.eventtypes_unpickling.Plain',
    'zamqp.tests.eventtypes_unpickling.*', 'zamqp.tests.*', types_,
])
def test_allowed_class_loads(rule):
    value = loads(pickle.dumps(types_.Plain(5)), AllowRules.from_spec([rule]))
    assert isinstance(value, types_.Plain) and value.value == 5


def test_pattern_refuses_functions_and_imported_names(marker):
    rules = AllowRules.from_spec(['zamqp.tests.eventtypes_unpickling.*'])
    module = 'zamqp.tests.eventtypes_unpickling'
    # ``system`` is imported into the module: the name matches the
    # pattern, the object's own name (posix.system) does not.
    for name, arg in (('make_plain', '1'), ('system', f'touch {marker}')):
        with pytest.raises(UnpicklingRefused):
            loads(call(module, name, arg), rules)


def test_exact_rule_allows_a_function():
    rules = AllowRules.from_spec([types_.make_plain])
    assert loads(pickle.dumps(Reduce(types_.make_plain, 3)), rules).value == 3


def test_pattern_never_matches_dunder_paths():
    rules = AllowRules.from_spec(['zamqp.tests.eventtypes_unpickling.*'])
    assert not rules.allows('zamqp.tests.eventtypes_unpickling',
                            'Plain.__init__.__globals__')
    assert not rules.allows('zamqp.tests.eventtypes_unpickling',
                            'Plain.__class__')


@pytest.mark.parametrize('callable_', [bytes, bytearray])
def test_size_allocations_are_refused(callable_):
    with pytest.raises(UnpicklingRefused, match='size'):
        loads(pickle.dumps(Reduce(callable_, 10 ** 12), 2), NOTHING)


def test_persistent_references_are_refused():
    class Persisting(pickle.Pickler):
        def persistent_id(self, obj):
            return 'oid' if obj == 'x' else None
    import io
    buffer = io.BytesIO()
    Persisting(buffer).dump(['x'])
    with pytest.raises(UnpicklingRefused, match='persistent'):
        loads(buffer.getvalue(), NOTHING)


def test_rules_combine_and_compare():
    a = AllowRules.from_spec(['x.Y'])
    b = AllowRules.from_spec(['z.*'])
    assert (a | b).allows('x', 'Y') and (a | b).allows('z', 'W')
    assert AllowRules.from_spec(['x.Y']) == a
    assert hash(AllowRules.from_spec(['x.Y'])) == hash(a)


def test_bad_allow_item_is_explained():
    with pytest.raises(TypeError, match='dotted name'):
        AllowRules.from_spec([42])
