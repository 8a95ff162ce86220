"""SLOW (about 10 s): two real Zope instances (runwsgi, separate
databases) broadcast object events of their content to each other as
references (zamqp.zope.references), and subscribers of received events
write to their own instance's database through zamqp.zope.context.site().

Each instance loads the test add-on with ``amqp_zcml(content=True)``:
the producer ``addon`` broadcasts INoted, IObjectModifiedEvent and
IObjectMovedEvent; the consumer ``addon.events`` notifies what it
receives, in a transaction on the application root. The add-on's
subscribers commit what they saw of received events to the root
(``@@zamqp-noted``, ``@@zamqp-content-log``) and keep what they saw of
all object events in memory (``@@zamqp-content-seen``).
"""
import re
import time
import urllib.error

import pytest

import zamqp.tests.test_zope_instances as instances
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for

pytestmark = pytest.mark.slow
show_logs_on_failure = instances.show_logs_on_failure


class ContentInstances(instances.InstancesLayer):
    """alpha and beta share an exchange and broadcast content events."""

    def make_instances(self):
        exchange = self.exchange()
        self.make('alpha', exchange, content=True)
        self.make('beta', exchange, content=True)


CONTENT_INSTANCES = ContentInstances(name='zamqp.tests:ContentInstances')


def entries(instance, view, **match):
    return [e for e in instance.get(view)
            if all(e.get(k) == v for k, v in match.items())]


class ContentInstancesTests(instances.InstancesTestCase):

    layer = CONTENT_INSTANCES

    def setUp(self):
        self.alpha = self.layer['alpha']
        self.beta = self.layer['beta']
        self.instances = (self.alpha, self.beta)

    def wait_log(self, instance, count=1, **match):
        """Until ``instance`` committed ``count`` received object events
        matching ``match``; return them."""
        found = []

        def enough():
            found[:] = entries(instance, '@@zamqp-content-log', **match)
            return len(found) >= count

        self.assertTrue(wait_for(enough, timeout=10),
                        f'{instance.name}: no {match} in '
                        f'{instance.get("@@zamqp-content-log")}')
        return found

    @show_logs_on_failure
    def test_events_subscriber_writes_to_its_database(self):
        """A subscriber of a received event reaches the database through
        zamqp.zope.context.site() (the application root, no component
        site); what it writes is committed and seen by a view."""
        text = unique('noted')
        self.alpha.get('@@zamqp-notify', text=text)
        for instance in self.instances:
            self.assertTrue(wait_for(lambda: text in instance.texts(
                '@@zamqp-noted'), timeout=10), instance.name)
        [entry] = [e for e in self.beta.get('@@zamqp-noted')
                   if e['text'] == text]
        self.assertEqual(entry, dict(
            text=text, origin='alpha', site='/', application='/',
            component_site=None, root_keys=['Application']))

    @show_logs_on_failure
    def test_added_in_alpha_only_is_missing_in_beta(self):
        name = unique('only-alpha').replace('.', '-')
        self.assertEqual(self.alpha.get('@@zamqp-content-add', id=name,
                                        title='alpha only'),
                         dict(added=f'/{name}'))
        [added] = self.wait_log(self.beta, event='ObjectAddedEvent',
                                sender_path=f'/{name}')
        self.assertEqual(added['path'], None)
        self.assertTrue(added['unresolved'])
        self.assertTrue(added['received'])
        # in alpha, its own event came back with alpha's object
        [echo] = self.wait_log(self.alpha, event='ObjectAddedEvent',
                               sender_path=f'/{name}')
        self.assertEqual((echo['path'], echo['title'], echo['database'],
                          echo['unresolved']),
                         (f'/{name}', 'alpha only', 'alpha', False))

    @show_logs_on_failure
    def test_modified_in_alpha_arrives_with_betas_object(self):
        name = unique('both').replace('.', '-')
        self.beta.get('@@zamqp-content-add', id=name, title='beta title')
        self.alpha.get('@@zamqp-content-add', id=name, title='alpha title')
        # each instance's add event reached the other, which has the
        # object too (alpha's may have come before beta's add)
        self.wait_log(self.alpha, event='ObjectAddedEvent',
                      sender_path=f'/{name}', count=2)
        self.wait_log(self.beta, event='ObjectAddedEvent',
                      sender_path=f'/{name}', count=2)
        self.assertEqual(self.alpha.get(f'{name}/@@zamqp-content-edit',
                                        title='edited in alpha'),
                         dict(modified=f'/{name}', title='edited in alpha'))
        [modified] = self.wait_log(self.beta, event='ObjectModifiedEvent',
                                   sender_path=f'/{name}')
        self.assertEqual(modified, dict(
            modified, path=f'/{name}', title='beta title', database='beta',
            received=True, unresolved=False, descriptions=[['title']],
            thread='zamqp-worker-addon.events'))
        [echo] = self.wait_log(self.alpha, event='ObjectModifiedEvent',
                               sender_path=f'/{name}')
        self.assertEqual((echo['title'], echo['database']),
                         ('edited in alpha', 'alpha'))
        # no ping-pong: beta did not relay what it received, alpha did
        # not relay its echo; each has it once, after a while too
        time.sleep(1)
        for instance in self.instances:
            self.assertEqual(len(entries(
                instance, '@@zamqp-content-log', event='ObjectModifiedEvent',
                sender_path=f'/{name}')), 1, instance.name)
        # beta notified it only as received (once, or again when its
        # transaction was retried after a conflict), never as its own
        seen = {(e['received'], e['thread']) for e in entries(
            self.beta, '@@zamqp-content-seen', event='ObjectModifiedEvent',
            path=f'/{name}')}
        self.assertEqual(seen, {(True, 'zamqp-worker-addon.events')})
        seen = [e['received'] for e in entries(
            self.alpha, '@@zamqp-content-seen', event='ObjectModifiedEvent',
            path=f'/{name}')]
        self.assertEqual(seen.count(False), 1)
        self.assertTrue(seen.count(True) >= 1)

    @show_logs_on_failure
    def test_event_that_cannot_travel_is_a_clear_error(self):
        with self.assertRaises(urllib.error.HTTPError) as raised:
            self.alpha.get('@@zamqp-unpicklable')
        self.assertEqual(raised.exception.code, 500)
        self.assertTrue(wait_for(lambda: re.search(
            r"ERROR \[zamqp\.zope\.delivery:\d+\]\[\S+\] <zamqp:broadcast "
            r"for='zamqp\.tests\.zopeaddon\.interfaces\.INoted' "
            r"producer='addon'> cannot send "
            r"Noted\(<unlocked _thread\.lock .*TypeError: cannot pickle "
            r"'_thread\.lock' object\. A broadcast event travels "
            r"serialized", instances.read(self.alpha.event_log)),
            timeout=5), 'no clear error in the event log')
        # the instance goes on relaying what can travel
        text = unique('after')
        self.alpha.get('@@zamqp-notify', text=text)
        self.assertTrue(wait_for(lambda: text in self.beta.texts(
            '@@zamqp-noted'), timeout=10))
