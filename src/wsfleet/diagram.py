"""State diagrams drawn from the transition table the machine runs on.

The diagram machine is a throw-away ``transitions`` ``GraphMachine`` built from the same
``TABLE`` rows as the running machine, so a drawing cannot disagree with the behaviour. It is
never used at run time: ``GraphMachine`` keeps a graph per model, which is fine for one
drawing and wrong for a fleet.
"""

from __future__ import annotations

from typing import Any, Literal

from .fsm.states import ConnectionState
from .fsm.table import TABLE, births

__all__ = ["Format", "render"]

Format = Literal["mermaid", "dot", "svg"]

_TITLE = "wsfleet connection states"
_START = "new"


class _Drawing:
    """The one model a diagram machine needs; it only ever sits in the first state."""


def _graph(engine: Literal["mermaid", "graphviz"]) -> Any:
    from transitions.extensions.diagrams import GraphMachine

    transitions = [
        {
            "trigger": rule.trigger,
            "source": [s.name for s in rule.sources if s is not None],
            "dest": rule.dest.name,
            "conditions": list(rule.conditions),
            "unless": list(rule.unless),
        }
        for rule in TABLE
        if any(s is not None for s in rule.sources)
    ]
    model = _Drawing()
    machine = GraphMachine(
        model=model,
        states=[s.name for s in ConnectionState],
        transitions=transitions,
        initial=next(iter(births())).name,
        auto_transitions=False,
        show_conditions=True,
        title=_TITLE,
        graph_engine=engine,
    )
    graph = machine.model_graphs[id(model)]
    graph.reset_styling()  # a drawing of the table, not of one model's current state
    return graph.get_graph(title=_TITLE)


def _mermaid() -> str:
    # The library draws a single unlabelled start edge; the table has one labelled per birth.
    source = str(_graph("mermaid").source)
    lines = [line for line in source.splitlines() if not line.lstrip().startswith("[*]")]
    while lines and not lines[-1].strip():
        lines.pop()
    lines.append("")
    for state, rule in births().items():
        lines.append(f"  [*] --> {state.name}: {rule.trigger}")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _graphviz() -> Any:
    graph = _graph("graphviz")
    graph.node(_START, label="", shape="point", width="0.15")
    for state, rule in births().items():
        graph.edge(_START, state.name, label=rule.trigger)
    return graph


def render(fmt: Format = "mermaid") -> str | bytes:
    """The diagram as mermaid text, graphviz dot text, or SVG bytes (needs graphviz' ``dot``)."""
    if fmt == "mermaid":
        return _mermaid()
    if fmt == "dot":
        return str(_graphviz().source)
    if fmt == "svg":
        data: bytes = _graphviz().pipe(format="svg")
        return data
    raise ValueError(f"format: expected 'mermaid', 'dot' or 'svg', got {fmt!r}")
