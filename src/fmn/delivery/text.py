"""Untrusted message text made safe to print: one cleaner for mail, IRC and the web.

Bus message fields are written by whoever published the message.  Before
any of it reaches a mail header, a mail body, an IRC line or a terminal,
:func:`clean` removes what could change how the text is *interpreted*
rather than shown: terminal escape sequences (ANSI CSI/OSC), C0 and C1
control characters, DEL, the line and paragraph separators U+2028/2029,
bidirectional overrides and isolates (which can make a link read as
another), and lone surrogates.  Line breaks and tabs become spaces, so the
result is always one line; :func:`shorten` then caps its length.  HTML is
*not* touched: it is harmless in plain text and escaped by whoever renders
HTML.
"""

from __future__ import annotations

import re

# ESC [ ... final byte (CSI), ESC ] ... BEL or ESC \ (OSC), and any other ESC + one char
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?"
                      r"|\x9b[0-?]*[ -/]*[@-~]", re.DOTALL)
_SPACES = re.compile(r"[\t\n\r\x0b\x0c\u2028\u2029\x85]+")
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
                        "\ud800-\udfff\ufeff\ufffe\uffff]")


def clean(text: str | None) -> str:
    """``text`` as one line of printable characters (``""`` for ``None``)."""
    if not text:
        return ""
    text = _ESCAPES.sub("", text)
    text = _SPACES.sub(" ", text)
    return _INVISIBLE.sub("", text).strip()


def shorten(text: str, max_chars: int, ellipsis: str = "…") -> str:
    """``text`` cut to at most ``max_chars`` characters, marked when cut."""
    if len(text) <= max_chars:
        return text
    return text[: max(0, max_chars - len(ellipsis))].rstrip() + ellipsis
