"""The history policy, positions, and the recovery decision: every rule and every refusal."""

from __future__ import annotations

import pickle
from datetime import timedelta
from typing import Any

import pytest

from wsfleet.errors import InvalidArgument, InvalidPolicy, RecoveryImpossible
from wsfleet.policies import HistoryPolicy, Position
from wsfleet.policies.history import plan_recovery

# -- HistoryPolicy -----------------------------------------------------------------------------


def test_history_defaults_keep_a_hundred_messages_for_five_minutes() -> None:
    assert (HistoryPolicy().size, HistoryPolicy().ttl) == (100, 300.0)


def test_ttl_accepts_a_timedelta_and_is_stored_as_float_seconds() -> None:
    policy = HistoryPolicy(size=5, ttl=timedelta(minutes=1))
    assert policy == HistoryPolicy(size=5, ttl=60)
    assert type(policy.ttl) is float


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"size": 0}, "size"),
        ({"size": 2.5}, "size"),
        ({"size": True}, "size"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": -1}, "ttl"),
        ({"ttl": float("nan")}, "ttl"),
        ({"ttl": "60"}, "ttl"),
    ],
)
def test_bad_bounds_are_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        HistoryPolicy(**kwargs)
    assert caught.value.field == field


def test_a_message_expires_when_it_is_ttl_old() -> None:
    policy = HistoryPolicy(ttl=10)
    assert not policy.expired(written_at=100.0, now=109.9)
    assert policy.expired(written_at=100.0, now=110.0)


# -- Position ----------------------------------------------------------------------------------


def test_a_position_reads_back_from_its_text_form() -> None:
    position = Position("a1b2", 42)
    assert str(position) == "a1b2:42"
    assert Position.parse("a1b2:42") == position
    assert pickle.loads(pickle.dumps(position)) == position


@pytest.mark.parametrize(
    ("epoch", "offset"),
    [
        ("", 1),
        ("a:b", 1),
        ("a b", 1),
        (" a", 1),
        ("\x00", 1),
        ("e" * 65, 1),
        (3, 1),
        ("e", -1),
        ("e", True),
        ("e", 1.0),
        ("e", "1"),
    ],
)
def test_bad_positions_are_refused(epoch: Any, offset: Any) -> None:
    with pytest.raises(InvalidArgument):
        Position(epoch, offset)


@pytest.mark.parametrize(
    "text", ["", "abc", "e:", ":1", "e:-1", "e:1.5", "e:\u0661", "e:x", 7, None, "e" * 90 + ":1"]
)
def test_text_that_is_not_a_position_is_refused(text: Any) -> None:
    with pytest.raises(InvalidArgument):
        Position.parse(text)


# -- plan_recovery -----------------------------------------------------------------------------


def plan(
    since: int,
    *,
    epoch: str | None = "e",
    oldest: int | None = None,
    newest: int = 10,
    live_from: int | None = None,
) -> range:
    return plan_recovery(
        Position("e", since), epoch=epoch, oldest=oldest, newest=newest, live_from=live_from
    )


def test_what_came_after_since_is_replayed_up_to_the_newest() -> None:
    assert plan(4, oldest=5) == range(5, 11)
    assert plan(0, oldest=1) == range(1, 11)


def test_nothing_is_replayed_to_a_socket_that_saw_the_newest() -> None:
    assert plan(10, oldest=None) == range(11, 11)


def test_a_socket_sent_everything_after_since_live_is_replayed_nothing() -> None:
    assert plan(4, oldest=5, live_from=5) == range(5, 5)
    assert plan(4, oldest=5, live_from=3) == range(5, 5)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"since": 4, "epoch": None}, "was lost"),
        ({"since": 4, "epoch": "other"}, "was lost"),
        ({"since": 11, "oldest": None}, "ahead"),
        ({"since": 4, "oldest": 6}, "fell out"),
        ({"since": 4, "oldest": None}, "fell out"),
        ({"since": 4, "oldest": 5, "live_from": 7}, "already sent"),
    ],
)
def test_recovery_is_refused_when_it_cannot_be_exact(kwargs: dict[str, Any], words: str) -> None:
    since = kwargs.pop("since")
    with pytest.raises(RecoveryImpossible) as caught:
        plan(since, **kwargs)
    assert words in caught.value.reason
    assert str(caught.value) == caught.value.reason
    copy = pickle.loads(pickle.dumps(caught.value))
    assert copy.reason == caught.value.reason
