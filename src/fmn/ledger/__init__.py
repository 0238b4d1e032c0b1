"""The loss ledger of a local run: every bus message id accounted for once, nothing sent twice.

Writers journal facts as they happen (:mod:`fmn.ledger.journal`: publishers
the ids they publish, the match function what it produced); at the end of a
run :func:`account` reads the journal, the dead-letter queues, the digests
and what the mail sink, the feeds and the IRC sender actually got, and
returns a :class:`LedgerReport` (``ok``: nothing lost, nothing duplicated);
:func:`format_report` prints its totals and every exception.  ``fmn ledger``
is the command; tests call :func:`account` on their stack's journal.
"""

from fmn.ledger.account import LedgerReport, account, format_report
from fmn.ledger.journal import Journal

__all__ = ["Journal", "LedgerReport", "account", "format_report"]
