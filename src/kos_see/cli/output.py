"""How the CLI prints: Rich for people, one JSON document with ``--json``.

Data (ids, names, paths, messages, errors, results) never goes through Rich's
markup parser: it is printed with ``markup=False``, as :func:`plain` Text, or
escaped with :func:`rich.markup.escape`, so that square brackets in it are
shown as they are instead of being taken for style tags. Text that a
service provides (messages, log lines, captured output) may also hold
terminal control sequences: :func:`shown` escapes them for human output;
``--json`` output keeps the text as stored.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Column
from rich.text import Text

# No emoji codes either: ":x:" in a message stays ":x:".
console = Console(soft_wrap=True, emoji=False)
errors = Console(stderr=True, soft_wrap=True, emoji=False)


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 120 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


STATE_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "timed_out": "red",
    "dead": "bold red",
    "cancelled": "yellow",
    "running": "cyan",
    "leased": "cyan",
    "queued": "blue",
    "received": "blue",
}


def state_text(state: str) -> Text:
    """A task state, coloured."""
    return Text(state, style=STATE_STYLE.get(state, "white"))


def state_markup(state: str) -> str:
    """A task state as Rich markup, for templates that take markup."""
    style = STATE_STYLE.get(state, "white")
    return f"[{style}]{escape(state)}[/{style}]"


# C0 controls but tab and newline, DEL and the C1 controls: ESC and CSI
# start sequences that recolour, retitle or rewrite a terminal, CR and BS
# overwrite what was printed.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: str) -> str:
    """``text`` with control characters written as escapes (``\\x1b``), so that
    service-provided text cannot drive the terminal it is printed on."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def plain(value: object) -> Text:
    """``value`` as a Rich Text cell: shown verbatim, never parsed as markup,
    control characters escaped."""
    return Text("" if value is None else shown(str(value)))


def id_column(header: str, ids: Iterable[str]) -> Column:
    """A table column for ``ids``: as wide as the longest, never wrapped or
    cut, so that an id can be copied whole from a narrow terminal; the other
    columns give way."""
    width = max((len(i) for i in ids), default=len(header))
    return Column(header, no_wrap=True, overflow="ignore", min_width=width)
