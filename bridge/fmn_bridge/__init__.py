"""The bus bridge: fedmsg (ZeroMQ) and fedora-messaging (AMQP) into the incoming SQS queue.

A long-lived process (``fmn bridge``): sources receive bus messages and hand
them, wrapped in the version-1 envelope (``fmn.pipeline.envelope``,
docs/envelope.md), to one :class:`~fmn_bridge.sqs_sink.SqsSink`, which sends
them with ``SendMessageBatch`` and tells the source when SQS accepted each
one.  Nothing here does I/O at import.
"""
