"""AMQPProps: keywords, URLs, validation, equality, no password shown."""
import warnings

import pytest

from zamqp import AMQPProps
from zamqp import ConfigurationError
from zamqp.unpickling import AllowRules


def test_seed_defaults():
    props = AMQPProps()
    assert (props.host, props.port, props.user, props.password) == \
        ('localhost', 5672, 'guest', 'guest')
    assert (props.exchange, props.type, props.virtual_host, props.ssl) == \
        ('zamqp.broadcast.fanout', 'fanout', '/', False)
    assert props.heartbeat == 60 and props.connect_timeout > 0


def test_url_form():
    props = AMQPProps(url='amqp://bob:s%40cret@broker.example:5673/prod'
                          '?heartbeat=15&connect_timeout=2.5&timeout=9')
    assert (props.user, props.password, props.host, props.port) == \
        ('bob', 's@cret', 'broker.example', 5673)
    assert props.virtual_host == 'prod'
    assert (props.heartbeat, props.connect_timeout, props.timeout) == \
        (15, 2.5, 9.0)


@pytest.mark.parametrize('url, vhost', [
    ('amqp://h', '/'), ('amqp://h/', '/'), ('amqp://h/%2F', '/'),
    ('amqp://h/%2Fstaging', '/staging'), ('amqp://h/staging', 'staging'),
])
def test_url_virtual_host(url, vhost):
    assert AMQPProps(url=url).virtual_host == vhost


def test_amqps_url_turns_on_tls_and_its_port():
    props = AMQPProps.from_url('amqps://h')
    assert props.ssl is True and props.port == 5671


def test_keywords_win_over_url():
    props = AMQPProps(url='amqp://a:b@h:1234/v', port=5680, user='c')
    assert (props.user, props.password, props.port) == ('c', 'b', 5680)


@pytest.mark.parametrize('kw, words', [
    (dict(type='broadcast'), 'type='),
    (dict(exchange=''), 'exchange='),
    (dict(port=0), 'port='),
    (dict(port='5672'), 'port='),
    (dict(heartbeat=-1), 'heartbeat='),
    (dict(url='http://h/'), 'amqp://user:password@host:port/vhost'),
    (dict(url='amqp://h:99999/'), 'port'),
    (dict(url='amqp://h/?hearbeat=3'), "unknown URL option 'hearbeat'"),
    (dict(url='amqp://h/?heartbeat=x'), 'not a number'),
    (dict(accept=['yaml']), 'accept='),
])
def test_bad_settings_name_the_setting(kw, words):
    with pytest.raises(ConfigurationError) as info:
        AMQPProps(**kw)
    assert words in str(info.value)


def test_realm_warns_only_when_given():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        AMQPProps()
        AMQPProps(realm='/data')
    assert [w.category for w in caught] == [DeprecationWarning]
    assert 'realm' in str(caught[0].message)


def test_password_is_never_shown():
    props = AMQPProps(url='amqp://bob:Xy9secret@h/v')
    assert 'Xy9secret' not in repr(props)
    assert 'Xy9secret' not in props.url()
    assert props.url() == 'amqp://bob@h:5672/v'


def test_props_are_values():
    a = AMQPProps(exchange='e', allow=['x.Y'])
    assert a == AMQPProps(exchange='e', allow=['x.Y'])
    assert hash(a) == hash(AMQPProps(exchange='e', allow=['x.Y']))
    assert a != AMQPProps(exchange='f', allow=['x.Y'])
    assert isinstance(a.allow, AllowRules)


def test_ipv6_host_address():
    assert AMQPProps(host='::1').address == '[::1]:5672'


def test_accept_takes_one_name_or_several():
    assert AMQPProps(accept='json').accept == ('json',)
    assert AMQPProps(accept=['json', 'pickle']).accept == ('json', 'pickle')
