"""Handlers for the ``zamqp worker`` tests: they write what they get to
the file named by $ZAMQP_TEST_OUTPUT, one JSON line per message."""
import json
import os
import time


def record(event):
    """Append the consumer's name and the body to the output file."""
    with open(os.environ['ZAMQP_TEST_OUTPUT'], 'a') as output:
        output.write(json.dumps({'consumer': event.consumer,
                                 'body': event.body}) + '\n')


def slow(event):
    """Record, after sleeping the seconds the body gives."""
    time.sleep(float(event.body.get('sleep', 0)))
    record(event)


def fail(event):
    raise ValueError(f'handler failed on purpose: {event.body!r}')


not_callable = 42
