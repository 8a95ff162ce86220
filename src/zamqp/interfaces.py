"""Contracts of zamqp's components."""
from zope.interface import Attribute
from zope.interface import Interface


class IAMQPProps(Interface):
    """Settings of a broker connection and of the exchange it publishes to.

    Props are values: two props with the same settings compare equal and
    hash alike, so they can key pools of connections.
    """

    host = Attribute("Broker host name or address (the first broker's).")
    port = Attribute("Broker TCP port (5672, or 5671 with ssl).")
    hosts = Attribute("Every broker as (host, port) pairs, in order.")
    user = Attribute("User name to log in with.")
    password = Attribute("Password; never shown in reprs or logs.")
    virtual_host = Attribute("RabbitMQ virtual host, '/' by default.")
    ssl = Attribute("False, True, or an ssl.SSLContext used as it is.")
    ca_file = Attribute("PEM file of the CAs that sign the broker's "
                        "certificate; None: the system's.")
    cert_file = Attribute("PEM client certificate (chain), or None.")
    key_file = Attribute("PEM key of the client certificate, or None.")
    server_hostname = Attribute("Name the broker's certificate must carry; "
                                "None: the host connected to.")
    verify = Attribute("Check the broker's certificate and name (True).")
    exchange = Attribute("Name of the exchange messages go through.")
    type = Attribute("Exchange type: 'fanout', 'direct' or 'topic'.")
    heartbeat = Attribute("Heartbeat interval in seconds (0 turns it off).")
    connect_timeout = Attribute("Seconds to wait for TCP connect and login.")
    timeout = Attribute("Seconds any other blocking network call may take.")
    accept = Attribute("Names of the serializers consumers decode.")
    allow = Attribute("Allow rules for unpickling (see IAllowRules).")
    signed_allow = Attribute("Allow rules added for messages whose "
                             "signature was verified.")
    secret = Attribute("The secret producers sign with, or None; never "
                       "shown in reprs, logs or errors.")
    accepted_secrets = Attribute("Further secrets whose signatures "
                                 "consumers accept (rotation).")
    accept_unsigned = Attribute("With a secret: decode unsigned messages "
                                "with the strict rules instead of refusing "
                                "them.")
    signature_max_age = Attribute("Seconds a signed message stays valid, "
                                  "or None.")
    signer = Attribute("The zamqp.signing.Signer of the secrets, or None.")
    max_size = Attribute("Largest body consumers read, in bytes; None: no "
                         "limit.")
    max_depth = Attribute("Deepest nesting of a decoded message; None: no "
                          "limit.")

    def url():
        """Return the amqp:// URL of these props, without the password."""

    def candidates():
        """The ``host:port`` addresses to try, in the order to try them:
        round-robin, starting after the broker last connected to."""

    def connected(address):
        """Note that a connection to ``address`` succeeded."""


class IConnection(Interface):
    """A py-amqp connection with one channel and the declarations it needs.

    Nothing touches the network until ``channel`` is first read.
    """

    channel = Attribute(
        "The open py-amqp channel; the first access connects and declares "
        "the exchange (and in read mode the queue and its binding).")

    def close():
        """Close channel and connection; safe to call more than once."""


class ISerializer(Interface):
    """Turns Python objects into message bodies and back."""

    name = Attribute("Short name users choose it by, e.g. 'json'.")
    content_type = Attribute("MIME type written on every message.")

    def dumps(obj):
        """Return the body (bytes) for ``obj``."""

    def loads(body, allow):
        """Return the object of ``body``.

        ``allow`` is an IAllowRules that serializers able to create
        arbitrary objects must obey; raise zamqp.exceptions.MessageRefused
        for anything they do not allow.
        """


class ISignedAllowRules(Interface):
    """A utility holding IAllowRules that apply only to messages whose
    signature was verified (``<zamqp:allow signed="true">``)."""

    rules = Attribute("The IAllowRules.")


class IAllowRules(Interface):
    """Which globals a restricted unpickler may resolve."""

    def allows(module, name):
        """Tell whether ``module.name`` may be looked up by name."""

    def accepts(obj, module, name):
        """Tell whether the object found for ``module.name`` may be used."""


class IDecoder(Interface):
    """Turns a received AMQP message into the object its sender sent."""

    def __call__(message):
        """Return the decoded body or raise MessageRefused with a reason.

        Steps run in order: size limit, signature check, content type,
        restricted decoding, depth limit; nothing is decoded before the
        checks in front of it passed, and no step may run code named by
        the message.
        """


