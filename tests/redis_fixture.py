"""The ``redis_server`` fixture: a fresh redis-server (tests/redis_server.py) per test.

Import it into a test module (``from tests.redis_fixture import redis_server  # noqa: F401``)
or into a conftest.py. Without redis-server the test is skipped with the reason, except under
CI=true, where a missing server is a broken setup and the test fails.
"""

from __future__ import annotations

import os

import pytest

from tests.redis_server import RedisServer, redis_server_binary


def require_redis_server() -> None:
    if redis_server_binary() is not None:
        return
    message = "redis-server is not installed (Debian package redis-server; `make test` installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}, and CI=true: Redis tests must run in CI", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def redis_server(tmp_path):
    require_redis_server()
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()
