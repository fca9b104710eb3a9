"""``ClusterView``, this node's picture of the others, against a plain model.

The model is the obvious structure (node -> identifier -> set of groups) and every query is
computed from it by brute force; the view keeps counters and reverse indexes instead, so the
two can disagree only if an update forgets one of them. Hypothesis drives both with random
updates over a few nodes, identifiers and groups, and checks every query after each step.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from wsfleet.backplane.view import ClusterView

NODES = st.sampled_from(["n1", "n2", "n3"])
IDENTIFIERS = st.sampled_from(["ann", "bob", "cy"])
GROUPS = st.sampled_from(["red", "blue", "green"])
SNAPSHOTS = st.dictionaries(IDENTIFIERS, st.lists(GROUPS, max_size=3), max_size=3)

ALL_IDENTIFIERS = ("ann", "bob", "cy", "nobody")
ALL_GROUPS = ("red", "blue", "green", "none")


class Model:
    """What the view should answer, computed the slow, obvious way."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, set[str]]] = {}

    def members(self, group: str) -> set[str]:
        return {i for ids in self.nodes.values() for i, groups in ids.items() if group in groups}

    def groups_of(self, identifier: str) -> set[str]:
        return {g for ids in self.nodes.values() for g in ids.get(identifier, ())}

    def presence(self, identifier: str) -> set[str]:
        return {node for node, ids in self.nodes.items() if identifier in ids}

    def identifiers(self) -> set[str]:
        return {i for ids in self.nodes.values() for i in ids}


class ClusterViewMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.view = ClusterView()
        self.model = Model()

    @rule(node=NODES, identifier=IDENTIFIERS)
    def online(self, node: str, identifier: str) -> None:
        self.view.online(node, identifier)
        self.model.nodes.setdefault(node, {}).setdefault(identifier, set())

    @rule(node=NODES, identifier=IDENTIFIERS)
    def offline(self, node: str, identifier: str) -> None:
        self.view.offline(node, identifier)
        self.model.nodes.get(node, {}).pop(identifier, None)

    @rule(node=NODES, identifier=IDENTIFIERS, group=GROUPS)
    def join(self, node: str, identifier: str, group: str) -> None:
        # A join implies the identifier is online there (the envelopes may come in any order).
        self.view.join(node, identifier, group)
        self.model.nodes.setdefault(node, {}).setdefault(identifier, set()).add(group)

    @rule(node=NODES, identifier=IDENTIFIERS, group=GROUPS)
    def leave(self, node: str, identifier: str, group: str) -> None:
        self.view.leave(node, identifier, group)
        self.model.nodes.get(node, {}).get(identifier, set()).discard(group)

    @rule(node=NODES, snapshot=SNAPSHOTS)
    def replace(self, node: str, snapshot: dict[str, list[str]]) -> None:
        self.view.replace(node, snapshot)
        self.model.nodes[node] = {i: set(groups) for i, groups in snapshot.items()}

    @rule(node=NODES)
    def drop(self, node: str) -> None:
        self.view.drop(node)
        self.model.nodes.pop(node, None)

    @invariant()
    def queries_agree_with_the_model(self) -> None:
        view, model = self.view, self.model
        assert view.nodes() == set(model.nodes)
        assert view.identifiers() == model.identifiers()
        for identifier in ALL_IDENTIFIERS:
            assert view.groups_of(identifier) == model.groups_of(identifier), identifier
            assert view.presence(identifier) == model.presence(identifier), identifier
        for group in ALL_GROUPS:
            assert view.members(group) == model.members(group), group

    @invariant()
    def answers_are_copies(self) -> None:
        # Callers may mutate what they get; the view must not change with it.
        self.view.nodes().add("intruder")
        self.view.identifiers().add("intruder")
        self.view.members("red").add("intruder")
        self.view.groups_of("ann").add("intruder")
        self.view.presence("ann").add("intruder")
        assert "intruder" not in self.view.nodes() | self.view.identifiers()
        assert "intruder" not in self.view.members("red") | self.view.groups_of("ann")
        assert "intruder" not in self.view.presence("ann")


ClusterViewMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
TestClusterView = pytest.mark.slow(ClusterViewMachine.TestCase)  # 150 runs of 40 steps


# -- examples --------------------------------------------------------------------------------


def test_an_identifier_on_two_nodes_stays_a_member_while_either_node_has_it_in_the_group() -> None:
    view = ClusterView()
    view.join("n1", "ann", "room")
    view.join("n2", "ann", "room")
    assert view.members("room") == {"ann"}
    assert view.presence("ann") == {"n1", "n2"}

    view.leave("n1", "ann", "room")
    assert view.members("room") == {"ann"}  # n2 still has her in the room
    assert view.groups_of("ann") == {"room"}
    assert view.presence("ann") == {"n1", "n2"}  # leaving a group is not going offline

    view.join("n1", "ann", "room")
    view.offline("n2", "ann")
    assert view.members("room") == {"ann"}  # n1 has her in the room again
    assert view.presence("ann") == {"n1"}

    view.leave("n1", "ann", "room")
    assert view.members("room") == set()
    assert view.groups_of("ann") == set()
    assert view.presence("ann") == {"n1"}


def test_dropping_a_node_removes_exactly_what_it_held() -> None:
    view = ClusterView()
    view.join("n1", "ann", "red")
    view.join("n1", "bob", "red")
    view.join("n1", "bob", "blue")
    view.online("n1", "cy")
    view.join("n2", "ann", "red")
    view.join("n2", "dee", "blue")

    view.drop("n1")

    assert view.nodes() == {"n2"}
    assert view.identifiers() == {"ann", "dee"}
    assert view.members("red") == {"ann"}
    assert view.members("blue") == {"dee"}
    assert view.groups_of("bob") == set()
    assert view.presence("ann") == {"n2"}
    assert view.presence("cy") == set()

    view.drop("n1")  # twice, or a node never seen: nothing happens
    view.drop("n9")
    assert view.nodes() == {"n2"}
    assert view.identifiers() == {"ann", "dee"}


def test_replace_forgets_what_was_known_of_the_node_and_nothing_else() -> None:
    view = ClusterView()
    view.join("n1", "ann", "red")
    view.join("n1", "bob", "blue")
    view.join("n2", "bob", "red")

    view.replace("n1", {"bob": ["green", "green"], "cy": []})

    assert view.presence("ann") == set()
    assert view.members("red") == {"bob"}  # from n2
    assert view.members("blue") == set()
    assert view.groups_of("bob") == {"red", "green"}
    assert view.presence("cy") == {"n1"}
    assert view.identifiers() == {"bob", "cy"}


def test_a_node_known_to_hold_nobody_is_still_known() -> None:
    # The backplane reloads a live node from the store only when the view does not know it:
    # a node with no one online must be known after a reload as after its last "offline",
    # or it would be reloaded on every heartbeat (and its expiry go uncounted).
    view = ClusterView()
    view.replace("n1", {})
    assert view.nodes() == {"n1"}
    view.online("n2", "ann")
    view.offline("n2", "ann")
    assert view.nodes() == {"n1", "n2"}
    assert view.identifiers() == set()
    view.drop("n1")
    assert view.nodes() == {"n2"}


def test_updates_about_unknown_nodes_and_identifiers_are_harmless() -> None:
    view = ClusterView()
    view.offline("n1", "ann")
    view.leave("n1", "ann", "red")
    view.online("n1", "ann")
    view.leave("n1", "ann", "red")
    view.offline("n1", "bob")
    assert view.presence("ann") == {"n1"}
    assert view.members("red") == set()
    assert view.nodes() == {"n1"}
