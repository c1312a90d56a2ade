"""Human output of the CLI: rich tables and colour on a terminal, plain text when piped.

A CI log or a job summary gets exactly the text it always got (Markdown and aligned tables
that diff well); a person at a terminal gets the verdict line first, in colour, then the same
content as rich tables. rich decides what a terminal is, so ``FORCE_COLOR``, ``NO_COLOR`` and
``TTY_COMPATIBLE`` work as they do for every rich-based tool.

>>> Block.table(pd.DataFrame({"check": ["loss_value"], "findings": [3]})).kind
'table'
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterable, Literal, TextIO

import pandas as pd


@dataclass(frozen=True)
class Block:
    """One piece of output: Markdown, a table, or preformatted text (commands, case reprs)."""

    kind: Literal["markdown", "table", "text"]
    content: Any
    title: str = ""

    @classmethod
    def markdown(cls, text: str) -> "Block":
        return cls("markdown", text)

    @classmethod
    def table(cls, frame: pd.DataFrame, title: str = "") -> "Block":
        return cls("table", frame, title)

    @classmethod
    def text(cls, text: str, title: str = "") -> "Block":
        return cls("text", text, title)


def _console(stream: TextIO | None = None):
    from rich.console import Console

    return Console(file=stream or sys.stdout, soft_wrap=False, highlight=False)


def rich_table(frame: pd.DataFrame, title: str = ""):
    """A pandas table as a rich table: numbers right-aligned, zero counts and FAIL cells in red."""
    from rich.table import Table

    table = Table(title=title or None, title_justify="left", header_style="bold", show_lines=False)
    numeric = {c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])}
    for column in frame.columns:
        table.add_column(str(column), justify="right" if column in numeric else "left", overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*(_cell(value) for value in row))
    return table


def _cell(value: Any):
    from rich.text import Text

    if value is None or (isinstance(value, float) and pd.isna(value)):
        return Text("")
    text = str(value)
    if text.startswith("FAIL") or text.endswith(": 0"):
        return Text(text, style="red")
    return Text(text)


def show(verdict: str, *, ok: bool, blocks: Iterable[Block], plain: str | None = None,
         stream: TextIO | None = None) -> None:
    """Print a command's result. On a terminal: ``verdict`` in green or red, then ``blocks``
    rendered by rich. Piped: ``plain`` unchanged (or the blocks as text, verdict last)."""
    blocks = list(blocks)
    console = _console(stream)
    if not console.is_terminal:
        out = stream or sys.stdout
        out.write((plain if plain is not None else _plain(verdict, blocks)).rstrip("\n") + "\n")
        out.flush()
        return
    from rich.markdown import Markdown
    from rich.text import Text

    console.print(Text(verdict, style="bold green" if ok else "bold red"))
    for block in blocks:
        console.print()
        if block.title:
            console.print(Text(block.title, style="bold"))
        if block.kind == "markdown":
            console.print(Markdown(block.content))
        elif block.kind == "table":
            console.print(rich_table(block.content))
        else:
            console.print(Text(block.content))


def _plain(verdict: str, blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        body = block.content.to_string(index=False) if block.kind == "table" else str(block.content)
        parts.append(f"{block.title}\n{body}" if block.title else body)
    return "\n".join(parts + [verdict])
