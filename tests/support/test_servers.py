"""The throwaway servers really start, answer queries and go away."""

from __future__ import annotations

import psycopg
import redis
from sqlalchemy.engine import make_url

from tests.support.servers import postgres_server, redis_server


def test_postgres_server_serves_queries_and_stops() -> None:
    with postgres_server("probe") as url:
        parsed = make_url(url)
        conninfo = f"host={parsed.host} port={parsed.port} user={parsed.username} dbname={parsed.database}"
        with psycopg.connect(conninfo) as conn:
            assert conn.execute("select current_database()").fetchone() == ("probe",)
    try:
        psycopg.connect(conninfo, connect_timeout=2)
    except psycopg.OperationalError:
        pass
    else:
        raise AssertionError("postgres still accepts connections after the context exited")


def test_redis_server_serves_commands() -> None:
    with redis_server() as url:
        client = redis.Redis.from_url(url)
        client.set("k", "v")
        assert client.get("k") == b"v"
