"""Limits of consumers: body size before decoding, nesting depth after,
and accept lists that keep json-only consumers away from pickle."""
import collections
import json
import logging
import os
import pickle

import amqp
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zamqp import AMQPConsumer
from zamqp import AMQPProducer
from zamqp import AMQPProps
from zamqp import ConfigurationError
from zamqp import MessageRefused
from zamqp import limits
from zamqp import unpickling
from zamqp.serializers import Decoder
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for

PICKLE = 'application/x-python-serialize'
JSON = 'application/json'


def nested(depth):
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.fixture
def loads_calls(monkeypatch):
    """Every call of the restricted unpickler (not on the AMQP path)."""
    calls = []
    real = unpickling.loads

    def loads(body, allow):
        calls.append(len(body))
        return real(body, allow)

    monkeypatch.setattr(unpickling, 'loads', loads)
    return calls


def test_defaults():
    props = AMQPProps()
    assert props.max_size == limits.MAX_SIZE == 16 * 1024 * 1024
    assert props.max_depth == limits.MAX_DEPTH == 100


@pytest.mark.parametrize('setting', ['max_size', 'max_depth'])
@pytest.mark.parametrize('value', [0, -1, 1.5, '10', True])
def test_bad_limits_are_configuration_errors(setting, value):
    with pytest.raises(ConfigurationError, match=setting):
        AMQPProps(**{setting: value})


def test_size_is_checked_before_decoding(loads_calls):
    decoder = Decoder.for_props(AMQPProps(max_size=100))
    assert decoder(amqp.Message(pickle.dumps('x' * 50),
                                content_type=PICKLE)) == 'x' * 50
    with pytest.raises(MessageRefused, match='max_size=100'):
        decoder(amqp.Message(pickle.dumps('x' * 200), content_type=PICKLE))
    assert len(loads_calls) == 1


def test_size_limit_comes_before_the_signature_check():
    props = AMQPProps(max_size=10, secret='s' * 20)
    with pytest.raises(MessageRefused, match='max_size'):
        Decoder.for_props(props)(amqp.Message(b'y' * 11,
                                              content_type=PICKLE))


def test_no_size_limit():
    decoder = Decoder.for_props(AMQPProps(max_size=None))
    body = pickle.dumps(b'z' * (limits.MAX_SIZE + 1))
    assert len(decoder(amqp.Message(body, content_type=PICKLE))) == \
        limits.MAX_SIZE + 1


@pytest.mark.parametrize('content_type, dumps', [
    (PICKLE, pickle.dumps), (JSON, lambda v: json.dumps(v).encode())])
def test_depth(content_type, dumps):
    decoder = Decoder.for_props(AMQPProps(max_depth=50))
    assert decoder(amqp.Message(dumps(nested(50)),
                                content_type=content_type)) == nested(50)
    with pytest.raises(MessageRefused, match='max_depth=50'):
        decoder(amqp.Message(dumps(nested(51)), content_type=content_type))


def test_deep_pickles_of_a_few_bytes_are_refused():
    """100,000 levels in 200 kB: the C unpickler builds it without
    recursion; handlers would then fail on repr or comparison."""
    body = b'\x80\x04' + b']' * 100000 + b'a' * 99999 + b'.'
    decoder = Decoder.for_props(AMQPProps())
    with pytest.raises(MessageRefused, match='max_depth=100'):
        decoder(amqp.Message(body, content_type=PICKLE))


def test_depth_counts_dicts_instances_and_collections():
    props = AMQPProps(max_depth=3, allow=[f'{__name__}.Box'])
    decoder = Decoder.for_props(props)
    for value in ({'a': {'b': {'c': 1}}}, Box(Box(Box(1))),
                  collections.OrderedDict(a=[[1]]), (((1,),),),
                  {'k': collections.deque([[1]])}):
        assert decoder(amqp.Message(pickle.dumps(value),
                                    content_type=PICKLE)) is not None
    for value in ({'a': {'b': {'c': {}}}}, Box(Box(Box(Box(1)))),
                  collections.OrderedDict(a=[[[1]]]), ((((1,),),),),
                  {'k': collections.deque([[[1]]])}):
        with pytest.raises(MessageRefused, match='max_depth=3'):
            decoder(amqp.Message(pickle.dumps(value), content_type=PICKLE))


def test_cycles_and_shared_references_are_fine():
    cyclic = [1, 2]
    cyclic.append(cyclic)
    shared = [[1]] * 1000
    decoder = Decoder.for_props(AMQPProps(max_depth=3))
    for value in (cyclic, shared):
        result = decoder(amqp.Message(pickle.dumps(value),
                                      content_type=PICKLE))
        assert len(result) in (3, 1000)


