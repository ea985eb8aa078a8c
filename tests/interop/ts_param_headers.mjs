#!/usr/bin/env node
// Interop client for mcpmux's Mcp-Param-* checks on the TypeScript SDK 2.x
// (@modelcontextprotocol/client, pinned in package.json): connects to URL with `X-Client-ID`
// pinned to 2026-07-28, lists the tools (the SDK reads their x-mcp-header declarations and drops
// invalid ones), calls `route` (its mirrored headers are the SDK's), prints a one-line JSON
// summary and exits 0. Any failure, or the deadline, prints the reason to stderr and exits 1.
//
//     ts_param_headers.mjs URL CLIENT_ID [TIMEOUT_SECS]

import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";

async function run(url, clientId) {
  const client = new Client(
    { name: "mcpmux-interop-ts-headers", version: "0.0.0" },
    { versionNegotiation: { mode: { pin: "2026-07-28" } } },
  );
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { "X-Client-ID": clientId } },
  });
  await client.connect(transport);
  try {
    const tools = await client.listTools();
    const args = { region: "Hello, 世界", opts: { limit: 42, dry: false }, query: "q" };
    const routed = await client.callTool({ name: "route", arguments: args });
    return {
      tools: tools.tools.map((t) => t.name),
      routed: { is_error: routed.isError ?? false, content: routed.content, arguments: routed.arguments },
    };
  } finally {
    await client.close();
  }
}

const [url, clientId, timeout] = process.argv.slice(2);
if (!url || !clientId) {
  console.error("usage: ts_param_headers.mjs URL CLIENT_ID [TIMEOUT_SECS]");
  process.exit(2);
}
const deadline = setTimeout(() => {
  console.error(`ts_param_headers: no complete run within ${timeout ?? 50} s`);
  process.exit(1);
}, 1000 * Number(timeout ?? 50));
try {
  const summary = await run(url, clientId);
  console.log(JSON.stringify(summary));
  clearTimeout(deadline);
  process.exit(0);
} catch (e) {
  console.error(`ts_param_headers: ${e?.stack ?? e}`);
  process.exit(1);
}
