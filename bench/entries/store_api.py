"""The Store API under load: 32 concurrent `langgraph_sdk` clients doing put, get, search against
`memory serve` (PostgreSQL, API keys) and against the official in-memory Agent Server that
`langgraph dev` runs (`pip install -e '.[bench]'` installs it; the graph is bench/agent_server/).

Each client owns one namespace (its own tenant, with its own key on our side) and repeats
put -> get -> search(limit 10) on it. Both servers run as subprocesses on loopback; the sides
alternate, each after one warm-up round. Throughput: total seconds for the same operations
(ratio = theirs / ours = our ops/s over theirs). Latency: p99 of single operations (ours / theirs).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from bench.harness import Context, Entry, Measurement
from memory.apikeys import create_key

THROUGHPUT = Entry(
    "store_api_throughput",
    "32 concurrent langgraph_sdk clients: put, get, search (ops/s ratio ours / theirs)",
    "langgraph dev (in-memory Agent Server)",
    ">= 1.0",
)
P99 = Entry(
    "store_api_p99",
    "p99 latency of one put/get/search under 32 concurrent clients",
    "langgraph dev (in-memory Agent Server)",
    "<= 1.0",
    lower_is_better=True,
)
THROUGHPUT_UNCACHED = Entry(
    "store_api_throughput_no_key_cache",
    "as store_api_throughput, with [api] key_cache_s = 0 (every request looks its key up in the database)",
    "langgraph dev (in-memory Agent Server)",
    ">= 1.0",
)
ENTRIES = (THROUGHPUT, P99, THROUGHPUT_UNCACHED)
NO_KEY_CACHE = "0"

CLIENTS = 32
CONTENT = "the user prefers metric units, short answers and meetings on tuesdays; " * 3
AGENT_SERVER = Path(__file__).resolve().parent.parent / "agent_server"
REPO = Path(__file__).resolve().parent.parent.parent
STARTUP_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, child: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"server exited with {child.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not answer {url} within {STARTUP_TIMEOUT_S}s")


@contextmanager
def _process(args: list[str], cwd: Path, env: dict[str, str], probe: str) -> Iterator[None]:
    log = Path(tempfile.mkstemp(prefix="bench-server-", suffix=".log")[1])
    with log.open("w") as out:
        child = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(probe, child, log)
        yield
    finally:
        child.terminate()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.unlink(missing_ok=True)


def langgraph_cli() -> str | None:
    """The `langgraph` command: next to this interpreter (the `bench` extra), else on PATH."""
    beside = Path(sys.executable).parent / "langgraph"
    return str(beside) if beside.exists() else shutil.which("langgraph")


@contextmanager
def agent_server(cli: str) -> Iterator[str]:
    """`langgraph dev` (in-memory) on a free loopback port, run from a copy of bench/agent_server/."""
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-agent-server-"))
    try:
        for name in ("graph.py", "langgraph.json"):
            shutil.copy(AGENT_SERVER / name, workdir / name)
        env = {**os.environ, "LANGSMITH_TRACING": "false", "LANGCHAIN_TRACING_V2": "false", "LOG_LEVEL": "WARNING"}
        args = [cli, "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port)]
        with _process(args, workdir, env, f"http://127.0.0.1:{port}/ok"):
            yield f"http://127.0.0.1:{port}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def memory_server(database_url: str, key_cache_s: str | None = None) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "MEMORY_DATABASE_URL": database_url}
    if key_cache_s is not None:
        env["MEMORY_API_KEY_CACHE_S"] = key_cache_s
    args = [sys.executable, "-m", "memory", "serve", "--no-jobs", "--host", "127.0.0.1", "--port", str(port)]
    with _process(args, REPO, env, f"http://127.0.0.1:{port}/ready"):
        yield f"http://127.0.0.1:{port}"


async def _client_loop(url: str, api_key: str | None, tenant: str, rounds: int, tag: str, latencies: list[float]) -> None:
    from langgraph_sdk import get_client

    client = get_client(url=url, api_key=api_key)
    store = client.store
    namespace = [tenant, "memories"]
    try:
        for n in range(rounds):
            key = f"/{tag}/{n}.md"
            start = time.perf_counter()
            await store.put_item(namespace, key, {"content": CONTENT, "n": n})
            put_done = time.perf_counter()
            item = await store.get_item(namespace, key)
            get_done = time.perf_counter()
            found = await store.search_items([tenant], limit=10)
            search_done = time.perf_counter()
            if item is None or item["value"]["n"] != n or not found["items"]:
                raise AssertionError(f"{url}: lost {namespace} {key}")
            latencies += [put_done - start, get_done - put_done, search_done - get_done]
    finally:
        await client.aclose()


def workload(url: str, keys: list[str | None], tenants: list[str], rounds: int, tag: str) -> tuple[float, float, list[float]]:
    """Seconds for CLIENTS clients doing `rounds` rounds each, the client process's CPU seconds
    meanwhile, and every operation's latency."""
    latencies: list[float] = []

    async def run() -> None:
        await asyncio.gather(*(
            _client_loop(url, key, tenant, rounds, tag, latencies) for key, tenant in zip(keys, tenants, strict=True)
        ))

    start, cpu_start = time.perf_counter(), time.process_time()
    asyncio.run(run())
    return time.perf_counter() - start, time.process_time() - cpu_start, latencies


