"""Human output: rich tables and colour on a terminal, verdict first; plain text when piped."""

import io
import re
from pathlib import Path

import pandas as pd
import pytest

from ce_conformance.cli import main
from ce_conformance.console import Block, show

HERE = Path(__file__).parent
FAST = ["--max-examples", "30", "--no-shrink", "--no-progress", "--covering", "0"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def terminal(monkeypatch):
    """stdout as rich sees a terminal (FORCE_COLOR is rich's own switch for it)."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("COLUMNS", "160")


def test_piped_output_is_the_plain_text_unchanged(monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    stream = io.StringIO()
    show("PASS x", ok=True, blocks=[Block.markdown("| a |\n|---|\n| 1 |")], plain="| a |\n|---|\n| 1 |\nPASS x",
         stream=stream)
    assert stream.getvalue() == "| a |\n|---|\n| 1 |\nPASS x\n"


def test_without_plain_text_blocks_are_written_as_text_verdict_last(monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    stream = io.StringIO()
    show("FAIL y", ok=False, blocks=[Block.table(pd.DataFrame({"check": ["loss_value"]})), Block.text("z", "t:")],
         stream=stream)
    assert stream.getvalue().splitlines() == ["     check", "loss_value", "t:", "z", "FAIL y"]


def test_terminal_gets_the_verdict_first_in_colour_then_rich_tables(terminal):
    stream = io.StringIO()
    frame = pd.DataFrame({"check": ["loss_value"], "findings": [3]})
    show("FAIL y", ok=False, blocks=[Block.table(frame), Block.markdown("| a |\n|---|\n| 1 |")], stream=stream)
    out = stream.getvalue()
    assert out.startswith("\x1b[") and ANSI.sub("", out).startswith("FAIL y")
    assert "\x1b[1;31m" in out  # bold red verdict
    text = ANSI.sub("", out)
    assert "loss_value" in text and "━" in text and "|---|" not in text  # box-drawn, not Markdown pipes


def test_gate_on_a_terminal(tmp_path, capsys, terminal, torch):
    code = main(["gate", "--impl", f"{HERE / 'planted_bugs.py'}:fp32_output", "--out", str(tmp_path), *FAST])
    out = capsys.readouterr().out
    text = ANSI.sub("", out)
    assert code == 1 and text.startswith("FAIL ") and out != text
    assert "loss_dtype" in text and "ce-conformance replay" in text
    assert "coverage (valid cases per level" in text and "level 1" in text and "┃" in text


def test_fuzz_on_a_terminal_renders_the_markdown_summary(tmp_path, capsys, terminal):
    code = main(["fuzz", "--adapters", "numpy", "--out", str(tmp_path), "--no-curated", *FAST])
    text = ANSI.sub("", capsys.readouterr().out)
    assert code == 0 and text.startswith("CONFORMANT: ")
    assert "Pass rate" in text and "|:--" not in text and "## " not in text


def test_fuzz_piped_keeps_markdown(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    main(["fuzz", "--adapters", "numpy", "--out", str(tmp_path), "--no-curated", *FAST])
    out = capsys.readouterr().out
    assert out.startswith("## ce-conformance fuzz") and "|:--" in out and "\x1b[" not in out
