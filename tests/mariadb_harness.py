"""Throwaway MariaDB servers for the mysql_sync tests and benchmark.

Each server gets its own data directory (a copy of one template made once by
mariadb-install-db), socket, pid file and a free loopback port; it is stopped by PID. Nothing
here touches the system server on 127.0.0.1:3306.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pymysql

BINARIES = ("mariadbd", "mariadb-install-db", "mariadb", "mariadb-dump")


def find_binaries() -> dict[str, str]:
    """Path of each MariaDB binary; a clear error (not a skip) when one is missing."""
    found = {}
    for name in BINARIES:
        path = shutil.which(name) or (
            f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
        )
        if path is None:
            raise RuntimeError(
                f"MariaDB binary `{name}` not found on PATH: install MariaDB 10.11 "
                "(Debian: apt-get install mariadb-server mariadb-client) to run the mysql_sync tests"
            )
        found[name] = path
    return found


def make_template(path: Path) -> Path:
    """A freshly initialised data directory to copy for each server (install-db runs once)."""
    bins = find_binaries()
    cmd = [bins["mariadb-install-db"], "--no-defaults", f"--datadir={path}",
           "--auth-root-authentication-method=normal", "--skip-test-db"]  # fmt: skip
    if os.geteuid() == 0:
        cmd.append("--user=root")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"mariadb-install-db failed:\n{proc.stdout}\n{proc.stderr}")
    return path


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on now (and not handed to another server of ours)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


class MariaDBServer:
    """One mariadbd on 127.0.0.1:<free port>; root has no password (loopback only)."""

    def __init__(self, name: str, base: Path, template: Path, extra_args: list[str] | None = None):
        self.name = name
        self.dir = base / name
        self.datadir = self.dir / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(template, self.datadir)
        self.port = free_port()
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.frozen = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        bins = find_binaries()
        cmd = [
            bins["mariadbd"], "--no-defaults", f"--datadir={self.datadir}",
            f"--socket={self.dir / 'mysqld.sock'}", f"--pid-file={self.dir / 'mysqld.pid'}",
            f"--log-error={self.dir / 'error.log'}", f"--port={self.port}",
            "--bind-address=127.0.0.1", "--skip-name-resolve", "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci", "--innodb-buffer-pool-size=64M",
            "--performance-schema=OFF", "--innodb-flush-log-at-trx-commit=2",
            "--max-connections=50", "--skip-log-bin",
            *self.extra_args,
        ]  # fmt: skip
        if os.geteuid() == 0:
            cmd.append("--user=root")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.frozen = False

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: mariadbd exited early:\n{self.error_log()}")
            try:
                self.connect(database=None).close()
                return
            except pymysql.err.MySQLError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name}: not ready after {timeout}s:\n{self.error_log()}")

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def connect(self, database: str | None = None, **kwargs) -> pymysql.Connection:
        options = dict(
            host="127.0.0.1", port=self.port, user="root", password="", database=database,
            charset="utf8mb4", autocommit=True, connect_timeout=5,
        )  # fmt: skip
        options.update(kwargs)
        return pymysql.connect(**options)

    def sql(self, statement: str, args=None, database: str | None = None) -> list[tuple]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.frozen = False

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM by PID (after SIGCONT if frozen), SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.frozen:
            self.thaw()
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)

    def restart(self) -> None:
        self.stop()
        self.start()
        self.wait_ready()


def start_servers(
    base: Path, names: list[str], extra_args: list[str] | None = None
) -> dict[str, MariaDBServer]:
    """Make the template once, start all servers in parallel, wait for each; stop them all on any
    failure so nothing is left running."""
    template = make_template(base / "template")
    servers = {name: MariaDBServer(name, base, template, extra_args) for name in names}
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            for attempt in range(5):
                try:
                    server.wait_ready()
                    break
                except RuntimeError:
                    # Another process (a parallel test worker) took the free port between our
                    # check and the server's bind: take another port and start again.
                    if attempt == 4 or "already in use" not in server.error_log():
                        raise
                    server.stop()
                    (server.dir / "error.log").unlink(missing_ok=True)
                    server.port = free_port()
                    server.start()
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    for server in servers.values():
        atexit.register(server.stop)  # safety net if the caller never reaches its own stop()
    return servers


# The line table the tests and benchmarks/bench_mysql_sync.py fill: the operators' Table1
# with the outbound columns the cloud owns (chuku, jxs, cky).
SOURCE_DDL = """
CREATE TABLE Table1 (
  id INT AUTO_INCREMENT PRIMARY KEY,
  PackCode VARCHAR(64) NULL,
  parentcode VARCHAR(64) NULL,
  CreatedDate DATETIME(6) NULL,
  product VARCHAR(200) NULL,
  weight DECIMAL(10,3) NULL,
  chuku VARCHAR(16) NULL,
  jxs VARCHAR(64) NULL,
  cky VARCHAR(64) NULL,
  KEY ix_created (CreatedDate, PackCode)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""