def p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98]


def run(ctx: Context, entries: list[Entry]) -> Iterator[Measurement]:
    cli = langgraph_cli()
    if cli is None:
        ctx.progress("store_api: skipped: `langgraph` not installed (pip install -e '.[bench]' for langgraph-cli[inmem])")
        return
    rounds = ctx.size(100, 10)
    tenants = [f"bench-{index:02d}" for index in range(CLIENTS)]
    seconds: dict[str, list[float]] = {"ours": [], "uncached": [], "theirs": []}
    p99s: dict[str, list[float]] = {"ours": [], "uncached": [], "theirs": []}
    client_cpu: dict[str, list[float]] = {"ours": [], "uncached": [], "theirs": []}
    with ctx.service("store_api") as svc:
        with psycopg.connect(svc.database_url, autocommit=True, row_factory=dict_row) as conn:
            keys: list[str | None] = [create_key(conn, tenant, name="bench")[1] for tenant in tenants]
        with (
            memory_server(svc.database_url) as ours_url,
            memory_server(svc.database_url, NO_KEY_CACHE) as uncached_url,
            agent_server(cli) as theirs_url,
        ):
            sides = [("ours", ours_url, keys), ("uncached", uncached_url, keys), ("theirs", theirs_url, [None] * CLIENTS)]
            ctx.progress(f"timing store_api: {CLIENTS} clients x {rounds} rounds of put/get/search per side ...")
            for _, url, side_keys in sides:
                workload(url, side_keys, tenants, max(2, rounds // 5), "warm")
            for rep in range(ctx.reps):
                for side, url, side_keys in sides[rep % 3 :] + sides[: rep % 3]:  # who goes first rotates
                    elapsed, cpu, latencies = workload(url, side_keys, tenants, rounds, f"r{rep}-{side}")
                    seconds[side].append(elapsed)
                    client_cpu[side].append(cpu)
                    p99s[side].append(p99(latencies))
    operations = CLIENTS * rounds * 3
    median = {side: statistics.median(values) for side, values in seconds.items()}
    median_p99 = {side: statistics.median(values) for side, values in p99s.items()}
    params = {
        "clients": CLIENTS,
        "operations": operations,
        "reps": ctx.reps,
        **{f"{side}_ops_per_s": round(operations / median[side], 1) for side in median},
        **{f"{side}_p99_ms": round(median_p99[side] * 1000, 2) for side in median_p99},
        **{f"{side}_seconds_per_rep": [round(value, 2) for value in values] for side, values in seconds.items()},
        # The one client process is the pace-setter: CPU per operation it spends, and the share of
        # the wall time it keeps a core busy (1.0 = never waiting on the server).
        **{
            f"{side}_client_cpu_ms_per_op": round(statistics.median(values) / operations * 1000, 3)
            for side, values in client_cpu.items()
        },
        **{
            f"{side}_client_busy": round(statistics.median(c / s for c, s in zip(client_cpu[side], seconds[side])), 2)
            for side in seconds
        },
        "ours": "memory serve --no-jobs (PostgreSQL, API keys, uvicorn httptools + uvloop), default key cache (LISTEN/NOTIFY)",
        "uncached": f"the same with [api] key_cache_s = {NO_KEY_CACHE}",
        "statistic": "median over reps of total seconds / of per-rep p99; the sides' order rotates",
    }
    if THROUGHPUT in entries:
        yield Measurement(THROUGHPUT, median["ours"], median["theirs"], params)
    if P99 in entries:
        yield Measurement(P99, median_p99["ours"], median_p99["theirs"], params)
    if THROUGHPUT_UNCACHED in entries:
        yield Measurement(THROUGHPUT_UNCACHED, median["uncached"], median["theirs"], params)
