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


def test_a_fresh_stack_sends_nothing_an_earlier_stacks_bridge_left_in_its_spool(
        tmp_path: Path) -> None:
    """The queues start empty; the spool of an earlier stack's bridge (killed with it)
    was sent into the new stack's incoming queue, and its counts were off.  (A restart of
    the bridge within a stack, the bridge fault, keeps it: ``restart_bridge``.)"""
    tag = uuid.uuid4().hex[:8]
    options = StackOptions(workdir=tmp_path, amqp_url=AMQP_URL, amqp_queue=f"fmn-test-{tag}",
                           amqp_exchange=f"fmn-test-{tag}")
    stack = LocalStack(Settings(), options)
    left = tmp_path / "bridge-spool" / "fmn-dev-incoming" / "20260101T000000000000-1-0.jsonl"
    left.parent.mkdir(parents=True)
    try:
        left.write_text('"an earlier stack\'s envelope"\n')
        stack._start_bridge()
        assert not left.exists()
    finally:
        if stack._bridge is not None:
            stack._bridge.kill()
            stack._bridge.wait(10)
        channel = rabbitmq_connection().channel()
        channel.queue_delete(options.amqp_queue)
        channel.exchange_delete(options.amqp_exchange)
        channel.connection.close()
