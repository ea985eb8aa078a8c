#!/usr/bin/env python3
"""Item 5 probe: does a Python SDK 2.3 Client survive its node's death while a call is in
flight, when that call's reply was (a) plain JSON, headers not yet sent, or (b) SSE with
headers sent at once (the child sends progress, so mcpmux answers as SSE)?

Two mcpmux nodes with a shared key file behind HAProxy (deploy/haproxy/haproxy.cfg). For each
mode, every tenant on the victim node starts a 4 s `slow` call, the victim is SIGKILLed once
those calls are in flight at it, and the script records what the in-flight call raised and
whether the SAME Client then answers an `echo` call.

    inflight_death.py BIN_DIR RECIPE      # BIN_DIR holds mcpmux and mcp-echo

A measurement probe run by hand (figures in deploy/README.md), not part of `cargo test`; it
starts and kills its own nodes and HAProxy.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import anyio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

KEY = "7c1f0e9a3b5d2c4e6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4"
TENANTS = [f"t{i}" for i in range(24)]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(pred, within=20.0, what=""):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out: {what}")


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode()


class Node:
    def __init__(self, bin_dir, clients, key, ports=None):
        self.tport, self.aport = ports or (free_port(), free_port())
        self.proc = subprocess.Popen(
            [f"{bin_dir}/mcpmux", "serve", "--listen", f"127.0.0.1:{self.tport}", "--admin-listen",
             f"127.0.0.1:{self.aport}", "--clients", clients, "--allow-open-tenants",
             "--session-key-file", key,
             # What this probe compares is a reply that is still JSON when the node dies
             # against one already SSE: keep mcpmux's own switch (--sse-after) out of the way.
             "--sse-after", "60"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: get(f"http://127.0.0.1:{self.aport}/readyz")[0] == 200, what="node ready")

    def status(self):
        return json.loads(get(f"http://127.0.0.1:{self.aport}/status")[1])

    def tenants_with(self, field):
        return {t["client_id"] for t in self.status()["tenants"] if (t.get(field) or 0) > 0}


def haproxy_state(sock):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(b"show stat\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    out = {}
    for line in lines[1:]:
        f = line.split(",")
        if len(f) > 17 and f[0] == "mcpmux":
            out[f[header.index("svname")]] = f[header.index("status")]
    return out


async def probe(url, victim, tenants, progress):
    results = {t: {} for t in tenants}
    killed = anyio.Event()
    progressed = set()

    async def one(t):
        r = results[t]
        try:
            http = create_mcp_http_client(headers={"X-Client-ID": t})
            async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as c:
                await c.call_tool("echo", {"message": "warm"})
                kwargs = {}
                if progress:
                    async def cb(p, total, msg):
                        progressed.add(t)
                    kwargs["progress_callback"] = cb
                try:
                    res = await c.call_tool("slow", {"ms": 4000, "steps": 40}, **kwargs)
                    r["in_flight_call"] = f"result {[x.text for x in res.content]}"
                except Exception as e:  # noqa: BLE001
                    r["in_flight_call"] = f"raised {type(e).__name__}: {str(e)[:100]}"
                await killed.wait()
                try:
                    with anyio.fail_after(20):
                        res = await c.call_tool("echo", {"message": "after"})
                    r["same_client_after"] = "works" if [x.text for x in res.content] == ["after"] else "odd"
                except Exception as e:  # noqa: BLE001
                    r["same_client_after"] = f"raised {type(e).__name__}: {str(e)[:100]}"
        except BaseException as e:  # noqa: BLE001
            leaf = e
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            r.setdefault("same_client_after", f"client dropped: {type(leaf).__name__}: {str(leaf)[:100]}")

    async with anyio.create_task_group() as tg:
        for t in tenants:
            tg.start_soon(one, t)
        await anyio.to_thread.run_sync(lambda: wait_until(
            lambda: set(tenants) <= victim.tenants_with("inflight"), what="calls in flight"))
        if progress:  # headers are out once the first progress reached the client
            with anyio.fail_after(20):
                while len(progressed) < len(tenants):
                    await anyio.sleep(0.05)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        killed.set()
    return results


def main():
    bin_dir, recipe = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp()
    clients = os.path.join(tmp, "clients")
    os.mkdir(clients)
    for t in TENANTS:
        with open(os.path.join(clients, f"{t}.json"), "w") as f:
            f.write('{"command": "mcp-echo"}')
    key = os.path.join(tmp, "key")
    with open(key, "w") as f:
        f.write(KEY + "\n")
    os.chmod(key, 0o600)
    nodes = [Node(bin_dir, clients, key), Node(bin_dir, clients, key)]
    sock = os.path.join(tmp, "h.sock")
    hport = free_port()
    cfg = open(recipe).read()
    cfg = cfg.replace("bind 0.0.0.0:8080", f"bind 127.0.0.1:{hport}")
    cfg = cfg.replace("stats socket /run/haproxy/mcpmux.sock", f"stats socket {sock}")
    cfg = cfg.replace("maxconn 20000", "maxconn 1000").replace("log stdout format raw local0 info", "")
    for i, n in enumerate(nodes):
        cfg = cfg.replace(f"10.0.0.1{i+1}:8080 check addr 10.0.0.1{i+1}", f"127.0.0.1:{n.tport} check addr 127.0.0.1 port {n.aport}")
    cfg = "\n".join(l for l in cfg.splitlines() if "10.0.0.13" not in l) + "\n"
    with open(os.path.join(tmp, "h.cfg"), "w") as f:
        f.write(cfg)
    hp = subprocess.Popen(["/usr/sbin/haproxy", "-db", "-f", os.path.join(tmp, "h.cfg")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{hport}/mcp"
    try:
        wait_until(lambda: all(v == "UP" for v in haproxy_state(sock).values()), what="haproxy up")
        report = {}
        for mode, progress in (("json_headers_not_sent", False), ("sse_headers_sent", True)):
            # Which tenants live on node 0: warm every tenant once through HAProxy.
            async def warm():
                for t in TENANTS:
                    http = create_mcp_http_client(headers={"X-Client-ID": t})
                    async with http:
                        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as c:
                            await c.call_tool("echo", {"message": "w"})
            anyio.run(warm)
            victim = nodes[0]
            on_victim = sorted(victim.tenants_with("pid"))
            report[mode] = anyio.run(probe, url, victim, on_victim, progress)
            ports = (victim.tport, victim.aport)
            wait_until(lambda: haproxy_state(sock).get("node1") == "DOWN", what="node1 down")
            nodes[0] = Node(bin_dir, clients, key, ports)
            wait_until(lambda: haproxy_state(sock).get("node1") == "UP", what="node1 up")
        print(json.dumps(report, indent=1, sort_keys=True))
    finally:
        hp.kill()
        for n in nodes:
            n.proc.kill()
            n.proc.wait()


if __name__ == "__main__":
    main()
