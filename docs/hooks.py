"""mkdocs hooks: files the site shows that live, or are made, outside ``docs/``.

* ``connection-states.svg`` is ``diagrams/connection-states.svg``, drawn from the transition
  table by ``wsfleet diagram`` and checked by ``tests/test_diagrams.py``; the site serves
  that very file rather than a copy that could go stale.
* ``css/pygments.css`` colours the code blocks, which Pygments highlights at build time (the
  theme's highlight.js would be fetched from a CDN, so it is switched off).

Docstrings end a paragraph with reStructuredText's ``::`` before an example; Markdown shows
it as typed, so the reference pages get one colon instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files
from pygments.formatters import HtmlFormatter

ROOT = Path(__file__).resolve().parent.parent
FROM_THE_REPOSITORY = {"connection-states.svg": ROOT / "diagrams" / "connection-states.svg"}


def on_files(files: Files, config: Any) -> Files:
    for uri, path in FROM_THE_REPOSITORY.items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    css = HtmlFormatter(style="friendly").get_style_defs(".highlight")
    files.append(File.generated(config, "css/pygments.css", content=css))
    return files


def on_page_content(html: str, **kwargs: Any) -> str:
    return html.replace("::</p>", ":</p>")
