"""What an identifier or a group name may be, wherever one comes from.

A name comes from a client (a query parameter, a token's subject), from the application, or
from another node over the backplane; the same rules hold for each, here in one place.
"""

from __future__ import annotations

from .errors import InvalidArgument, WrongType

__all__ = ["MAX_NAME_LENGTH", "check_name"]

MAX_NAME_LENGTH = 256


def check_name(kind: str, value: object) -> str:
    """An identifier or group name: a non-empty ``str`` of at most 256 characters.

    It must also be valid Unicode (no lone surrogates) and printable: names travel to other
    nodes, logs and dashboards, where one that cannot be encoded would fail far from the
    call that let it in, and one with a newline or an escape sequence would forge log lines
    or repaint a terminal.
    """
    if not isinstance(value, str):
        raise WrongType(f"{kind} must be a str, got {type(value).__name__}")
    if not value:
        raise InvalidArgument(f"{kind} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"{kind} must be at most {MAX_NAME_LENGTH} characters, got {len(value)}"
        )
    if not value.isprintable():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgument(
                f"{kind} must be valid Unicode text (character {exc.start}: {exc.reason})"
            ) from None
        raise InvalidArgument(
            f"{kind} must be printable: no control characters (newlines, escapes, NUL ...)"
        )
    return value
