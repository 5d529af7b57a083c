"""Copy new rows from several local MySQL/MariaDB servers (one per production line) into one
cloud database keyed on PackCode: never duplicates, never loses a row, never overwrites the
columns the cloud side edits (chuku, jxs, cky). Meant to run from cron every few minutes.

How it works, per (source, table), each run (sources in parallel, max_parallel_lines at once):

- Keyset copy on (cursor, key): rows with `cursor <= NOW(6)` taken from the SOURCE's clock at the
  start of the run, read in (cursor, key) order through short keyset-paged queries (each holds
  the table's metadata lock only for itself). First the lookback pass re-reads the rows from
  (watermark - lookback, default 10 minutes) up to the watermark, to pick up rows committed
  late; then the forward pass copies the rows after it (at most max_rows_per_run). Only a usable
  date becomes the watermark: rows with a zero or zero-in-date cursor are rejects.
- The source server renders every row as an SQL literal tuple (`QUOTE()`, `HEX()` for binary
  columns, integers for BIT, exact doubles for FLOAT, WKB for spatial types), so values travel
  as exact text (DATETIME(6), DECIMAL, 4-byte UTF-8; TIMESTAMPs in UTC) and the job only
  joins them into multi-row `INSERT ... ON DUPLICATE KEY UPDATE key = key` statements: an
  existing row is never changed, protected columns are never named.
- Each batch and the watermark that covers it are committed in ONE target transaction, so a crash
  at any point loses nothing and duplicates nothing; the watermark only moves forward.
- A PackCode that is already in the target with different content (another line, or a duplicate
  within a line) is recorded in `sync_conflicts`; rows that cannot be stored (NULL or empty key,
  NULL cursor, values the target refuses in strict mode) go to `sync_rejects` as JSON with the
  error. The first writer wins; nothing is dropped silently.
- One run at a time per source: `GET_LOCK` on the target (and `flock -n` in cron); the job's
  cloud sessions carry a short wait_timeout, so a run that dies half-open frees its lock within
  minutes, and a lock held by a session silent for lock_stale_seconds is reported STUCK. A
  source that is down or frozen hits connect/read/write timeouts, is retried with backoff on
  transient errors, then fails for this run while the other sources still sync.

Commands (full guide: mysql_sync/README.md):

    python mysql_sync/sync.py --config /etc/mysql_sync/sync.toml --init-target   # once
    python mysql_sync/sync.py --config /etc/mysql_sync/sync.toml                 # from cron
    python mysql_sync/sync.py --config sync.toml --dry-run      # what would be copied; no writes
    python mysql_sync/sync.py --config sync.toml --verify       # compare source and target
    python mysql_sync/sync.py --config sync.toml --source line1 --json

Exit codes: 0 every source synced (or nothing new, or a live run holds the lock and this one
stepped aside; with --verify: no unexplained difference); 1 at least one source failed or is
stuck (with --verify: rows missing or different); 2 configuration or usage error. No message
ever contains a password.

Writes: rows into the target tables and the bookkeeping tables `sync_state`, `sync_conflicts`,
`sync_rejects` (DDL in mysql_sync/sql/003_bookkeeping.sql); one summary line per source and
table on stdout (or one JSON document with --json); diagnostics on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import re
import socket
import ssl
import stat
import sys
import threading
import time
import tomllib
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from configparser import ConfigParser
from configparser import Error as ConfigParserError
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pymysql
import pymysql.constants
import pymysql.converters
import pymysql.cursors

EXIT_OK, EXIT_SOURCE_FAILED, EXIT_USAGE = 0, 1, 2
# Keys a dry run remembers to spot repeats within a line (about 100 bytes each): a first-copy
# dry run stays flat in memory; a repeat further apart than this counts as an insert.
DRY_RUN_KEYS = 100_000
SQL_DIR = Path(__file__).resolve().parent / "sql"
BOOKKEEPING_SQL = SQL_DIR / "003_bookkeeping.sql"

# Errors worth a retry: the connection dropped or could not be made, or InnoDB gave up on a lock.
TRANSIENT_ERRNOS = {1040, 1053, 1205, 1213, 1927, 2002, 2003, 2006, 2013, 2055, 4031}
# Errors that belong to one row's values (strict mode): the row goes to sync_rejects.
ROW_DATA_ERRNOS = {
    1048,  # column cannot be null
    1101,  # BLOB/TEXT can't have a default
    1264,  # out of range
    1265,  # data truncated
    1292,  # incorrect datetime/double value
    1366,  # incorrect string / integer value (bad UTF-8, non-numeric text)
    1367,  # illegal value
    1406,  # data too long
    1411,  # incorrect value for function
    1452,  # foreign key
    3140,  # invalid JSON (MySQL)
    3819,  # CHECK constraint (MySQL)
    4025,  # CHECK constraint (MariaDB, JSON columns included)
}
TEMPORAL_TYPES = {"datetime", "timestamp", "date"}
EXACT_NUMBER_TYPES = {"tinyint", "smallint", "mediumint", "int", "bigint", "decimal"}
BINARY_TYPES = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
SPATIAL_TYPES = {"geometry", "point", "linestring", "polygon", "multipoint",
                 "multilinestring", "multipolygon", "geometrycollection"}  # fmt: skip
# Names and zones are matched whole (fullmatch): `$` would also accept a trailing newline.
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
TIME_ZONE_RE = re.compile(r"SYSTEM|[+-]\d{2}:\d{2}|[A-Za-z_]+(/[A-Za-z0-9_+-]+)*")
SSL_MODES = ("disabled", "required", "verify_identity")
STRICT_SQL_MODE = (
    "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
    "NO_ENGINE_SUBSTITUTION"
)
# Decode nothing: values stay the exact text the server sent (no float/datetime round trips).
TEXT_ONLY_CONV = {k: v for k, v in pymysql.converters.conversions.items() if type(k) is not int}


class ConfigError(Exception):
    """Bad configuration or usage: exit 2."""


class LockBusy(Exception):
    """Another run holds this source's lock on the target."""


class Stuck(Exception):
    """This source cannot make progress (a stale lock, a watermark that cannot move): exit 1."""


# ----------------------------------------------------------------------------- secrets
# Every password the job knows, so that no message it prints can ever contain one.
_SECRETS: set[str] = set()
# Passwords from [job] secrets_file, looked up after the environment.
_ENV_SECRETS: dict[str, str] = {}


def redact(text: str) -> str:
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def read_secrets_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, taken literally: no quotes removed, no `$` or backtick expanded (the old
    crontab's `. secrets.env` ran the shell over the passwords). Blank lines and # comments are
    skipped. The file must not be readable by group or others."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"[job]: secrets_file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"[job]: secrets_file {path} cannot be read ({type(exc).__name__})"
        ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"[job]: secrets_file {path} is readable by others: chmod 0600 it")
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise ConfigError(f"[job]: secrets_file {path} line {number} is not KEY=VALUE")
        values[key.strip()] = value
    return values


