"""The emulator's own ceiling for a run's request mix, measured in the same run.

:func:`measure` replays the SQS requests the pipeline made (the billed ones:
the bridge's, the event source mappings' and the functions'; not the
scaler's or the instrument's), in the same proportions, with the same entries
per batch and the same body sizes, against a scratch queue kept a couple of hundred
messages deep, from several client threads, as fast as the emulator answers,
for a few seconds.  Its requests per second are the most the pipeline could
get from this emulator on this machine; the pipeline's own requests per
second while it drained, divided by that, say how much of the emulator it used.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

BILLED_ROLES = ("bridge", "esm", "function")
_REPLAYED = ("SendMessageBatch", "SendMessage", "ReceiveMessage", "DeleteMessageBatch",
             "DeleteMessage")
#: messages kept in the scratch queue (the moto server slows down as a queue deepens:
#: the pipeline's queues rarely held more than this while draining)
PREFILL = 200


def request_mix(requests: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """api -> {calls, items per call, bytes per item} of the run's busy billed SQS calls."""
    agg: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for r in requests:
        api = str(r["api"]).removeprefix("sqs.")
        if r["role"] not in BILLED_ROLES or r["idle"] or api not in _REPLAYED:
            continue
        a = agg[api]
        a[0] += r["calls"]
        a[1] += r.get("items", 0)
        a[2] += r.get("bytes", 0)
    return {api: {"calls": c, "items": (i / c if c else 0.0), "bytes": (b / i if i else 0.0)}
            for api, (c, i, b) in agg.items() if c}


def measure(sqs: Any, requests: Sequence[dict[str, Any]], prefix: str, seconds: float,
            threads: int = 4) -> dict[str, Any]:
    mix = request_mix(requests)
    if not mix:
        return {}
    total = sum(m["calls"] for m in mix.values())
    # a cycle of 100 operations in the run's proportions
    cycle: list[str] = []
    for api, m in mix.items():
        cycle += [api] * max(1, round(100 * m["calls"] / total))
    cycle.sort(key=lambda a: _REPLAYED.index(a))
    interleaved = [cycle[(i * 37) % len(cycle)] for i in range(len(cycle))]
    url = sqs.create_queue(QueueName=f"{prefix}ceiling-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    body_of = {api: "x" * max(1, int(m["bytes"])) for api, m in mix.items()}
    try:
        for _i in range(0, PREFILL, 10):
            sqs.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(j), "MessageBody": body_of.get("SendMessageBatch", "x" * 800)}
                for j in range(10)])
        done = [0] * threads
        stop = threading.Event()

        def work(n: int) -> None:
            handles: list[str] = []
            k = n * 7
            while not stop.is_set():
                api = interleaved[k % len(interleaved)]
                k += 1
                m = mix[api]
                entries = max(1, min(10, round(m["items"])))
                if api == "SendMessageBatch":
                    sqs.send_message_batch(QueueUrl=url, Entries=[
                        {"Id": str(j), "MessageBody": body_of[api]} for j in range(entries)])
                elif api == "SendMessage":
                    sqs.send_message(QueueUrl=url, MessageBody=body_of[api])
                elif api == "ReceiveMessage" or not handles:
                    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                              WaitTimeSeconds=0,
                                              VisibilityTimeout=600).get("Messages", [])
                    handles += [g["ReceiptHandle"] for g in got]
                elif api == "DeleteMessageBatch":
                    batch, handles[:] = handles[:entries], handles[entries:]
                    sqs.delete_message_batch(QueueUrl=url, Entries=[
                        {"Id": str(j), "ReceiptHandle": h} for j, h in enumerate(batch)])
                else:
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=handles.pop())
                done[n] += 1

        elapsed = _run_for(work, threads, seconds, stop)
    finally:
        sqs.delete_queue(QueueUrl=url)
    return {"threads": threads, "seconds": round(elapsed, 2), "requests": sum(done),
            "requests_per_s": sum(done) / elapsed,
            "mix": {api: round(m["calls"] / total, 3) for api, m in mix.items()}}


def measure_mail(host: str, port: int, samples: Sequence[tuple[str, list[str], bytes]],
                 seconds: float, threads: int = 4) -> dict[str, Any]:
    """The mail sink's own ceiling, in the same run: the run's own mails (``samples``:
    envelope sender, recipients, raw bytes) sent again over ``threads`` kept SMTP
    connections, as fast as the sink takes them, for ``seconds``.

    What it leaves out is the email sender's own work per mail (composing it,
    remembering the send): the pipeline's mails per second while it drained,
    divided by this, say how much of the transport and sink the sender used.
    The sink keeps these mails too (they are not the run's: the ledger has read
    the Maildir already).
    """
    import smtplib

    if not samples:
        return {}
    done = [0] * threads
    stop = threading.Event()

    def work(n: int) -> None:
        with smtplib.SMTP(host, port, timeout=20) as conn:
            k = n
            while not stop.is_set():
                sender, rcpts, raw = samples[k % len(samples)]
                k += 1
                conn.sendmail(sender, rcpts, raw)
                done[n] += 1

    elapsed = _run_for(work, threads, seconds, stop)
    return {"threads": threads, "seconds": round(elapsed, 2), "mails": sum(done),
            "mails_per_s": sum(done) / elapsed,
            "bytes_per_mail": sum(len(s[2]) for s in samples) / len(samples)}


def _run_for(work: Callable[[int], None], threads: int, seconds: float,
             stop: threading.Event) -> float:
    """``work(n)`` in ``threads`` threads until ``stop`` is set after ``seconds``; the
    seconds they ran."""
    workers = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join(30)
    return time.perf_counter() - started
