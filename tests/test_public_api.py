"""The public names are pinned: adding or removing one is a deliberate change to this list."""

from __future__ import annotations

import wsfleet
import wsfleet.fsm
import wsfleet.policies
import wsfleet.testing

PUBLIC = {
    "PING",
    "TABLE",
    "AlreadyRegistered",
    "Backplane",
    "CallbackHandle",
    "Connection",
    "ConnectionManager",
    "ConnectionState",
    "Delivery",
    "FleetStats",
    "HeartbeatPolicy",
    "InMemoryHub",
    "InvalidArgument",
    "InvalidPolicy",
    "InvalidTransition",
    "JitterMode",
    "ManagerClosed",
    "Message",
    "MessageTooLarge",
    "OverflowAction",
    "OverflowPolicy",
    "RetriesExhausted",
    "RetryPolicy",
    "Session",
    "StateChange",
    "Transport",
    "TransportClosed",
    "TransportError",
    "UnencodableMessage",
    "UnknownIdentifier",
    "UnknownSocket",
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
    assert wsfleet.WsfleetError.__module__ == "wsfleet._errors"


def test_every_error_shares_the_root_and_a_builtin_where_one_fits() -> None:
    errors = {
        wsfleet.InvalidTransition: ValueError,
        wsfleet.InvalidPolicy: ValueError,
        wsfleet.InvalidArgument: ValueError,
        wsfleet.MessageTooLarge: ValueError,
        wsfleet.UnencodableMessage: ValueError,
        wsfleet.AlreadyRegistered: ValueError,
        wsfleet.WrongType: TypeError,
        wsfleet.UnknownSocket: KeyError,
        wsfleet.UnknownIdentifier: KeyError,
        wsfleet.ManagerClosed: RuntimeError,
        wsfleet.TransportError: ConnectionError,
        wsfleet.TransportClosed: ConnectionError,
    }
    for error, builtin in errors.items():
        assert issubclass(error, wsfleet.WsfleetError)
        assert issubclass(error, builtin)
    assert issubclass(wsfleet.RetriesExhausted, wsfleet.WsfleetError)


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
