"""Property: whatever tenants and paths, a tenant's read/ls/glob/grep return only its own files.

Tenant ids come from the allowed alphabet with near-siblings (shared prefixes, `-` against `_`,
the LIKE wildcard); paths nest, use unicode and LIKE/glob/regex metacharacters.
"""

from __future__ import annotations

import string
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langgraph.store.base import PutOp

from memory import MemoryService, bind_tenant

SERVERS = ("pg18",)
"""Version-independent: the embedded server only (conftest.pytest_generate_tests)."""

TENANT_ALPHABET = string.ascii_letters + string.digits + "-_@+:~"
METACHARACTERS = list("%_[]*?\\.^$()|{}+- ~")

label = st.text(alphabet=TENANT_ALPHABET, min_size=1, max_size=10)


@st.composite
def tenant_ids(draw) -> list[str]:
    """2-4 distinct tenant ids, most of them near-siblings of one base id."""
    base = draw(label)
    suffix = draw(label)
    siblings = [
        base,
        f"{base}-{suffix}",
        f"{base}_{suffix}",
        f"{base}{suffix}",
        base.replace("-", "_"),
        base.replace("_", "-"),
        base[:-1] or f"{base}~",
        base.upper(),
    ]
    siblings = list(dict.fromkeys(siblings))
    return draw(st.lists(st.sampled_from(siblings) | label, min_size=2, max_size=4, unique=True))


segment = st.text(
    alphabet=st.sampled_from(METACHARACTERS) | st.characters(categories=("L", "N", "So")),
    min_size=1,
    max_size=8,
).filter(lambda s: s not in (".", ".."))
paths = st.lists(segment, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))


@st.composite
def layouts(draw) -> dict[str, list[str]]:
    """Tenant -> the paths it writes, drawn from one shared pool so tenants collide on paths."""
    tenants = draw(tenant_ids())
    pool = draw(st.lists(paths, min_size=1, max_size=5, unique=True))
    return {t: draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True)) for t in tenants}


def marker(tenant: str) -> str:
    """Content only `tenant` writes; `<` and `>` are outside the tenant alphabet, so no marker contains another."""
    return f"<<owner={tenant}>>"


def hidden(path: str) -> bool:
    """A bare glob pattern matches basenames, and `*` skips dot-names."""
    return path.rsplit("/", 1)[-1].startswith(".")


def directories(path: str) -> set[str]:
    """`/a/b/c.md` -> {"/", "/a/", "/a/b/"}."""
    parts = path.strip("/").split("/")[:-1]
    return {"/"} | {"/" + "/".join(parts[: i + 1]) + "/" for i in range(len(parts))}


@pytest.fixture(scope="module")
def property_service(embedded_server) -> Iterator[MemoryService]:
    name = f"memory_test_prop_{uuid.uuid4().hex[:12]}"
    url = embedded_server.create_database(name)
    try:
        with MemoryService.open(database_url=url, database_pool_max_size=4) as svc:
            svc.setup()
            yield svc
    finally:
        embedded_server.drop_database(name)


def clear_store(svc: MemoryService) -> None:
    items = svc.store.search((), limit=10_000)
    if items:
        svc.store.batch([PutOp(tuple(item.namespace), item.key, None) for item in items])


@settings(max_examples=40, deadline=None)
@given(layout=layouts())
def test_no_tenant_sees_another_tenants_files(property_service, layout):
    svc = property_service
    backend = svc.memory_backend()
    clear_store(svc)
    for tenant, files in layout.items():
        with bind_tenant(tenant):
            for path in files:
                assert backend.write(path, f"{marker(tenant)} {path}\n").error is None

    every_path = {p for files in layout.values() for p in files}
    every_dir = set().union(*(directories(p) for p in every_path))
    for tenant, files in layout.items():
        own_files = set(files)
        own_entries = own_files | set().union(*(directories(p) for p in files))
        with bind_tenant(tenant):
            for directory in sorted(every_dir):
                for entry in backend.ls(directory).entries or []:
                    assert entry["path"] in own_entries, (tenant, directory, entry)

            everything = {m["path"] for m in backend.glob("**").matches}
            assert everything == {p for p in own_files if not hidden(p)}
            for path in every_path:
                for match in backend.glob(path).matches or []:
                    assert match["path"] in own_files, (tenant, path, match)

            for other in layout:
                found = backend.grep(marker(other)).matches or []
                if other == tenant:
                    assert {m["path"] for m in found} == own_files
                else:
                    assert found == [], (tenant, other, found)
            for match in backend.grep("<<owner=").matches or []:
                assert match["path"] in own_files and marker(tenant) in match["text"]

            for path in every_path:
                result = backend.read(path)
                if path in own_files:
                    assert result.file_data["content"] == f"{marker(tenant)} {path}\n"
                else:
                    assert result.file_data is None and "not found" in result.error
