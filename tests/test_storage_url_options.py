"""Storage URL options at their edges: each given once, numbers within their bounds, names
PostgreSQL shows as given. Refused at once with a ConfigurationError naming the option
(no connection is made: these need no server)."""

from __future__ import annotations

import pytest

import keyflow
from keyflow.shared.backend import SharedPostgreSQLBackend
from keyflow.storage_backends import open_backend

PG = "postgresql://kf:s3cret@127.0.0.1:1/db"


@pytest.mark.parametrize(
    ("url", "option"),
    [
        (f"{PG}?schema=a&schema=b", "schema"),
        (f"{PG}?lease=5&lease=9", "lease"),
        (f"{PG}?mode=ro&mode=shared", "mode"),
        (f"{PG}?mode=single&pool=2&pool=2", "pool"),  # even the same value
        (f"{PG}?application_name=a&application_name=b", "application_name"),
        (f"{PG}?sslmode=require&sslmode=disable", "sslmode"),
        ("postgresql+asyncpg://kf@h/db?schema=a&schema=", "schema"),
        ("sqlite:///runs.db?synchronous=full&synchronous=normal", "synchronous"),
        ("sqlite:///runs.db?mode=ro&mode=rw", "mode"),
        ("json:///runs.json?mode=ro&mode=ro", "mode"),
    ],
)
def test_an_option_given_twice_is_refused_by_name(url: str, option: str) -> None:
    with pytest.raises(keyflow.ConfigurationError, match=f"option '{option}' is given twice"):
        open_backend(url, retention=5)
    with pytest.raises(keyflow.ConfigurationError) as refused:
        keyflow.Keyflow(url)
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"{PG}?lease=0", "lease must be a number of seconds from 1 to 86400"),
        (f"{PG}?lease=-1", "lease must be"),
        (f"{PG}?lease=nan", "lease must be"),
        (f"{PG}?lease=inf", "lease must be"),
        (f"{PG}?lease=0.01", "lease must be"),  # renewals every 3 ms: any stall loses it
        (f"{PG}?lease=1e9", "lease must be"),
        (f"{PG}?lease=", "lease must be"),
        (f"{PG}?pool=0", "pool must be an integer from 1 to 1000"),
        (f"{PG}?pool=-3", "pool must be"),
        (f"{PG}?pool=10000", "pool must be"),
        (f"{PG}?pool=1.5", "pool must be"),
        (f"{PG}?pool=", "pool must be"),
        (f"{PG}?application_name=", "application_name must be 1 to 63 printable ASCII"),
        (f"{PG}?application_name={'a' * 64}", "application_name must be"),
        (f"{PG}?application_name={'a' * 1_000_000}", "application_name must be"),
        (f"{PG}?application_name=k%C3%A9yflow", "application_name must be"),  # shown as k??yflow
        (f"{PG}?application_name=kf%0Aworker", "application_name must be"),
        (f"{PG}?application_name=kf%00", "application_name must be"),
        (f"{PG}?schema=information_schema", "one of PostgreSQL's own"),  # tables went in it
        (f"{PG}?schema=pg_catalog&mode=ro", "one of PostgreSQL's own"),
        (f"{PG}?schema=pg_keyflow", "one of PostgreSQL's own"),  # reserved: CREATE fails
        (f"{PG}?schema={'s' * 100_000}", "schema must be a PostgreSQL name"),
        (f"{PG}?sslmode=on", "sslmode must be one of disable, allow, prefer, require"),
        (f"{PG}?sslmode=", "sslmode must be one of"),
        (f"{PG}?sslmode=REQUIRE&mode=single", "sslmode must be one of"),  # libpq's case
        ("sqlite:///runs.db?mode=", "mode must be 'rw' or 'ro'"),  # no longer dropped
        ("sqlite:///runs.db?synchronous=", "synchronous must be"),
        ("memory://?retention=5", "memory:// takes no path or options"),
        ("memory://runs", "memory:// takes no path or options"),
    ],
)
def test_odd_option_values_are_refused(url: str, message: str) -> None:
    with pytest.raises(keyflow.ConfigurationError, match=message) as refused:
        open_backend(url, retention=5)
    assert "s3cret" not in str(refused.value)
    assert len(str(refused.value)) < 400  # a huge value is not repeated whole


@pytest.mark.parametrize(
    ("query", "lease", "pool", "name"),
    [
        ("lease=1&pool=1", 1.0, 1, "keyflow"),
        ("lease=86400&pool=1000&application_name=web-1%20(eu)", 86_400.0, 1000, "web-1 (eu)"),
        ("lease=2.5&application_name=" + "a" * 63, 2.5, 10, "a" * 63),
    ],
)
def test_option_values_at_their_bounds_are_taken(
    query: str, lease: float, pool: int, name: str
) -> None:
    backend = open_backend(f"{PG}?{query}", retention=5)
    assert isinstance(backend, SharedPostgreSQLBackend)
    coordinator = backend.coordinator
    assert (coordinator.lease_seconds, coordinator.pool_size) == (lease, pool)
    assert backend.application_name == name


@pytest.mark.parametrize(
    "mode", ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
)
def test_every_sslmode_of_libpq_is_taken_for_every_connection(mode: str) -> None:
    shared = open_backend(f"{PG}?sslmode={mode}", retention=5)
    assert isinstance(shared, SharedPostgreSQLBackend)
    assert (shared.sslmode, shared.coordinator.sslmode) == (mode, mode)
    single = open_backend(f"{PG}?sslmode={mode}&mode=single", retention=5)
    assert getattr(single, "sslmode", None) == mode


@pytest.mark.parametrize("port", ["notaport", "99999", "0", "-1"])
def test_a_postgresql_port_that_is_no_port_is_refused_by_name(port: str) -> None:
    url = f"postgresql://postgres:secret@127.0.0.1:{port}/test"
    with pytest.raises(keyflow.ConfigurationError, match="port must be a number") as refused:
        keyflow.Keyflow(url)
    assert "secret" not in str(refused.value)
