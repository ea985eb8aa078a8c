#!/usr/bin/env python3
"""Scale-out driver for mcpmux: one long-lived `mcp` SDK `Client` (legacy mode) per tenant,
commanded over stdin, reporting over stdout, one JSON object per line each way.

    scaleout_client.py URL --tenants a,b,c [--timeout SECS]

Starts one `Client` per tenant (header `X-Client-ID: <tenant>`), prints `{"event": "ready"}`,
then serves commands:

- `{"op": "call", "n": N}`: every tenant makes N `echo` calls in turn (tenants concurrently);
- `{"op": "load", "secs": S}`: every tenant calls `echo` back to back for S seconds; prints
  `{"event": "loading"}` as it starts;
- `{"op": "slow", "tenants": [a, b], "ms": MS}`: each named tenant starts one `slow` call of
  MS ms (no progress token, so the child sends nothing until it answers) and leaves it in
  flight; prints `{"event": "streaming", "content_types": {tenant: type}}` once every one
  of them has the response headers of its call;
- `{"op": "slow_done"}`: waits for those calls to end and prints `{"event": "slow_done",
  "outcome": {tenant: text}}` (`ok: <result>` or `raised <exception>: <message>`);
- `{"op": "quit"}`: closes every client (DELETE), prints the report, exits 0.

Each `call`/`load` prints `{"event": "done", "ok": {tenant: n}, "errors": {tenant: [text]},
"sessions": {tenant: id}, "initialize": {tenant: n}, "session_ids_seen": {tenant: [ids]}}`:
`initialize` counts the initialize requests the SDK actually sent over HTTP, and
`session_ids_seen` every distinct Mcp-Session-Id it sent, so a test can prove that a client
kept its session and never re-initialized. A client whose call fails is kept and tried again
on the next command (the SDK may or may not have dropped it: the next call tells).
Every command is bounded by --timeout; start-up by the SDK's HTTP timeouts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

import anyio
import anyio.abc
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


class Tenant:
    def __init__(self, name: str) -> None:
        self.name = name
        self.client: Client | None = None
        self.initialize = 0
        self.session_ids: list[str] = []
        self.ok = 0
        self.errors: list[str] = []
        # The Content-Type of the response to the slow call in flight, once its headers came.
        self.slow_headers: str | None = None
        self.slow_outcome: str | None = None

    async def on_response(self, response: Any) -> None:
        with contextlib.suppress(Exception):
            body = json.loads(response.request.content)
            if body.get("method") == "tools/call" and body["params"]["name"] == "slow":
                self.slow_headers = response.headers.get("content-type", "")

    async def slow(self, ms: int) -> None:
        assert self.client is not None
        try:
            result = await self.client.call_tool("slow", {"ms": ms})
            texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
            self.slow_outcome = f"ok: {texts!r}"
        except Exception as e:  # noqa: BLE001 - report whatever the SDK raised
            self.slow_outcome = f"raised {type(e).__name__}: {e}"

    async def on_request(self, request: Any) -> None:
        sid = request.headers.get("mcp-session-id")
        if sid and sid not in self.session_ids:
            self.session_ids.append(sid)
        if request.method == "POST":
            with contextlib.suppress(Exception):
                if json.loads(request.content).get("method") == "initialize":
                    self.initialize += 1

    async def call(self, seq: int) -> None:
        assert self.client is not None
        message = f"{self.name}-{seq}"
        try:
            result = await self.client.call_tool("echo", {"message": message})
            texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
            if result.is_error or texts != [message]:
                self.errors.append(f"call {seq}: unexpected result {texts!r} is_error={result.is_error}")
            else:
                self.ok += 1
        except Exception as e:  # noqa: BLE001 - report whatever the SDK raised
            self.errors.append(f"call {seq}: {type(e).__name__}: {e}")

    def report_reset(self) -> tuple[int, list[str]]:
        ok, errors = self.ok, self.errors
        self.ok, self.errors = 0, []
        return ok, errors


def emit(event: dict[str, Any]) -> None:
    print(json.dumps(event, sort_keys=True), flush=True)


def report(tenants: list[Tenant]) -> dict[str, Any]:
    out: dict[str, Any] = {"event": "done", "ok": {}, "errors": {}, "initialize": {}, "session_ids_seen": {}}
    for t in tenants:
        ok, errors = t.report_reset()
        out["ok"][t.name] = ok
        out["errors"][t.name] = errors
        out["initialize"][t.name] = t.initialize
        out["session_ids_seen"][t.name] = list(t.session_ids)
    return out


async def run_call(tenants: list[Tenant], n: int) -> None:
    async def one(t: Tenant) -> None:
        for seq in range(n):
            await t.call(seq)

    async with anyio.create_task_group() as tg:
        for t in tenants:
            tg.start_soon(one, t)


async def run_load(tenants: list[Tenant], secs: float) -> None:
    until = time.monotonic() + secs

    async def one(t: Tenant) -> None:
        seq = 0
        while time.monotonic() < until:
            await t.call(seq)
            seq += 1

    emit({"event": "loading"})
    async with anyio.create_task_group() as tg:
        for t in tenants:
            tg.start_soon(one, t)


async def start_slow(tg: anyio.abc.TaskGroup, tenants: list[Tenant], names: list[str], ms: int) -> None:
    slow = [t for t in tenants if t.name in names]
    for t in slow:
        t.slow_headers, t.slow_outcome = None, None
        tg.start_soon(t.slow, ms)
    while any(t.slow_headers is None and t.slow_outcome is None for t in slow):
        await anyio.sleep(0.02)  # polls the hooks' record, bounded by the command's deadline
    emit({"event": "streaming", "content_types": {t.name: t.slow_headers for t in slow}})


async def slow_done(tenants: list[Tenant]) -> None:
    while any(t.slow_headers is not None and t.slow_outcome is None for t in tenants):
        await anyio.sleep(0.05)  # polls the calls' outcome, bounded by the command's deadline
    outcome = {t.name: t.slow_outcome for t in tenants if t.slow_outcome is not None}
    emit({"event": "slow_done", "outcome": outcome})


async def main_async(args: argparse.Namespace) -> int:
    tenants = [Tenant(name) for name in args.tenants.split(",") if name]
    stdin = anyio.wrap_file(sys.stdin)
    async with contextlib.AsyncExitStack() as stack:
        # Not under fail_after: these contexts outlive any scope opened here. The SDK's own
        # HTTP timeouts bound the handshakes, the test's timeout the whole process.
        for t in tenants:
            http = create_mcp_http_client(headers={"X-Client-ID": t.name})
            http.event_hooks = {"request": [t.on_request], "response": [t.on_response]}
            await stack.enter_async_context(http)
            transport = streamable_http_client(args.url, http_client=http)
            t.client = await stack.enter_async_context(Client(transport, mode="legacy"))
        emit({"event": "ready"})
        # Slow calls outlive the command that starts them; quit comes after their end.
        tg = await stack.enter_async_context(anyio.create_task_group())
        async for line in stdin:
            command = json.loads(line)
            op = command.get("op")
            if op == "quit":
                break
            with anyio.fail_after(args.timeout):
                if op == "call":
                    await run_call(tenants, int(command["n"]))
                elif op == "load":
                    await run_load(tenants, float(command["secs"]))
                elif op == "slow":
                    await start_slow(tg, tenants, list(command["tenants"]), int(command["ms"]))
                    continue
                elif op == "slow_done":
                    await slow_done(tenants)
                    continue
                else:
                    emit({"event": "error", "message": f"unknown op {op!r}"})
                    continue
            emit(report(tenants))
    emit({"event": "closed"})
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--tenants", required=True, help="comma-separated client ids")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline for start-up and for each command, seconds")
    args = p.parse_args(argv)
    try:
        return anyio.run(main_async, args)
    except TimeoutError:
        print(f"scaleout_client: a command did not finish within {args.timeout} s", file=sys.stderr)
        return 1
    except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - report whatever the SDK raised
        print(f"scaleout_client: {type(e).__name__}: {e!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
