"""`memory serve`: the job scheduler and one ASGI app (uvicorn) on one port.

- `/health`, `/ready`, `/metrics` always (see `memory.api.app`);
- the Store API (`/store/...`, see `memory.api.store`) unless `jobs_only`;
- the scheduled jobs (`[schedule]`) unless `no_jobs`.

`--no-jobs` runs API replicas behind a load balancer, `--jobs-only` the one scheduler (any number
of schedulers is safe too: each tick runs once across replicas).

The server is uvicorn with its httptools protocol on uvloop (as `langgraph dev`; about a
quarter less server CPU per request than h11 on asyncio) plus a read timeout (`[api] read_timeout_s`: a
request must arrive within it, so half-open sockets cannot pile up), a bounded request head
(`[api] max_header_bytes`, 431) and body (`[api] max_body_bytes`, 413); see `memory.api.limits`. SIGTERM (or SIGINT) stops the
triggers, lets a running job finish its current batch (each batch is one transaction: committed
or rolled back, never half done), lets in-flight requests finish (up to
`[api] shutdown_timeout_s`), then closes the port.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn

from jobs.scheduler import JobScheduler, ScheduledJob, scheduled_jobs
from memory.api.app import create_app
from memory.api.limits import LimitedHttpToolsProtocol
from memory.errors import MemoryServiceError

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60.0


class ServeError(MemoryServiceError):
    """`memory serve` could not start."""


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port` (0 picks a free port), or `ServeError` in one line."""
    if not 0 <= port <= 65535:
        raise ServeError(f"cannot listen on port {port}: a port is 0-65535 (0 picks a free one)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = "; set [serve] port (MEMORY_SERVE_PORT) or pass --port" if exc.errno == errno.EADDRINUSE else ""
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint or '; check [serve] host'}") from exc
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Any, settings: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http=LimitedHttpToolsProtocol.with_limits(
            read_timeout_s=settings.api_read_timeout_s, max_header_bytes=settings.api_max_header_bytes
        ),
        loop="uvloop",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=settings.api_keep_alive_s,
        timeout_graceful_shutdown=int(settings.api_shutdown_timeout_s) or None,
    )


def serve(
    svc: Any,
    *,
    host: str,
    port: int,
    jobs: list[ScheduledJob] | None = None,
    on_ready: Callable[[str, list[ScheduledJob]], None] | None = None,
    stop: threading.Event | None = None,
    no_jobs: bool = False,
    jobs_only: bool = False,
) -> None:
    """Run the scheduler and the HTTP app until SIGTERM/SIGINT (or `stop` is set), then shut down cleanly.

    `on_ready(url, jobs)` is called once the port answers. Signals are handled only when called
    from the main thread.
    """
    if no_jobs and jobs_only:
        raise ServeError("--no-jobs and --jobs-only exclude each other: pass one (or neither for both)")
    configured = scheduled_jobs(svc.settings, svc.database_url) if jobs is None else jobs
    running = [] if no_jobs else configured
    scheduler = JobScheduler(svc.pool, running)
    app = create_app(svc, job_metrics=scheduler.metrics, job_names=[job.name for job in configured], api=not jobs_only)
    sock = listen(host, port)
    server = uvicorn.Server(uvicorn_config(app, svc.settings))
    http_thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="memory-serve-http", daemon=True)
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        http_thread.start()
        _wait_started(server, http_thread)
        scheduler.start()
        bound_host, bound_port = sock.getsockname()[:2]
        if on_ready is not None:
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            on_ready(f"http://{shown}:{bound_port}", running)
        while not stop.wait(0.5):
            if not http_thread.is_alive():
                raise ServeError("the HTTP server stopped unexpectedly; see the log above")
        logger.info("shutting down: waiting for running jobs to finish their current batch")
    finally:
        scheduler.shutdown()
        server.should_exit = True
        http_thread.join(timeout=svc.settings.api_shutdown_timeout_s + 10)
        sock.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    """Wait for uvicorn's startup (the lifespan opens the async service); fail if it gave up."""
    deadline = threading.Event()
    waited = 0.0
    while not server.started:
        if not thread.is_alive():
            raise ServeError("the HTTP server failed to start (the database? see the log above)")
        if waited > STARTUP_TIMEOUT_S:
            raise ServeError(f"the HTTP server did not start within {STARTUP_TIMEOUT_S:.0f}s")
        deadline.wait(0.05)
        waited += 0.05
