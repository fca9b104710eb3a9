"""The documentation builds without a warning and says what the code does.

* ``mkdocs build --strict`` passes, and the site loads nothing from another host;
* the transition table on the state machine page is ``TABLE``, row for row;
* ``docs/backoff.svg`` is what ``scripts/plot_backoff.py`` draws today;
* every public name has a reference entry;
* every Python block in the docs compiles, and the tutorial's program and the testing
  how-to's test module run and do what the pages show.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import wsfleet
from support import ROOT
from wsfleet.fsm.table import TABLE

DOCS = ROOT / "docs"
STATE_MACHINE_PAGE = DOCS / "explanation" / "state-machine.md"
PLOT_SCRIPT = ROOT / "scripts" / "plot_backoff.py"

#: A fenced block: its language, its ``title="..."`` if any, and its text.
FENCE = re.compile(r'^```(\w+)(?:[ \t]+title="([^"]+)")?[ \t]*\n(.*?)^```[ \t]*$', re.M | re.S)


def blocks(page: Path) -> list[tuple[str, str | None, str]]:
    return [(m[1], m[2] or None, m[3]) for m in FENCE.finditer(page.read_text(encoding="utf-8"))]


def titled(page: Path, title: str) -> str:
    found = [text for _, name, text in blocks(page) if name == title]
    assert len(found) == 1, f"{page.name}: expected one block titled {title!r}"
    return found[0]


# -- the build ---------------------------------------------------------------------------------


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.skipif(
    not (_have("mkdocs") and _have("mkdocstrings_handlers.python")),
    reason="mkdocs and mkdocstrings[python] are not installed (pip install -e '.[docs]')",
)
@pytest.mark.slow  # a whole mkdocs build
def test_the_docs_build_strictly_and_load_nothing_from_elsewhere(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("connection-states.svg", "backoff.svg", "css/pygments.css"):
        assert (site / name).is_file(), f"{name} missing from the site"
    remote = re.compile(r'<(?:script|link|img)\b[^>]*(?:src|href)="(?:https?:)?//', re.I)
    for page in site.rglob("*.html"):
        match = remote.search(page.read_text(encoding="utf-8"))
        assert match is None, f"{page.relative_to(site)} loads from another host: {match}"


# -- the transition table ------------------------------------------------------------------------


def transition_table() -> str:
    """The table the state machine page must show, generated from ``TABLE``."""
    lines = ["| trigger | from | to | guard | why |", "|---|---|---|---|---|"]
    for rule in TABLE:
        sources = ", ".join("(new)" if s is None else s.name for s in rule.sources)
        guards = [f"`{g}`" for g in rule.conditions] + [f"not `{g}`" for g in rule.unless]
        lines.append(
            f"| `{rule.trigger}` | {sources} | {rule.dest.name} | {', '.join(guards)} "
            f"| {rule.why} |"
        )
    return "\n".join(lines)


def test_the_state_machine_page_lists_every_transition_of_the_table() -> None:
    text = STATE_MACHINE_PAGE.read_text(encoding="utf-8")
    match = re.search(r"<!-- transitions:[^>]*-->\n(.*?)\n<!-- /transitions -->", text, re.S)
    assert match is not None, "the transitions markers are missing from the page"
    shown = match[1]
    for rule in TABLE:
        assert f"| `{rule.trigger}` |" in shown, f"trigger {rule.trigger!r} is not listed"
        assert f"| {rule.why} |" in shown, f"the reason of {rule.trigger!r} is not given"
    expected = transition_table()
    assert shown == expected, (
        f"{STATE_MACHINE_PAGE.relative_to(ROOT)} is stale; between its transitions markers "
        f"it must read:\n{expected}"
    )


def test_the_state_machine_page_shows_the_generated_diagram() -> None:
    text = STATE_MACHINE_PAGE.read_text(encoding="utf-8")
    assert "](../connection-states.svg)" in text
    assert (ROOT / "diagrams" / "connection-states.svg").is_file()


# -- the backoff plot ----------------------------------------------------------------------------


def plot_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("plot_backoff", PLOT_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backoff_svg_is_what_the_script_draws() -> None:
    committed = (DOCS / "backoff.svg").read_text(encoding="utf-8")
    assert plot_script().render() == committed, (
        "docs/backoff.svg is stale: run python scripts/plot_backoff.py"
    )


def test_the_plot_script_draws_the_same_bytes_in_a_fresh_interpreter() -> None:
    # Another process, another hash seed: the drawing must not depend on either.
    result = subprocess.run(
        [sys.executable, str(PLOT_SCRIPT), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_the_plot_draws_every_jitter_mode_from_the_policy() -> None:
    script = plot_script()
    svg = script.render()
    for mode in wsfleet.JitterMode:
        assert f'<g id="{mode.value}">' in svg
        runs = script.schedules(mode)
        assert len(runs) == script.CLIENTS
        assert all(len(run) == script.ATTEMPTS for run in runs)
        assert all(0 <= delay <= script.MAX_DELAY for run in runs for delay in run)


# -- the reference -------------------------------------------------------------------------------


def documented_names() -> set[str]:
    """Names the reference pages document, from their ``::: path`` directives."""
    names: set[str] = set()
    for page in sorted((DOCS / "reference").glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("::: "):
                continue
            path = line[4:].strip()
            options = []
            for follow in lines[i + 1 :]:
                if follow and not follow.startswith(" "):
                    break
                options.append(follow.strip())
            try:
                module = importlib.import_module(path)
            except ImportError:
                names.add(path.rpartition(".")[2])
                continue
            if "members:" in options:
                start = options.index("members:") + 1
                members = [o[2:] for o in options[start:] if o.startswith("- ")]
                names.update(members)
            else:
                names.update(getattr(module, "__all__", ()))
            names.add(path)
    return names


def test_every_public_name_has_a_reference_entry() -> None:
    names = documented_names()
    missing = sorted(set(wsfleet.__all__) - {"__version__"} - names)
    assert not missing, f"not in docs/reference/: {missing}"


def test_every_testing_tool_has_a_reference_entry() -> None:
    import wsfleet.testing

    documented = {name.rsplit(".", 1)[-1] for name in documented_names()}
    assert set(wsfleet.testing.__all__) <= documented


@pytest.mark.parametrize(
    "module",
    [
        "wsfleet.adapters.websockets",
        "wsfleet.adapters.trio_websocket",
        "wsfleet.adapters.asgi",
        "wsfleet.adapters.redis",
    ],
)
def test_the_testing_and_adapter_modules_have_a_reference_entry(module: str) -> None:
    assert module in documented_names()


# -- the code on the pages -----------------------------------------------------------------------


def test_every_python_block_in_the_docs_compiles() -> None:
    for page in sorted(DOCS.rglob("*.md")):
        for language, title, text in blocks(page):
            if language == "python":
                where = f"{page.relative_to(ROOT)} ({title or 'untitled block'})"
                compile(text, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_tutorial_program_prints_what_the_tutorial_shows(backend: str) -> None:
    page = DOCS / "tutorial.md"
    program = titled(page, "fleet.py")
    shown = titled(page, "output")
    if backend == "trio":
        assert "\nanyio.run(main)\n" in program
        program = program.replace("\nanyio.run(main)\n", '\nanyio.run(main, backend="trio")\n')
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == shown


@pytest.mark.slow  # pytest in a fresh interpreter
def test_the_testing_how_to_test_module_passes(tmp_path: Path) -> None:
    pytest.importorskip("trio")
    module = tmp_path / "test_lobby.py"
    module.write_text(titled(DOCS / "howto" / "testing.md", "test_lobby.py"), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 passed" in result.stdout


@pytest.mark.slow  # pytest in a fresh interpreter
def test_the_fastapi_how_to_app_passes_its_own_test_twice_in_one_process(tmp_path: Path) -> None:
    """The lifespan owns the manager: two TestClient(app) runs in one process both work."""
    page = DOCS / "howto" / "fastapi.md"
    (tmp_path / "app.py").write_text(titled(page, "app.py"), encoding="utf-8")
    (tmp_path / "test_app.py").write_text(titled(page, "test_app.py"), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_the_retry_numbers_in_the_docs_are_the_policys() -> None:
    """The policies how-to's table and the resumption how-to's windows, recomputed."""
    import statistics

    from wsfleet import RetryPolicy

    table = (DOCS / "howto" / "policies.md").read_text(encoding="utf-8")
    for mode in ("proportional", "full", "equal", "decorrelated"):
        totals = [sum(RetryPolicy(jitter_mode=mode, seed=seed).delays()) for seed in range(2000)]
        mean = statistics.mean(totals)
        longest = RetryPolicy(jitter_mode=mode).max_total_delay()
        row = next(line for line in table.splitlines() if line.startswith(f'| `"{mode}"`'))
        assert row.endswith(f"| {mean:.1f} s | {longest:.1f} s |"), row
    resumption = (DOCS / "howto" / "resumption.md").read_text(encoding="utf-8")
    example = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=10.0)
    assert f"that is {RetryPolicy().max_total_delay():.1f} s" in resumption
    assert f"for the policy above, {example.max_total_delay():.1f} s" in resumption


def test_the_outbound_client_reaches_a_server_that_starts_after_it(tmp_path: Path) -> None:
    """The outbound how-to's client against the tutorial's server, started a moment later:
    the retries wait for it, the message queued meanwhile arrives, the close is clean."""
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    client = titled(DOCS / "howto" / "outbound.md", "client.py").replace("8765", port)
    server = titled(DOCS / "tutorial.md", "server.py").replace("8765", port)
    (tmp_path / "client.py").write_text(client, encoding="utf-8")
    (tmp_path / "server.py").write_text(server, encoding="utf-8")
    with subprocess.Popen(
        [sys.executable, "client.py"], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    ) as dialling:
        time.sleep(1.5)  # the client is already retrying
        with subprocess.Popen([sys.executable, "server.py"], cwd=tmp_path) as serving:
            try:
                out, _ = dialling.communicate(timeout=60)
            finally:
                serving.terminate()
                serving.wait(timeout=10)
    assert dialling.returncode == 0, out
    assert out.startswith("new -> RECONNECTING (dialling)\n")
    assert "got robot: hello\n" in out
    assert out.endswith("CONNECTED -> DISCONNECTED (closed by the application (1000))\n")
