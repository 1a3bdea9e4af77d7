"""Generated sections of README.md: tables that scripts write, so that no figure is copied by hand.

A section sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` and is replaced whole,
atomically, by the script that measured it; the markers name that script.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import FadeInputError
from .files import atomic_write

README = Path(__file__).resolve().parents[1] / "README.md"


def replace_section(name: str, text: str, path: Path = README) -> Path:
    """Puts ``text`` between the section's markers in ``path``."""
    content = path.read_text(encoding="utf-8")
    pattern = re.compile(rf"(<!-- {re.escape(name)}:start -->\n).*?(<!-- {re.escape(name)}:end -->)", re.DOTALL)
    if not pattern.search(content):
        raise FadeInputError(f"{path} has no section {name!r} (markers <!-- {name}:start --> and <!-- {name}:end -->)")
    updated = pattern.sub(lambda match: match.group(1) + text.strip("\n") + "\n" + match.group(2), content)
    return atomic_write(path, lambda temporary: temporary.write_text(updated, encoding="utf-8"))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
