"""Serializers by name and content type, and the Decoder's refusals."""
import pickle

import amqp
import pytest

from zamqp import ConfigurationError
from zamqp import MessageRefused
from zamqp import serializers
from zamqp.unpickling import AllowRules

PICKLE = 'application/x-python-serialize'


def decode(body, content_type, accept=('pickle', 'json')):
    message = amqp.Message(body, content_type=content_type)
    return serializers.Decoder(accept, AllowRules())(message)


def test_round_trips():
    for name in ('pickle', 'json'):
        serializer = serializers.get(name)
        body = serializer.dumps({'a': [1, 'b']})
        assert isinstance(body, bytes)
        assert decode(body, serializer.content_type) == {'a': [1, 'b']}


def test_not_accepted_type_names_the_setting():
    with pytest.raises(MessageRefused) as info:
        decode(pickle.dumps(1), PICKLE, accept=['json'])
    assert "add 'pickle' to accept=" in str(info.value)


@pytest.mark.parametrize('content_type', [None, 'text/yaml'])
def test_unknown_or_missing_type_is_refused(content_type):
    with pytest.raises(MessageRefused, match='has no serializer'):
        decode(b'x: 1', content_type)


@pytest.mark.parametrize('body, content_type', [
    (b'garbage', PICKLE), (pickle.dumps([1])[:-3], PICKLE),
    (b'{"a": ', 'application/json'), (b'\xff', 'application/json'),
])
def test_undecodable_bodies_are_refused(body, content_type):
    with pytest.raises(MessageRefused, match='cannot decode'):
        decode(body, content_type)


def test_unknown_serializer_name():
    with pytest.raises(ConfigurationError, match='register'):
        serializers.Decoder(['yaml'], AllowRules())


def test_register_a_serializer():
    class Text:
        name = 'text-test'
        content_type = 'text/x-zamqp-test'

        def dumps(self, obj):
            return obj.encode()

        def loads(self, body, allow):
            return body.decode()

    serializers.register(Text())
    try:
        assert decode(b'hi', 'text/x-zamqp-test', ['text-test']) == 'hi'
    finally:
        serializers.unregister('text-test')


# content types, charsets, compression, the JSON type forms (issue 11)

import bz2                                              # noqa: E402
import datetime                                         # noqa: E402
import decimal                                          # noqa: E402
import json                                             # noqa: E402
import lzma                                             # noqa: E402
import uuid                                             # noqa: E402
import zlib                                             # noqa: E402
import gzip                                             # noqa: E402  # isort: skip

from hypothesis import given                            # noqa: E402
from hypothesis import settings                         # noqa: E402
from hypothesis import strategies as st                 # noqa: E402

from zamqp import contentcoding                         # noqa: E402


def receive(body, max_size=None, accept=('pickle', 'json'), untyped=None,
            **properties):
    message = amqp.Message(body, **properties)
    return serializers.Decoder(accept, AllowRules(), max_size=max_size,
                               untyped=untyped)(message)


@pytest.mark.parametrize('value, expected', [
    ('application/json', ('application/json', {})),
    ('Application/JSON; Charset=UTF-8', ('application/json',
                                         {'charset': 'UTF-8'})),
    ('application/json;charset="utf-8"; v=1', ('application/json',
                                              {'charset': 'utf-8',
                                               'v': '1'})),
    ('text/plain; a="x;y\\"z"', ('text/plain', {'a': 'x;y"z'})),
    (None, ('', {})),
    ('', ('', {})),
])
def test_parse_content_type(value, expected):
    assert contentcoding.parse_content_type(value) == expected


def test_malformed_parameter_is_refused():
    with pytest.raises(MessageRefused, match='not name=value'):
        contentcoding.parse_content_type('application/json; utf-8')


@pytest.mark.parametrize('content_type', [
    'application/json; charset=utf-8', 'APPLICATION/JSON',
    'application/json ; charset="UTF-8"', 'Application/Json;charset=utf8'])
def test_json_with_parameters_and_any_case(content_type):
    assert receive(b'{"a":1}', content_type=content_type) == {'a': 1}


def test_charset_is_honoured():
    body = '{"name":"Zoë"}'.encode('latin-1')
    assert receive(body, content_type='application/json; charset=latin-1'
                   ) == {'name': 'Zoë'}
    body = '{"name":"Zoë"}'.encode('utf-16')
    assert receive(body, content_type='application/json; charset=utf-16'
                   ) == {'name': 'Zoë'}
    # the same latin-1 bytes named utf-8 are not valid
    with pytest.raises(MessageRefused, match='cannot decode json'):
        receive('"Zoë"'.encode('latin-1'),
                content_type='application/json; charset=utf-8')


@pytest.mark.parametrize('charset', ['klingon', 'rot13', 'base64',
                                     'unicode_escape', ''])
