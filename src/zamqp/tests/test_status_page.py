"""SLOW (about 30 s): the status page and the health view of a real Zope
instance (runwsgi), read in headless Chromium (selenium), while the
instance's own private RabbitMQ node stops and starts again.

The instance (the Instance helpers of test_zope_instances) connects to
a PrivateBroker as a user of its own with a password that must never
appear on a page. Needs /usr/bin/chromium and /usr/bin/chromedriver
(Debian packages ``chromium`` and ``chromium-driver``; scripts/test
installs them) and RabbitMQ for the private node: without them the
tests are skipped, except in CI (``CI`` set), where they fail.
"""
import base64
import os
import subprocess
import time
import unittest
import urllib.error
import urllib.request
import uuid

import pytest

from zamqp.testhelpers import Admin
from zamqp.testhelpers import unique
from zamqp.testhelpers import wait_for
from zamqp.tests import brokers
from zamqp.tests.test_zope_instances import CONSUMERS
from zamqp.tests.test_zope_instances import InstancesLayer
from zamqp.tests.test_zope_instances import command
from zamqp.tests.test_zope_instances import environment
from zamqp.tests.test_zope_instances import show_logs_on_failure

CHROMIUM = '/usr/bin/chromium'
CHROMEDRIVER = '/usr/bin/chromedriver'
#: Users the layer adds to the instance: a Manager, and one with no role.
MANAGER = ('operator', 'operator-pw')
VIEWER = ('viewer', 'viewer-pw')
#: The instance's broker user; its password is made per run.
BROKER_USER = 'zamqpstatus'
#: Seconds the page may take to show what a consumer does.
PAGE_TIMEOUT = 30
NAMES = sorted(name[len('zamqp-consumer-'):] for name in CONSUMERS)


def chromium_missing():
    """True where Chromium cannot run and that is acceptable: not in CI
    (CI must run these tests; scripts/test installs the packages)."""
    present = os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)
    try:
        import selenium     # noqa: F401
    except ImportError:
        present = False
    return not present and not os.environ.get('CI')


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(brokers.missing(), reason='RabbitMQ is not '
                       'installed here (private broker nodes)'),
    pytest.mark.skipif(chromium_missing(), reason='chromium, '
                       'chromium-driver or selenium are not installed '
                       '(scripts/test installs them; CI fails instead)'),
]


def figure(line):
    brokers.report(f'status page: {line}')


def browser():
    """Headless Chromium driven by the Debian chromedriver (no download:
    both paths are given, and Selenium Manager is kept offline)."""
    os.environ.setdefault('SE_OFFLINE', 'true')
    from selenium import webdriver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ('--headless=new', '--no-sandbox', '--disable-gpu',
                     '--disable-dev-shm-usage', '--window-size=1400,1000'):
        options.add_argument(argument)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd('Network.enable', {})
    return driver


def authorization(user, password):
    token = base64.b64encode(f'{user}:{password}'.encode()).decode()
    return f'Basic {token}'


#: The ``zconsole run`` script that adds the users (``app`` is the root).
ADD_USERS = f"""
import transaction
users = app.acl_users
users._doAddUser({MANAGER[0]!r}, {MANAGER[1]!r}, ['Manager'], [])
users._doAddUser({VIEWER[0]!r}, {VIEWER[1]!r}, [], [])
transaction.commit()
"""


def fetch(url, auth=None, method='GET'):
    """(status, headers, body text) of ``url``, errors included."""
    request = urllib.request.Request(url, method=method)
    if auth:
        request.add_header('Authorization', authorization(*auth))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return (response.status, response.headers,
                    response.read().decode())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


