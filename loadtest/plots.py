"""The load test's pictures (matplotlib, written as PNG files).

* ``throughput.png``: bus messages per second (the seed's "Avg processing")
  against the match function's maximum concurrency, this run's next to the
  2016 figures (workers, same 15,000-message test), with the emulator's
  ceiling for each run's request mix (in bus messages per second), on a
  logarithmic scale: 1 and 100 msg/s on one picture;
* ``backlog-c<N>.png``: every queue's backlog (visible + in flight) over the
  run at concurrency N;
* ``latency.png``: the end-to-end latency distribution (message timestamp to
  the mail or feed event), one curve per concurrency: the share of
  notifications delivered within x seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtest.report import SEED_2016


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def throughput(summaries: Sequence[dict[str, Any]], path: Path, machine: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    drained = [s for s in summaries if s["drained"]]  # a stopped run's rate is no rate
    ax.plot([s["concurrency"] for s in drained], [s["avg_processing"] for s in drained], "o-",
            color="tab:blue", label=f"this pipeline ({machine})")
    ceil = [(s["concurrency"], s["ceiling_messages_per_s"]) for s in summaries
            if s["ceiling_messages_per_s"]]
    if ceil:
        ax.plot([c for c, _ in ceil], [v for _, v in ceil], "^--", color="tab:gray",
                label="emulator's ceiling for the same request mix")
    seed = sorted(SEED_2016.items())
    ax.plot([w for w, _ in seed], [v[2] for _, v in seed], "s-", color="tab:red",
            label="2016 FMN (workers; 1 = the original consumer)")
    ax.set_yscale("log")
    ax.set_xlabel("match function maximum concurrency (2016: workers)")
    ax.set_ylabel("bus messages per second (log)")
    ax.set_title("15,000-message test: messages drained per second")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def backlog(run: Any, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if run.samples:
        t0 = run.published_at
        names = list(run.samples[0].queues)
        for name in names:
            ys = [sum(max(0, v) for v in s.queues.get(name, (0, 0))) for s in run.samples]
            ax.plot([s.t - t0 for s in run.samples], ys, label=name)
    ax.set_xlabel("seconds since the first message was published")
    ax.set_ylabel("messages in the queue (visible + in flight)")
    ax.set_title(f"Backlog of every queue, match concurrency {run.concurrency}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def latency(summaries: Sequence[dict[str, Any]], runs: Sequence[Any], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for run in runs:
        q = run.stages.get("e2e_quantiles") or []
        if q:
            ax.plot(q, [i / (len(q) - 1) for i in range(len(q))],
                    label=f"concurrency {run.concurrency}")
    ax.set_xlabel("seconds from the message's timestamp to the mail or feed event")
    ax.set_ylabel("share of notifications delivered")
    ax.set_title("End-to-end latency (cumulative)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