def test_unknown_charset_is_refused(charset):
    with pytest.raises(MessageRefused, match='unknown charset'):
        receive(b'1', content_type=f'application/json; charset={charset}')


def test_content_encoding_is_honoured():
    body = '["Zoë"]'.encode('utf-16-le')
    assert receive(body, content_type='application/json',
                   content_encoding='utf-16-le') == ['Zoë']
    assert receive(b'[1]', content_type='application/json',
                   content_encoding='binary') == [1]
    assert receive(pickle.dumps('p'), content_type=PICKLE,
                   content_encoding='binary') == 'p'
    with pytest.raises(MessageRefused, match='unknown charset'):
        receive(b'[1]', content_type='application/json',
                content_encoding='x-klingon')
    with pytest.raises(MessageRefused, match='content_encoding says'):
        receive(b'[1]', content_type='application/json; charset=utf-8',
                content_encoding='utf-16')


def test_untyped_policy():
    with pytest.raises(MessageRefused, match="untyped='refuse'"):
        receive(b'{"a":1}')
    assert receive(b'{"a":1}', untyped='json') == {'a': 1}
    assert receive(b'\x80raw', untyped='bytes') == b'\x80raw'
    assert receive(b'{"a":1}', untyped='json', content_type='') == {'a': 1}
    # a typed message is decoded by its type whatever the policy
    assert receive(pickle.dumps(2), untyped='bytes',
                   content_type=PICKLE) == 2
    with pytest.raises(ConfigurationError, match='untyped= must be one of'):
        serializers.Decoder(['json'], AllowRules(), untyped='text')
    with pytest.raises(ConfigurationError, match="'json' is not in accept"):
        serializers.Decoder(['pickle'], AllowRules(), untyped='json')


def test_json_messages_name_their_content_encoding():
    properties = {}
    body = serializers.encode(serializers.get('json'), {'a': 1}, properties)
    assert properties == {'content_type': 'application/json',
                          'content_encoding': 'utf-8'}
    assert body == b'{"a":1}'
    properties = {}
    serializers.encode(serializers.get('pickle'), 1, properties)
    assert properties['content_encoding'] == 'binary'


KOMBU_COMPRESSORS = [
    ('application/x-gzip', zlib.compress),        # what kombu writes
    ('gzip', gzip.compress), ('zlib', zlib.compress),
    ('application/x-bz2', bz2.compress), ('bzip2', bz2.compress),
    ('application/x-lzma', lzma.compress), ('xz', lzma.compress),
]


@pytest.mark.parametrize('header, compress', KOMBU_COMPRESSORS)
def test_compression_header_is_decoded(header, compress):
    body = compress(b'{"a":[1,2,3]}')
    assert receive(body, content_type='application/json',
                   application_headers={'compression': header}
                   ) == {'a': [1, 2, 3]}


@pytest.mark.parametrize('method', ['zlib', 'bz2', 'lzma'])
def test_zip_bomb_is_refused_in_bounded_steps(method, monkeypatch):
    max_size = 1024 * 1024
    bomb = contentcoding.compress(b'\0' * (64 * 1024 * 1024), method)[0]
    assert len(bomb) < 100 * 1024
    grown = []

    class Watch(contentcoding._Zlib if method == 'zlib'
                else contentcoding._Incremental):
        def step(self, data, room):
            chunk = super().step(data, room)
            grown.append(len(chunk))
            return chunk
    if method == 'zlib':
        monkeypatch.setattr(contentcoding, '_Zlib', Watch)
    else:
        made = contentcoding._decompressor
        monkeypatch.setattr(contentcoding, '_decompressor',
                            lambda m: Watch(made(m)._d))
    with pytest.raises(MessageRefused, match='decompresses to more than '
                       f'max_size={max_size}'):
        contentcoding.decompress(bomb, method, max_size)
    assert sum(grown) == max_size + 1       # never more than the limit + 1
    assert max(grown) <= contentcoding.STEP


def test_decompressed_size_limit_is_exact():
    body = zlib.compress(b'x' * 1000)
    assert contentcoding.decompress(body, 'zlib', 1000) == b'x' * 1000
    with pytest.raises(MessageRefused, match='more than max_size=999'):
        contentcoding.decompress(body, 'zlib', 999)


@pytest.mark.parametrize('body, header, reason', [
    (zlib.compress(b'abc')[:-3], 'zlib', 'truncated'),
    (zlib.compress(b'abc') + b'junk', 'zlib', 'after its end'),
    (b'not compressed', 'zlib', 'cannot decompress'),
    (bz2.compress(b'abc')[:-5], 'bz2', 'truncated'),
    (b'not compressed', 'application/x-lzma', 'cannot decompress'),
    (b'x', 'application/zstd', 'unknown compression'),
])
def test_bad_compressed_bodies_are_refused(body, header, reason):
    with pytest.raises(MessageRefused, match=reason):
        contentcoding.decompress(body, header, None)