class StatusInstance(InstancesLayer):
    """``status``: one instance on a private broker node, as
    BROKER_USER with a password of this run."""

    def make_instances(self):
        self.broker = brokers.PrivateBroker()
        self.broker.start()
        self.password = f'pw-{uuid.uuid4().hex}'
        self.broker.ctl('add_user', BROKER_USER, self.password)
        self.broker.ctl('set_permissions', '-p', '/', BROKER_USER,
                        '.*', '.*', '.*')
        self.admin.close()
        self.admin = Admin(self.broker.url)     # checks the private node
        url = (f'amqp://{BROKER_USER}:{self.password}@127.0.0.1:'
               f'{self.broker.port}/')
        self.make('status', exchange=unique('zamqp.test.status'), url=url)
        self.add_users(self['status'])
        self.driver = None

    def setUp(self):
        super().setUp()
        try:
            self.driver = browser()
        except BaseException:
            self.tearDown()
            raise

    def add_users(self, instance):
        """Add MANAGER and VIEWER to the root acl_users of ``instance``
        (not started yet) with ``zconsole run``, consumers off. (Not
        with the ZMI's form: where plone.protect is installed, it aborts
        a POST without its CSRF token.)"""
        path = os.path.join(instance.home, 'add_users.py')
        with open(path, 'w') as script:
            script.write(ADD_USERS)
        done = subprocess.run(
            command('zconsole', 'Zope2.utilities.zconsole')
            + ['run', instance.etc('zope.conf'), path],
            env=dict(environment(), ZAMQP_CONSUMERS='off'),
            cwd=instance.home, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    def tearDown(self):
        driver, self.driver = getattr(self, 'driver', None), None
        if driver is not None:
            driver.quit()
        self.exchanges = []     # they live on the private node, which goes
        try:
            super().tearDown()
        except Exception:       # the admin connection of a stopped node
            pass
        broker = getattr(self, 'broker', None)
        if broker is not None:
            broker.cleanup()


STATUS_INSTANCE = StatusInstance(name='zamqp.tests:StatusInstance')


class StatusPageTests(unittest.TestCase):
    """In this order (by name): the broker stops in test_4 and comes
    back in test_5."""

    layer = STATUS_INSTANCE

    def setUp(self):
        self.instance = self.layer['status']
        self.driver = self.layer.driver
        self.base = f'http://127.0.0.1:{self.instance.port}'
        self.page = f'{self.base}/Control_Panel/zamqp-status'
        self.health = f'{self.base}/@@zamqp-health'

    def log_in(self):
        """Send the Manager's basic auth with every request."""
        self.driver.execute_cdp_cmd('Network.setExtraHTTPHeaders', {
            'headers': {'Authorization': authorization(*MANAGER)}})

    def log_out(self):
        self.driver.execute_cdp_cmd('Network.setExtraHTTPHeaders',
                                    {'headers': {}})

    def states(self):
        """Load the page; {consumer name: state} as the browser shows it."""
        from selenium.webdriver.common.by import By
        self.driver.get(self.page)
        rows = self.driver.find_elements(
            By.CSS_SELECTOR, '#zamqp-consumers tbody tr')
        return {row.get_attribute('data-consumer'):
                row.find_element(By.CSS_SELECTOR, '.zamqp-state span').text
                for row in rows}

    def cell(self, name, column):
        from selenium.webdriver.common.by import By
        return self.driver.find_element(
            By.CSS_SELECTOR, f'tr[data-consumer="{name}"] .zamqp-{column}'
        ).text

    def wait_for_states(self, state):
        """Seconds until the page shows every consumer in ``state``."""
        begin = time.monotonic()
        self.assertTrue(wait_for(
            lambda: self.states() == dict.fromkeys(NAMES, state),
            timeout=PAGE_TIMEOUT, interval=0.25),
            f'the page did not show {state} within {PAGE_TIMEOUT} s: '
            f'{self.states()}')
        return time.monotonic() - begin

    def screenshot(self, name):
        """Save the browser's view to $ZAMQP_SCREENSHOTS/<name>.png, if
        that variable names a directory (to look at the page)."""
        folder = os.environ.get('ZAMQP_SCREENSHOTS')
        if folder:
            self.driver.save_screenshot(os.path.join(folder, f'{name}.png'))

    def assertNoPassword(self):
        self.assertNotIn(self.layer.password, self.driver.page_source)

    @show_logs_on_failure
    def test_1_anonymous_gets_the_login_challenge(self):
        status, headers, body = fetch(self.page)
        self.assertEqual(status, 401)
        self.assertIn('basic', headers.get('WWW-Authenticate', '').lower())
        self.assertNotIn('zamqp-consumers', body)
        for part in ('table', 'report', 'index'):    # nor parts of it
            status, _, body = fetch(f'{self.page}/{part}')
            self.assertEqual(status, 404, part)      # not published
            self.assertNotIn('zamqp-consumers', body)
        # the browser, anonymous, sees no report either
        self.log_out()
        self.driver.get(self.page)
        self.assertNotIn('zamqp-consumers', self.driver.page_source)
        self.assertNoPassword()
        # a user who is not a Manager is refused too, and a wrong password
        for credentials in (VIEWER, (MANAGER[0], 'wrong')):
            status, _, body = fetch(self.page, auth=credentials)
            self.assertEqual(status, 401, credentials)
            self.assertNotIn('zamqp-consumers', body)
        status, headers, body = fetch(self.page, auth=MANAGER)
        self.assertEqual(status, 200)
        self.assertIn('zamqp-consumers', body)
        self.assertIn('no-store', headers['Cache-Control'])
        self.assertNotIn(self.layer.password, body)

    @show_logs_on_failure
    def test_2_health_is_200_while_consuming(self):
        status, headers, body = fetch(self.health)
        self.assertEqual(status, 200, body)
        self.assertEqual(body, 'OK\n' + ''.join(
            f'{name}: consuming\n' for name in NAMES))
        self.assertTrue(headers['Content-Type'].startswith('text/plain'))
        self.assertIn('no-store', headers['Cache-Control'])
        self.assertNotIn(self.layer.password, body)
        self.assertEqual(fetch(self.health, method='HEAD')[0], 200)

    @show_logs_on_failure
    def test_3_manager_sees_every_consumer_consuming(self):
        from selenium.webdriver.common.by import By
        self.log_in()
        self.assertEqual(self.states(), dict.fromkeys(NAMES, 'consuming'))
        port = self.layer.broker.port
        for name in NAMES:
            self.assertEqual(self.cell(name, 'broker'),
                             f'127.0.0.1:{port}//')
            self.assertEqual(self.cell(name, 'user'), BROKER_USER)
            self.assertIn(self.instance.exchange,
                          self.cell(name, 'exchange'))
            self.assertTrue(self.cell(name, 'queue').startswith(name))
            for column in ('handled', 'refused', 'retried', 'dead_lettered',
                           'reconnects', 'backlog'):
                self.assertEqual(self.cell(name, column), '0', column)
        producer = self.driver.find_element(
            By.CSS_SELECTOR, 'tr[data-producer="addon"]')
        self.assertIn(self.instance.exchange, producer.text)
        health = self.driver.find_element(By.ID, 'zamqp-health')
        self.assertEqual(health.get_attribute('data-healthy'), 'true')
        # the page is the AMQP tab of the Control Panel
        tab = self.driver.find_element(By.LINK_TEXT, 'AMQP')
        self.assertTrue(tab.get_attribute('href').endswith(
            '/Control_Panel/zamqp-status'))
        self.driver.get(f'{self.base}/Control_Panel/manage_main')
        self.driver.find_element(By.LINK_TEXT, 'AMQP').click()
        self.assertTrue(self.driver.find_elements(By.ID, 'zamqp-consumers'))
        self.assertNoPassword()
        self.screenshot('consuming')
        # a message handled is counted
        self.instance.get('@@zamqp-notify', text=unique('counted'))
        self.assertTrue(wait_for(
            lambda: self.states() and self.cell('addon.store', 'handled')
            == '1', timeout=10))

    @show_logs_on_failure
    def test_4_consumers_reconnect_when_their_broker_stops(self):
        self.log_in()
        begin = time.monotonic()
        self.layer.broker.stop()
        stopped = time.monotonic() - begin
        took = self.wait_for_states('reconnecting')
        figure(f'rabbitmqctl stop took {stopped:.1f} s; the page showed '
               f'both consumers reconnecting {took:.1f} s later')
        for name in NAMES:
            self.assertTrue(self.cell(name, 'last_error'), name)
        self.assertNoPassword()
        self.screenshot('reconnecting')
        from selenium.webdriver.common.by import By
        health = self.driver.find_element(By.ID, 'zamqp-health')
        self.assertEqual(health.get_attribute('data-healthy'), 'false')
        status, _, body = fetch(self.health)
        self.assertEqual(status, 503, body)
        self.assertEqual(body, 'UNHEALTHY\n' + ''.join(
            f'{name}: reconnecting\n' for name in NAMES))
        self.assertNotIn(self.layer.password, body)
        self.assertNotIn(BROKER_USER, body)
        self.assertEqual(fetch(self.health, method='HEAD')[0], 503)

    @show_logs_on_failure
    def test_5_back_to_consuming_when_the_broker_is_back(self):
        self.log_in()
        begin = time.monotonic()
        self.layer.broker.start()
        started = time.monotonic() - begin
        took = self.wait_for_states('consuming')
        figure(f'the private node listened after {started:.1f} s; the '
               f'page showed both consumers consuming {took:.1f} s later')
        for name in NAMES:
            self.assertEqual(self.cell(name, 'reconnects'), '1', name)
        self.assertNoPassword()
        status, _, body = fetch(self.health)
        self.assertEqual(status, 200, body)