def check_option_file(path: str, group: str, where: str) -> None:
    """Parse the MySQL option file here, so that a malformed one gives a message without its
    contents (configparser quotes the offending line, which may be the password)."""
    parser = ConfigParser(allow_no_value=True, interpolation=None, strict=False)
    try:
        parser.read_string(Path(path).read_text(encoding="utf-8"))
    except (ConfigParserError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(
            f"{where}: option_file {path} is not a MySQL option file ({type(exc).__name__}); "
            f"it needs a [{group}] section with user= and password= lines"
        ) from None
    if not parser.has_section(group):
        raise ConfigError(f"{where}: option_file {path} has no [{group}] section")
    password = parser.get(group, "password", fallback=None)
    if password:
        _SECRETS.add(password.strip().strip("\"'"))


# ----------------------------------------------------------------------------- configuration
@dataclass
class Endpoint:
    name: str
    host: str
    port: int
    user: str | None
    database: str
    password_env: str | None = None
    option_file: str | None = None
    option_group: str = "client"
    time_zone: str = "+00:00"
    ssl_ca: str | None = None
    ssl_mode: str = "disabled"
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    write_timeout: float = 120.0
    sql_mode: str = STRICT_SQL_MODE


@dataclass
class TableSpec:
    source: str
    target: str
    key: str = "PackCode"
    cursor: str = "CreatedDate"
    protected: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    source_column: str | None = "source_name"


@dataclass
class JobSpec:
    batch_rows: int = 10000
    max_statement_bytes: int = 4 * 1024 * 1024
    lookback_seconds: float = 600.0
    max_rows_per_run: int = 0  # 0 = no limit
    retries: int = 3
    retry_backoff_seconds: float = 2.0
    throttle_seconds: float = 0.0
    verify_chunk_rows: int = 2000
    lock_prefix: str = "mysql_sync"
    secrets_file: str = ""
    max_parallel_lines: int = 4
    lock_stale_seconds: float = 900.0
    target_wait_timeout: int = 600


@dataclass
class Config:
    target: Endpoint
    sources: list[Endpoint]
    tables: list[TableSpec]
    job: JobSpec
    secrets: dict[str, str] = field(default_factory=dict)


def _take(section: dict, key: str, kind: type | tuple, where: str, default: Any = ...) -> Any:
    if key not in section:
        if default is ...:
            raise ConfigError(f"{where}: missing key `{key}`")
        return default
    value = section[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: `{key}` must be {getattr(kind, '__name__', kind)}")
    return value


def _endpoint(
    section: dict, where: str, defaults: dict[str, Any], secrets: dict[str, str]
) -> Endpoint:
    known = {"name", "host", "port", "user", "password_env", "option_file", "option_group",
             "database", "time_zone", "ssl_ca", "ssl_mode", "connect_timeout",
             "read_timeout", "write_timeout", "sql_mode"}  # fmt: skip
    if "ssl_verify_identity" in section:
        raise ConfigError(f"{where}: ssl_verify_identity is replaced by ssl_mode = "
                          '"verify_identity" (the default whenever ssl_ca is set)')  # fmt: skip
    unknown = set(section) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    ssl_ca = _take(section, "ssl_ca", str, where, None)
    option_file = _take(section, "option_file", str, where, None)
    ep = Endpoint(
        name=_take(section, "name", str, where, defaults.get("name", ...)),
        host=_take(section, "host", str, where, "127.0.0.1" if option_file else ...),
        port=_take(section, "port", int, where, 3306),
        user=_take(section, "user", str, where, None if option_file else ...),
        database=_take(section, "database", str, where),
        password_env=_take(section, "password_env", str, where, None),
        option_file=option_file,
        option_group=_take(section, "option_group", str, where, "client"),
        time_zone=_take(section, "time_zone", str, where, defaults.get("time_zone", "+00:00")),
        ssl_ca=ssl_ca,
        ssl_mode=_take(
            section, "ssl_mode", str, where, "verify_identity" if ssl_ca else "disabled"
        ),
        connect_timeout=_take(section, "connect_timeout", float, where, 10.0),
        read_timeout=_take(section, "read_timeout", float, where, 120.0),
        write_timeout=_take(section, "write_timeout", float, where, 120.0),
        sql_mode=_take(section, "sql_mode", str, where, STRICT_SQL_MODE),
    )
    if not NAME_RE.fullmatch(ep.name):
        raise ConfigError(f"{where}: name {ep.name!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    if not TIME_ZONE_RE.fullmatch(ep.time_zone):
        raise ConfigError(f"{where}: time_zone {ep.time_zone!r} is not '+HH:MM' or a zone name")
    if not re.fullmatch(r"[A-Z_,]*", ep.sql_mode):
        raise ConfigError(f"{where}: sql_mode {ep.sql_mode!r} is not a list of modes")
    if "NO_BACKSLASH_ESCAPES" in ep.sql_mode.split(","):
        # Rows travel as QUOTE()d literals with backslash escapes: under this mode a backslash
        # typed on a line would end the string early and let the rest run as SQL.
        raise ConfigError(f"{where}: sql_mode must not contain NO_BACKSLASH_ESCAPES")
    if ep.ssl_mode not in SSL_MODES:
        raise ConfigError(f"{where}: ssl_mode {ep.ssl_mode!r} must be one of {list(SSL_MODES)}")
    if ep.ssl_mode == "disabled" and ep.ssl_ca is not None:
        raise ConfigError(f"{where}: ssl_ca is set but ssl_mode is disabled")
    if ep.password_env is None and ep.option_file is None:
        raise ConfigError(
            f"{where}: give `password_env` (name of an environment variable) or `option_file` "
            "(a MySQL option file); passwords never go in the config or on the command line"
        )
    if ep.password_env is not None:
        if ep.password_env not in os.environ and ep.password_env not in secrets:
            raise ConfigError(
                f"{where}: {ep.password_env} is neither in the environment nor in [job] secrets_file"
            )
        password = os.environ.get(ep.password_env, secrets.get(ep.password_env))
        if password:
            _SECRETS.add(password)
    if ep.option_file is not None:
        if not Path(ep.option_file).is_file():
            raise ConfigError(f"{where}: option_file {ep.option_file} does not exist")
        check_option_file(ep.option_file, ep.option_group, where)
    if ep.ssl_ca is not None and not Path(ep.ssl_ca).is_file():
        raise ConfigError(f"{where}: ssl_ca {ep.ssl_ca} does not exist")
    for key in ("connect_timeout", "read_timeout", "write_timeout"):
        if getattr(ep, key) <= 0:
            raise ConfigError(f"{where}: {key} must be > 0")
    return ep


def load_config(path: Path) -> Config:
    """Parse and check the TOML file; every problem is a ConfigError (exit 2)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    unknown = set(raw) - {"target", "sources", "tables", "job"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}")
    if not isinstance(raw.get("target"), dict):
        raise ConfigError(f"{path}: missing [target] section")
    secrets_path = raw.get("job", {}).get("secrets_file", "")
    if not isinstance(secrets_path, str):
        raise ConfigError("[job]: `secrets_file` must be str")
    secrets = read_secrets_file(Path(secrets_path)) if secrets_path else {}
    _SECRETS.update(v for v in secrets.values() if v)
    _ENV_SECRETS.clear()
    _ENV_SECRETS.update(secrets)
    target = _endpoint(raw["target"], "[target]", {"name": "target"}, secrets)
    sources_raw = raw.get("sources")
    if not isinstance(sources_raw, list) or not sources_raw:
        raise ConfigError(f"{path}: needs at least one [[sources]] entry")
    sources = [
        _endpoint(s, f"[[sources]] #{i + 1}", {"time_zone": target.time_zone}, secrets)
        for i, s in enumerate(sources_raw)
    ]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: source names must be unique, got {names}")
    tables_raw = raw.get("tables")
    if not isinstance(tables_raw, list) or not tables_raw:
        raise ConfigError(f"{path}: needs at least one [[tables]] entry")
    tables = []
    for i, t in enumerate(tables_raw):
        where = f"[[tables]] #{i + 1}"
        unknown = set(t) - {"source", "target", "key", "cursor", "protected", "exclude",
                            "source_column"}  # fmt: skip
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
        src_table = _take(t, "source", str, where)
        spec = TableSpec(
            source=src_table,
            target=_take(t, "target", str, where, src_table),
            key=_take(t, "key", str, where, "PackCode"),
            cursor=_take(t, "cursor", str, where, "CreatedDate"),
            protected=list(_take(t, "protected", list, where, [])),
            exclude=list(_take(t, "exclude", list, where, [])),
            source_column=_take(t, "source_column", str, where, "source_name") or None,
        )
        for col in spec.protected + spec.exclude:
            if not isinstance(col, str):
                raise ConfigError(f"{where}: `protected`/`exclude` must list column names")
        if (
            spec.key in spec.protected + spec.exclude
            or spec.cursor in spec.protected + spec.exclude
        ):
            raise ConfigError(f"{where}: key and cursor columns cannot be protected or excluded")
        if spec.source_column in (spec.key, spec.cursor):
            raise ConfigError(f"{where}: source_column must be a column of its own")
        tables.append(spec)
    job_raw = raw.get("job", {})
    known_job = set(JobSpec.__dataclass_fields__)
    if set(job_raw) - known_job:
        raise ConfigError(f"[job]: unknown key(s) {sorted(set(job_raw) - known_job)}")
    job = JobSpec()
    for key, default in vars(JobSpec()).items():
        setattr(job, key, _take(job_raw, key, type(default), "[job]", default))
    if job.batch_rows < 1 or job.max_statement_bytes < 16384 or job.verify_chunk_rows < 1:
        raise ConfigError("[job]: batch_rows >= 1, max_statement_bytes >= 16384, chunk >= 1")
    if job.lookback_seconds < 0 or job.retries < 0 or job.max_rows_per_run < 0:
        raise ConfigError("[job]: lookback_seconds, retries, max_rows_per_run must be >= 0")
    if job.max_parallel_lines < 1 or job.lock_stale_seconds <= 0 or job.target_wait_timeout < 5:
        raise ConfigError(
            "[job]: max_parallel_lines >= 1, lock_stale_seconds > 0, target_wait_timeout >= 5"
        )
    if not NAME_RE.fullmatch(job.lock_prefix):
        raise ConfigError("[job]: lock_prefix must be 1-64 of A-Z a-z 0-9 _ . -")
    return Config(target=target, sources=sources, tables=tables, job=job, secrets=secrets)


# ----------------------------------------------------------------------------- connections
def tls_context(ep: Endpoint) -> ssl.SSLContext | None:
    """disabled: no TLS. required: TLS or no connection (the certificate is checked against
    ssl_ca when one is given). verify_identity: certificate chain (ssl_ca, else the system's CAs)
    and host name both checked."""
    if ep.ssl_mode == "disabled":
        return None
    ctx = ssl.create_default_context(cafile=ep.ssl_ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ep.ssl_mode == "required":
        ctx.check_hostname = False
        if ep.ssl_ca is None:
            ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Connection(pymysql.connections.Connection):
    """Refuses, before any credential is sent, a server that offers no TLS when TLS is
    required: PyMySQL 1.1.1 would go on in plain text and send the password."""

    tls_required = False

    def _request_authentication(self):
        if self.tls_required and not self.server_capabilities & pymysql.constants.CLIENT.SSL:
            raise pymysql.err.OperationalError(
                2026, "TLS is required (ssl_mode) but the server offers none"
            )
        return super()._request_authentication()


def connect(
    ep: Endpoint,
    *,
    autocommit: bool,
    database: bool = True,
    wait_timeout: int | None = None,
    time_zone: str | None = None,
) -> pymysql.Connection:
    """utf8mb4, an explicit time zone and sql_mode, timeouts on connect/read/write, TLS as
    configured and proven (some PyMySQL versions fall back to plain text when the server
    offers no TLS: the session's own cipher is checked instead of trusting the client)."""
    zone = time_zone or ep.time_zone  # validated by TIME_ZONE_RE: cannot break out of quotes
    init = [f"time_zone = '{zone}'"]
    if wait_timeout is not None:
        # A run that dies half-open leaves its session, and with it its GET_LOCK, on the
        # server until wait_timeout closes it: keep that minutes, not the default 8 hours.
        init.append(f"wait_timeout = {int(wait_timeout)}")
    kwargs: dict[str, Any] = dict(
        host=ep.host,
        port=ep.port,
        charset="utf8mb4",
        connect_timeout=ep.connect_timeout,
        # The server's greeting is read with read_timeout: a hung (not down) server would cost
        # read_timeout per attempt just to connect. Bound the handshake by connect_timeout;
        # the configured read_timeout applies once connected (below).
        read_timeout=min(ep.connect_timeout, ep.read_timeout),
        write_timeout=ep.write_timeout,
        autocommit=autocommit,
        conv=TEXT_ONLY_CONV,
        sql_mode=ep.sql_mode,
        init_command="SET SESSION " + ", SESSION ".join(init),
        local_infile=False,
    )
    if database:
        kwargs["database"] = ep.database
    if ep.user is not None:
        kwargs["user"] = ep.user
    if ep.password_env is not None:
        password = os.environ.get(ep.password_env, _ENV_SECRETS.get(ep.password_env))
        # As UTF-8 bytes: PyMySQL would encode a str as Latin-1 and name a character of it in
        # the error when that fails.
        kwargs["password"] = (password or "").encode("utf-8")
    if ep.option_file is not None:
        kwargs["read_default_file"] = ep.option_file
        kwargs["read_default_group"] = ep.option_group
    ctx = tls_context(ep)
    if ctx is not None:
        kwargs["ssl"] = ctx
    else:
        kwargs["ssl_disabled"] = True
    try:
        conn = _Connection(defer_connect=True, **kwargs)
        conn.tls_required = ctx is not None
        conn.connect()
    except ssl.SSLError as exc:
        raise pymysql.err.OperationalError(2026, f"TLS to {ep.name} failed: {exc}") from None
    conn._read_timeout = ep.read_timeout  # PyMySQL applies it before each read
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@session.sql_mode")
            (mode,) = cur.fetchone()
            cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")  # MySQL 8 and MariaDB alike
            row = cur.fetchone()
            cipher = row[1] if row else ""
        if "NO_BACKSLASH_ESCAPES" in (mode or "").split(","):
            raise ConfigError(f"{ep.name}: the session runs with NO_BACKSLASH_ESCAPES")
        if ctx is not None and not cipher:
            raise pymysql.err.OperationalError(
                2026, f"{ep.name}: ssl_mode is {ep.ssl_mode} but the server did not use TLS"
            )
    except BaseException:
        conn.close()
        raise
    return conn


def qi(name: str) -> str:
    """Quote an identifier (already checked against information_schema)."""
    return "`" + name.replace("`", "``") + "`"


def scalar(conn: pymysql.Connection, sql: str, args: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        row = cur.fetchone()
    return None if row is None else row[0]


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (socket.timeout, TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, pymysql.err.InterfaceError):
        return True  # the connection was already closed under us
    if isinstance(exc, pymysql.err.MySQLError) and exc.args:
        return exc.args[0] in TRANSIENT_ERRNOS
    return False


def errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


# ----------------------------------------------------------------------------- table plans
@dataclass
class Column:
    name: str
    data_type: str
    column_type: str
    nullable: bool
    default: str | None
    extra: str
    charset: str | None
    collation: str | None
    precision: int | None = None  # NUMERIC_PRECISION
    scale: int | None = None  # NUMERIC_SCALE
    fsp: int | None = None  # DATETIME_PRECISION (fractional seconds)


def table_columns(conn: pymysql.Connection, database: str, table: str) -> list[Column]:
    sql = (
        "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA, "
        "CHARACTER_SET_NAME, COLLATION_NAME, NUMERIC_PRECISION, NUMERIC_SCALE, "
        "DATETIME_PRECISION FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION"
    )
    with conn.cursor() as cur:
        cur.execute(sql, (database, table))
        rows = cur.fetchall()

    def num(v):
        return None if v is None else int(v)

    return [
        Column(
            r[0],
            r[1].lower(),
            r[2],
            r[3] == "YES",
            r[4],
            (r[5] or "").lower(),
            r[6],
            r[7],
            num(r[8]),
            num(r[9]),
            num(r[10]),
        )  # fmt: skip
        for r in rows
    ]


def narrower(src: Column, tgt: Column) -> str | None:
    """Why the target column would silently change a source value, or None. MariaDB rounds
    DECIMAL scale, fractional seconds and DOUBLE->FLOAT without an error even in strict mode;
    values that do not fit in other ways (too long, out of range) raise errors in strict mode
    and become per-row rejects."""
    temporal = TEMPORAL_TYPES | {"time"}
    if src.data_type == "decimal" and tgt.data_type == "decimal":
        s_int, t_int = (
            (src.precision or 0) - (src.scale or 0),
            (tgt.precision or 0) - (tgt.scale or 0),
        )
        if (tgt.scale or 0) < (src.scale or 0) or t_int < s_int:
            return f"{tgt.column_type} cannot hold every {src.column_type} value exactly"
    if src.data_type in temporal and tgt.data_type in temporal:
        if (tgt.fsp or 0) < (src.fsp or 0):
            return f"{tgt.column_type} keeps fewer fractional seconds than {src.column_type}"
        if src.data_type != "date" and tgt.data_type == "date":
            return f"{tgt.column_type} drops the time of day of {src.column_type}"
    if src.data_type == "double" and tgt.data_type == "float":
        return f"{tgt.column_type} rounds {src.column_type} to single precision"
    if src.data_type in ("float", "double", "decimal") and tgt.data_type in EXACT_NUMBER_TYPES:
        if tgt.data_type != "decimal":
            return f"{tgt.column_type} rounds away the fractions of {src.column_type}"
    return None


def literal_expr(columns: list[Column], alias: str = "", cast: bool = False) -> str:
    """SQL that makes the server render a row as `v1,v2,...` with each value an exact SQL literal:
    QUOTE() escapes text (NULL becomes the word NULL), binary columns travel as X'hex', exact
    numbers as their plain text. Text in another character set (latin1, gbk) is converted to
    utf8mb4, the connection's, so CONCAT never mixes character sets. CONCAT, not CONCAT_WS: a
    part that comes out NULL (a value over the server's max_allowed_packet) makes the whole row
    NULL instead of silently one value short.

    `cast`: render DECIMAL and temporal columns through the LINE's type. Used on the target,
    where a wider column (more decimals, more fractional digits) must read back as the same
    text; the values came from the line, so the cast is exact."""
    parts = []
    for col in columns:
        name = f"{alias}.{qi(col.name)}" if alias else qi(col.name)
        if cast and col.data_type == "decimal" and col.precision is not None:
            name = f"CAST({name} AS DECIMAL({col.precision},{col.scale or 0}))"
        elif cast and col.data_type in ("datetime", "timestamp", "time"):
            kind = "TIME" if col.data_type == "time" else "DATETIME"
            name = f"CAST({name} AS {kind}({col.fsp or 0}))"
        if col.data_type in BINARY_TYPES:
            parts.append(f"IF({name} IS NULL, 'NULL', CONCAT('X''', HEX({name}), ''''))")
        elif col.data_type in EXACT_NUMBER_TYPES:
            parts.append(f"IFNULL({name}, 'NULL')")
        elif col.data_type == "bit":
            # HEX() of a BIT(10) has an odd number of digits: not a valid X'' literal.
            parts.append(f"IFNULL({name} + 0, 'NULL')")
        elif col.data_type == "float":
            # FLOAT prints 6 significant digits (16777216 -> '16777200'); as a DOUBLE it prints
            # exactly, and storing that into a FLOAT gives back the same bits.
            parts.append(f"QUOTE(CAST({name} AS DOUBLE))")
        elif col.data_type in SPATIAL_TYPES:
            parts.append(
                f"IF({name} IS NULL, 'NULL', CONCAT('ST_GeomFromWKB(X''', "
                f"HEX(ST_AsBinary({name})), ''',', ST_SRID({name}), ')'))"
            )
        elif col.charset is None or col.charset in ("utf8mb4", "utf8mb3", "utf8", "ascii"):
            parts.append(f"QUOTE({name})")
        else:
            parts.append(f"CONVERT(QUOTE({name}) USING utf8mb4)")
    return "CONCAT(" + ", ',', ".join(parts) + ")"


@dataclass
class TablePlan:
    spec: TableSpec
    columns: list[Column]  # copied columns, source order
    cursor_type: str
    select_lit: str  # literal expression over the copied columns
    target_lit: str  # the same over the target table joined as `t`, through the line's types
    target_key: Column | None  # the target's key column: its collation matches keys
    insert_prefix: str  # INSERT INTO t (cols) VALUES
    insert_suffix: str  # ON DUPLICATE KEY UPDATE key = key


def plan_table(
    src: pymysql.Connection, tgt: pymysql.Connection | None, source: Endpoint, target_db: str,
    spec: TableSpec, *, target_must_exist: bool = True,
) -> TablePlan:  # fmt: skip
    """Check every configured name against information_schema on both sides, choose the copied
    columns and build the statements. Unknown names are configuration errors."""
    src_cols = table_columns(src, source.database, spec.source)
    if not src_cols:
        raise ConfigError(f"source {source.name}: table {source.database}.{spec.source} not found")
    by_name = {c.name: c for c in src_cols}
    for role, col in (("key", spec.key), ("cursor", spec.cursor)):
        if col not in by_name:
            raise ConfigError(f"source {source.name}: {spec.source} has no {role} column {col}")
        if "generated" in by_name[col].extra:
            raise ConfigError(f"source {source.name}: {role} column {col} is generated")
    key_len = re.fullmatch(r"(?:var)?char\((\d+)\)", by_name[spec.key].column_type.lower())
    if key_len is None or int(key_len[1]) > 255:
        # sync_state, sync_rejects and sync_conflicts keep keys in VARCHAR(255).
        raise ConfigError(
            f"source {source.name}: key column {spec.key} is {by_name[spec.key].column_type}; "
            "the job needs a CHAR/VARCHAR key of at most 255 characters"
        )
    cursor_type = by_name[spec.cursor].data_type
    if cursor_type not in TEMPORAL_TYPES:
        raise ConfigError(
            f"source {source.name}: cursor {spec.cursor} is {cursor_type}; it must be a "
            "DATETIME, TIMESTAMP or DATE column (the run's upper bound is the source clock)"
        )
    for col in spec.exclude:
        if col not in by_name:
            raise ConfigError(f"source {source.name}: excluded column {col} not in {spec.source}")
    skip = set(spec.protected) | set(spec.exclude) | {spec.source_column}
    copied = [
        c for c in src_cols if c.name not in skip and "generated" not in c.extra
    ]  # generated columns cannot be inserted; the target computes its own
    if tgt is not None:
        tgt_by_name = {c.name: c for c in table_columns(tgt, target_db, spec.target)}
        tgt_cols = set(tgt_by_name)
        for c in copied:
            why = narrower(c, tgt_by_name[c.name]) if c.name in tgt_by_name else None
            if why:
                raise ConfigError(
                    f"target column {spec.target}.{c.name}: {why}; widen it in the target "
                    "(values would change silently) or list the column in `exclude`"
                )
        if not tgt_cols and target_must_exist:
            raise ConfigError(
                f"target table {target_db}.{spec.target} does not exist: run with --init-target "
                "or create it with mysql_sync/sql/002_target_tables.sql"
            )
        if tgt_cols:
            missing = [c.name for c in copied if c.name not in tgt_cols]
            if spec.source_column and spec.source_column not in tgt_cols:
                missing.append(spec.source_column)
            if missing:
                raise ConfigError(
                    f"target table {spec.target} lacks column(s) {missing}: add them to the "
                    "target or list source-only columns in the table's `exclude`"
                )
    tgt_key = tgt_by_name.get(spec.key) if tgt is not None else None
    names = [c.name for c in copied] + ([spec.source_column] if spec.source_column else [])
    return TablePlan(
        spec=spec,
        columns=copied,
        cursor_type=cursor_type,
        select_lit=literal_expr(copied),
        target_lit=literal_expr(copied, alias="t", cast=True),
        target_key=tgt_key,
        insert_prefix=f"INSERT INTO {qi(spec.target)} ({', '.join(qi(n) for n in names)}) VALUES ",
        # A no-op update: existing rows stay exactly as they are; affected-rows is 0 for them.
        insert_suffix=f" ON DUPLICATE KEY UPDATE {qi(spec.key)} = {qi(spec.key)}",
    )


def target_table_ddl(spec: TableSpec, src_cols: list[Column]) -> str:
    """CREATE TABLE for the target from the source's columns: the key becomes the PRIMARY KEY,
    AUTO_INCREMENT and the source's own keys are dropped (ids from several lines may collide),
    protected columns missing from the source are added as VARCHAR(255) NULL, and the
    source_column records which line the row came from."""
    lines = []
    names = set()
    for c in src_cols:
        if c.name in spec.exclude or "generated" in c.extra:
            continue
        names.add(c.name)
        parts = [qi(c.name), c.column_type]
        if c.collation:
            parts.append(f"COLLATE {c.collation}")
        if c.name == spec.key:
            parts.append("NOT NULL")
        else:
            parts.append("NULL" if c.nullable else "NOT NULL")
            if c.default is not None and c.default.upper() != "NULL":
                parts.append(f"DEFAULT {c.default}")
            elif c.nullable:
                parts.append("DEFAULT NULL")
        lines.append(" ".join(parts))
    for col in spec.protected:
        if col not in names:
            lines.append(f"{qi(col)} VARCHAR(255) NULL DEFAULT NULL")
    if spec.source_column:
        lines.append(f"{qi(spec.source_column)} VARCHAR(64) NOT NULL DEFAULT ''")
    lines.append(f"PRIMARY KEY ({qi(spec.key)})")
    lines.append(f"KEY {qi('ix_' + spec.cursor)} ({qi(spec.cursor)})")
    body = ",\n  ".join(lines)
    return (
        f"CREATE TABLE IF NOT EXISTS {qi(spec.target)} (\n  {body}\n) "
        "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    )


def split_sql(text: str) -> list[str]:
    """Split an SQL script on `;` at line ends; our scripts keep semicolons out of strings."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", body) if s.strip()]


def init_target(cfg: Config, sources: list[Endpoint], dry_run: bool, log) -> list[str]:
    """Create the bookkeeping tables and each missing target table (from the first reachable
    source that has the table). Returns the statements (executed unless dry_run)."""
    statements = split_sql(BOOKKEEPING_SQL.read_text(encoding="utf-8"))
    tgt = connect(cfg.target, autocommit=True, time_zone="+00:00")
    try:
        for spec in cfg.tables:
            if table_columns(tgt, cfg.target.database, spec.target):
                continue
            ddl = None
            for source in sources:
                try:
                    src = connect(source, autocommit=True)
                except pymysql.err.MySQLError as exc:
                    log(
                        redact(
                            f"init-target: source {source.name} unreachable ({exc}); trying the next"
                        )
                    )
                    continue
                try:
                    cols = table_columns(src, source.database, spec.source)
                finally:
                    src.close()
                if cols:
                    ddl = target_table_ddl(spec, cols)
                    break
            if ddl is None:
                raise ConfigError(f"init-target: no reachable source has table {spec.source}")
            statements.append(ddl)
        if not dry_run:
            with tgt.cursor() as cur:
                for stmt in statements:
                    cur.execute(stmt)
    finally:
        tgt.close()
    return statements


# ----------------------------------------------------------------------------- row literals
_LIT_TOKEN = re.compile(
    r"NULL|X'(?P<hex>[0-9A-Fa-f]*)'|'(?P<text>(?:[^'\\]|\\.)*)'|(?P<num>-?[0-9][0-9.eE+-]*)"
    r"|ST_GeomFromWKB\(X'(?P<wkb>[0-9A-Fa-f]*)',(?P<srid>[0-9]+)\)",
    re.S,
)
_UNESCAPE = {"0": "\0", "Z": "\x1a", "n": "\n", "r": "\r", "t": "\t", "b": "\b"}


def parse_literal_row(text: str) -> list[str | None]:
    """Inverse of literal_expr, for the keys and the JSON copies kept in sync_rejects and
    sync_conflicts."""
    values: list[str | None] = []
    pos = 0
    while pos < len(text):
        m = _LIT_TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"cannot parse row literal at {pos}: {text[pos : pos + 20]!r}")
        if m.group(0) == "NULL":
            values.append(None)
        elif m["hex"] is not None:
            values.append("0x" + m["hex"])
        elif m["num"] is not None:
            values.append(m["num"])
        elif m["wkb"] is not None:
            values.append(f"WKB 0x{m['wkb']} SRID {m['srid']}")
        else:
            values.append(
                re.sub(r"\\(.)", lambda e: _UNESCAPE.get(e[1], e[1]), m["text"], flags=re.S)
            )
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ValueError(f"expected ',' at {pos} in row literal")
            pos += 1
    return values


def row_json(plan: TablePlan, literal: str, limit: int = 1 << 20) -> str:
    """The row as JSON for sync_rejects/sync_conflicts; a row too large to store again (it may be
    the reason for the reject) keeps only its size."""
    if len(literal) > limit:
        return json.dumps({"_truncated": True, "_bytes": len(literal)})
    try:
        values = parse_literal_row(literal)
        obj: Any = dict(zip([c.name for c in plan.columns], values, strict=True))
    except ValueError:
        obj = {"_literal": literal}
    return json.dumps(obj, ensure_ascii=False, sort_keys=False)


def row_hash(literal: str) -> str:
    """The content fingerprint stored with rejects and conflicts; --verify recomputes it on the
    line (MD5 of the same literal) to tell whether a stored reason still describes the row."""
    return hashlib.md5(literal.encode()).hexdigest()


# ----------------------------------------------------------------------------- the copy
@dataclass
class TableResult:
    source: str
    table: str
    target_table: str
    read: int = 0
    inserted: int = 0
    present: int = 0
    conflicts: int = 0
    rejected: int = 0
    seconds: float = 0.0
    watermark: str | None = None
    upper_bound: str | None = None
    dry_run: bool = False
    more_pending: bool = False  # max_rows_per_run stopped this run before the upper bound
    note: str | None = None
    source_wait_s: float = 0.0  # writer idle, waiting for the source: the source is the bottleneck
    target_write_s: float = 0.0  # time in target INSERT/COMMIT: the target is the bottleneck

    def as_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["rows_per_s"] = round(self.read / self.seconds, 1) if self.seconds > 0 else 0.0
        d["seconds"] = round(self.seconds, 3)
        d["source_wait_s"] = round(self.source_wait_s, 3)
        d["target_write_s"] = round(self.target_write_s, 3)
        return d


@dataclass
class SourceResult:
    source: str
    status: str = "ok"  # ok | failed | locked | stuck | config_error
    attempts: int = 0
    error: str | None = None
    tables: list[TableResult] = field(default_factory=list)
    verify: list[dict[str, Any]] = field(default_factory=list)
    started_s: float = 0.0  # seconds after the run started (lines run in parallel)
    finished_s: float = 0.0


def usable_time(value: str | None) -> bool:
    """A cursor value the job can compute with: a real calendar date (not NULL, not a zero or
    zero-in-date value such as '0000-00-00' or '2024-06-00' that a line in sql_mode='' stores)."""
    if value is None:
        return False
    try:
        return datetime.fromisoformat(value).year >= 1
    except ValueError:
        return False


def read_state(
    tgt: pymysql.Connection, source: str, spec: TableSpec
) -> tuple[str | None, str | None] | None:
    with tgt.cursor() as cur:
        cur.execute(
            "SELECT cursor_value, key_value FROM sync_state "
            "WHERE source_name = %s AND source_table = %s AND target_table = %s",
            (source, spec.source, spec.target),
        )
        row = cur.fetchone()
    tgt.commit()  # end the read snapshot so later reads see fresh data
    if row is None or row[0] is None:
        return None
    return row[0], row[1]


def shift_time(value: str, seconds: float) -> str:
    """`value` (DATE/DATETIME text) minus `seconds`, as DATETIME(6) text."""
    base, offset = datetime.fromisoformat(value), timedelta(seconds=seconds)
    # Clamp at year 1: a line may use 0001-01-01 (.NET's DateTime.MinValue) as a cursor.
    moment = base - offset if base - datetime.min > offset else datetime.min
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def key_lookup_sql(table: str, key: Column, select: str, n: int) -> str:
    """Map each requested key to the target row that the target's own key collation matches
    (case, accents and trailing spaces as the server compares them, not as Python would):
    `SELECT requested, <select> FROM (requested keys) JOIN table ON key = requested`."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", key.charset or "utf8mb4") or not re.fullmatch(
        r"[A-Za-z0-9_]+", key.collation or "utf8mb4_bin"
    ):
        raise ConfigError(f"key column {key.name}: unexpected collation {key.collation!r}")
    wanted = " UNION ALL ".join(["SELECT %s AS k"] * n)
    match = qi(key.name) + " = q.k"
    if key.collation:
        match = f"{qi(key.name)} = CONVERT(q.k USING {key.charset}) COLLATE {key.collation}"
    return f"SELECT q.k, {select} FROM ({wanted}) AS q JOIN {qi(table)} AS t ON t.{match}"


class Copier:
    """Copies one (source, table) into the target in committed batches, in two passes:

    1. lookback: the rows from (watermark - lookback_seconds) up to the watermark itself, to
       catch rows committed late with an older cursor. It never moves the watermark and has no
       row limit, so it can never keep a line from advancing.
    2. forward: the rows after the watermark in (cursor, key) order up to the run's upper bound
       (NOW(6) on the source), at most max_rows_per_run of them.

    Both passes read the source in short keyset-paged queries (batch_rows each) rather than one
    long streaming query: each statement holds the table's metadata lock only for itself, so a
    line-side ALTER (and the writes queued behind it) never waits for a whole copy."""

    def __init__(self, cfg: Config, source: Endpoint, plan: TablePlan, src, tgt, dry_run: bool,
                 upper: str, log) -> None:  # fmt: skip
        self.cfg, self.source, self.plan, self.src, self.tgt = cfg, source, plan, src, tgt
        self.dry_run, self.upper, self.log = dry_run, upper, log
        self.spec = plan.spec
        # Each row arrives from the source already as `(v1,...,vn,'line1')`, flagged `R(...)`
        # when it cannot be stored as is (NULL or empty key, unusable cursor).
        self.row_suffix = (
            "," + pymysql.converters.escape_string(source.name).join("''") + ")"
            if plan.spec.source_column
            else ")"
        )
        names = [c.name for c in plan.columns]
        self.key_index = names.index(plan.spec.key)
        # Keys are matched under the TARGET key column's collation (the line's may differ).
        self.key_column = plan.target_key or plan.columns[self.key_index]
        max_packet = int(scalar(tgt, "SELECT @@max_allowed_packet"))
        # Leave room for the statement text around the rows and the protocol header.
        self.statement_limit = min(cfg.job.max_statement_bytes, max_packet - 4096)
        self.result = TableResult(source.name, plan.spec.source, plan.spec.target, dry_run=dry_run)
        # Dry run: keys it would insert, to count repeats within the line. Bounded (oldest
        # dropped first) so that a first-copy dry run stays flat in memory like a real run.
        self.dry_run_seen: OrderedDict[str, str] = OrderedDict()  # key -> content digest

    # -- reading -------------------------------------------------------------------------------
    def page_sql(self) -> tuple[str, str]:
        """The page query around its WHERE condition: (head, tail)."""
        c, k = qi(self.spec.cursor), qi(self.spec.key)
        bad = f"YEAR({c}) = 0 OR MONTH({c}) = 0 OR DAYOFMONTH({c}) = 0"
        suffix_sql = pymysql.converters.escape_string(self.row_suffix).join("''")
        head = (
            f"SELECT CONCAT(IF({k} IS NULL OR TRIM({k}) = '' OR {bad}, 'R(', '('), "
            f"{self.plan.select_lit}, {suffix_sql}), {c}, {k}, "
            f"IF({k} IS NULL OR TRIM({k}) = '', 1, IF({bad}, 2, 0)) "
            f"FROM {qi(self.spec.source)} WHERE "
        )
        return head, f" ORDER BY {c}, {k} LIMIT %s"

    def query(self, sql: str, args: list) -> list:
        with self.src.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    @staticmethod
    def after(c: str, k: str, position: tuple[str, str | None]) -> tuple[str, list]:
        """Rows strictly after `position` in (cursor, key) order. Written out because MariaDB
        does not range-optimise `(c, k) > (x, y)`; a NULL key sorts first within its cursor."""
        if position[1] is None:
            return f"{c} >= %s AND ({c} > %s OR {k} IS NOT NULL)", [position[0], position[0]]
        return f"{c} >= %s AND ({c} > %s OR {k} > %s)", [position[0], position[0], position[1]]

    def pages(self, lower: tuple[str, list], bound: tuple[str, list], limit: int, stop):
        """Yield (row, cursor, key, flag) in (cursor, key) order from `lower` within `bound`,
        one short query per page, at most `limit` rows with a usable cursor (0: no limit)."""
        c, k = qi(self.spec.cursor), qi(self.spec.key)
        head, tail = self.page_sql()
        where, args = lower
        n_good = 0  # only rows with a usable cursor count: a limit ends on a watermark
        page = self.cfg.job.batch_rows
        while not stop.is_set():
            rows = self.query(f"{head}({where}) AND ({bound[0]}){tail}", [*args, *bound[1], page])
            for i, row in enumerate(rows):
                yield row
                n_good += int(row[3]) != 2
                if limit and n_good >= limit:
                    self.result.more_pending = True
                    yield from self.twins(rows[: i + 1], head, tail)
                    return
            if len(rows) < page:
                return
            yield from self.twins(rows, head, tail)
            where, args = self.after(c, k, (rows[-1][1], rows[-1][2]))

    def twins(self, rows: list, head: str, tail: str):
        """Rows sharing the last row's cursor and key (equal under the line's collation, or both
        NULL) that were not in `rows`: a keyset continuation after that position would skip
        them, so they are read now. Usually none."""
        c, k = qi(self.spec.cursor), qi(self.spec.key)
        last_c, last_k = rows[-1][1], rows[-1][2]
        same, args = (f"{k} IS NULL", []) if last_k is None else (f"{k} = %s", [last_k])
        seen = [r[0] for r in rows if r[1] == last_c]
        for row in self.query(f"{head}{c} = %s AND {same}{tail}", [last_c, *args, 10**9]):
            if row[0] in seen:
                seen.remove(row[0])
            else:
                yield row

    def read_pass(self, lower, bound, limit: int, out: queue.Queue, stop) -> None:
        """Reader thread: turn source rows into INSERT tuples, batch them, hand them over."""

        def put(item) -> None:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.5)
                    return
                except queue.Full:
                    continue

        try:
            limit_bytes = self.statement_limit - 200 - len(self.plan.insert_prefix)
            reasons = {1: f"NULL or empty key column {self.spec.key}",
                       2: f"zero or zero-in-date cursor column {self.spec.cursor}"}  # fmt: skip
            batch: list[bytes] = []
            rejects: list[tuple[str | None, str, int | None, str]] = []
            batch_bytes = n_read = 0
            last_good: tuple[str, str | None] | None = None
            for row, cursor, key, flag in self.pages(lower, bound, limit, stop):
                if stop.is_set():
                    return
                n_read += 1
                flag = int(flag)
                if row is None:
                    # A value over the LINE's max_allowed_packet made the literal NULL.
                    what = f"key {key!r}, {self.spec.cursor} {cursor}"
                    rejects.append(
                        (key, what, None, "row larger than the line's max_allowed_packet")
                    )
                elif flag:
                    rejects.append(self.reject(row[1:], reasons[flag]))
                else:
                    data = row.encode()
                    if len(data) > limit_bytes:
                        rejects.append(self.reject(row, "row larger than max_allowed_packet"))
                    else:
                        if batch_bytes + len(data) + 1 > limit_bytes:
                            put(("batch", (batch, rejects, last_good, n_read - 1)))
                            batch, rejects, batch_bytes, n_read = [], [], 0, 1
                        batch.append(data)
                        batch_bytes += len(data) + 1
                if flag != 2:
                    # Only a usable cursor may become the watermark: the next run computes
                    # (watermark - lookback) from it.
                    last_good = (cursor, key)
                if len(batch) >= self.cfg.job.batch_rows or len(rejects) >= 1000:
                    put(("batch", (batch, rejects, last_good, n_read)))
                    batch, rejects, batch_bytes, n_read = [], [], 0, 0
            if n_read:
                put(("batch", (batch, rejects, last_good, n_read)))
            put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the writer thread to raise
            put(("error", exc))

    def copy_pass(self, lower, bound, limit: int, moves_watermark: bool) -> int:
        """Run one pass: the source is read in a thread while this thread writes the previous
        batch, so both servers work at once (as in a `mariadb-dump | mariadb` pipe). Returns
        the rows read."""
        res = self.result
        batches: queue.Queue = queue.Queue(maxsize=3)
        stop = threading.Event()
        reader = threading.Thread(target=self.read_pass, args=(lower, bound, limit, batches, stop),
                                  name=f"reader-{self.source.name}")  # fmt: skip
        reader.start()
        n_total = 0
        try:
            while True:
                waited = time.monotonic()
                while True:
                    try:
                        kind, payload = batches.get(timeout=30)
                        break
                    except queue.Empty:
                        # A slow line must not leave the cloud session idle up to its short
                        # wait_timeout (which would drop it and release the lock mid-run).
                        self.tgt.ping(reconnect=False)
                res.source_wait_s += time.monotonic() - waited
                if kind == "error":
                    raise payload
                if kind == "end":
                    break
                batch, rejects, last_good, n_read = payload
                res.read += n_read
                n_total += n_read
                new_state = self.watermark
                if moves_watermark and last_good is not None:
                    new_state = last_good  # forward pass: every row lies after the watermark
                writing = time.monotonic()
                self.write_batch(batch, self.pending_rejects + rejects, new_state)
                res.target_write_s += time.monotonic() - writing
                self.pending_rejects = []
                self.watermark = new_state
                if self.cfg.job.throttle_seconds:
                    time.sleep(self.cfg.job.throttle_seconds)
        except BaseException:
            stop.set()
            # Unblock a reader stuck in a source read; the connection is not reused.
            self.src._force_close()
            reader.join(30)
            raise
        reader.join()
        return n_total

    def repair_watermark(self, state):
        """A stored watermark that is not a usable date (written by an older version that
        adopted a zero-in-date cursor) restarts from the newest row this line already has in
        the target; rows at or after it are re-read and counted as present."""
        if state is None or usable_time(state[0]):
            return state, False
        restart = None
        if self.spec.source_column and self.target_exists:
            c = qi(self.spec.cursor)
            restart = scalar(
                self.tgt,
                f"SELECT MAX({c}) FROM {qi(self.spec.target)} WHERE {qi(self.spec.source_column)} = %s "
                f"AND YEAR({c}) > 0 AND MONTH({c}) > 0 AND DAYOFMONTH({c}) > 0",
                (self.source.name,),
            )
            self.tgt.commit()
        self.log(
            f"{self.source.name} {self.spec.source}: stored watermark {state[0]!r} is not a usable "
            f"date; repaired: restarting from {restart or 'the beginning'}"
        )
        return ((restart, None) if restart else None), True

    def run(self) -> TableResult:
        started = time.monotonic()
        res = self.result
        res.upper_bound = self.upper
        self.target_exists = bool(
            table_columns(self.tgt, self.cfg.target.database, self.spec.target)
        )
        has_state = bool(table_columns(self.tgt, self.cfg.target.database, "sync_state"))
        if not has_state and not self.dry_run:
            raise ConfigError(
                "target has no sync_state table: run with --init-target or "
                "mysql_sync/sql/003_bookkeeping.sql"
            )
        state = read_state(self.tgt, self.source.name, self.spec) if has_state else None
        state, repaired = self.repair_watermark(state)
        start_state = self.watermark = state
        res.watermark = state[0] if state else None
        c, k = qi(self.spec.cursor), qi(self.spec.key)
        lookback = self.cfg.job.lookback_seconds

        # NULL cursors never match a range predicate: fetch them separately so they are
        # reported in sync_rejects instead of silently ignored.
        self.pending_rejects: list[tuple[str | None, str, int | None, str]] = []
        with self.src.cursor() as cur:
            cur.execute(
                f"SELECT {self.plan.select_lit}, {k} FROM {qi(self.spec.source)} WHERE {c} IS NULL"
            )
            for lit, key in cur.fetchall():
                res.read += 1
                lit = lit if lit is not None else f"key {key!r} (row over max_allowed_packet)"
                reason = f"NULL cursor column {self.spec.cursor}"
                self.pending_rejects.append((key, lit, None, reason))

        if state is not None and lookback > 0:
            if state[1] is None:
                bound = (f"({c} < %s OR ({c} = %s AND {k} IS NULL))", [state[0], state[0]])
            else:
                bound = (f"({c} < %s OR ({c} = %s AND ({k} IS NULL OR {k} <= %s)))",
                         [state[0], state[0], state[1]])  # fmt: skip
            lower = (f"{c} >= %s", [shift_time(state[0], lookback)])
            self.copy_pass(lower, bound, 0, moves_watermark=False)
        lower = self.after(c, k, state) if state is not None else ("1 = 1", [])
        limit = self.cfg.job.max_rows_per_run
        n_forward = self.copy_pass(lower, (f"{c} <= %s", [self.upper]), limit, moves_watermark=True)
        if self.pending_rejects or (repaired and self.watermark == start_state):
            self.write_batch([], self.pending_rejects, self.watermark, force_state=repaired)
            self.pending_rejects = []
        if res.more_pending and self.watermark == start_state:
            raise Stuck(
                f"{self.spec.source}: read {n_forward} row(s) after the watermark "
                f"{start_state} but none has a usable cursor, so the watermark cannot move; "
                "raise [job] max_rows_per_run or fix those rows' cursor on the line"
            )
        res.watermark = self.watermark[0] if self.watermark else None
        res.seconds = time.monotonic() - started
        return res

    def row_literal(self, row: str) -> str:
        """`(v1,...,vn,'line1')` -> `v1,...,vn` (the form the target's read-back uses)."""
        return row[1 : -len(self.row_suffix)]

    def key_of(self, lit: str) -> str | None:
        try:
            return parse_literal_row(lit)[self.key_index]
        except (ValueError, IndexError):
            return None

    def key_and_literal(self, row: bytes) -> tuple[str | None, str]:
        lit = self.row_literal(row.decode())
        return self.key_of(lit), lit

    def reject(self, row: str, reason: str) -> tuple[str | None, str, int | None, str]:
        lit = self.row_literal(row)
        return self.key_of(lit), lit, None, reason

    # -- writing -------------------------------------------------------------------------------
    def insert(self, rows: list[bytes], rejects: list) -> tuple[int, list]:
        """Multi-row INSERT; on a strict-mode data error split the rows in halves until the bad
        ones are isolated (InnoDB rolls back only the failed statement, not the transaction)."""
        if not rows:
            return 0, []
        sql = self.plan.insert_prefix.encode() + b",".join(rows) + self.plan.insert_suffix.encode()
        try:
            with self.tgt.cursor() as cur:
                affected = cur.execute(sql)
            return affected, rows
        except pymysql.err.MySQLError as exc:
            code = errno_of(exc)
            if code == 1143:
                raise ConfigError(
                    f"the target user lacks a column privilege on {self.spec.target} (error 1143: "
                    f"{exc.args[1]}): "
                    "a column was added; re-run mysql_sync/sql/011_grants_target.sql"
                ) from None
            if code not in ROW_DATA_ERRNOS:
                raise
            if len(rows) == 1:
                key, lit = self.key_and_literal(rows[0])
                rejects.append((key, lit, code, str(exc.args[1])))
                return 0, []
            mid = len(rows) // 2
            n1, kept1 = self.insert(rows[:mid], rejects)
            n2, kept2 = self.insert(rows[mid:], rejects)
            return n1 + n2, kept1 + kept2

    def fetch_target_literals(self, keys: list[str]) -> dict[str, tuple[str, str | None]]:
        """requested key -> (the target row's literal, its source) for keys the target holds
        under its key column's collation."""
        if not keys:
            return {}
        src_col = f"t.{qi(self.spec.source_column)}" if self.spec.source_column else "NULL"
        found: dict[str, tuple[str, str | None]] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), 500):
            part = unique[i : i + 500]
            sql = key_lookup_sql(self.spec.target, self.key_column,
                                 f"{self.plan.target_lit}, {src_col}", len(part))  # fmt: skip
            with self.tgt.cursor() as cur:
                cur.execute(sql, part)
                for key, lit, owner in cur.fetchall():
                    found[key] = (lit, owner)
        return found

    def write_batch(self, batch, rejects, new_state, force_state: bool = False) -> None:
        res = self.result
        if self.dry_run:
            # Classify without writing: what would be inserted, already present or conflict.
            pairs = [self.key_and_literal(r) for r in batch]
            existing = (
                self.fetch_target_literals([k for k, _ in pairs]) if self.target_exists else {}
            )
            for key, lit in pairs:
                digest = row_hash(lit)
                have = existing.get(key)
                seen = self.dry_run_seen.get(key.rstrip(" ").casefold())
                if have is None and seen is None:
                    res.inserted += 1
                    self.dry_run_seen[key.rstrip(" ").casefold()] = digest
                    if len(self.dry_run_seen) > DRY_RUN_KEYS:
                        self.dry_run_seen.popitem(last=False)
                elif (have is not None and have[0] == lit) or (have is None and seen == digest):
                    res.present += 1
                else:
                    res.conflicts += 1
            res.rejected += len(rejects)
            return
        conflicts = []
        n_rejects = len(rejects)
        inserted, kept = self.insert(batch, rejects)
        if inserted < len(kept):
            # Some keys already existed (or repeated within the batch): compare contents.
            pairs = [self.key_and_literal(r) for r in kept]
            existing = self.fetch_target_literals([k for k, _ in pairs])
            for key, lit in pairs:
                have = existing.get(key)
                if have is None:
                    # Not inserted, yet no row with its key: it collided with another UNIQUE
                    # key of the target, and ON DUPLICATE KEY made that a silent no-op.
                    rejects.append((key, lit, 1062, "not stored: duplicates another unique key "
                                    "of the target table"))  # fmt: skip
                elif have[0] != lit:
                    conflicts.append((key, lit, have[1]))
        collided = len(rejects) - n_rejects - (len(batch) - len(kept))
        res.inserted += inserted
        res.conflicts += len(conflicts)
        res.present += len(kept) - inserted - len(conflicts) - collided
        res.rejected += len(rejects)
        with self.tgt.cursor() as cur:
            for key, lit, owner in conflicts:
                cur.execute(
                    "INSERT INTO sync_conflicts (source_name, table_name, key_value, row_hash, "
                    "row_json, winner_source) VALUES (%s, %s, %s, %s, %s, %s) "
                    "ON DUPLICATE KEY UPDATE last_seen = NOW(6), seen_count = seen_count + 1",
                    (self.source.name, self.spec.target, key, row_hash(lit),
                     row_json(self.plan, lit, self.statement_limit // 2), owner),
                )  # fmt: skip
            for key, lit, code, reason in rejects:
                cur.execute(
                    "INSERT INTO sync_rejects (source_name, table_name, key_value, row_hash, "
                    "row_json, error_code, error) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON DUPLICATE KEY UPDATE last_seen = NOW(6), seen_count = seen_count + 1, "
                    "error_code = VALUES(error_code), error = VALUES(error)",
                    (self.source.name, self.spec.target, key, row_hash(lit),
                     row_json(self.plan, lit, self.statement_limit // 2), code, reason[:1000]),
                )  # fmt: skip
            if new_state is not None and (new_state != self.watermark or inserted or force_state):
                # Same transaction as the rows: both land or neither does.
                cur.execute(
                    "INSERT INTO sync_state (source_name, source_table, target_table, "
                    "cursor_value, key_value, rows_inserted) VALUES (%s, %s, %s, %s, %s, %s) "
                    "ON DUPLICATE KEY UPDATE cursor_value = VALUES(cursor_value), "
                    "key_value = VALUES(key_value), "
                    "rows_inserted = rows_inserted + VALUES(rows_inserted)",
                    (self.source.name, self.spec.source, self.spec.target, new_state[0],
                     new_state[1], inserted),
                )  # fmt: skip
            elif new_state is None and force_state:
                # Start over from the beginning (the writer has no DELETE right: a NULL cursor
                # reads as "never synced").
                cur.execute(
                    "UPDATE sync_state SET cursor_value = NULL, key_value = NULL "
                    "WHERE source_name = %s AND source_table = %s AND target_table = %s",
                    (self.source.name, self.spec.source, self.spec.target),
                )
        self.tgt.commit()


# ----------------------------------------------------------------------------- verify
def verify_table(cfg: Config, source: Endpoint, plan: TablePlan, src, tgt) -> dict[str, Any]:
    """Compare the line's rows up to the stored watermark with the target, in chunks of keys:
    one COUNT/SUM(CRC32) checksum per chunk from the target, rows fetched only for chunks whose
    checksum differs. Keys are matched by the target key column's collation; TIMESTAMPs are
    compared as UTC instants (both sessions run in +00:00). A difference is explained only when
    sync_rejects or sync_conflicts holds the line row's CURRENT content (same row_hash): a row
    fixed on the line, or never copied after the cause went away, is reported."""
    spec = plan.spec
    out: dict[str, Any] = {"source": source.name, "table": spec.source, "target_table": spec.target,
                           "checked": 0, "chunks": 0, "chunks_differing": 0, "missing": [],
                           "different": [], "explained": 0, "pending": 0,
                           "unchecked_after_watermark": 0, "unchecked_not_copyable": 0}  # fmt: skip
    state = read_state(tgt, source.name, spec)
    if state is None:
        out["note"] = "never synced"
        return out
    if not usable_time(state[0]):
        out["note"] = f"watermark {state[0]!r} is unusable: run the sync once to repair it"
        out["problem"] = True
        return out
    c, k = qi(spec.cursor), qi(spec.key)
    bad = (
        f"({k} IS NULL OR TRIM({k}) = '' OR YEAR({c}) = 0 OR MONTH({c}) = 0 OR DAYOFMONTH({c}) = 0)"
    )
    with src.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {qi(spec.source)} WHERE {c} > %s", (state[0],))
        out["unchecked_after_watermark"] = int(cur.fetchone()[0])
        cur.execute(
            f"SELECT COUNT(*) FROM {qi(spec.source)} WHERE ({c} <= %s AND {bad}) OR {c} IS NULL",
            (state[0],),
        )
        out["unchecked_not_copyable"] = int(cur.fetchone()[0])
    recent = shift_time(state[0], cfg.job.lookback_seconds)
    key_col = plan.target_key or plan.columns[[col.name for col in plan.columns].index(spec.key)]
    source_hash: dict[str, str] = {}

    def check_chunk(chunk: list[tuple[str, str, str]]) -> None:
        out["chunks"] += 1
        out["checked"] += len(chunk)
        keys = [key for key, _, _ in chunk]
        expect = sum(zlib.crc32(f"{key}|{h}".encode()) for key, h, _ in chunk)
        marks = ",".join(["%s"] * len(keys))
        with tgt.cursor() as cur:
            cur.execute(
                f"SELECT COUNT(*), COALESCE(SUM(CRC32(CONCAT(t.{k}, '|', MD5({plan.target_lit})))), "
                f"0) FROM {qi(spec.target)} AS t WHERE t.{k} IN ({marks})",
                keys,
            )
            count, total = cur.fetchone()
        if int(count) == len(chunk) and int(total) == expect:
            return
        out["chunks_differing"] += 1
        sql = key_lookup_sql(spec.target, key_col, f"MD5({plan.target_lit})", len(keys))
        with tgt.cursor() as cur:
            cur.execute(sql, keys)
            have = dict(cur.fetchall())
        for key, h, cursor in chunk:
            got = have.get(key)
            if got == h:
                continue
            if got is None and cursor >= recent:
                out["pending"] += 1  # inside the lookback window: the next sync copies it
                continue
            source_hash[key] = h
            out["missing" if got is None else "different"].append(key)

    with src.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute(
            f"SELECT {k}, MD5({plan.select_lit}), {c} FROM {qi(spec.source)} "
            f"WHERE {c} <= %s AND NOT {bad} ORDER BY {k}",
            (state[0],),
        )
        chunk: list[tuple[str, str, str]] = []
        for row in cur:
            if row[1] is None:  # over the line's max_allowed_packet: a reject by design
                out["unchecked_not_copyable"] += 1
                continue
            chunk.append(row)
            if len(chunk) >= cfg.job.verify_chunk_rows:
                check_chunk(chunk)
                chunk = []
        if chunk:
            check_chunk(chunk)
    # A stored reject/conflict explains a difference only if it holds the row as it is now.
    suspects = out["missing"] + out["different"]
    stored: set[tuple[str, str]] = set()
    for i in range(0, len(suspects), 1000):
        part = suspects[i : i + 1000]
        marks = ",".join(["%s"] * len(part))
        with tgt.cursor() as cur:
            for table in ("sync_conflicts", "sync_rejects"):
                cur.execute(
                    f"SELECT key_value, row_hash FROM {table} WHERE source_name = %s "
                    f"AND table_name = %s AND key_value IN ({marks})",
                    [source.name, spec.target, *part],
                )
                stored.update((key, h) for key, h in cur.fetchall())
    tgt.commit()

    def explained(key: str) -> bool:
        return (key, source_hash[key]) in stored

    out["explained"] = sum(explained(key) for key in suspects)
    out["missing_explained"] = [key for key in out["missing"] if explained(key)]
    out["different_explained"] = [key for key in out["different"] if explained(key)]
    out["missing"] = [key for key in out["missing"] if not explained(key)]
    out["different"] = [key for key in out["different"] if not explained(key)]
    return out


# ----------------------------------------------------------------------------- per source
def lock_holder_state(tgt: pymysql.Connection, lock: str) -> tuple[int, str, int] | None:
    """(connection id, command, seconds in that state) of the session holding `lock`, when
    the job's user can see it (it can always see its own sessions)."""
    holder = scalar(tgt, "SELECT IS_USED_LOCK(%s)", (lock,))
    if holder is None:
        return None
    with tgt.cursor() as cur:
        cur.execute(
            "SELECT COMMAND, TIME FROM information_schema.PROCESSLIST WHERE ID = %s", (holder,)
        )
        row = cur.fetchone()
    tgt.commit()
    if row is None:
        return None
    return int(holder), row[0], int(row[1])


def sync_source(cfg: Config, source: Endpoint, args, log, t0: float) -> SourceResult:
    result = SourceResult(source.name, started_s=round(time.monotonic() - t0, 3))
    try:
        return _sync_source(cfg, source, args, log, result)
    finally:
        result.finished_s = round(time.monotonic() - t0, 3)


def _sync_source(cfg: Config, source: Endpoint, args, log, result: SourceResult) -> SourceResult:
    attempts = 1 + cfg.job.retries
    for attempt in range(1, attempts + 1):
        result.attempts = attempt
        result.tables, result.verify = [], []
        src = tgt = None
        try:
            # The target session runs in UTC, so TIMESTAMP values are written as the instants
            # they are on the line, whatever zone either server is set to.
            # --verify may wait long on a source sort with the target idle: server default.
            wait = None if args.verify else cfg.job.target_wait_timeout
            tgt = connect(cfg.target, autocommit=False, time_zone="+00:00", wait_timeout=wait)
            role = "verify:" if args.verify else ""  # verify never waits for a sync, nor blocks one
            lock = f"{cfg.job.lock_prefix}:{role}{cfg.target.database}:{source.name}"
            if len(lock) > 64:  # MySQL refuses longer lock names
                lock = f"{cfg.job.lock_prefix[:20]}:{hashlib.md5(lock.encode()).hexdigest()}"
            if scalar(tgt, "SELECT GET_LOCK(%s, 0)", (lock,)) != "1":
                holder = lock_holder_state(tgt, lock)
                if holder is not None and holder[2] >= cfg.job.lock_stale_seconds:
                    raise Stuck(
                        f"lock {lock} is held by cloud connection {holder[0]}, in state "
                        f"{holder[1]} for {holder[2]} s (a run that died without closing its "
                        f"session?); the cloud frees it when that session times out, or run "
                        f"KILL {holder[0]} on the cloud"
                    )
                raise LockBusy(lock)
            src = connect(source, autocommit=True)
            # The run's upper bound on the cursor is the LINE's clock: NOW(6) in the zone the
            # line application writes DATETIMEs in; after that the session switches to UTC so
            # TIMESTAMPs travel as instants (DATETIME values do not depend on the zone).
            upper_local = scalar(src, "SELECT NOW(6)")
            with src.cursor() as cur:
                cur.execute("SET time_zone = '+00:00'")
            upper_utc = scalar(src, "SELECT NOW(6)")
            for spec in cfg.tables:
                # --init-target --dry-run: the tables it would create do not exist yet.
                preview = args.dry_run and args.init_target
                plan = plan_table(
                    src, tgt, source, cfg.target.database, spec, target_must_exist=not preview
                )
                if args.verify:
                    result.verify.append(verify_table(cfg, source, plan, src, tgt))
                    continue
                upper = upper_utc if plan.cursor_type == "timestamp" else upper_local
                copier = Copier(cfg, source, plan, src, tgt, args.dry_run, upper, log)
                result.tables.append(copier.run())
            result.status, result.error = "ok", None
            return result
        except LockBusy as exc:
            result.status, result.error = "locked", f"another run holds lock {exc}"
            return result
        except Stuck as exc:
            result.status, result.error = "stuck", redact(str(exc))
            return result
        except ConfigError as exc:
            result.status, result.error = "config_error", redact(str(exc))
            return result
        except Exception as exc:  # noqa: BLE001 - any failure skips this source, not the run
            result.status, result.error = "failed", redact(f"{type(exc).__name__}: {exc}")
            if not is_transient(exc) or attempt == attempts:
                return result
            delay = cfg.job.retry_backoff_seconds * 2 ** (attempt - 1)
            log(f"{source.name}: transient error ({result.error}); retry {attempt} in {delay:g}s")
            time.sleep(delay)
        finally:
            for conn in (src, tgt):
                if conn is not None:
                    try:
                        conn.close()  # closing the target connection also releases GET_LOCK
                    except Exception:  # noqa: BLE001
                        pass
    return result


def summary_line(r: TableResult) -> str:
    d = r.as_dict()
    head = f"{r.source} {r.table}->{r.target_table}" + (" [dry-run]" if r.dry_run else "")
    would = "would_insert" if r.dry_run else "inserted"
    return (
        f"{head}: read={r.read} {would}={r.inserted} present={r.present} "
        f"conflicts={r.conflicts} rejected={r.rejected} seconds={d['seconds']:.3f} "
        f"rows/s={d['rows_per_s']:.0f} watermark={r.watermark}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Copy new rows from the line databases to the cloud database (by PackCode)."
    )
    parser.add_argument(
        "--config", type=Path, required=True, help="TOML file (see sync.example.toml)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="count what would be copied; write nothing"
    )
    parser.add_argument(
        "--verify", action="store_true", help="compare source and target; copy nothing"
    )
    parser.add_argument("--init-target", action="store_true",
                        help="create bookkeeping tables and missing target tables, then sync")  # fmt: skip
    parser.add_argument(
        "--source", action="append", metavar="NAME", help="only this source (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verify and (args.dry_run or args.init_target):
        parser.error("--verify cannot be combined with --dry-run or --init-target")

    def log(msg: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {redact(msg)}", file=sys.stderr, flush=True)

    try:
        cfg = load_config(args.config)
        sources = cfg.sources
        if args.source:
            unknown = set(args.source) - {s.name for s in cfg.sources}
            if unknown:
                raise ConfigError(f"--source: unknown source(s) {sorted(unknown)}")
            sources = [s for s in cfg.sources if s.name in args.source]
    except ConfigError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE

    started = time.time()
    init_statements: list[str] = []
    if args.init_target:
        try:
            init_statements = init_target(cfg, sources, args.dry_run, log)
        except ConfigError as exc:
            print(f"error: {redact(str(exc))}", file=sys.stderr)
            return EXIT_USAGE
        except pymysql.err.MySQLError as exc:
            print(redact(f"error: --init-target failed on the target: {exc}"), file=sys.stderr)
            return EXIT_SOURCE_FAILED
        if args.dry_run and not args.json:
            for stmt in init_statements:
                print(stmt + ";")

    # Lines run in parallel, each on its own connections: a frozen or slow line costs its own
    # timeouts, not the others' time. The pool bounds the cloud connections the job holds.
    sys.setswitchinterval(0.0005)  # reader threads parse while writers wait on the servers
    workers = min(len(sources), cfg.job.max_parallel_lines)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="line") as pool:
        t0 = time.monotonic()
        results = list(pool.map(lambda s: sync_source(cfg, s, args, log, t0), sources))
    if any(r.status == "config_error" for r in results):
        code = EXIT_USAGE
    elif any(r.status in ("failed", "stuck") for r in results):
        code = EXIT_SOURCE_FAILED
    elif args.verify and any(
        v["missing"] or v["different"] or v.get("problem") for r in results for v in r.verify
    ):
        code = EXIT_SOURCE_FAILED
    else:
        code = EXIT_OK

    if args.json:
        doc = {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds": round(time.time() - started, 3),
            "mode": "verify" if args.verify else ("dry-run" if args.dry_run else "sync"),
            "exit_code": code,
            "init_statements": init_statements,
            "sources": [
                {"source": r.source, "status": r.status, "attempts": r.attempts, "error": r.error,
                 "started_s": r.started_s, "finished_s": r.finished_s,
                 "tables": [t.as_dict() for t in r.tables], "verify": r.verify}
                for r in results
            ],
        }  # fmt: skip
        print(json.dumps(doc, ensure_ascii=False, indent=1))
    else:
        for r in results:
            for t in r.tables:
                print(summary_line(t))
            for v in r.verify:
                print(
                    f"verify {v['source']} {v['table']}->{v['target_table']}: "
                    f"checked={v['checked']} chunks={v['chunks']} "
                    f"chunks_differing={v['chunks_differing']} missing={len(v['missing'])} "
                    f"different={len(v['different'])} explained={v['explained']} "
                    f"pending={v['pending']} not_checked: after_watermark="
                    f"{v['unchecked_after_watermark']} not_copyable={v['unchecked_not_copyable']}"
                    + (f" ({v['note']})" if v.get("note") else "")
                )
                for kind in ("missing", "different"):
                    for key in v[kind][:50]:
                        print(f"  {kind} {key}")
                    if len(v[kind]) > 50:
                        print(f"  ... {len(v[kind]) - 50} more {kind} (see --json)")
            if r.status != "ok":
                print(f"{r.source}: {r.status.upper()} after {r.attempts} attempt(s): {r.error}")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
