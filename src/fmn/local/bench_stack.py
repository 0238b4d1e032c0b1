"""``fmn bench stack``: end-to-end throughput of the local stack, and its ceiling.

Starts the stack as ``fmn up`` does (its own moto server process), then:

1. **the moto server's own ceiling**, in the same run and with the same
   client settings: how fast a scratch queue gives back ``ReceiveMessage`` +
   ``DeleteMessageBatch`` while taking ``SendMessageBatch`` calls, from as
   many threads as the incoming queue's maximum concurrency, at queue depths
   10, 100 and 1,000 (moto's calls slow down as a queue deepens);
2. **end to end**: N bus messages (the shared Fedora messages, cycled, each
   copy with its own id) published as fast as possible, fedmsg envelopes on
   the local ZeroMQ endpoint and fedora-messaging records on RabbitMQ; the
   clock runs from the first publish until the match function has matched
   the last one and its notifications are on the backend queues.

The stack's match throughput cannot exceed the emulator's receive/delete
ceiling, and on AWS SQS that ceiling is far higher: read the first figure
as the local stack's limit, the second as how close the pipeline gets to it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fmn.local.replay import bind_publisher
from fmn.local.stack import LocalStack, StackOptions
from fmn.settings import Settings


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _moto_ceiling(sqs: Any, threads: int, depths: tuple[int, ...] = (10, 100, 1000),
                  sample: int = 200) -> dict[str, Any]:
    """Send and receive+delete rates of the emulator, at a few queue depths.

    The moto server's SQS scans a queue's messages on every call, so its
    rates fall as the queue gets deeper: a backlog slows the very calls that
    would drain it.  Each depth is measured on a fresh queue filled to it,
    with ``threads`` clients receiving ``sample`` messages (deleting each
    batch) and sending as many back, so the depth holds.
    """
    body = "x" * 600  # about the size of an envelope of a shared message
    out: dict[str, Any] = {"threads": threads, "by_depth": {}}
    for depth in depths:
        url = sqs.create_queue(QueueName=f"fmn-ceiling-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        for i in range(0, depth, 10):
            sqs.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(j), "MessageBody": body} for j in range(min(10, depth - i))])
        per_thread = max(1, sample // threads // 10)
        counts = {"received": 0, "sent": 0}
        lock = threading.Lock()

        def work(url: str = url, per_thread: int = per_thread,
                 counts: dict[str, int] = counts, lock: threading.Lock = lock) -> None:
            received = sent = 0
            for _ in range(per_thread):
                msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=1).get("Messages", [])
                if msgs:
                    sqs.delete_message_batch(QueueUrl=url, Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(msgs)])
                    received += len(msgs)
                sqs.send_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(j), "MessageBody": body} for j in range(10)])
                sent += 10
            with lock:
                counts["received"] += received
                counts["sent"] += sent

        workers = [threading.Thread(target=work) for _ in range(threads)]
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - started
        sqs.delete_queue(QueueUrl=url)
        out["by_depth"][depth] = {
            "received_and_deleted_per_s": counts["received"] / elapsed,
            "sent_per_s": counts["sent"] / elapsed,
        }
    return out


def _records(count: int, files: list[Path]) -> tuple[list[bytes], list[dict[str, Any]]]:
    """``count`` records cycled from the shared files, each copy with its own id."""
    fedmsg, fm = ([json.loads(line) for line in f.read_bytes().splitlines() if line.strip()]
                  for f in files)
    zmq_frames: list[bytes] = []
    amqp: list[dict[str, Any]] = []
    pool = [("fedmsg", r) for r in fedmsg] + [("amqp", r) for r in fm]
    for k in range(count):
        kind, record = pool[k % len(pool)]
        copy = dict(record)
        if kind == "fedmsg":
            copy["msg_id"] = f"{record.get('msg_id') or 'fixture'}-{k}"
            zmq_frames.append(json.dumps(copy).encode())
        else:
            copy["id"] = f"{record['id']}-{k}"
            amqp.append(copy)
    return zmq_frames, amqp


def run(messages: int, users: int, json_path: str | None) -> int:
    import pika

    from fmn.bench import default_message_files
    from fmn.pipeline.queues import queue

    settings = dataclasses.replace(Settings.from_env(), aws_endpoint_url=None,
                                   queue_prefix=f"bench{uuid.uuid4().hex[:6]}-",
                                   database_url="sqlite:///var/bench/prefs.sqlite")
    options = StackOptions(users=users, workdir=Path("var/bench"),
                           amqp_queue=f"fmn-bench-{uuid.uuid4().hex[:6]}", poll_wait_s=1,
                           log_dir=Path("var/bench/logs"), web=False)
    stack = LocalStack(settings, options)
    stack.start(say=_say)
    try:
        threads = queue("incoming").max_concurrency
        _say(f"measuring the moto server's own ceiling ({threads} threads) ...")
        ceiling = _moto_ceiling(stack.sqs, threads)

        frames, amqp = _records(messages, default_message_files())
        _say(f"publishing {len(frames)} fedmsg and {len(amqp)} fedora-messaging messages ...")
        pub = bind_publisher(options.fedmsg_endpoint)
        conn = pika.BlockingConnection(pika.URLParameters(options.amqp_url))
        channel = conn.channel()
        started = time.perf_counter()
        for frame in frames:
            pub.send_multipart([b"bench", frame])
        for record in amqp:
            channel.basic_publish(
                "amq.topic", record["topic"], json.dumps(record["body"]).encode(),
                pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                     headers=record.get("headers") or {},
                                     message_id=record["id"]))
        published_s = time.perf_counter() - started
        conn.close()
        bridged_s = matched_s = None
        last = time.monotonic()
        while True:
            status = stack.status()
            c = status["counters"]
            now = time.perf_counter() - started
            if bridged_s is None and c["bridged"] >= messages:
                bridged_s = now
            if c["matched"] >= messages:
                matched_s = now
                break
            if time.monotonic() - last > 5:
                _say(f"  {now:6.1f}s bridged {c['bridged']}, matched {c['matched']}, "
                     f"incoming concurrency {status['queues']['incoming']['concurrency']}")
                last = time.monotonic()
            time.sleep(0.2)
        pub.close()
        result = {
            "messages": messages, "users": users,
            "moto_ceiling": ceiling,
            "published_s": published_s, "bridged_s": bridged_s, "matched_s": matched_s,
            "end_to_end_messages_per_s": messages / matched_s,
            "notifications": stack.status()["counters"]["notifications"],
        }
    finally:
        stack.stop()
        # the benchmark's queue is bound to every topic: leave nothing behind
        conn = pika.BlockingConnection(pika.URLParameters(options.amqp_url))
        conn.channel().queue_delete(options.amqp_queue)
        conn.close()
    for depth, fig in ceiling["by_depth"].items():
        print(f"moto server ceiling at queue depth {depth:>5} ({ceiling['threads']} threads): "
              f"receive+delete {fig['received_and_deleted_per_s']:,.0f} msg/s while sending "
              f"{fig['sent_per_s']:,.0f} msg/s")
    print(f"end to end: {messages:,} messages published in {published_s:.1f}s, all in the "
          f"incoming queue after {bridged_s:.1f}s, all matched after {matched_s:.1f}s = "
          f"{messages / matched_s:,.0f} msg/s ({users:,} users; notifications "
          + ", ".join(f"{b} {n:,}" for b, n in result["notifications"].items()) + ")")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0
