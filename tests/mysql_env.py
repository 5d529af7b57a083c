"""Shared fixtures for the mysql_sync tests: throwaway MariaDB servers (line1, line2, cloud)
started once per test session on free loopback ports and stopped by PID at the end, a config
writer and runner bound to them, and the row generator. Registered in conftest.py."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mariadb_harness as mh  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SYNC_PATH = REPO_ROOT / "mysql_sync" / "sync.py"
SQL_DIR = REPO_ROOT / "mysql_sync" / "sql"
PW_ENV = "MYSQL_SYNC_TEST_PASSWORD"  # root on the throwaway servers has an empty password

SOURCE_DDL = mh.SOURCE_DDL
COPIED = ["PackCode", "parentcode", "CreatedDate", "product", "weight"]
PROTECTED = ["chuku", "jxs", "cky"]


def load_sync(name: str = "mysql_sync_sync"):
    spec = importlib.util.spec_from_file_location(name, SYNC_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


sync = load_sync()


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    try:
        mh.find_binaries()
    except RuntimeError as exc:
        pytest.fail(str(exc))  # CI has MariaDB: a missing binary is a failure, not a skip
    base = tmp_path_factory.mktemp("mariadb")
    started = mh.start_servers(base, ["line1", "line2", "cloud"])
    yield started
    for server in started.values():
        server.stop()


def override(lines: list[str], values: dict | None) -> list[str]:
    """Replace or add `key = value` lines (values are TOML text, e.g. '"+08:00"')."""
    for key, value in (values or {}).items():
        lines = [line for line in lines if not line.startswith(f"{key} =")]
        if value is not None:
            lines.append(f"{key} = {value}")
    return lines


class Env:
    """Config writer and runner bound to the session's servers."""

    def __init__(self, servers, tmp_path: Path):
        self.s = servers
        self.tmp = tmp_path
        self.job = dict(batch_rows=50, retries=1, retry_backoff_seconds=0.1, verify_chunk_rows=16)
        self.timeouts = dict(connect_timeout=2.0, read_timeout=3.0, write_timeout=3.0)
        self.lines = ["line1", "line2"]

    def config(self, target: dict | None = None, sources: dict | None = None, **job) -> Path:
        """The test config; `target` / `sources` override endpoint keys (TOML values)."""
        j = {**self.job, **job}
        lines = ["[target]", 'name = "cloud"', 'host = "127.0.0.1"',
                 f"port = {self.s['cloud'].port}", 'user = "root"', f'password_env = "{PW_ENV}"',
                 'database = "cloud"', 'time_zone = "+00:00"']  # fmt: skip
        lines += [f"{k} = {v}" for k, v in self.timeouts.items()]
        lines = override(lines, target)
        for name in self.lines:
            block = ["", "[[sources]]", f'name = "{name}"', 'host = "127.0.0.1"',
                     f"port = {self.s[name].port}", 'user = "root"',
                     f'password_env = "{PW_ENV}"', 'database = "factory"']  # fmt: skip
            block += [f"{k} = {v}" for k, v in self.timeouts.items()]
            lines += override(block, (sources or {}).get(name))
        lines += ["", "[[tables]]", 'source = "Table1"', 'target = "Table1"', 'key = "PackCode"',
                  'cursor = "CreatedDate"', 'protected = ["chuku", "jxs", "cky"]',
                  'exclude = ["id"]', 'source_column = "source_name"', "", "[job]"]  # fmt: skip
        lines += [f"{k} = {json.dumps(v)}" for k, v in j.items()]
        path = self.tmp / "sync.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def run(self, *flags: str, target=None, sources=None, **job) -> tuple[int, dict]:
        """Run sync.main in-process with --json; return (exit code, parsed report)."""
        out = io.StringIO()
        config = self.config(target, sources, **job)
        with contextlib.redirect_stdout(out):
            code = sync.main(["--config", str(config), "--json", *flags])
        text = out.getvalue()
        return code, (json.loads(text) if text.strip() else {})

    def add(self, server: str, rows: list[tuple]) -> None:
        cols = "PackCode, parentcode, CreatedDate, product, weight, chuku, jxs, cky"
        conn = self.s[server].connect("factory")
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO Table1 ({cols}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                [tuple(r) + (None,) * (8 - len(r)) for r in rows],
            )
        conn.close()

    def target_rows(self) -> dict[str, tuple]:
        rows = self.s["cloud"].sql(
            f"SELECT {', '.join(COPIED)}, source_name FROM Table1 ORDER BY PackCode",
            database="cloud",
        )
        return {r[0]: r for r in rows}

    def source_rows(self, server: str) -> list[tuple]:
        return self.s[server].sql(
            f"SELECT {', '.join(COPIED)} FROM Table1 ORDER BY CreatedDate, PackCode",
            database="factory",
        )

    def table_result(self, report: dict, source: str) -> dict:
        (src,) = [s for s in report["sources"] if s["source"] == source]
        assert src["status"] == "ok", src
        return src["tables"][0]


