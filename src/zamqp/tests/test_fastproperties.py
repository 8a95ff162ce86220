"""zamqp.fastproperties against py-amqp's decode_properties_basic."""
import os
import struct

import pytest
from amqp import serialization
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zamqp import fastproperties
from zamqp.tests import hostileframes as hf
from zamqp.tests.test_frames import _properties

CI = bool(os.environ.get('CI'))
SETTINGS = settings(max_examples=500, deadline=None, derandomize=CI,
                    database=None, suppress_health_check=[
                        HealthCheck.too_slow, HealthCheck.data_too_large])


def reference(buf):
    """py-amqp's properties, or the exception type it raises."""
    msg = serialization.GenericContent()
    try:
        msg._load_properties(60, buf, 12)
    except Exception as exc:    # noqa: BLE001 - compared
        return type(exc)
    return repr(msg.properties)


def check(buf):
    """decode(buf) is py-amqp's result or a decline (always before 5.4,
    whose decoder this module does not follow)."""
    got = fastproperties.decode(buf)
    if not fastproperties.AVAILABLE:
        assert got is None
        return None
    expected = reference(buf)
    if got is None:     # declined: only where py-amqp fails or continues
        assert isinstance(expected, type) or \
            struct.unpack_from('>H', buf, 12)[0] & 1
    else:
        assert repr(got) == expected    # repr: NaN in tables
    return got


def header(props, body_size=10):
    return hf.content_header(body_size, props)


@SETTINGS
@given(_properties)
def test_well_formed_as_py_amqp(props):
    assert check(header(props)) is not None or not fastproperties.AVAILABLE


@SETTINGS
@given(_properties, st.integers(0, 200))
def test_cut_headers_as_py_amqp(props, cut):
    """Headers cut anywhere: the same properties (py-amqp keeps a short
    string cut by the end as it is) or a decline where py-amqp fails."""
    buf = header(props)
    check(buf[:max(14, len(buf) - cut)])


@SETTINGS
@given(st.binary(min_size=14, max_size=300))
def test_random_bytes_as_py_amqp(buf):
    check(buf)


@pytest.mark.parametrize('case', hf.CASES, ids=lambda c: c.name)
def test_hostile_corpus(case):
    check(header(case.properties, len(case.body)))


def test_flag_continuation_declines():
    assert fastproperties.decode(header(hf.properties(0x0001))) is None


def test_common_header():
    """The header zamqp's producer writes, decoded (py-amqp 5.4+)."""
    props = hf.properties(content_type=b'application/json',
                          delivery_mode=2, message_id=b'id-1',
                          timestamp=1700000000,
                          application_headers=hf.table(
                              ('k', hf.field('S', hf.longstr(b'v')))))
    expected = {
        'content_type': 'application/json', 'delivery_mode': 2,
        'message_id': 'id-1', 'timestamp': 1700000000,
        'application_headers': {'k': 'v'}}
    assert check(header(props)) == (
        expected if fastproperties.AVAILABLE else None)



def test_available_exactly_with_the_decoder_it_follows():
    """On where py-amqp decodes with decode_properties_basic and reads
    what this module reads (py-amqp 5.4); off before (5.3 decodes
    timestamps to datetimes, tables otherwise)."""
    follows = getattr(serialization, 'decode_properties_basic', None)
    assert fastproperties.AVAILABLE == (
        follows is not None
        and serialization.PROPERTY_CLASSES.get(60) is follows
        and fastproperties._agrees())


def test_a_py_amqp_that_reads_otherwise_turns_it_off(monkeypatch):
    """The check at import compares with py-amqp on every flat field
    type: a py-amqp that read one differently would switch the module
    off (here: one reading 'L' as unsigned, as some stacks do)."""
    follows = getattr(serialization, 'decode_properties_basic', None)
    if not fastproperties.AVAILABLE:    # py-amqp 5.3: already off
        assert not fastproperties._agrees() or follows is None or \
            serialization.PROPERTY_CLASSES.get(60) is not follows
        return

    def unsigned_l(buf, offset):
        properties, end = follows(buf, offset)
        headers = properties['application_headers']
        headers['L'] %= 2 ** 64
        return properties, end

    assert fastproperties._agrees()
    monkeypatch.setattr(fastproperties, '_PY_AMQP', unsigned_l)
    assert not fastproperties._agrees()
