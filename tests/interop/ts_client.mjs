#!/usr/bin/env node
// Interop client for mcpmux on the official TypeScript SDK 2.x (@modelcontextprotocol/client,
// pinned in package.json): connects to URL with `X-Client-ID` in the 2026-07-28 era (MODE `auto`:
// server/discover first; `2026-07-28`: pinned), declares sampling (answered below), runs
// tools/list, tools/call of `echo` and one sampling round trip (`trigger-sampling-request`, whose
// sampling request reaches this client as an input_required round), prints a one-line JSON summary
// and exits 0. Any failure, or the deadline, prints the reason to stderr and exits 1.
//
//     ts_client.mjs URL CLIENT_ID MODE [TIMEOUT_SECS]

import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

export const SAMPLED_TEXT = "sampled through mcpmux by the TS SDK";

async function run(url, clientId, mode) {
  const client = new Client(
    { name: "mcpmux-interop-ts", version: "0.0.0" },
    {
      capabilities: { sampling: {} },
      versionNegotiation: { mode: mode === "auto" ? "auto" : { pin: mode } },
    },
  );
  const sampling = [];
  client.setRequestHandler("sampling/createMessage", async (request) => {
    sampling.push(request.params);
    return {
      model: "ts-interop",
      role: "assistant",
      content: { type: "text", text: SAMPLED_TEXT },
      stopReason: "endTurn",
    };
  });
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { "X-Client-ID": clientId } },
  });
  await client.connect(transport);
  try {
    const tools = await client.listTools();
    const echoed = await client.callTool({ name: "echo", arguments: { message: "hello from ts" } });
    const sampled = await client.callTool({
      name: "trigger-sampling-request",
      arguments: { prompt: "ts prompt", maxTokens: 20 },
    });
    const texts = (result) => (result.content ?? []).filter((c) => c.type === "text").map((c) => c.text);
    return {
      protocol_version: client.getNegotiatedProtocolVersion(),
      tools: tools.tools.map((t) => t.name),
      echo: texts(echoed),
      sampled: { is_error: sampled.isError ?? false, text: texts(sampled) },
      sampling_requests: sampling,
    };
  } finally {
    await client.close();
  }
}

const [url, clientId, mode, timeout] = process.argv.slice(2);
if (!url || !clientId || !mode) {
  console.error("usage: ts_client.mjs URL CLIENT_ID MODE [TIMEOUT_SECS]");
  process.exit(2);
}
const deadline = setTimeout(() => {
  console.error(`ts_client: no complete run within ${timeout ?? 50} s`);
  process.exit(1);
}, 1000 * Number(timeout ?? 50));
try {
  const summary = await run(url, clientId, mode);
  console.log(JSON.stringify(summary));
  clearTimeout(deadline);
  process.exit(0);
} catch (e) {
  console.error(`ts_client: ${e?.stack ?? e}`);
  process.exit(1);
}
