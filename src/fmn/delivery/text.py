"""Untrusted message text made safe to print: one cleaner for mail, IRC and the web.

Bus message fields are written by whoever published the message.  Before
any of it reaches a mail header, a mail body, an IRC line or a terminal,
:func:`clean` removes what could change how the text is *interpreted*
rather than shown: terminal escape sequences (ANSI CSI/OSC), C0 and C1
control characters, DEL, IRC formatting codes, the line and paragraph
separators U+2028/2029, bidirectional overrides and isolates (which can make
a link read as another), characters that show as nothing (a zero-width space,
a soft hyphen: two names that read alike would differ); lone surrogates
become U+FFFD.  Line breaks and tabs become spaces, so the
result is always one line; :func:`shorten` then caps its length.  HTML is
*not* touched: it is harmless in plain text and escaped by whoever renders
HTML.
"""

from __future__ import annotations

import re
from typing import Any

_ESCAPES = re.compile(
    r"""
      \x1b\[[0-?]*[ -/]*[@-~]                              # CSI
    | \x9b[0-?]*[ -/]*[@-~]                                # 8-bit CSI
    | (?:\x1b\]|\x9d)[^\x07\x1b\x9c]{0,512}(?:\x07|\x1b\\|\x9c)  # OSC, terminated
    | (?:\x1b[PX^_]|[\x90\x98\x9e\x9f])[^\x1b\x9c]{0,512}(?:\x1b\\|\x9c)  # DCS SOS PM APC
    | \x1b[ -/]*[0-~]                                      # any other escape sequence
    """,
    re.VERBOSE,
)
# IRC formatting (messages relayed from IRC carry it): bold, colour with its
# optional "fg[,bg]" digits, hex colour, reset, monospace, reverse, italic,
# strikethrough, underline.
_IRC_FORMAT = re.compile(
    r"\x03(?:\d{1,2}(?:,\d{1,2})?)?|\x04(?:[0-9a-fA-F]{6}(?:,[0-9a-fA-F]{6})?)?"
    r"|[\x02\x0f\x11\x16\x1d\x1e\x1f]"
)
_SURROGATES = re.compile(r"[\ud800-\udfff]")
_SPACES = re.compile(r"\s+")


#: Bidirectional marks, embeddings, overrides and isolates: they reorder the text
#: around them as shown ("fmn\u202egpj.exe" reads "fmnexe.jpg")
BIDI_CONTROLS: tuple[int, ...] = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F),
                                  *range(0x2066, 0x206A))
#: Printable by Python's measure, yet shown as nothing: the combining grapheme joiner,
#: the Hangul fillers.
PRINTABLE_INVISIBLE: tuple[int, ...] = (0x034F, 0x115F, 0x1160, 0x3164, 0xFFA0)
_PRINTABLE_INVISIBLE = re.compile("[" + "".join(map(chr, PRINTABLE_INVISIBLE)) + "]")
#: Characters that show as nothing at all and join nothing: a soft hyphen, the
#: Mongolian vowel separator, the zero-width space, the word joiner and the invisible
#: operators, the interlinear annotation marks ("fedora\u200b-admin" reads as
#: "fedora-admin").  The zero-width (non-)joiners stay: scripts and emoji need them.
INVISIBLE: tuple[int, ...] = (0x00AD, 0x180E, 0x200B, *range(0x2060, 0x2065),
                              *range(0xFFF9, 0xFFFC),
                              # the deprecated format characters, the shorthand and
                              # musical format controls, the tag characters (a flag's
                              # tags too: the flag is left black)
                              *range(0x206A, 0x2070), *range(0x1BCA0, 0x1BCA4),
                              *range(0x1D173, 0x1D17B), *range(0xE0000, 0xE0080),
                              *PRINTABLE_INVISIBLE)


def _control_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {c: None for c in range(0x20)}
    table.update({c: None for c in range(0x7F, 0xA0)})  # DEL and C1
    for c in "\t\n\v\f\r\x1c\x1d\x1e\x1f\x85\u2028\u2029":  # breaks: words stay apart
        table[ord(c)] = " "
    # Bidi marks, embeddings, overrides and isolates; invisible characters; the
    # byte-order mark; the non-characters U+FFFE/U+FFFF.
    table.update(dict.fromkeys([*BIDI_CONTROLS, *INVISIBLE, 0xFEFF, 0xFFFE, 0xFFFF]))
    return table


_CONTROLS = _control_table()


def clean(text: Any) -> str:
    """``text`` as one line of printable characters (``""`` for anything not a string)."""
    if not isinstance(text, str) or not text:
        return ""
    if text.isprintable() and (text.isascii() or not _PRINTABLE_INVISIBLE.search(text)):
        # Nearly every field: nothing to remove.  A printable string holds no
        # control, format (bidi), surrogate, separator or non-character code
        # point, so none of the patterns below can match, and its only
        # whitespace is the plain space (the few printable characters that show as
        # nothing are looked for apart).  Same result, a fraction of the time.
        line: str = _SPACES.sub(" ", text) if "  " in text else text
        return line.strip(" ")
    return _clean_all(text)


def _clean_all(text: str) -> str:
    """:func:`clean` of a string with something to remove or replace."""
    text = _SURROGATES.sub("\ufffd", text)
    text = _ESCAPES.sub("", text)
    text = _IRC_FORMAT.sub("", text)
    text = text.translate(_CONTROLS)
    return _SPACES.sub(" ", text).strip()


def shorten(text: str, max_chars: int, ellipsis: str = "\u2026") -> str:
    """``text`` cut to at most ``max_chars`` characters, marked when cut."""
    if len(text) <= max_chars:
        return text
    return text[: max(0, max_chars - len(ellipsis))].rstrip() + ellipsis
