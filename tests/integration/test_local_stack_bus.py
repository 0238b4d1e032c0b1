"""The local stack's bus queue keeps what is published before the bridge is up."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from services import AMQP_URL, rabbitmq_connection

from fmn.local.stack import LocalStack, StackOptions
from fmn.settings import Settings

pytestmark = pytest.mark.integration


def test_messages_published_before_the_bridge_binds_wait_in_its_queue(tmp_path: Path) -> None:
    """The bridge fault once lost the first 61 messages of the AMQP source: the stack
    declared the bridge's queue but left binding it to the bridge, and RabbitMQ drops
    what a topic exchange routes nowhere while the bridge is still connecting."""
    import pika

    tag = uuid.uuid4().hex[:8]
    options = StackOptions(workdir=tmp_path, amqp_url=AMQP_URL, amqp_queue=f"fmn-test-{tag}",
                           amqp_exchange=f"fmn-test-{tag}")
    stack = LocalStack(Settings(), options)
    rabbit = rabbitmq_connection()
    channel = rabbit.channel()
    try:
        stack._purge_amqp_queue()  # what start() does before it starts the bridge
        channel.confirm_delivery()
        channel.basic_publish(options.amqp_exchange, "org.fedoraproject.prod.test",
                              b'{"early": true}', properties=pika.BasicProperties(),
                              mandatory=True)  # unroutable: raises UnroutableError
        assert channel.queue_declare(options.amqp_queue, passive=True) \
            .method.message_count == 1
    finally:
        channel.queue_delete(options.amqp_queue)
        channel.exchange_delete(options.amqp_exchange)
        rabbit.close()
