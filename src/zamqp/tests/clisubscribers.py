"""Imported by a ``zamqp worker`` test config (``[worker] imports``): a
zope.event subscriber that writes every dict event to the file named by
$ZAMQP_TEST_OUTPUT."""
import json
import os

import zope.event


def written(event):
    if isinstance(event, dict):
        with open(os.environ['ZAMQP_TEST_OUTPUT'], 'a') as output:
            output.write(json.dumps({'notified': event}) + '\n')


zope.event.subscribers.append(written)