class Box:
    def __init__(self, content):
        self.content = content

    def __eq__(self, other):
        return type(other) is Box and other.content == self.content


def test_json_only_consumers_never_unpickle(loads_calls):
    decoder = Decoder.for_props(AMQPProps(accept='json'))
    assert decoder(amqp.Message(b'{"a": 1}', content_type=JSON)) == {'a': 1}
    with pytest.raises(MessageRefused, match='not accepted'):
        decoder(amqp.Message(pickle.dumps({'a': 1}), content_type=PICKLE))
    assert loads_calls == []


# through the broker

@pytest.fixture
def work(admin):
    name = unique('limits')
    yield name
    admin.delete_queue(name)


def test_consumer_refuses_and_goes_on(make_props, admin, start, work,
                                      caplog, loads_calls):
    props = make_props(max_size=1000, max_depth=20)
    dead = f'{props.exchange}.dead'
    got = []
    start(AMQPConsumer(work, props, got.append, shared=True))
    with caplog.at_level(logging.ERROR, 'zamqp'), \
            AMQPProducer(work, props) as producer:
        producer('x' * 2000)
        producer(nested(21))
        producer('fine')
        assert wait_for(lambda: got == ['fine'])
        assert wait_for(lambda: admin.queue_depth(dead) == 2)
    errors = [message.headers['x-zamqp-error']
              for message in admin.take(dead)]
    assert any('max_size=1000' in e for e in errors)
    assert any('max_depth=20' in e for e in errors)
    assert len(loads_calls) == 2        # the large body was never decoded
    logged = [r.getMessage() for r in caplog.records]
    assert sum('refused message' in line for line in logged) == 2
    assert not any('xxxxxxxx' in line for line in logged)


def test_consumer_overrides_the_props_limits(make_props, start, work):
    props = make_props(max_size=10)
    got = []
    start(AMQPConsumer(work, props, got.append, shared=True,
                       max_size=None, max_depth=2))
    with AMQPProducer(work, props) as producer:
        producer('x' * 100)
    assert wait_for(lambda: got == ['x' * 100])


def test_json_only_consumer_dead_letters_pickles(make_props, admin, start,
                                                 work, loads_calls):
    props = make_props()
    dead = f'{props.exchange}.dead'
    got = []
    start(AMQPConsumer(work, props, got.append, shared=True, accept='json'))
    with AMQPProducer(work, props) as pickler, \
            AMQPProducer(work, props, serializer='json') as jsoner:
        pickler({'via': 'pickle'})
        jsoner({'via': 'json'})
    assert wait_for(lambda: got == [{'via': 'json'}])
    assert wait_for(lambda: admin.queue_depth(dead) == 1)
    assert loads_calls == []


def test_shared_references_cannot_hide_depth():
    """A top-level list that also refers to every level of a deep chain:
    each level is one step from the top, yet repr would recurse along the
    chain; the longest path counts."""
    chain = [[] for _ in range(300)]
    for outer, inner in zip(chain, chain[1:]):
        outer.append(inner)
    decoder = Decoder.for_props(AMQPProps(max_depth=100))
    body = pickle.dumps(list(chain))
    with pytest.raises(MessageRefused, match='max_depth=100'):
        decoder(amqp.Message(body, content_type=PICKLE))
    assert decoder(amqp.Message(pickle.dumps(chain[220:]),
                                content_type=PICKLE))[0] is not None


# the quick way out of check_depth gives the walk's verdict

_leaves = st.one_of(st.integers(), st.text(max_size=3), st.none(),
                    st.booleans(), st.floats(allow_nan=False))
_values = st.recursive(_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple),
    st.frozensets(_leaves, max_size=3),
    st.dictionaries(st.text(max_size=2), inner, max_size=3),
    st.builds(collections.OrderedDict,
              st.dictionaries(st.text(max_size=2), inner, max_size=2))),
    max_leaves=10)


def _verdict(value, max_depth):
    try:
        limits.check_depth(value, max_depth)
    except MessageRefused:
        return 'refused'
    return 'passed'


@settings(max_examples=400, deadline=None, database=None,
          derandomize=bool(os.environ.get('CI')))
@given(_values, st.integers(1, 4))
def test_two_levels_shortcut_agrees_with_the_walk(value, max_depth):
    """check_depth with its shortcut (exact dicts, lists, tuples and sets
    of scalars and of containers of scalars) and without it, on random
    values, subclasses (OrderedDict) included: the same verdict."""
    quick = _verdict(value, max_depth)
    original = limits._two_levels
    limits._two_levels = lambda value: False
    try:
        assert _verdict(value, max_depth) == quick
    finally:
        limits._two_levels = original
    if max_depth >= 2 and limits._two_levels(value):
        assert quick == 'passed'
