"""The Store API under load: 32 concurrent `langgraph_sdk` clients doing put, get, search against
`memory serve` (PostgreSQL, API keys) and against the official in-memory Agent Server that
`langgraph dev` runs (`pip install -e '.[bench]'` installs it; the graph is bench/agent_server/).

Each client owns one namespace (its own tenant, with its own key on our side) and repeats
put -> get -> search(limit 10) on it. Both servers run as subprocesses on loopback; the sides
alternate, each after one warm-up round. Throughput: total seconds for the same operations
(ratio = theirs / ours = our ops/s over theirs). Latency: p99 of single operations (ours / theirs).

The 32 clients run in CLIENT_PROCESSES processes (16 asyncio clients each). In one process the
load generator itself is the bottleneck: `langgraph_sdk` spends ~2 ms of CPU per operation, so
that process keeps a core ~92% busy against either server and the figure measures the client,
not the server (both sides tie by construction). Split over two, the machine's cores are what the
sides compete for, and a server's CPU per operation decides. The one-process figures are still
measured in the same run and recorded in the entry's params, with each side's CPU per operation
(server process tree, PostgreSQL, clients).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.pool
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
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
from psycopg.rows import dict_row

from bench import sql as bench_sql
from bench.harness import Context, Entry, Measurement
from memory.apikeys import create_key

THROUGHPUT = Entry(
    "store_api_throughput",
    "32 concurrent langgraph_sdk clients in 2 processes: put, get, search (ops/s ratio ours / theirs)",
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
CLIENT_PROCESSES = 2
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


@dataclass(frozen=True)
class Server:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU seconds so far of the server process and its children."""
        return tree_cpu_seconds(psutil.Process(self.pid))


def tree_cpu_seconds(root: psutil.Process) -> float:
    """CPU seconds so far of `root` and its living descendants."""
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:  # gone meanwhile
            continue
        total += times.user + times.system
    return total


def postmaster(database_url: str) -> psutil.Process | None:
    """The PostgreSQL server process behind `database_url`, or None when it is not on this machine
    (or not readable) and its CPU cannot be counted."""
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            data_directory = conn.execute(bench_sql.BENCH_DATA_DIRECTORY).fetchone()[0]
        return psutil.Process(int(Path(data_directory, "postmaster.pid").read_text().split()[0]))
    except (psycopg.Error, OSError, ValueError, IndexError, psutil.Error):
        return None


def postgres_cpu_seconds(postgres: psutil.Process | None) -> float | None:
    """CPU seconds so far of the PostgreSQL server (postmaster and backends), None if not countable."""
    if postgres is None:
        return None
    try:
        return tree_cpu_seconds(postgres)
    except psutil.Error:
        return None


@contextmanager
def _process(args: list[str], cwd: Path, env: dict[str, str], probe: str) -> Iterator[int]:
    log = Path(tempfile.mkstemp(prefix="bench-server-", suffix=".log")[1])
    with log.open("w") as out:
        child = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(probe, child, log)
        yield child.pid
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
def agent_server(cli: str) -> Iterator[Server]:
    """`langgraph dev` (in-memory) on a free loopback port, run from a copy of bench/agent_server/."""
    port = _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-agent-server-"))
    try:
        for name in ("graph.py", "langgraph.json"):
            shutil.copy(AGENT_SERVER / name, workdir / name)
        env = {**os.environ, "LANGSMITH_TRACING": "false", "LANGCHAIN_TRACING_V2": "false", "LOG_LEVEL": "WARNING"}
        args = [cli, "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port)]
        with _process(args, workdir, env, f"http://127.0.0.1:{port}/ok") as pid:
            yield Server(f"http://127.0.0.1:{port}", pid)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def memory_server(database_url: str, key_cache_s: str | None = None) -> Iterator[Server]:
    port = _free_port()
    env = {**os.environ, "MEMORY_DATABASE_URL": database_url}
    if key_cache_s is not None:
        env["MEMORY_API_KEY_CACHE_S"] = key_cache_s
    args = [sys.executable, "-m", "memory", "serve", "--no-jobs", "--host", "127.0.0.1", "--port", str(port)]
    with _process(args, REPO, env, f"http://127.0.0.1:{port}/ready") as pid:
        yield Server(f"http://127.0.0.1:{port}", pid)


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


def clients(url: str, keys: list[str | None], tenants: list[str], rounds: int, tag: str) -> tuple[float, list[float]]:
    """One client per tenant in this process, `rounds` rounds each: this process's CPU seconds
    meanwhile and every operation's latency."""
    latencies: list[float] = []

    async def run() -> None:
        await asyncio.gather(*(
            _client_loop(url, key, tenant, rounds, tag, latencies) for key, tenant in zip(keys, tenants, strict=True)
        ))

    cpu_start = time.process_time()
    asyncio.run(run())
    return time.process_time() - cpu_start, latencies


@dataclass(frozen=True)
class Run:
    seconds: float
    client_processes: int
    client_cpu_s: float
    server_cpu_s: float
    postgres_cpu_s: float | None
    latencies: list[float]


def workload(
    server: Server,
    postgres: psutil.Process | None,
    keys: list[str | None],
    tenants: list[str],
    rounds: int,
    tag: str,
    pool: multiprocessing.pool.Pool | None,
) -> Run:
    """All clients doing `rounds` rounds each: in this process (`pool` None) or split evenly over
    the pool's CLIENT_PROCESSES processes; wall seconds and each party's CPU seconds."""
    server_start, postgres_start = server.cpu_seconds(), postgres_cpu_seconds(postgres)
    start = time.perf_counter()
    if pool is None:
        parts = [clients(server.url, keys, tenants, rounds, tag)]
    else:
        shares = [(server.url, keys[i::CLIENT_PROCESSES], tenants[i::CLIENT_PROCESSES], rounds, tag) for i in range(CLIENT_PROCESSES)]
        parts = pool.starmap(clients, shares)
    seconds = time.perf_counter() - start
    postgres_end = postgres_cpu_seconds(postgres)
    return Run(
        seconds=seconds,
        client_processes=len(parts),
        client_cpu_s=sum(cpu for cpu, _ in parts),
        server_cpu_s=server.cpu_seconds() - server_start,
        postgres_cpu_s=None if postgres_end is None or postgres_start is None else postgres_end - postgres_start,
        latencies=[latency for _, latencies in parts for latency in latencies],
    )


def p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98]


