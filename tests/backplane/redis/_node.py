"""One node of a fleet in its own OS process, driven over stdin/stdout (for the tests).

    python tests/backplane/redis/_node.py REDIS_URL NODE_ID [--backend asyncio|trio]
                                    [--heartbeat SECONDS] [--ttl SECONDS] [--namespace NS]

Serves WebSocket clients with the websockets library on 127.0.0.1 (a free port): each
connection to ``/ws?id=<identifier>`` is held in ``manager.session`` for as long as it is
open, with ``{"name": <identifier, capitalised>}`` as its presence metadata. The manager
has a ``RedisBackplane`` on ``REDIS_URL``.

Protocol, one JSON object per line. Out (stdout)::

    {"event": "ready", "url": "ws://127.0.0.1:<port>/ws", "node": "<id>"}
    {"event": "connected", "id": "<identifier>"}     a session began
    {"event": "ended", "id": "<identifier>"}         a session ended
    {"event": "presence", "kind": ..., "id": ..., "group": ..., "meta": ..., "node": ...}
                                                     a presence event (``on_presence``)
    {"reply": <n>, "ok": true, "result": ...}         or "ok": false, "error": "..."

In (stdin): ``{"n": <n>, "op": "<op>", ...arguments}``, one at a time. Ops: ``broadcast``
(message), ``send_to_one`` (identifier, message), ``send_to_many`` (identifiers, message),
``send_to_group`` (group, message), ``add_to_group`` / ``remove_from_group`` (identifier,
group), ``disconnect_identifier`` (identifier, code, reason), ``nodes_of`` (identifier),
``members`` (group), ``groups_of`` (identifier), ``online_count``, ``online``
(identifier), ``presence`` (group), ``stats``, ``quit``.
A fan-out answers ``{"local": <int>, "published": <bool>}``; sets come back as sorted lists.
End of input is ``quit``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for the harness

from adapters.harness_websockets import serve
from wsfleet import ConnectionManager, Delivery, PresenceEvent
from wsfleet.adapters.redis import RedisBackplane


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def call(manager: ConnectionManager, op: str, args: dict[str, Any]) -> Any:
    if op in ("broadcast", "send_to_one", "send_to_many", "send_to_group"):
        positional = {
            "broadcast": (),
            "send_to_one": ("identifier",),
            "send_to_many": ("identifiers",),
            "send_to_group": ("group",),
        }[op]
        result = await getattr(manager, op)(*(args[k] for k in positional), args["message"])
        assert isinstance(result, Delivery)
        return {"local": int(result), "published": result.published}
    if op == "add_to_group":
        return manager.add_to_group(args["identifier"], args["group"])
    if op == "remove_from_group":
        return manager.remove_from_group(args["identifier"], args["group"])
    if op == "disconnect_identifier":
        return await manager.disconnect_identifier(
            args["identifier"], args.get("code", 1000), args.get("reason", "")
        )
    if op == "nodes_of":
        return sorted(manager.nodes_of(args["identifier"]))
    if op == "members":
        return sorted(manager.get_group_members(args["group"]))
    if op == "groups_of":
        return sorted(manager.groups_of(args["identifier"]))
    if op == "online_count":
        return manager.online_count()
    if op == "online":
        return manager.online(args["identifier"])
    if op == "presence":
        return await manager.presence(args["group"])
    if op == "stats":
        return manager.stats().as_dict()
    raise ValueError(f"unknown op {op!r}")


async def commands(manager: ConnectionManager) -> None:
    """Answer the commands on stdin, one by one, until ``quit`` or the end of input."""
    while True:
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            return
        request = json.loads(line)
        op = request.pop("op")
        number = request.pop("n", None)
        if op == "quit":
            emit(reply=number, ok=True, result=None)
            return
        try:
            result = await call(manager, op, request)
        except Exception as exc:
            emit(reply=number, ok=False, error=f"{type(exc).__name__}: {exc}")
        else:
            emit(reply=number, ok=True, result=result)


async def main(options: argparse.Namespace) -> None:
    backplane = RedisBackplane(
        options.redis,
        namespace=options.namespace,
        node_id=options.node,
        heartbeat_interval=options.heartbeat,
        node_ttl=options.ttl,
    )
    async with ConnectionManager(backplane=backplane) as manager:

        @manager.on_presence
        def told(event: PresenceEvent) -> None:
            emit(
                event="presence",
                kind=event.kind,
                id=event.identifier,
                group=event.group,
                meta=event.meta,
                node=event.node,
            )

        async def handler(ws: Any, identifier: str) -> None:
            meta = {"name": identifier.capitalize()}
            async with manager.session(ws, identifier, meta=meta) as session:
                emit(event="connected", id=identifier)
                async for _ in session:
                    pass  # clients only listen
            emit(event="ended", id=identifier)

        async with serve(handler) as url:
            with anyio.fail_after(10):
                while manager.stats().backplane_state != "CONNECTED":
                    await anyio.sleep(0.01)
            emit(event="ready", url=url, node=options.node)
            await commands(manager)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("redis")
    parser.add_argument("node")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--heartbeat", type=float, default=0.2)
    parser.add_argument("--ttl", type=float, default=0.6)
    parser.add_argument("--namespace", default="wsfleet-test")
    arguments = parser.parse_args()
    anyio.run(main, arguments, backend=arguments.backend)
