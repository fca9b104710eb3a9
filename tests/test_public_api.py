"""The public names are pinned: adding or removing one is a deliberate change to this list."""

from __future__ import annotations

import wsfleet
import wsfleet.fsm
import wsfleet.policies
import wsfleet.testing

PUBLIC = {
    "MAX_META_BYTES",
    "PING",
    "TABLE",
    "AlreadyRegistered",
    "BackpressurePolicy",
    "Backplane",
    "CallbackHandle",
    "Connection",
    "ConnectionManager",
    "ConnectionState",
    "Delivery",
    "FinalRefusal",
    "FleetStats",
    "HeartbeatPolicy",
    "HistoryPolicy",
    "InMemoryHub",
    "InvalidArgument",
    "InvalidMeta",
    "InvalidPolicy",
    "InvalidTransition",
    "JoinRefused",
    "JitterMode",
    "MalformedEnvelope",
    "ManagerClosed",
    "Message",
    "MessageTooLarge",
    "OverflowAction",
    "OverflowPolicy",
    "Position",
    "PresenceEvent",
    "RateLimitAction",
    "RateLimitPolicy",
    "RateLimitScope",
    "RecoveryImpossible",
    "ResumeExpired",
    "RetriesExhausted",
    "RetryPolicy",
    "Session",
    "StateChange",
    "Transport",
    "TransportClosed",
    "TransportError",
    "Unauthenticated",
    "UnencodableMessage",
    "UnknownIdentifier",
    "UnknownSocket",
    "WrongThread",
    "WrongType",
    "WsfleetError",
    "__version__",
    "register_adapter",
}


def test_top_level_exports_are_pinned() -> None:
    assert set(wsfleet.__all__) == PUBLIC


def test_every_export_exists() -> None:
    for module in (wsfleet, wsfleet.fsm, wsfleet.policies, wsfleet.testing):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_public_classes_live_in_private_modules_or_subpackages() -> None:
    assert wsfleet.ConnectionManager.__module__ == "wsfleet._manager"


def test_errors_are_shown_under_the_name_they_are_imported_by() -> None:
    import pickle
    import traceback

    for name in wsfleet.__all__:
        value = getattr(wsfleet, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert value.__module__ == "wsfleet", name
    error = wsfleet.InvalidTransition(None, wsfleet.ConnectionState.IDLE)
    shown = "".join(traceback.format_exception_only(error))
    assert shown.startswith("wsfleet.InvalidTransition: cannot go from new to IDLE")
    copy = pickle.loads(pickle.dumps(error))  # through processes and task queues too
    assert (type(copy), copy.state, copy.target, str(copy)) == (
        wsfleet.InvalidTransition,
        None,
        wsfleet.ConnectionState.IDLE,
        str(error),
    )


def test_dir_shows_the_public_names_only() -> None:
    shown = set(dir(wsfleet))
    assert set(wsfleet.__all__) <= shown
    assert not shown & {"Any", "TYPE_CHECKING", "annotations", "importlib"}
    assert all(not name.startswith("_") or name == "__version__" for name in shown)


def test_the_command_line_tells_its_version() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "wsfleet", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out == f"wsfleet {wsfleet.__version__}\n"


def test_every_error_shares_the_root_and_a_builtin_where_one_fits() -> None:
    errors = {
        wsfleet.InvalidTransition: ValueError,
        wsfleet.InvalidPolicy: ValueError,
        wsfleet.InvalidArgument: ValueError,
        wsfleet.InvalidMeta: ValueError,
        wsfleet.MessageTooLarge: ValueError,
        wsfleet.UnencodableMessage: ValueError,
        wsfleet.MalformedEnvelope: ValueError,
        wsfleet.AlreadyRegistered: ValueError,
        wsfleet.JoinRefused: PermissionError,
        wsfleet.Unauthenticated: PermissionError,
        wsfleet.WrongType: TypeError,
        wsfleet.UnknownSocket: KeyError,
        wsfleet.UnknownIdentifier: KeyError,
        wsfleet.ManagerClosed: RuntimeError,
        wsfleet.WrongThread: RuntimeError,
        wsfleet.TransportError: ConnectionError,
        wsfleet.TransportClosed: ConnectionError,
        wsfleet.FinalRefusal: ConnectionError,
    }
    for error, builtin in errors.items():
        assert issubclass(error, wsfleet.WsfleetError)
        assert issubclass(error, builtin)
    assert issubclass(wsfleet.RetriesExhausted, wsfleet.WsfleetError)
    assert issubclass(wsfleet.ResumeExpired, wsfleet.WsfleetError)


def test_key_errors_read_as_sentences() -> None:
    assert str(wsfleet.UnknownIdentifier("no connection is registered as 'x'")) == (
        "no connection is registered as 'x'"
    )


def test_the_wheel_is_typed() -> None:
    from importlib.resources import files

    assert files("wsfleet").joinpath("py.typed").is_file()


def test_unknown_attributes_raise_attribute_error() -> None:
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = wsfleet.Nope  # type: ignore[attr-defined]
    assert "ConnectionManager" in dir(wsfleet)
