#!/usr/bin/env python3
"""Feature-by-feature interop client for mcpmux, on the official `mcp` Python SDK (requirements.txt).

Connects to URL in session mode (initialize) with `X-Client-ID`, declaring sampling and elicitation
(answered by the callbacks below), runs one scenario, prints a one-line JSON summary to stdout and
exits 0. Any failure, including the overall deadline and every wait inside a scenario, prints the
reason to stderr and exits 1, so a caller never hangs on it.

    fidelity_client.py URL --client-id ID --scenario NAME [--mode MODE] [--timeout SECS]

MODE is the SDK's connect mode: `legacy` (initialize, the default here), `auto` (the SDK's own
default: server/discover, then 2026-07-28 for the whole connection) or `2026-07-28`.

Scenarios (server-everything as the child unless noted):
  progress     (every mode) tools/list, then trigger-long-running-operation with a progress callback;
               summary `events`: ["progress", p, total] ... then ["result", text], in arrival order.
  sampling     trigger-sampling-request; the sampling callback answers SAMPLED_TEXT.
  elicitation  trigger-elicitation-request; the elicitation callback accepts ELICITED_CONTENT.
  resources    resources/list, resources/read, resources/subscribe, then toggle-subscriber-updates
               and wait for notifications/resources/updated of that URI.
  prompts      prompts/list, prompts/get of args-prompt.
  completion   completion/complete for a prompt argument (with context) and a template argument.
  logging      logging/setLevel debug, toggle-simulated-logging, wait for notifications/message.
  request-logs (2026-07-28 modes, with --log-level) toggle-simulated-logging, then a 6 s
               trigger-long-running-operation: logs arrive only on those calls' replies.
  listen-resource (2026-07-28 modes) client.listen(resource_subscriptions=[SUBSCRIBED_URI]),
               then toggle-subscriber-updates; summary `honored` and the first `event`.
  listen-tools (fake child, 2026-07-28 modes) client.listen(tools_list_changed=True), then its
               `notify` tool; summary `honored` and the first `event`.
  ping         ping the child.
  answer-ping  (fake child) call its `ask` tool with method ping: the child pings this client.
  cancel       (every mode; at 2026-07-28 the SDK aborts the POST) start
               trigger-long-running-operation, cancel it after its first progress, then
               call echo: summary `completed` says whether the cancelled call returned anyway.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

import anyio
import mcp.types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPDeprecationWarning

SAMPLED_TEXT = "sampled through mcpmux"
ELICITED_CONTENT = {"name": "Ada Lovelace", "check": True}
LONG_OPERATION = {"duration": 2, "steps": 4}
# Long enough that the cancelled call could never finish within the client's deadline.
CANCELLED_OPERATION = {"duration": 600, "steps": 600}
TEXT_TEMPLATE = "demo://resource/dynamic/text/{resourceId}"
SUBSCRIBED_URI = "demo://resource/dynamic/text/1"
# Bound for each wait on something the child sends by itself (a log message, a resource update):
# server-everything sends one at once and then one every 5 s, so this spans at least two.
NOTIFICATION_WAIT = 20.0

# Deprecated-in-2026 APIs (ping, logging, subscriptions) are what a session-era caller uses.
warnings.simplefilter("ignore", MCPDeprecationWarning)


class Recorder:
    """What the callbacks saw, and events a scenario can wait on."""

    def __init__(self) -> None:
        self.sampling: list[dict[str, Any]] = []
        self.elicitation: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self.updates: list[str] = []
        self.log_arrived = anyio.Event()
        self.update_arrived = anyio.Event()

    async def on_sampling(self, _ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.sampling.append(params.model_dump(mode="json", by_alias=True, exclude_none=True))
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=SAMPLED_TEXT),
            model="fidelity-model",
            stop_reason="endTurn",
        )

    async def on_elicitation(self, _ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicitation.append(params.model_dump(mode="json", by_alias=True, exclude_none=True))
        return types.ElicitResult(action="accept", content=ELICITED_CONTENT)

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(params.model_dump(mode="json", by_alias=True, exclude_none=True))
        self.log_arrived.set()

    async def on_message(self, message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            self.updates.append(str(message.params.uri))
            self.update_arrived.set()


def texts(result: types.CallToolResult) -> list[str]:
    return [c.text for c in result.content if getattr(c, "type", None) == "text"]


def tool_outcome(result: types.CallToolResult) -> dict[str, Any]:
    return {"is_error": bool(result.is_error), "text": texts(result)}


async def wait_for(event: anyio.Event, seconds: float, what: str) -> None:
    with anyio.move_on_after(seconds) as scope:
        await event.wait()
    if scope.cancelled_caught:
        raise TimeoutError(f"{what} did not arrive within {seconds} s")


async def scenario_progress(client: Client, _rec: Recorder) -> dict[str, Any]:
    tools = await client.list_tools()
    events: list[list[Any]] = []

    async def on_progress(progress: float, total: float | None, _message: str | None) -> None:
        events.append(["progress", progress, total])

    result = await client.call_tool("trigger-long-running-operation", LONG_OPERATION, progress_callback=on_progress)
    events.append(["result", texts(result)])
    return {"tools": sorted(t.name for t in tools.tools), "events": events, "is_error": bool(result.is_error)}


async def scenario_sampling(client: Client, rec: Recorder) -> dict[str, Any]:
    result = await client.call_tool("trigger-sampling-request", {"prompt": "fidelity prompt", "maxTokens": 20})
    return {"call": tool_outcome(result), "sampling_requests": rec.sampling}


async def scenario_elicitation(client: Client, rec: Recorder) -> dict[str, Any]:
    result = await client.call_tool("trigger-elicitation-request", {})
    return {"call": tool_outcome(result), "elicitation_requests": rec.elicitation}


async def scenario_resources(client: Client, rec: Recorder) -> dict[str, Any]:
    listed = await client.list_resources()
    templates = await client.list_resource_templates()
    read = await client.read_resource(SUBSCRIBED_URI)
    await client.subscribe_resource(SUBSCRIBED_URI)
    toggled = await client.call_tool("toggle-subscriber-updates", {})
    await wait_for(rec.update_arrived, NOTIFICATION_WAIT, f"notifications/resources/updated for {SUBSCRIBED_URI}")
    return {
        "resources": [str(r.uri) for r in listed.resources],
        "templates": [t.uri_template for t in templates.resource_templates],
        "read": [c.text for c in read.contents if isinstance(c, types.TextResourceContents)],
        "toggle": tool_outcome(toggled),
        "updates": rec.updates,
    }


async def scenario_prompts(client: Client, _rec: Recorder) -> dict[str, Any]:
    listed = await client.list_prompts()
    got = await client.get_prompt("args-prompt", {"city": "Lisbon", "state": "Lisboa"})
    return {
        "prompts": sorted(p.name for p in listed.prompts),
        "messages": [m.content.text for m in got.messages if getattr(m.content, "type", None) == "text"],
    }


async def scenario_completion(client: Client, _rec: Recorder) -> dict[str, Any]:
    prompt = types.PromptReference(type="ref/prompt", name="completable-prompt")
    department = await client.complete(prompt, {"name": "department", "value": "Eng"})
    member = await client.complete(prompt, {"name": "name", "value": ""}, context_arguments={"department": "Sales"})
    template = types.ResourceTemplateReference(type="ref/resource", uri=TEXT_TEMPLATE)
    resource_id = await client.complete(template, {"name": "resourceId", "value": "7"})
    return {
        "department": department.completion.values,
        "member": member.completion.values,
        "resource_id": resource_id.completion.values,
    }


async def scenario_logging(client: Client, rec: Recorder) -> dict[str, Any]:
    await client.set_logging_level("debug")
    toggled = await client.call_tool("toggle-simulated-logging", {})
    await wait_for(rec.log_arrived, NOTIFICATION_WAIT, "a notifications/message")
    return {"toggle": tool_outcome(toggled), "logs": rec.logs}


async def scenario_request_logs(client: Client, rec: Recorder) -> dict[str, Any]:
    toggled = await client.call_tool("toggle-simulated-logging", {})
    # The child logs once at once, then every 5 s: this call spans at least one tick.
    await client.call_tool("trigger-long-running-operation", {"duration": 6, "steps": 2})
    await wait_for(rec.log_arrived, NOTIFICATION_WAIT, "a notifications/message on a call's reply")
    return {"toggle": tool_outcome(toggled), "logs": rec.logs}


def event_summary(event: Any) -> dict[str, Any]:
    return {"type": type(event).__name__, **({"uri": event.uri} if hasattr(event, "uri") else {})}


async def scenario_listen_resource(client: Client, _rec: Recorder) -> dict[str, Any]:
    async with client.listen(resource_subscriptions=[SUBSCRIBED_URI]) as sub:
        honored = sub.honored.model_dump(mode="json", by_alias=True, exclude_none=True)
        toggled = await client.call_tool("toggle-subscriber-updates", {})
        with anyio.fail_after(NOTIFICATION_WAIT):
            event = await sub.__anext__()
    return {"honored": honored, "toggle": tool_outcome(toggled), "event": event_summary(event)}


async def scenario_listen_tools(client: Client, _rec: Recorder) -> dict[str, Any]:
    async with client.listen(tools_list_changed=True) as sub:
        honored = sub.honored.model_dump(mode="json", by_alias=True, exclude_none=True)
        await client.call_tool("notify", {"marker": "listen"})
        with anyio.fail_after(NOTIFICATION_WAIT):
            event = await sub.__anext__()
    return {"honored": honored, "event": event_summary(event)}


async def scenario_ping(client: Client, _rec: Recorder) -> dict[str, Any]:
    result = await client.send_ping()
    return {"ping": result.model_dump(mode="json", by_alias=True, exclude_none=True)}


async def scenario_answer_ping(client: Client, _rec: Recorder) -> dict[str, Any]:
    result = await client.call_tool("ask", {"method": "ping"})
    dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    return {"call": tool_outcome(result), "answer": dumped.get("answer"), "asked_id": dumped.get("asked_id")}


async def scenario_cancel(client: Client, _rec: Recorder) -> dict[str, Any]:
    progressed = anyio.Event()
    outcome: dict[str, Any] = {"completed": False, "progress": []}

    async def on_progress(progress: float, total: float | None, _message: str | None) -> None:
        outcome["progress"].append([progress, total])
        progressed.set()

    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()

        async def run() -> None:
            with scope:
                await client.call_tool("trigger-long-running-operation", CANCELLED_OPERATION, progress_callback=on_progress)
                outcome["completed"] = True

        tg.start_soon(run)
        await wait_for(progressed, 20.0, "the first progress notification of the long operation")
        scope.cancel()
    after = await client.call_tool("echo", {"message": "after cancel"})
    outcome["after"] = tool_outcome(after)
    return outcome


SCENARIOS = {
    "progress": scenario_progress,
    "sampling": scenario_sampling,
    "elicitation": scenario_elicitation,
    "resources": scenario_resources,
    "prompts": scenario_prompts,
    "completion": scenario_completion,
    "logging": scenario_logging,
    "request-logs": scenario_request_logs,
    "listen-resource": scenario_listen_resource,
    "listen-tools": scenario_listen_tools,
    "ping": scenario_ping,
    "answer-ping": scenario_answer_ping,
    "cancel": scenario_cancel,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--client-id", required=True, help="value of the X-Client-ID header")
    p.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    p.add_argument("--mode", default="legacy", help="Client mode: legacy, auto or a modern version")
    p.add_argument("--log-level", default=None, help="the Client's log_level (2026-07-28 opt-in to logs)")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline for the whole run, seconds")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rec = Recorder()
    with anyio.fail_after(args.timeout):
        async with create_mcp_http_client(headers={"X-Client-ID": args.client_id}) as http:
            transport = streamable_http_client(args.url, http_client=http)
            client = Client(
                transport,
                mode=args.mode,
                log_level=args.log_level,
                sampling_callback=rec.on_sampling,
                elicitation_callback=rec.on_elicitation,
                logging_callback=rec.on_log,
                message_handler=rec.on_message,
            )
            async with client:
                summary = await SCENARIOS[args.scenario](client, rec)
                summary["protocol_version"] = client.protocol_version
                return summary


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        summary = anyio.run(run, args)
    except TimeoutError as e:
        print(f"fidelity_client: {args.scenario}: {e or f'no complete run within {args.timeout} s'}", file=sys.stderr)
        return 1
    except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - report whatever the SDK raised
        print(f"fidelity_client: {args.scenario}: {type(e).__name__}: {e!r}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
