"""The table of faults under load, printed at the end of the session (``make chaos``)."""

from __future__ import annotations

import json
import os
from typing import Any

from chaos_harness import RESULTS

COLUMNS = ("fault", "messages_in", "delivered", "in_digests", "filtered", "dead_lettered",
           "duplicates", "lost")


def pytest_sessionstart(session: Any) -> None:
    # FMN_CHAOS_APPEND=1: keep the rows of the session before (a long run split in two)
    if os.environ.get("FMN_CHAOS_APPEND") != "1":
        RESULTS.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS.exists():
        return
    from rich.console import Console
    from rich.table import Table

    rows = json.loads(RESULTS.read_text())
    table = Table(title="Faults under load (the ledger of each run)")
    for column in COLUMNS:
        table.add_column(column.replace("_", " "), justify="left" if column == "fault"
                         else "right")
    for row in rows:
        table.add_row(*(str(row[c]) for c in COLUMNS))
    console = Console(file=terminalreporter._tw._file, width=140)
    console.print(table)
    console.print("messages in, filtered: bus messages; delivered, in digests, duplicates, "
                  "lost: notifications; dead-lettered: both (each note says which)")
    for row in rows:
        if row.get("note"):
            console.print(f"  {row['fault']}: {row['note']}")