def test_lzma_dictionary_is_bounded():
    # an xz stream whose header asks for a 1.5 GiB dictionary
    filters = [{'id': lzma.FILTER_LZMA2, 'dict_size': 1536 * 1024 * 1024}]
    body = lzma.compress(b'x', filters=filters)
    with pytest.raises(MessageRefused, match='cannot decompress'):
        contentcoding.decompress(body, 'xz', None)


def test_unknown_compression_setting():
    with pytest.raises(ConfigurationError, match='unknown compression'):
        serializers.check_compression('snappy')
    assert serializers.check_compression('gzip') == 'zlib'


# the JSON type forms, as kombu.utils.json writes them

UTC = datetime.timezone.utc
TYPED = [
    (datetime.datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
     {'__type__': 'datetime', '__value__': '2024-05-01T12:30:00+00:00'}),
    (datetime.datetime(2024, 5, 1, 12, 30, 0, 250),
     {'__type__': 'datetime', '__value__': '2024-05-01T12:30:00.000250'}),
    (datetime.date(2024, 5, 1),
     {'__type__': 'date', '__value__': '2024-05-01'}),
    (datetime.time(12, 30, 0, 250000),
     {'__type__': 'time', '__value__': '12:30:00.250000'}),
    (decimal.Decimal('12.50'),
     {'__type__': 'decimal', '__value__': '12.50'}),
    (uuid.UUID('12345678123456781234567812345678'),
     {'__type__': 'uuid',
      '__value__': {'hex': '12345678123456781234567812345678'}}),
    (b'text', {'__type__': 'bytes', '__value__': 'text'}),
    (b'\xff\x00', {'__type__': 'base64', '__value__': '/wA='}),
]


@pytest.mark.parametrize('value, form', TYPED)
def test_json_type_forms(value, form):
    json_ = serializers.get('json')
    body = json_.dumps({'v': value})
    assert json.loads(body) == {'v': form}
    decoded = json_.loads(body, None)['v']
    assert decoded == value and type(decoded) is type(value)


@pytest.mark.parametrize('form, reason', [
    ({'__type__': 'os.system', '__value__': 'ls'}, 'unknown JSON type'),
    ({'__type__': ['datetime'], '__value__': 'x'}, 'unknown JSON type'),
    ({'__type__': 'datetime', '__value__': 5}, 'must be a string'),
    ({'__type__': 'uuid', '__value__': {'int': 5}}, 'must be'),
    ({'__type__': 'uuid', '__value__': {'hex': 'z'}}, 'hexadecimal'),
    ({'__type__': 'decimal', '__value__': 'ten'}, 'not a decimal'),
    ({'__type__': 'base64', '__value__': '***'}, 'not base64'),
    ({'__type__': 'date', '__value__': 'yesterday'}, 'Invalid isoformat'),
])
def test_other_typed_forms_are_refused(form, reason):
    with pytest.raises(MessageRefused, match=reason):
        receive(json.dumps([form]).encode(), content_type='application/json')


def test_objects_with_other_keys_stay_dicts():
    for form in ({'__type__': 'x'}, {'__type__': 'x', '__value__': 1,
                                     'more': 2}):
        assert receive(json.dumps(form).encode(),
                       content_type='application/json') == form


def test_other_objects_are_not_written():
    with pytest.raises(TypeError, match='use the pickle serializer'):
        serializers.get('json').dumps({'a': object()})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() |
    st.floats(allow_nan=False) | st.binary() |
    st.datetimes(timezones=st.none() | st.just(UTC)) | st.dates() |
    st.times() | st.uuids() |
    st.decimals(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) |
    st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_json_round_trip(value):
    json_ = serializers.get('json')
    assert json_.loads(json_.dumps(value), None) == value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096), st.sampled_from(['zlib', 'bz2', 'lzma']),
       st.integers(1, 5000))
def test_compression_round_trip_within_limits(data, method, max_size):
    body = contentcoding.compress(data, method)[0]
    if len(data) <= max_size:
        assert contentcoding.decompress(body, method, max_size) == data
    else:
        with pytest.raises(MessageRefused, match='more than max_size'):
            contentcoding.decompress(body, method, max_size)


@pytest.mark.parametrize('value, form', TYPED)
def test_json_type_forms_are_kombus(value, form):
    kombu_json = pytest.importorskip('kombu.utils.json')
    body = serializers.get('json').dumps([value])
    assert json.loads(body) == json.loads(kombu_json.dumps([value]))
    assert kombu_json.loads(body) == [value]
    assert serializers.get('json').loads(
        kombu_json.dumps([value]).encode(), None) == [value]


def test_compression_in_content_encoding_is_refused_clearly():
    with pytest.raises(MessageRefused, match="content_encoding 'gzip' is "
                       "not a charset.*'compression' header"):
        receive(gzip.compress(b'[1]'), content_type='application/json',
                content_encoding='gzip')