class IProducer(Interface):
    """Publishes messages to one exchange with one routing key."""

    def __call__(message, routing_key=None, headers=None):
        """Serialize and publish ``message``; return its message id.

        Safe to call from several threads; reuses one connection.
        """

    def publish_now(msg, routing_key):
        """Publish the py-amqp message ``msg`` at once (no transaction);
        with confirms, wait for its confirm unless a batch is open."""

    def batch():
        """A context manager that publishes what it is called with and,
        with confirms, waits once at its end for all of them; raises
        NotConfirmed listing the message ids that failed."""

    def publish_many(objects, routing_key=None, headers=None):
        """Publish every object as one batch; return the message ids."""

    def close():
        """Close the connection; the next call opens a new one."""


class IConsumer(Interface):
    """Receives messages from a queue and hands them to a callback."""

    queue_name = Attribute("Name of the queue on the broker.")

    def run():
        """Consume until ``stop`` is called; blocks the calling thread."""

    def stop():
        """Ask ``run`` to return; never blocks."""

    def handle(message):
        """Decode one AMQP message and pass its body to the callback.

        Refused messages and callback errors are logged, never raised.
        """


class IOffsetStore(Interface):
    """Where stream readers keep their positions across restarts.

    A position is the offset of the last message of stream ``stream``
    that reader ``reader`` is done with (its callback returned, or it
    was dead-lettered). The reader asks for it when it connects and
    goes on from the next offset; it saves a new one after callbacks
    returned, in batches, and when it stops.
    """

    def load(stream, reader):
        """The position saved for ``reader`` of ``stream``, or None if
        there is none (the reader then begins at its ``start``).

        Raises OffsetStoreError when a saved position cannot be read:
        the reader must not silently begin anywhere else."""

    def save(stream, reader, offset):
        """Record durably that ``reader`` is done with every message of
        ``stream`` up to ``offset``; once it returned, a crash does not
        lose that position. Offsets only grow: a lower one than the
        position saved is ignored. Raises OSError or OffsetStoreError
        when it cannot (the reader logs it and tries again later)."""


class IAMQPEvent(Interface):
    """An event whose payload is published when it is notified."""

    queue = Attribute("Queue name, used as the routing key.")
    props = Attribute("IAMQPProps of the exchange to publish to.")
    payload = Attribute("The object to send; notified in each receiver.")

    def publish():
        """Publish the payload unless already done; return True if sent."""


class IMessageReceived(Interface):
    """Notified (or passed to a consumer's handler) for each message a
    consumer declared in ZCML receives."""

    consumer = Attribute("Name of the consumer that received it.")
    body = Attribute("The decoded body: the object the sender sent.")
    message = Attribute("The py-amqp message: headers, properties, "
                        "delivery info.")
    site = Attribute("Inside a Zope instance, the site the handler runs "
                     "in; None elsewhere.")


class IConsumerSpec(Interface):
    """A consumer declared in configuration, started with the process."""

    name = Attribute("The consumer's name; its thread is "
                     "'zamqp-consumer-<name>'.")
    enabled = Attribute('False: declared, but not started with the '
                        'process.')

    def check(database=None):
        """Raise an error naming the setting to fix if the consumer could
        not handle messages in ``database`` (its site or user missing);
        called when the database opens, before any consumer starts."""

    def create(database=None):
        """Return a new, not yet started IConsumer.

        With a ZODB ``database``, each message is handled in a
        transaction on a connection of that database.
        """


class IClientMetrics(Interface):
    """What one producer or consumer counted, as plain values
    (``zamqp.metrics.snapshot``/``collect``; see docs/metrics.rst)."""

    kind = Attribute("'producer' or 'consumer'.")
    name = Attribute("The name it was made with (a producer's or "
                     "consumer's ``queue`` argument), or the ZCML name.")
    exchange = Attribute("The exchange it publishes to or consumes from.")
    queue = Attribute("A consumer's queue on the broker; None for "
                      "producers.")
    broker = Attribute("``host:port[,host:port...]/vhost``; never a "
                       "password.")
    counters = Attribute("Counter name -> int (zamqp.metrics."
                         "PRODUCER_COUNTERS or CONSUMER_COUNTERS); they "
                         "only grow.")
    backlog = Attribute("Producer: messages not confirmed yet or waiting "
                        "to be sent. Consumer: messages delivered that no "
                        "handler began yet.")
    state = Attribute("A producer's (idle, connected, disconnected, down, "
                      "closing) or consumer's (starting, consuming, "
                      "reconnecting, stopped, failed) state.")
    last_error = Attribute("The text of the last error (secrets scrubbed), "
                           "or None.")
    stream = Attribute("A stream reader's ``reader``, ``position`` and "
                       "``lag`` (a dict), else None.")
    labels = Attribute("The Prometheus labels: kind, name, exchange, "
                       "queue, broker (strings).")

    def as_dict():
        """The values as a plain dict."""
