"""The HTTP side of `memory serve`: one ASGI app with /health, /ready, /metrics and the Store API.

- `app.create_app`: the Starlette app (routes, lifespan opening the async service, limits).
- `store`: the Store API, byte-compatible with `langgraph_sdk`'s `client.store`.
- `auth`: credentials -> `Principal` (API keys from `memory keys`, or JWTs).
- `limits`: request read timeout (uvicorn protocol) and body size limit (ASGI middleware).
- `metrics`: Prometheus collectors for the jobs and the API.
"""
