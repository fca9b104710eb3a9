"""Join rules: who may join which group, asked before a membership changes.

A refused join raises ``JoinRefused`` (a ``PermissionError``) and changes nothing: no
membership, no message to the group reaches the refused identifier, nothing is told to
the other nodes.
"""

from __future__ import annotations

import pickle
import warnings

import anyio
import pytest

from wsfleet import Backplane, ConnectionManager, InMemoryHub, JoinRefused, WrongType
from wsfleet.testing import MemoryTransport

pytestmark = pytest.mark.anyio

STAFF = {"ann"}


def staff_only(identifier: str, group: str) -> bool:
    return identifier in STAFF


def registered(manager: ConnectionManager, *names: str) -> dict[str, MemoryTransport]:
    sockets = {name: MemoryTransport(name) for name in names}
    for name, socket in sockets.items():
        manager.register(socket, name)
    return sockets


async def test_without_rules_everyone_may_join_anything() -> None:
    async with ConnectionManager() as manager:
        registered(manager, "ann", "bob")
        manager.add_to_group("bob", "admin:1")
        assert manager.get_group_members("admin:1") == {"bob"}


async def test_a_pattern_rule_refuses_with_a_clear_error_and_changes_nothing() -> None:
    async with ConnectionManager() as manager:
        sockets = registered(manager, "ann", "bob")
        manager.join_rule("admin:*", staff_only)
        manager.add_to_group("ann", "admin:ops")
        with pytest.raises(JoinRefused) as refused:
            manager.add_to_group("bob", "admin:ops")
        assert isinstance(refused.value, PermissionError)
        assert (refused.value.identifier, refused.value.group) == ("bob", "admin:ops")
        assert str(refused.value) == "'bob' may not join 'admin:ops': a join rule refused it"
        assert manager.get_group_members("admin:ops") == {"ann"}
        assert manager.groups_of("bob") == set()
        await manager.send_to_group("admin:ops", "secret")
        with anyio.fail_after(5):
            while sockets["ann"].received != ["secret"]:
                await anyio.sleep(0.005)
        assert sockets["bob"].received == []
        manager.add_to_group("bob", "room:1")  # no rule names it: allowed


async def test_exact_names_come_before_patterns_and_patterns_before_the_default() -> None:
    asked: list[str] = []

    def rule(name: str, answer: bool):  # type: ignore[no-untyped-def]
        def decide(identifier: str, group: str) -> bool:
            asked.append(name)
            return answer

        return decide

    async with ConnectionManager(can_join=rule("default", False)) as manager:
        registered(manager, "ann")
        manager.join_rule("room:*", rule("pattern", True))
        manager.join_rule("room:vip", rule("exact", False))
        manager.add_to_group("ann", "room:1")
        with pytest.raises(JoinRefused):
            manager.add_to_group("ann", "room:vip")
        with pytest.raises(JoinRefused):
            manager.add_to_group("ann", "lobby")
        assert asked == ["pattern", "exact", "default"]
        assert manager.groups_of("ann") == {"room:1"}


async def test_a_rule_is_asked_once_per_new_membership() -> None:
    asked = 0

    async with ConnectionManager() as manager:
        registered(manager, "ann")

        @manager.join_rule("room:*")
        def count(identifier: str, group: str) -> bool:
            nonlocal asked
            asked += 1
            return True

        for _ in range(3):
            manager.add_to_group("ann", "room:1")  # idempotent: asked the first time only
        assert asked == 1
        assert count("ann", "x") is True  # the decorator gives the function back


async def test_only_true_lets_a_member_in() -> None:
    """A rule that forgets to return (None), or returns a truthy non-bool, refuses."""
    async with ConnectionManager() as manager:
        registered(manager, "ann")
        manager.join_rule("a", lambda i, g: None)  # type: ignore[arg-type,return-value]
        manager.join_rule("b", lambda i, g: "yes")  # type: ignore[arg-type,return-value]
        for group in ("a", "b"):
            with pytest.raises(JoinRefused):
                manager.add_to_group("ann", group)


async def test_an_async_rule_is_asked_by_join_and_refused_by_add_to_group() -> None:
    async def members(identifier: str, group: str) -> bool:
        return identifier == "ann"

    async with ConnectionManager() as manager:
        registered(manager, "ann", "bob")
        manager.join_rule("room:*", members)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "coroutine ... was never awaited"
            with pytest.raises(WrongType, match=r"await manager\.join\('ann', 'room:1'\)"):
                manager.add_to_group("ann", "room:1")
        assert manager.groups_of("ann") == set()
        await manager.join("ann", "room:1")
        with pytest.raises(JoinRefused):
            await manager.join("bob", "room:1")
        assert manager.get_group_members("room:1") == {"ann"}
        await manager.join("bob", "lobby")  # no rule: join works without one too


async def test_a_rule_that_raises_refuses_and_its_error_reaches_the_caller() -> None:
    def broken(identifier: str, group: str) -> bool:
        raise LookupError("the membership service is down")

    async with ConnectionManager(can_join=broken) as manager:
        registered(manager, "ann")
        with pytest.raises(LookupError):
            manager.add_to_group("ann", "room:1")
        assert manager.groups_of("ann") == set()


async def test_a_refused_join_is_not_told_to_the_other_nodes() -> None:
    hub = InMemoryHub()
    async with (
        ConnectionManager(backplane=Backplane(hub, node_id="n1"), can_join=staff_only) as n1,
        ConnectionManager(backplane=Backplane(hub, node_id="n2")) as n2,
    ):
        registered(n1, "ann", "bob")
        with pytest.raises(JoinRefused):
            n1.add_to_group("bob", "ops")
        n1.add_to_group("ann", "ops")  # told after the refusal: once n2 has it, it has all
        with anyio.fail_after(10):
            while "ann" not in n2.get_group_members("ops"):
                await anyio.sleep(0.01)
        assert n2.get_group_members("ops") == n1.get_group_members("ops") == {"ann"}


@pytest.mark.parametrize(
    ("pattern", "rule"),
    [("", staff_only), (5, staff_only), ("room:*", "yes"), ("room:*", None)],
)
async def test_bad_rules_are_refused_at_once(pattern: object, rule: object) -> None:
    async with ConnectionManager() as manager:
        if rule is None:
            with pytest.raises(WrongType):
                manager.join_rule(pattern)(None)  # type: ignore[arg-type]
        else:
            with pytest.raises(WrongType):
                manager.join_rule(pattern, rule)  # type: ignore[arg-type]


def test_can_join_must_be_a_function() -> None:
    with pytest.raises(WrongType):
        ConnectionManager(can_join="everyone")  # type: ignore[arg-type]


def test_a_refusal_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(JoinRefused("bob", "ops")))
    assert (error.identifier, error.group, str(error)) == (
        "bob",
        "ops",
        "'bob' may not join 'ops': a join rule refused it",
    )
