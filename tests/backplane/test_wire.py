"""The backplane's wire format: what ``encode`` writes, ``decode`` reads back, and nothing else.

Every way a message can fail to be a wsfleet envelope of this namespace ends in
``MalformedEnvelope`` (a ``WsfleetError`` and a ``ValueError``), which the subscriber counts and
skips; no other exception may come out of ``decode``, whatever the bytes. Text that no UTF-8
encoder accepts (a lone surrogate, which valid JSON can spell as ``"\\ud800"``) is refused
too: it would fail at every socket it was written to.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsfleet import MalformedEnvelope, WsfleetError
from wsfleet.backplane.wire import (
    VERSION,
    Envelope,
    Header,
    decode,
    encode,
    encoded_size,
    send_data,
)

NS = "wsfleet"


def raw(**fields: Any) -> bytes:
    """A message on the channel: a valid header, overridden or extended by ``fields``.

    A field given as ``None`` is left out.
    """
    body: dict[str, Any] = {"v": VERSION, "ns": NS, "node": "n1", "run": "r1", "seq": 1}
    body["k"] = "hello"
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def send(**fields: Any) -> bytes:
    return raw(**{"k": "send", "to": "all", "text": "hi", **fields})


# -- round trips --------------------------------------------------------------------------

ROUND_TRIPS = [
    Envelope("send", "n1", "r1", 1, send_data("all", None, "hello", [])),
    Envelope("send", "n1", "r1", 2, send_data("all", None, b"\x00\xff binary", ["ann"])),
    Envelope("send", "n1", "r1", 3, send_data("one", "ann", "héllo wörld ✓ 🚀", [])),
    Envelope("send", "n1", "r1", 4, send_data("many", ["ann", "bob", "ann"], b"", [])),
    Envelope("send", "n1", "r1", 5, send_data("group", "room:1", "", ["bob", "cy"])),
    Envelope("join", "n1", "r1", 6, {"id": "ann", "group": "room:1"}),
    Envelope("leave", "n1", "r1", 7, {"id": "ann", "group": "комната"}),
    Envelope("online", "n1", "r1", 8, {"id": "日本"}),
    Envelope("offline", "n1", "r1", 9, {"id": "ann"}),
    Envelope("kick", "n1", "r1", 10, {"id": "ann", "code": 4000, "reason": "bye ☺"}),
    Envelope("kick", "n1", "r1", 11, {"id": "ann", "code": 1000}),
    Envelope("hello", "node-ü", "rün", 0, {}),
    Envelope("tally", "n1", "r1", 12, {}),
]


@pytest.mark.parametrize("envelope", ROUND_TRIPS, ids=lambda e: f"{e.kind}-{e.seq}")
def test_every_kind_round_trips(envelope: Envelope) -> None:
    data = encode(NS, envelope)
    assert isinstance(data, bytes)
    assert decode(NS, data) == envelope
    assert decode(NS, data.decode()) == envelope  # a client that hands over str


@pytest.mark.parametrize(
    "message", ["plain", "", "ünïcödé ✓ 🚀 \u2028 \x00", b"", b"\x00\x01\xfe\xff", "€".encode()]
)
def test_a_send_carries_its_message_exactly(message: str | bytes) -> None:
    envelope = Envelope("send", "n1", "r1", 1, send_data("all", None, message, []))
    decoded = decode(NS, encode(NS, envelope))
    assert decoded.message == message
    assert type(decoded.message) is type(message)
    assert ("text" in decoded.data) is isinstance(message, str)


@pytest.mark.parametrize(
    "data",
    [
        send_data("all", None, "a\ud800b", []),
        send_data("one", "ann\udc80", "hi", []),
        send_data("many", ["ann", "\udfff"], "hi", []),
        send_data("all", None, "hi", ["\ud800"]),
    ],
    ids=["text", "target", "targets", "exclude"],
)
def test_text_with_a_lone_surrogate_is_not_encoded(data: dict[str, Any]) -> None:
    # No node could write it to a socket: the manager refuses such text up front, and what
    # slips through (an identifier) must fail here, where the sender counts it, not later.
    with pytest.raises(UnicodeEncodeError):
        encode(NS, Envelope("send", "n1", "r1", 1, data))


def test_encoded_size_is_what_the_message_takes_in_the_envelope() -> None:
    for message in ["", "plain", 'quote " and \\', "\x00\x01\n", "ünï ✓ 🚀", b"", b"\xff" * 10]:
        envelope = Envelope("send", "n1", "r1", 1, send_data("all", None, message, []))
        empty = b"" if isinstance(message, bytes) else ""
        bare = Envelope("send", "n1", "r1", 1, send_data("all", None, empty, []))
        assert encoded_size(message) == len(encode(NS, envelope)) - len(encode(NS, bare))
    assert encoded_size("\x00" * 100) == 600  # JSON's \u0000: six bytes each
    assert encoded_size(b"\x00" * 100) == 136  # base64


def test_decode_refuses_an_envelope_over_the_bound_and_names_its_header() -> None:
    data = encode(NS, Envelope("send", "n1", "r1", 7, send_data("all", None, "x" * 100, [])))
    assert decode(NS, data, max_size=len(data)).seq == 7
    with pytest.raises(MalformedEnvelope, match="over the bound") as info:
        decode(NS, data, max_size=len(data) - 1)
    assert info.value.header == Header("send", "n1", "r1", 7)


LONE_SURROGATES: dict[str, bytes] = {
    # Valid JSON, whose strings Python reads back with a lone surrogate in them.
    "text": b'"text": "a\\ud800b"',
    "target": b'"to": "one", "target": "\\udc80", "text": "hi"',
    "targets": b'"to": "many", "target": ["ann", "\\udfff"], "text": "hi"',
    "exclude": b'"exclude": ["\\ud800"], "text": "hi"',
}


@pytest.mark.parametrize("fields", list(LONE_SURROGATES.values()), ids=list(LONE_SURROGATES))
def test_a_send_with_a_lone_surrogate_is_malformed_with_its_header(fields: bytes) -> None:
    head = b'{"v": 2, "ns": "wsfleet", "node": "n9", "run": "r9", "seq": 3, "k": "send", '
    data = head + (b"" if b'"to"' in fields else b'"to": "all", ') + fields + b"}"
    assert json.loads(data)  # valid JSON all the same
    with pytest.raises(MalformedEnvelope, match="not valid Unicode") as info:
        decode(NS, data)
    assert info.value.header == Header("send", "n9", "r9", 3)


@pytest.mark.parametrize(
    "data",
    [
        raw(k="join", id="\ud800", group="g"),
        raw(k="leave", id="ann", group="\udc00"),
        raw(k="online", id="\ud800"),
        raw(k="kick", id="ann", code=1000, reason="\ud800"),
    ],
    ids=["join id", "leave group", "online id", "kick reason"],
)
def test_membership_with_a_lone_surrogate_is_malformed(data: bytes) -> None:
    assert b"\\ud" in data  # json.dumps escaped it: valid JSON
    with pytest.raises(MalformedEnvelope, match="valid") as info:
        decode(NS, data)
    assert info.value.header is not None


def test_a_bad_header_is_not_named() -> None:
    with pytest.raises(MalformedEnvelope) as info:
        decode(NS, raw(node="\ud800"))
    assert info.value.header is None


def test_the_header_is_versioned_and_namespaced() -> None:
    body = json.loads(encode("other-ns", Envelope("online", "n7", "r7", 42, {"id": "ann"})))
    header = {"v": VERSION, "ns": "other-ns", "node": "n7", "run": "r7", "seq": 42}
    assert body == header | {"k": "online", "id": "ann"}
    assert decode("other-ns", raw(ns="other-ns")).kind == "hello"


def test_unknown_extra_fields_are_kept() -> None:
    # A later minor revision may add fields; this one carries them through untouched.
    assert decode(NS, raw(k="online", id="ann", extra=[1, 2])).data == {
        "id": "ann",
        "extra": [1, 2],
    }


def test_malformed_envelope_is_a_wsfleet_error_and_a_value_error() -> None:
    assert issubclass(MalformedEnvelope, WsfleetError)
    assert issubclass(MalformedEnvelope, ValueError)


def test_malformed_envelope_keeps_its_header_through_pickling() -> None:
    import pickle

    error = MalformedEnvelope("field 'text' is not valid Unicode", Header("send", "n1", "r", 3))
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.header) == (MalformedEnvelope, str(error), error.header)
    assert pickle.loads(pickle.dumps(MalformedEnvelope("not JSON"))).header is None


# -- refusals ---------------------------------------------------------------------------------

REFUSED: dict[str, bytes | str] = {
    # not JSON
    "empty": b"",
    "truncated": b'{"v": 1',
    "garbage": b"\xff\xfe\x00garbage",
    "invalid utf-8": b'{"v": 1, "ns": "\xff"}',
    "text not json": "hello there",
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "huge integer": b'{"v": ' + b"9" * 5000 + b"}",
    # not an object
    "array": b"[1, 2]",
    "number": b"1",
    "string": b'"wsfleet"',
    "null": b"null",
    # foreign namespace
    "other namespace": raw(ns="other"),
    "no namespace": raw(ns=None),
    "namespace not a string": raw(ns=["wsfleet"]),
    # other version
    "next version": raw(v=VERSION + 1),
    "version 1": raw(v=1),  # numbered every envelope, had no run: it cannot be counted
    "version 0": raw(v=0),
    "no version": raw(v=None),
    "version as string": raw(v=str(VERSION)),
    "version as float": raw(v=float(VERSION)),
    "version as bool": raw(v=True),
    # unknown kind
    "unknown kind": raw(k="shout"),
    "no kind": raw(k=None),
    "kind as list": raw(k=["send"]),
    "kind as object": raw(k={"send": 1}),
    # header fields
    "no node": raw(node=None),
    "empty node": raw(node=""),
    "node not a string": raw(node=7),
    "no run": raw(run=None),
    "empty run": raw(run=""),
    "run not a string": raw(run=1),
    "no seq": raw(seq=None),
    "negative seq": raw(seq=-1),
    "seq as string": raw(seq="1"),
    "seq as float": raw(seq=1.5),
    "seq as bool": raw(seq=True),
    # send
    "send without to": send(to=None),
    "send to nowhere": send(to="some"),
    "send to a list": send(to=["all"]),
    "send without message": send(text=None),
    "send with text and b64": send(b64="aGk="),
    "send text not a string": send(text=5),
    "send text as list": send(text=["hi"]),
    "send b64 not base64": send(text=None, b64="***"),
    "send b64 badly padded": send(text=None, b64="abc"),
    "send b64 not a string": send(text=None, b64=5),
    "send b64 non-ascii": send(text=None, b64="aGk=é"),
    "send one without target": send(to="one"),
    "send one to a list": send(to="one", target=["ann"]),
    "send group without target": send(to="group"),
    "send group to a number": send(to="group", target=1),
    "send many without target": send(to="many"),
    "send many to a string": send(to="many", target="ann"),
    "send many with a number": send(to="many", target=["ann", 1]),
    "send exclude a string": send(exclude="ann"),
    "send exclude with a number": send(exclude=["ann", 2]),
    # join / leave
    "join without id": raw(k="join", group="g"),
    "join without group": raw(k="join", id="ann"),
    "join empty group": raw(k="join", id="ann", group=""),
    "join id not a string": raw(k="join", id=1, group="g"),
    "leave without group": raw(k="leave", id="ann"),
    "leave group not a string": raw(k="leave", id="ann", group=["g"]),
    "leave empty id": raw(k="leave", id="", group="g"),
    # online / offline
    "online without id": raw(k="online"),
    "online empty id": raw(k="online", id=""),
    "offline id not a string": raw(k="offline", id=None, ident="ann"),
    "offline id as list": raw(k="offline", id=["ann"]),
    # kick
    "kick without id": raw(k="kick", code=1000),
    "kick without code": raw(k="kick", id="ann"),
    "kick code as string": raw(k="kick", id="ann", code="1000"),
    "kick code as bool": raw(k="kick", id="ann", code=True),
    "kick code as float": raw(k="kick", id="ann", code=1000.0),
    "kick code no close frame may carry": raw(k="kick", id="ann", code=99999),
    "kick code reserved for reporting": raw(k="kick", id="ann", code=1006),
    "kick reason longer than a close frame holds": raw(
        k="kick", id="ann", code=1000, reason="r" * 124
    ),
    "kick reason not a string": raw(k="kick", id="ann", code=1000, reason=3),
}


@pytest.mark.parametrize("data", list(REFUSED.values()), ids=list(REFUSED))
def test_decode_refuses(data: bytes | str) -> None:
    with pytest.raises(MalformedEnvelope):
        decode(NS, data)


def test_a_foreign_namespace_is_refused_even_when_otherwise_valid() -> None:
    data = encode("app-a", Envelope("online", "n1", "r1", 1, {"id": "ann"}))
    assert decode("app-a", data).kind == "online"
    with pytest.raises(MalformedEnvelope, match="namespace"):
        decode("app-b", data)


# -- properties ------------------------------------------------------------------------------

NAMES = st.text(min_size=1, max_size=12)
#: Identifiers and groups: what a client could register (printable, as ``check_name`` says).
CLIENT_NAMES = NAMES.filter(str.isprintable)
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
MESSAGES = st.text(max_size=40) | st.binary(max_size=40)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
EXTRAS = st.dictionaries(st.text(max_size=5).map(lambda k: "x-" + k), JSON, max_size=2)


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    kinds = ["send", "join", "leave", "online", "offline", "kick", "hello", "tally"]
    kind = draw(st.sampled_from(kinds))
    data: dict[str, Any]
    if kind == "send":
        to = draw(st.sampled_from(["all", "one", "many", "group"]))
        target: str | list[str] | None = None
        if to in ("one", "group"):
            target = draw(NAMES)
        elif to == "many":
            target = draw(st.lists(NAMES, max_size=4))
        data = send_data(to, target, draw(MESSAGES), draw(st.lists(NAMES, max_size=3)))
    elif kind in ("join", "leave"):
        data = {"id": draw(CLIENT_NAMES), "group": draw(CLIENT_NAMES)}
    elif kind in ("online", "offline"):
        data = {"id": draw(CLIENT_NAMES)}
    elif kind == "kick":
        sendable = st.integers(1000, 1003) | st.integers(1007, 1014) | st.integers(3000, 4999)
        data = {"id": draw(CLIENT_NAMES), "code": draw(sendable)}
        if draw(st.booleans()):
            data["reason"] = draw(st.text(max_size=20))
    else:
        data = {}
    data.update(draw(EXTRAS))
    return Envelope(kind, draw(NAMES), draw(NAMES), draw(st.integers(min_value=0)), data)


@given(namespace=NAMES, envelope=envelopes())
def test_any_valid_envelope_round_trips(namespace: str, envelope: Envelope) -> None:
    data = encode(namespace, envelope)
    decoded = decode(namespace, data)
    assert decoded == envelope
    assert encode(namespace, decoded) == data
    if envelope.kind == "send":
        assert decoded.message == envelope.message


@given(envelope=envelopes(), bad=SURROGATES, pick=st.integers())  # one: a pair would be valid
def test_a_lone_surrogate_in_any_string_is_refused(envelope: Envelope, bad: str, pick: int) -> None:
    body = json.loads(encode(NS, envelope))
    fields = [k for k in ("node", "run", "text", "target", "id", "group", "reason") if k in body]
    field = fields[pick % len(fields)]
    if isinstance(body[field], list):
        body[field] = [*body[field], bad]
    else:
        body[field] += bad
    with pytest.raises(MalformedEnvelope):
        decode(NS, json.dumps(body).encode())  # ASCII-escaped: valid JSON, valid UTF-8


def _decode_or_refuse(data: bytes | str) -> None:
    try:
        envelope = decode(NS, data)
    except MalformedEnvelope:
        return
    assert isinstance(envelope, Envelope)


@given(st.binary(max_size=200))
def test_random_bytes_raise_nothing_but_malformed_envelope(data: bytes) -> None:
    _decode_or_refuse(data)


@given(st.text(max_size=200))
def test_random_text_raises_nothing_but_malformed_envelope(data: str) -> None:
    _decode_or_refuse(data)


HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([VERSION]) | JSON,
        "ns": st.sampled_from([NS]) | JSON,
        "node": NAMES | JSON,
        "run": NAMES | JSON,
        "seq": st.integers() | JSON,
        "k": st.sampled_from(["send", "join", "leave", "online", "offline", "kick", "hello"])
        | JSON,
    },
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        name: JSON | NAMES | st.lists(NAMES, max_size=2)
        for name in ("to", "target", "exclude", "text", "b64", "id", "group", "code", "reason")
    },
)


@given(header=HEADERS, fields=FIELDS)
def test_any_json_object_decodes_or_is_refused(
    header: dict[str, Any], fields: dict[str, Any]
) -> None:
    # Near misses of a real envelope reach the per-kind checks, where random bytes rarely go.
    _decode_or_refuse(json.dumps(fields | header).encode())


@given(envelope=envelopes(), cut=st.integers(min_value=0))
def test_a_truncated_envelope_is_refused(envelope: Envelope, cut: int) -> None:
    data = encode(NS, envelope)
    with pytest.raises(MalformedEnvelope):
        decode(NS, data[: cut % len(data)])


def test_b64_is_standard_base64() -> None:
    data = send_data("all", None, b"\xfb\xff", [])
    assert data["b64"] == base64.b64encode(b"\xfb\xff").decode()
    assert "text" not in data