def drop_other_sessions(server, timeout: float = 10.0) -> None:
    """Each test starts with no client session left on the server: a session (and any
    GET_LOCK it holds) outlives its client's close() by a moment, and a killed job's session by
    its wait_timeout."""
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            deadline = time.monotonic() + timeout
            while True:
                cur.execute(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
                    "AND USER NOT IN ('system user', 'event_scheduler') AND COMMAND <> 'Daemon'"
                )
                ids = [r[0] for r in cur.fetchall()]
                if not ids or time.monotonic() > deadline:
                    return
                for i in ids:
                    try:
                        cur.execute(f"KILL {int(i)}")
                    except Exception:  # noqa: BLE001 - gone meanwhile
                        pass
                time.sleep(0.05)
    finally:
        conn.close()


def wait_lock_free(server, name: str, timeout: float = 10.0) -> None:
    """After a holder's close(): the server frees its locks a moment later."""
    deadline = time.monotonic() + timeout
    while server.sql("SELECT IS_FREE_LOCK(%s)", (name,))[0][0] != 1:
        assert time.monotonic() < deadline, f"lock {name} still held"
        time.sleep(0.05)


@pytest.fixture
def env(servers, tmp_path, monkeypatch):
    monkeypatch.setenv(PW_ENV, "")
    for name, server in servers.items():
        if server.proc.poll() is not None:  # a previous test failed before restarting it
            server.start()
            server.wait_ready()
        if server.frozen:
            server.thaw()
        drop_other_sessions(server)
        db = "cloud" if name == "cloud" else "factory"
        server.sql(f"DROP DATABASE IF EXISTS {db}")
        server.sql(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
        if name != "cloud":
            server.sql(SOURCE_DDL, database=db)
    e = Env(servers, tmp_path)
    yield e
    for server in servers.values():
        if server.frozen:
            server.thaw()


def rows(prefix: str, n: int, start: str = "2024-05-01 08:00:00", step_s: float = 1.0) -> list:
    t0 = datetime.fromisoformat(start)
    return [
        (f"{prefix}{i:05d}", f"P{prefix}{i // 10}",
         (t0 + timedelta(seconds=i * step_s)).strftime("%Y-%m-%d %H:%M:%S.%f"),
         f"产品-{prefix}-{i}", f"{i % 997}.125", "否")
        for i in range(n)
    ]  # fmt: skip


def line_sql(env, line: str, statement: str, args=None, mode: str | None = None) -> list:
    """A statement on a line server, optionally in the session sql_mode a line app runs with."""
    conn = env.s[line].connect("factory")
    try:
        with conn.cursor() as cur:
            if mode is not None:
                cur.execute(f"SET SESSION sql_mode = '{mode}'")
            cur.execute(statement, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def cloud(env, statement: str, args=None) -> list:
    return env.s["cloud"].sql(statement, args, database="cloud")


def source(rep: dict, name: str) -> dict:
    """One line's entry of a --json report."""
    (s,) = [s for s in rep["sources"] if s["source"] == name]
    return s
