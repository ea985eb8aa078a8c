#!/usr/bin/env python3
"""Interop client for mcpmux, built on the official `mcp` Python SDK (pinned in requirements.txt).

Connects, runs the handshake (initialize, or server/discover in the modern era), tools/list and
one tools/call, then prints a one-line JSON summary to stdout and exits 0. Any failure (including
the overall deadline) prints the reason to stderr and exits 1, so a caller never hangs on it.

    sdk_client.py http URL --client-id ID [--mode legacy|auto|2026-07-28] [--tool echo]
                  [--arguments JSON] [--timeout SECS]
    sdk_client.py stdio [options] -- COMMAND [ARGS...]     # no mcpmux: talk to a child directly

Summary: {"mode", "protocol_version", "server_name", "tools": [names], "call": {"tool",
"is_error", "text": [text blocks]}}.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="transport", required=True)
    for name in ("http", "stdio"):
        s = sub.add_parser(name)
        s.add_argument("--mode", default="legacy", help="legacy (initialize), auto (probe, then fall back) or a modern version")
        s.add_argument("--tool", default="echo")
        s.add_argument("--arguments", default='{"message": "hello from the mcp python sdk"}', help="JSON object")
        s.add_argument("--timeout", type=float, default=60.0, help="deadline for the whole exchange, seconds")
        if name == "http":
            s.add_argument("url")
            s.add_argument("--client-id", required=True, help="value of the X-Client-ID header")
            s.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="extra request header")
        else:
            s.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = p.parse_args(argv)
    if args.transport == "stdio":
        if args.command and args.command[0] == "--":
            args.command = args.command[1:]
        if not args.command:
            p.error("stdio needs a command after --")
    return args


def summarise(client: Client, tools: Any, tool: str, result: Any, mode: str) -> dict[str, Any]:
    info = client.server_info
    return {
        "mode": mode,
        "protocol_version": client.protocol_version,
        "server_name": info.name if info is not None else None,
        "tools": [t.name for t in tools.tools],
        "call": {
            "tool": tool,
            "is_error": bool(result.is_error),
            "text": [c.text for c in result.content if getattr(c, "type", None) == "text"],
        },
    }


async def exchange(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    async with client:
        tools = await client.list_tools()
        result = await client.call_tool(args.tool, json.loads(args.arguments))
        return summarise(client, tools, args.tool, result, args.mode)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with anyio.fail_after(args.timeout):
        if args.transport == "stdio":
            params = StdioServerParameters(command=args.command[0], args=args.command[1:])
            return await exchange(Client(params, mode=args.mode), args)
        headers = {"X-Client-ID": args.client_id}
        for h in args.header:
            name, _, value = h.partition(":")
            headers[name.strip()] = value.strip()
        async with create_mcp_http_client(headers=headers) as http:
            transport = streamable_http_client(args.url, http_client=http)
            return await exchange(Client(transport, mode=args.mode), args)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        summary = anyio.run(run, args)
    except TimeoutError:
        print(f"sdk_client: no complete exchange within {args.timeout} s", file=sys.stderr)
        return 1
    except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - report whatever the SDK raised
        print(f"sdk_client: {type(e).__name__}: {e!r}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
