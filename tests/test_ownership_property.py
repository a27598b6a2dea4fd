"""Property: no operation on one tenant (run, export + import, delete, prune) changes a row another owns.

Random near-sibling tenants share a few thread ids, so runs race for the same thread ids; every
operation may be refused, but a refusal or a success alike leaves the other tenants' rows (memory
items and owned threads: checkpoints, blobs, writes, owner rows) byte-identical.
"""

from __future__ import annotations

import uuid

import psycopg
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import run_agent
from conftest import TEMPLATE
from jobs.checkpoint_pruning import PrunePolicy, prune_checkpoints
from memory import MemoryService, tenants
from memory.db import connection
from memory.errors import MemoryServiceError
from memory.scripted import tool_call
from test_ownership import tenant_md5

SERVERS = ("pg18",)
"""Version-independent: the embedded server only (conftest.pytest_generate_tests)."""

TENANTS = ["acme", "acme-corp", "acme_corp", "acmeXcorp", "globex"]
THREADS = ["t1", "t2"]

operation = st.one_of(
    st.tuples(st.just("run"), st.sampled_from(TENANTS), st.sampled_from(THREADS)),
    st.tuples(st.just("export_import"), st.sampled_from(TENANTS), st.sampled_from(["merge", "replace"])),
    st.tuples(st.just("clone"), st.sampled_from(TENANTS), st.sampled_from(TENANTS)),
    st.tuples(st.just("delete"), st.sampled_from(TENANTS), st.none()),
    st.tuples(st.just("prune"), st.sampled_from(TENANTS), st.none()),
)


def apply(svc: MemoryService, op: tuple, bundle) -> None:
    kind, tenant, arg = op
    if kind == "run":
        run_agent(
            svc, tenant,
            tool_call("write_file", file_path=f"/memories/{arg}.md", content=f"{tenant} in {arg}\n"),
            tool_call("write_file", file_path=f"/{arg}.md", content=f"{tenant} state\n"),
            thread_id=arg,
        )
        return
    with connection(svc.pool) as conn:
        if kind == "export_import":
            tenants.export_tenant(conn, tenant, bundle)
            tenants.import_tenant(conn, bundle, mode=arg)
        elif kind == "clone":
            tenants.export_tenant(conn, tenant, bundle)
            tenants.import_tenant(conn, bundle, as_tenant=arg)
        elif kind == "delete":
            tenants.delete_tenant(conn, tenant)
        else:
            prune_checkpoints(conn, PrunePolicy(idle_days=0, keep_latest=1), tenant=tenant)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, min_size=3, max_size=7))
@example(ops=[("run", "acme", "t1"), ("run", "acme_corp", "t1"), ("run", "acme-corp", "t2")])
@example(ops=[("run", "acme", "t1"), ("run", "globex", "t2"), ("delete", "acme", None), ("prune", "acme-corp", None)])
@example(ops=[("run", "acme", "t1"), ("export_import", "acme", "replace"), ("run", "globex", "t2"), ("clone", "globex", "acme")])
def test_no_operation_on_one_tenant_changes_anothers_rows(embedded_server, tmp_path, ops):
    name = f"memory_test_{uuid.uuid4().hex[:12]}"
    url = embedded_server.create_database(name, template=TEMPLATE)
    try:
        with MemoryService.open(database_url=url, database_pool_max_size=4) as svc:
            for n, op in enumerate(ops):
                others = {t: tenant_md5(url, t) for t in TENANTS if t != op[1] and not (op[0] == "clone" and t == op[2])}
                try:
                    apply(svc, op, tmp_path / f"{n}.bundle")
                except (MemoryServiceError, psycopg.Error):
                    pass  # refused (another tenant's thread, an empty tenant, ...): still nothing of others changed
                after = {t: tenant_md5(url, t) for t in others}
                assert after == others, (op, ops)
    finally:
        embedded_server.drop_database(name)
