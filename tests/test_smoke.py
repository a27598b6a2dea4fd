def test_store_roundtrip(service):
    service.store.put(("acme", "memories"), "/a.md", {"content": "x", "encoding": "utf-8"})
    assert service.store.get(("acme", "memories"), "/a.md").value["content"] == "x"
