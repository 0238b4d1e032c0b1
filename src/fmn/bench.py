"""``fmn bench match``: the matcher's figures, measured on one core.

For each requested user count it generates a preferences set, compiles and
indexes the snapshot (timing each step, and the resident memory the indexed
snapshot holds), then times on the shared Fedora messages:

* the indexed engine with metadata already extracted,
* metadata extraction alone, and extraction plus indexed matching,
* the naive engine, on an evenly spread subset of the messages when the whole
  set would take too long, next to the indexed engine on the same subset so
  that the speed-up compares like with like.

Each timed loop runs the whole message list over and over for ``duration``
seconds; per-message times are individual ``perf_counter_ns`` readings, from
which p50 and p99 come.  Nothing here asserts a time: it prints figures, and
writes them as JSON with ``--json``.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from fmn.message import Message

SHARED_MESSAGES = ("fedmsg.jsonl", "fedora-messaging.jsonl")


def default_message_files() -> list[Path]:
    """The shared Fedora messages, looked up beside the project (``../shared``)."""
    candidates = [Path(os.environ["FMN_SHARED_DATA"])] if "FMN_SHARED_DATA" in os.environ else []
    here = Path(__file__).resolve()
    candidates += [p / "shared" / "data" for p in here.parents]
    candidates.append(Path.cwd().parent / "shared" / "data")
    for base in candidates:
        files = [base / "messages" / name for name in SHARED_MESSAGES]
        if all(f.is_file() for f in files):
            return files
    raise FileNotFoundError("shared messages not found; pass --messages or set FMN_SHARED_DATA")


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _cold_load_memory(blob: bytes) -> dict[str, int]:
    """What loading this blob costs a fresh process, as a cold Lambda would see it.

    Measured in a child process so that nothing this benchmark holds (the
    generated preferences, their compiled form) inflates the figure: resident
    memory after imports, then after loading and indexing the snapshot (with
    everything transient freed).
    """
    with tempfile.NamedTemporaryFile(suffix=".snapshot") as f:
        f.write(blob)
        f.flush()
        out = subprocess.run(
            [sys.executable, "-c", "import sys, fmn.bench as b; b._report_load(sys.argv[1])",
             f.name], check=True, capture_output=True, text=True).stdout
    figures: dict[str, int] = json.loads(out)
    return figures


def _report_load(path: str) -> None:
    from fmn.snapshot.store import snapshot_from_blob

    blob = Path(path).read_bytes()
    before = _rss()
    started = time.perf_counter()
    snapshot = snapshot_from_blob(blob)
    load_s = time.perf_counter() - started
    del blob
    after = _rss()
    print(json.dumps({"held_rss_bytes": after - before, "cold_process_rss_bytes": after,
                      "cold_load_s": load_s, "users_loaded": len(snapshot.users)}))


def _timed_loop(items: Sequence[Any], fn: Callable[[Any], Any], duration: float,
                min_passes: int = 1) -> dict[str, float]:
    """Run ``fn`` over ``items`` again and again; per-call and overall figures."""
    samples: list[int] = []
    clock = time.perf_counter_ns
    passes = 0
    started = clock()
    deadline = started + int(duration * 1e9)
    while passes < min_passes or clock() < deadline:
        for item in items:
            t0 = clock()
            fn(item)
            samples.append(clock() - t0)
        passes += 1
    elapsed = (clock() - started) / 1e9
    samples.sort()
    busy = sum(samples) / 1e9
    return {
        "messages": len(samples),
        "passes": passes,
        "messages_per_s": len(samples) / busy if busy else float("inf"),
        "wall_messages_per_s": len(samples) / elapsed,
        "mean_us": busy / len(samples) * 1e6,
        "p50_us": samples[len(samples) // 2] / 1e3,
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1e3,
    }


_FANOUT_ORDER = ["0", "1-10", "11-100", "101-1000", ">1000"]


def _spread(items: Sequence[Any], count: int) -> list[Any]:
    if count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def bench_one(users: int, seed: int, lines: list[bytes], duration: float,
              naive_messages: int, log: Callable[[str], None]) -> dict[str, Any]:
    from fmn.generate import generate_preferences
    from fmn.matcher import IndexedMatcher, NaiveMatcher
    from fmn.metadata import parse
    from fmn.pipeline.match import group_by_backend
    from fmn.pipeline.notifications import pack
    from fmn.snapshot import Snapshot, compile_snapshot
    from fmn.snapshot.store import encode_blob

    result: dict[str, Any] = {"users": users, "seed": seed}
    log(f"[{users} users] generating preferences (seed {seed}) ...")
    t0 = time.perf_counter()
    prefs = generate_preferences(users, seed)
    result["generate_s"] = time.perf_counter() - t0

    log(f"[{users} users] compiling and indexing the snapshot ...")
    t0 = time.perf_counter()
    data = compile_snapshot(prefs)
    t1 = time.perf_counter()
    blob = encode_blob(data)
    t2 = time.perf_counter()
    raw_size = len(data.encode())
    t3 = time.perf_counter()
    snapshot = Snapshot.from_data(data)
    t4 = time.perf_counter()
    log(f"[{users} users] measuring a cold matcher's memory in a fresh process ...")
    result["snapshot"] = {
        "compile_s": t1 - t0,
        "index_s": t4 - t3,
        "build_s": (t1 - t0) + (t4 - t3),
        "encode_s": t2 - t1,
        "blob_bytes": len(blob),
        "json_bytes": raw_size,
        **_cold_load_memory(blob),
        "stats": snapshot.stats(),
    }
    del data, blob
    # as a warm matcher does with a loaded snapshot (fmn.snapshot.live)
    gc.collect()
    gc.freeze()

    log(f"[{users} users] extracting metadata of {len(lines)} messages ...")
    messages: list[Message] = [parse(line) for line in lines]
    indexed = IndexedMatcher(snapshot)
    notifications = sum(len(indexed.match(m)) for m in messages)
    result["messages"] = len(messages)
    result["notifications_per_pass"] = notifications

    log(f"[{users} users] timing the indexed engine ({duration:.0f}s per loop) ...")
    result["indexed"] = _timed_loop(messages, indexed.match, duration)
    result["indexed"]["us_per_notification"] = (
        result["indexed"]["mean_us"] * len(messages) / notifications if notifications else None)
    # The cost of a message follows how many notifications it makes: the
    # figures per fan-out class show the fixed and the per-notification part.
    classes: dict[str, list[Message]] = {}
    for m in messages:
        n = len(indexed.match(m))
        label = ("0" if n == 0 else "1-10" if n <= 10 else "11-100" if n <= 100
                 else "101-1000" if n <= 1000 else ">1000")
        classes.setdefault(label, []).append(m)
    result["indexed_by_fanout"] = {
        label: {**_timed_loop(ms, indexed.match, duration / 4),
                "distinct_messages": len(ms),
                "notifications": sum(len(indexed.match(m)) for m in ms)}
        for label, ms in sorted(classes.items(), key=lambda kv: _FANOUT_ORDER.index(kv[0]))
    }
    # What the match function does per message after matching: group the
    # notifications by backend and pack them into SQS bodies.
    def match_and_pack(m: Message) -> int:
        groups = group_by_backend(indexed.match(m))
        return sum(len(pack(m, g, b, describe=indexed.describe)) for b, g in groups.items())

    result["indexed_with_pack"] = _timed_loop(messages, match_and_pack, duration)
    result["metadata_only"] = _timed_loop(lines, parse, duration)
    result["indexed_with_metadata"] = _timed_loop(
        lines, lambda line: indexed.match(parse(line)), duration)

    naive = NaiveMatcher(prefs)
    subset = _spread(messages, naive_messages)
    log(f"[{users} users] timing the naive engine on {len(subset)} messages ...")
    naive_fig = _timed_loop(subset, naive.match, 0.0)
    same_subset = _timed_loop(subset, indexed.match, min(duration, 1.0))
    agree = all([n.to_json() for n in naive.match(m)] == [n.to_json() for n in indexed.match(m)]
                for m in subset)
    result["naive"] = naive_fig
    result["indexed_on_naive_subset"] = same_subset
    result["speedup_vs_naive"] = naive_fig["mean_us"] / same_subset["mean_us"]
    result["engines_agree_on_subset"] = agree
    result["matcher_process_rss_bytes"] = _rss()
    return result


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def format_report(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        s = r["snapshot"]
        st = s["stats"]
        lines += [
            f"== {r['users']:,} users (seed {r['seed']}): {st['rules']:,} live rules, "
            f"{st['distinct_filters']:,} distinct filters, {st['artifacts_owned']:,} owned "
            f"artifacts; {r['messages']} messages -> {r['notifications_per_pass']:,} "
            "notifications per pass",
            f"  snapshot build       {s['build_s']:.2f} s (compile {s['compile_s']:.2f} s + "
            f"index {s['index_s']:.2f} s); a cold matcher loads it in {s['cold_load_s']:.2f} s",
            f"  snapshot size        blob {_mb(s['blob_bytes'])} (JSON {_mb(s['json_bytes'])});"
            f" held in memory {_mb(s['held_rss_bytes'])} RSS (a fresh process loading it: "
            f"{_mb(s['cold_process_rss_bytes'])} in all)",
        ]
        for label, key in (("indexed", "indexed"),
                           ("metadata only", "metadata_only"),
                           ("indexed + metadata", "indexed_with_metadata"),
                           ("indexed + pack", "indexed_with_pack"),
                           (f"naive ({r['naive']['messages']} msgs)", "naive"),
                           ("indexed, same msgs", "indexed_on_naive_subset")):
            f = r[key]
            lines.append(f"  {label:<20} {f['messages_per_s']:>12,.0f} msg/s   "
                         f"p50 {f['p50_us']:>10,.1f} us   p99 {f['p99_us']:>10,.1f} us   "
                         f"mean {f['mean_us']:>10,.1f} us")
        per_n = r["indexed"]["us_per_notification"]
        lines.append(f"  fan-out              {r['notifications_per_pass'] / r['messages']:.1f} "
                     "notifications per message on average"
                     + (f"; {per_n:.2f} us of matching per notification" if per_n else ""))
        for label, f in r["indexed_by_fanout"].items():
            lines.append(f"    {label + ' notif.':<18} {f['distinct_messages']:>4} msgs "
                         f"{f['messages_per_s']:>10,.0f} msg/s   p50 {f['p50_us']:>10,.1f} us   "
                         f"p99 {f['p99_us']:>10,.1f} us")
        lines.append(f"  indexed vs naive     {r['speedup_vs_naive']:,.0f}x faster "
                     f"(engines agree on the subset: {r['engines_agree_on_subset']})")
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            ratio = r["indexed"]["mean_us"] / base["indexed"]["mean_us"]
            fan = r["notifications_per_pass"] / max(1, base["notifications_per_pass"])
            lines.append(f"per-message time at {r['users']:,} users is {ratio:.2f}x that at "
                         f"{base['users']:,} users (indexed, metadata extracted), "
                         f"for {fan:.2f}x the notifications")
            per_base = base["indexed"]["us_per_notification"]
            per_this = r["indexed"]["us_per_notification"]
            if per_base and per_this:
                lines.append(f"per-notification time at {r['users']:,} users is "
                             f"{per_this / per_base:.2f}x that at {base['users']:,} users")
            for label, f in r["indexed_by_fanout"].items():
                b = base["indexed_by_fanout"].get(label)
                if b:
                    lines.append(f"  messages with {label} notifications: p50 "
                                 f"{f['p50_us'] / b['p50_us']:.2f}x")
    return "\n".join(lines)


def run_match_benchmark(users: Sequence[int], seed: int, messages: Sequence[str] | None,
                        duration: float, naive_messages: int, json_path: str | None) -> int:
    files = [Path(m) for m in messages] if messages else default_message_files()
    lines = [line for f in files for line in f.read_bytes().splitlines() if line.strip()]

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    results = [bench_one(n, seed, lines, duration, naive_messages, log) for n in users]
    print(format_report(results))
    if json_path:
        doc = {
            "machine": {"python": platform.python_version(), "cpu": platform.processor()
                        or platform.machine(), "cores": os.cpu_count()},
            "message_files": [str(f) for f in files],
            "results": results,
        }
        Path(json_path).write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if all(r["engines_agree_on_subset"] for r in results) else 1

