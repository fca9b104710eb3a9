"""Diagrams come from the table the machine runs on, and the committed ones are fresh."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT
from wsfleet import TABLE
from wsfleet.cli import main
from wsfleet.diagram import render

DIAGRAMS = ROOT / "diagrams"
REGENERATE = "wsfleet diagram --format mermaid -o diagrams/connection-states.mmd"


def test_committed_mermaid_diagram_matches_the_table() -> None:
    committed = (DIAGRAMS / "connection-states.mmd").read_text(encoding="utf-8")
    assert render("mermaid") == committed, f"diagram is stale; run: {REGENERATE}"


def test_committed_svg_exists_and_names_every_state() -> None:
    svg = (DIAGRAMS / "connection-states.svg").read_text(encoding="utf-8")
    for name in ("CONNECTED", "IDLE", "ERROR", "RECONNECTING", "DISCONNECTED"):
        assert name in svg


def test_every_row_and_guard_is_drawn() -> None:
    text = render("mermaid")
    assert isinstance(text, str)
    for rule in TABLE:
        for source in rule.sources:
            start = "[*]" if source is None else source.name
            assert f"{start} --> {rule.dest.name}" in text
        assert rule.trigger in text
    assert "retry [can_retry]" in text
    assert "give_up [!can_retry]" in text


def test_dot_output_has_the_guards_and_the_births() -> None:
    dot = render("dot")
    assert isinstance(dot, str)
    assert "retry [can_retry]" in dot
    assert "new -> RECONNECTING [label=dial]" in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz' dot binary is not installed")
def test_svg_output_is_svg() -> None:
    svg = render("svg")
    assert isinstance(svg, bytes)
    assert b"<svg" in svg


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        render("png")  # type: ignore[arg-type]


def test_cli_writes_a_file(tmp_path: Path) -> None:
    out = tmp_path / "states.mmd"
    assert main(["diagram", "--format", "mermaid", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render("mermaid")


def test_cli_writes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram"]) == 0
    assert capsys.readouterr().out == render("mermaid")


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz' dot binary is not installed")
def test_python_dash_m_writes_svg(tmp_path: Path) -> None:
    out = tmp_path / "states.svg"
    subprocess.run(
        [sys.executable, "-m", "wsfleet", "diagram", "--format", "svg", "-o", str(out)],
        check=True,
        timeout=60,
    )
    assert out.read_bytes().startswith(b"<?xml") or b"<svg" in out.read_bytes()
