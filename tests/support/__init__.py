"""What the tests share, so that no test module imports another one or a conftest.

- `settings`: the test credentials and the settings each process runs with in a test.
- `names`: names no other test uses (topics, groups, email addresses).
- `postgres`: the PostgreSQL server the harness started, and database URLs on it.
- `postmark`: the project's Postmark sandbox as tests use it.
- `waiting`: waiting for an outcome against a deadline, never a bare sleep.
- `processes`: Postroom processes started as a user starts them (`python -m <process>`).
- `relay`: a relay in the test's own event loop.
- `stack`: the write-to-email path in process (api, relay, notifier) around the real broker.
- `kafka`: Kafka records as the relay publishes them: reading them back, building one.
- `catalog`: checking the outbox against the published event schemas.
- `tcp_proxy`: a TCP proxy a test cuts and restores, to play an unreachable broker.
- `dev`: `postroom dev` (what `make dev` runs) started in a folder of its own.
- `metrics`: the series each process exports, for checking rules and dashboards against.

The fixtures that start the shared servers stay in `tests/conftest.py`.
"""
