"""The ready JSON framing: a message with its position, read back as it was sent."""

from __future__ import annotations

import json

import pytest

from wsfleet import InvalidArgument, Position
from wsfleet.framing import json_frame, unframe


@pytest.mark.parametrize("message", ["hello", "", '{"op": "said"}', b"\x00\xffbytes", b""])
def test_a_frame_reads_back_as_the_message_and_its_position(message: str | bytes) -> None:
    position = Position("abc123", 42)
    frame = json_frame(message, position)
    assert json.loads(frame)["position"] == "abc123:42"
    assert unframe(frame) == (position, message)


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[]",
        '{"data": "x"}',
        '{"position": "e:1"}',
        '{"position": "e", "data": "x"}',
        '{"position": "e:1", "bytes": "***"}',
        '{"position": "e:1", "data": 3}',
    ],
)
def test_what_is_not_a_frame_is_refused(frame: str) -> None:
    with pytest.raises(InvalidArgument):
        unframe(frame)