def summary(label: str, runs: list[Run], operations: int, seconds: float, p99_s: float) -> dict[str, object]:
    """A side's figures over its reps (`seconds` and `p99_s`: the medians), for the entry's params."""
    median = statistics.median

    def per_op_ms(values: list[float | None]) -> float | None:
        return None if None in values else round(median(values) / operations * 1000, 3)  # type: ignore[type-var]

    return {
        f"{label}_ops_per_s": round(operations / seconds, 1),
        f"{label}_p99_ms": round(p99_s * 1000, 2),
        f"{label}_seconds_per_rep": [round(run.seconds, 2) for run in runs],
        f"{label}_client_cpu_ms_per_op": per_op_ms([run.client_cpu_s for run in runs]),
        f"{label}_server_cpu_ms_per_op": per_op_ms([run.server_cpu_s for run in runs]),
        f"{label}_postgres_cpu_ms_per_op": per_op_ms([run.postgres_cpu_s for run in runs]),
        # share of the wall time the client processes kept their cores busy (1.0: never waiting)
        f"{label}_client_busy": round(median(run.client_cpu_s / (run.seconds * run.client_processes) for run in runs), 2),
    }


def run(ctx: Context, entries: list[Entry]) -> Iterator[Measurement]:
    cli = langgraph_cli()
    if cli is None:
        ctx.progress("store_api: skipped: `langgraph` not installed (pip install -e '.[bench]' for langgraph-cli[inmem])")
        return
    rounds = ctx.size(100, 10)
    tenants = [f"bench-{index:02d}" for index in range(CLIENTS)]
    runs: dict[str, list[Run]] = {label: [] for label in ("ours", "uncached", "theirs", "ours_one_process", "theirs_one_process")}
    with (
        ctx.service("store_api") as svc,
        multiprocessing.get_context("spawn").Pool(CLIENT_PROCESSES) as pool,
    ):
        postgres = postmaster(svc.database_url)
        with psycopg.connect(svc.database_url, autocommit=True, row_factory=dict_row) as conn:
            keys: list[str | None] = [create_key(conn, tenant, name="bench")[1] for tenant in tenants]
        no_keys: list[str | None] = [None] * CLIENTS
        with (
            memory_server(svc.database_url) as ours,
            memory_server(svc.database_url, NO_KEY_CACHE) as uncached,
            agent_server(cli) as theirs,
        ):
            sides = [
                ("ours", ours, keys, pool),
                ("uncached", uncached, keys, pool),
                ("theirs", theirs, no_keys, pool),
                ("ours_one_process", ours, keys, None),
                ("theirs_one_process", theirs, no_keys, None),
            ]
            ctx.progress(
                f"timing store_api: {CLIENTS} clients x {rounds} rounds of put/get/search per side, "
                f"in {CLIENT_PROCESSES} processes and in one ..."
            )
            for label, server, side_keys, side_pool in sides:
                workload(server, postgres, side_keys, tenants, max(2, rounds // 5), "warm", side_pool)
            for rep in range(ctx.reps):
                turn = rep % len(sides)  # who goes first rotates
                for label, server, side_keys, side_pool in sides[turn:] + sides[:turn]:
                    runs[label].append(workload(server, postgres, side_keys, tenants, rounds, f"r{rep}-{label}", side_pool))
    operations = CLIENTS * rounds * 3
    params: dict[str, object] = {
        "clients": CLIENTS,
        "client_processes": CLIENT_PROCESSES,
        "operations": operations,
        "reps": ctx.reps,
    }
    seconds = {label: statistics.median(run.seconds for run in label_runs) for label, label_runs in runs.items()}
    p99s = {label: statistics.median(p99(run.latencies) for run in label_runs) for label, label_runs in runs.items()}
    for label, label_runs in runs.items():
        params.update(summary(label, label_runs, operations, seconds[label], p99s[label]))
    params.update({
        "ours": "memory serve --no-jobs (PostgreSQL, API keys, uvicorn httptools + uvloop), default key cache (LISTEN/NOTIFY)",
        "uncached": f"the same with [api] key_cache_s = {NO_KEY_CACHE}",
        "one_process": "the same 32 clients in one process (client-bound: see client_busy); no target",
        "statistic": "median over reps of total seconds / of per-rep p99; the sides' order rotates",
    })
    if THROUGHPUT in entries:
        yield Measurement(THROUGHPUT, seconds["ours"], seconds["theirs"], params)
    if P99 in entries:
        yield Measurement(P99, p99s["ours"], p99s["theirs"], params)
    if THROUGHPUT_UNCACHED in entries:
        yield Measurement(THROUGHPUT_UNCACHED, seconds["uncached"], seconds["theirs"], params)
