#!/usr/bin/env python3
"""A session-era `mcp` Python SDK client with sampling and elicitation callbacks, for mcpmux.

Connects with the initialize handshake (mode legacy), declaring sampling and elicitation by
passing callbacks; lists the tools; calls `trigger-sampling-request` and
`trigger-elicitation-request` (server-everything registers them only for a client that declared
those capabilities); prints a one-line JSON summary and exits 0. Any failure prints the reason
to stderr and exits 1.

    sdk_callbacks.py URL --client-id ID [--marker TEXT] [--timeout SECS]

Summary: {"protocol_version", "tools": [names], "sampling": {"text": [...]},
"elicitation": {"text": [...]}, "asked": {"sampling": N, "elicitation": N}}. The callbacks answer
with `--marker` in their content, so the tool results prove which client answered.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def texts(result: Any) -> list[str]:
    return [c.text for c in result.content if getattr(c, "type", None) == "text"]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    asked = {"sampling": 0, "elicitation": 0}

    async def sampling(_context: Any, _params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked["sampling"] += 1
        content = types.TextContent(type="text", text=f"sampled by {args.marker}")
        return types.CreateMessageResult(role="assistant", content=content, model="mcpmux-test")

    async def elicitation(_context: Any, _params: types.ElicitRequestParams) -> types.ElicitResult:
        asked["elicitation"] += 1
        return types.ElicitResult(action="accept", content={"name": args.marker})

    with anyio.fail_after(args.timeout):
        async with create_mcp_http_client(headers={"X-Client-ID": args.client_id}) as http:
            transport = streamable_http_client(args.url, http_client=http)
            client = Client(
                transport,
                mode="legacy",
                sampling_callback=sampling,
                elicitation_callback=elicitation,
            )
            async with client:
                tools = await client.list_tools()
                sampled = await client.call_tool("trigger-sampling-request", {"prompt": "hello"})
                elicited = await client.call_tool("trigger-elicitation-request", {})
                return {
                    "protocol_version": client.protocol_version,
                    "tools": [t.name for t in tools.tools],
                    "sampling": {"is_error": bool(sampled.is_error), "text": texts(sampled)},
                    "elicitation": {"is_error": bool(elicited.is_error), "text": texts(elicited)},
                    "asked": asked,
                }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--client-id", required=True)
    p.add_argument("--marker", default="sdk-callbacks")
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    try:
        summary = anyio.run(run, args)
    except TimeoutError:
        print(f"sdk_callbacks: no complete exchange within {args.timeout} s", file=sys.stderr)
        return 1
    except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - report whatever the SDK raised
        print(f"sdk_callbacks: {type(e).__name__}: {e!r}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
