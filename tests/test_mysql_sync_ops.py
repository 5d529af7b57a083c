"""The operators' side of mysql_sync against real throwaway MariaDB servers (one line, one
cloud, started for this module on free loopback ports and stopped by PID): the SQL scripts of
mysql_sync/sql run through the `mariadb` client the way mysql_sync/README.md says, the users
they create hold only what the job needs, and both documented setup routes (hand-made table,
table made by `--init-target`) carry a real sync end to end with those users."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mariadb_harness as mh  # noqa: E402

pytestmark = pytest.mark.mysql
REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "mysql_sync" / "README.md"
SYNC = "mysql_sync/sync.py"
HOST = "127.0.0.1"  # the job host as both servers see it (loopback only)
READER = {"reader_password": "r-$ecret`x", "reader_host": HOST}
WRITER = {"writer_password": "w-$ecret`x", "writer_host": HOST}
# The line table without its cursor index: 012 adds it, 010 must not.
LINE_DDL = re.sub(r",\s*KEY ix_created \(CreatedDate, PackCode\)", "", mh.SOURCE_DDL)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    try:
        mh.find_binaries()
    except RuntimeError as exc:
        pytest.fail(str(exc))  # CI has MariaDB: a missing binary is a failure, not a skip
    started = mh.start_servers(tmp_path_factory.mktemp("mariadb_ops"), ["line1", "cloud"])
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture
def fresh(servers):
    """An empty cloud server and a line with Table1 (no cursor index) and an unrelated table."""
    line, cloud = servers["line1"], servers["cloud"]
    for server, user in ((line, "sync_reader"), (cloud, "sync_writer")):
        server.sql("SET GLOBAL group_concat_max_len = 1048576")  # MariaDB's default
        for (host,) in server.sql("SELECT Host FROM mysql.user WHERE User = %s", (user,)):
            server.sql(f"DROP USER '{user}'@'{host}'")
    cloud.sql("DROP DATABASE IF EXISTS cloud")
    line.sql("DROP DATABASE IF EXISTS factory")
    line.sql("CREATE DATABASE factory CHARACTER SET utf8mb4")
    line.sql(LINE_DDL, database="factory")
    line.sql("CREATE TABLE factory.users (name VARCHAR(64), password_hash VARCHAR(64))")
    line.sql("INSERT INTO factory.users VALUES ('admin', 'not for the job')")
    return line, cloud


def client(server, database: str, stdin: str, abort: bool = True) -> subprocess.CompletedProcess:
    """The `mariadb` client in batch mode, started in the repository root like the README's."""
    cmd = [mh.find_binaries()["mariadb"], "--no-defaults", "-h127.0.0.1", f"-P{server.port}",
           "-uroot", "--default-character-set=utf8mb4", "--batch", "--skip-column-names"]  # fmt: skip
    if abort:
        cmd.append("--abort-source-on-error")
    return subprocess.run(cmd + [database], input=stdin, capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT)  # fmt: skip


def sql_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def source(server, database: str, script: str, abort: bool = True, **params: str):
    """README's way for a script with parameters: SET them, then SOURCE the file."""
    lines = [f"SET @{k} = {sql_literal(v)};" for k, v in params.items()]
    lines.append(f"SOURCE mysql_sync/sql/{script}")
    return client(server, database, "\n".join(lines) + "\n", abort)


def feed(server, database: str, script: str):
    """README's way for a script without parameters: `mariadb ... < file`."""
    return client(server, database, (REPO_ROOT / "mysql_sync" / "sql" / script).read_text())


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def accounts(server, user: str) -> list[str]:
    return [h for (h,) in server.sql("SELECT Host FROM mysql.user WHERE User = %s", (user,))]


def login(server, user: str, password: str, database: str) -> pymysql.Connection:
    return pymysql.connect(host=HOST, port=server.port, user=user, password=password,
                           database=database, autocommit=True, connect_timeout=5)  # fmt: skip


def denied(conn: pymysql.Connection, statement: str) -> int:
    """The error number the server answers `statement` with (0 when it is allowed)."""
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    except pymysql.err.MySQLError as exc:
        return exc.args[0]
    return 0


def add_rows(line, prefix: str, n: int, start: str) -> None:
    line.sql(
        "INSERT INTO factory.Table1 (PackCode, parentcode, CreatedDate, product, weight, chuku) "
        "SELECT CONCAT(%s, seq), CONCAT('P', %s, seq DIV 3), %s + INTERVAL seq SECOND, "
        "CONCAT('产品-', seq), seq + 0.125, '否' FROM seq_0_to_99 WHERE seq < %s",
        (prefix, prefix, start, n),
        database="factory",
    )


def write_config(tmp_path: Path, line, cloud) -> Path:
    """The least-privilege configuration: sync_writer on the cloud, sync_reader on the line."""
    timeouts = ["connect_timeout = 2.0", "read_timeout = 5.0", "write_timeout = 5.0"]
    text = "\n".join(
        ["[target]", f'host = "{HOST}"', f"port = {cloud.port}", 'user = "sync_writer"',
         'password_env = "OPS_W_PW"', 'database = "cloud"', 'time_zone = "+00:00"', *timeouts,
         "", "[[sources]]", 'name = "line1"', f'host = "{HOST}"', f"port = {line.port}",
         'user = "sync_reader"', 'password_env = "OPS_R_PW"', 'database = "factory"', *timeouts,
         "", "[[tables]]", 'source = "Table1"', 'target = "Table1"', 'key = "PackCode"',
         'cursor = "CreatedDate"', 'protected = ["chuku", "jxs", "cky"]', 'exclude = ["id"]',
         'source_column = "source_name"', "", "[job]", "batch_rows = 50", "retries = 0"]
    )  # fmt: skip
    path = tmp_path / "sync.toml"
    path.write_text(text + "\n", encoding="utf-8")
    return path


def job(config: Path, *flags: str) -> subprocess.CompletedProcess:
    """The job as the README runs it (a process; passwords in its environment)."""
    env = dict(os.environ, OPS_W_PW=WRITER["writer_password"], OPS_R_PW=READER["reader_password"])
    return subprocess.run([sys.executable, SYNC, "--config", str(config), *flags], env=env,
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)  # fmt: skip


def test_reader_can_select_the_synced_tables_only(fresh):
    line, _ = fresh
    # An account left by an older 010 with SELECT on the whole database is narrowed, not kept.
    line.sql(f"CREATE USER 'sync_reader'@'{HOST}' IDENTIFIED BY 'old'")
    line.sql(f"GRANT SELECT ON factory.* TO 'sync_reader'@'{HOST}'")
    for _ in range(2):  # idempotent
        ok(source(line, "factory", "010_grants_source.sql", **READER))
    reader = login(line, "sync_reader", READER["reader_password"], "factory")
    assert denied(reader, "SELECT COUNT(*) FROM Table1") == 0
    assert denied(reader, "SELECT * FROM users") == 1142
    assert denied(reader, "INSERT INTO Table1 (PackCode) VALUES ('x')") == 1142
    with reader.cursor() as cur:
        cur.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
        )
        assert cur.fetchall() == (("Table1",),)  # the other table is not even visible
    reader.close()
    # 010 changes no table: the index is 012's business
    assert line.sql("SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS "
                    "WHERE TABLE_SCHEMA='factory' AND TABLE_NAME='Table1'") == [("PRIMARY",)]  # fmt: skip
    # a name in @sync_tables that is not a table stops it before anything changes
    grants_before = line.sql(f"SHOW GRANTS FOR 'sync_reader'@'{HOST}'")
    proc = source(line, "factory", "010_grants_source.sql", sync_tables="Table1, Table9", **READER)
    assert proc.returncode != 0 and "factory.Table9" in proc.stderr
    assert line.sql(f"SHOW GRANTS FOR 'sync_reader'@'{HOST}'") == grants_before


def test_grant_scripts_refuse_to_run_without_a_host(fresh):
    line, cloud = fresh
    proc = source(line, "factory", "010_grants_source.sql", reader_password="r")
    assert proc.returncode != 0 and "error_set_reader_host_first" in proc.stderr
    assert accounts(line, "sync_reader") == []
    for script in ("001_target_database.sql", "002_target_tables.sql", "003_bookkeeping.sql"):
        ok(feed(cloud, "mysql" if script.startswith("001") else "cloud", script))
    proc = source(cloud, "cloud", "011_grants_target.sql", writer_password="w")
    assert proc.returncode != 0 and "error_set_writer_host_first" in proc.stderr
    cloud.sql("DROP TABLE cloud.Table1")
    proc = source(cloud, "cloud", "013_grants_target_for_init.sql", writer_password="w")
    assert proc.returncode != 0 and "error_set_writer_host_first" in proc.stderr
    assert accounts(cloud, "sync_writer") == []
    # a file on the client's stdin stops at its first error, flag or not, and exits 1
    text = (REPO_ROOT / "mysql_sync" / "sql" / "011_grants_target.sql").read_text()
    proc = client(cloud, "cloud", "SET @writer_password = 'w';\n" + text, abort=False)
    assert proc.returncode == 1 and "error_set_writer_host_first" in proc.stderr
    assert accounts(cloud, "sync_writer") == []


def test_writer_grants_refuse_to_run_before_the_tables_exist(fresh):
    _, cloud = fresh
    ok(feed(cloud, "mysql", "001_target_database.sql"))
    ok(feed(cloud, "cloud", "003_bookkeeping.sql"))
    proc = source(cloud, "cloud", "011_grants_target.sql", **WRITER)
    assert proc.returncode != 0 and "Table 'cloud.Table1' doesn't exist" in proc.stderr
    assert accounts(cloud, "sync_writer") == []  # stopped before creating anything
    # Why README insists on --abort-source-on-error: without it this client reports the error
    # inside SOURCE, runs the rest of the script and exits 0.
    proc = source(cloud, "cloud", "011_grants_target.sql", abort=False, **WRITER)
    assert proc.returncode == 0 and "ERROR" in proc.stderr
    cloud.sql(f"DROP USER 'sync_writer'@'{HOST}'")
    # the data table alone is not enough either: the bookkeeping tables are granted too
    cloud.sql("DROP TABLE cloud.sync_state")
    ok(feed(cloud, "cloud", "002_target_tables.sql"))
    proc = source(cloud, "cloud", "011_grants_target.sql", **WRITER)
    assert proc.returncode != 0 and "Table 'cloud.sync_state' doesn't exist" in proc.stderr
    assert accounts(cloud, "sync_writer") == []
    # 013 is for tables that do not exist yet; for an existing one it points to 011
    ok(feed(cloud, "cloud", "003_bookkeeping.sql"))
    proc = source(cloud, "cloud", "013_grants_target_for_init.sql", **WRITER)
    assert proc.returncode != 0 and "error_table_exists_run_011_instead" in proc.stderr
    assert accounts(cloud, "sync_writer") == []


def test_cursor_index_script_is_online_idempotent_and_gives_way(fresh):
    line, _ = fresh
    index_sql = ("SELECT INDEX_NAME, GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX) "
                 "FROM information_schema.STATISTICS WHERE TABLE_SCHEMA='factory' "
                 "AND TABLE_NAME='Table1' GROUP BY INDEX_NAME")  # fmt: skip
    # A busy table: an open transaction holds its metadata lock. The script waits at most
    # @lock_wait_seconds, then fails (1205) without queueing the line's writes behind it.
    holder = line.connect("factory", autocommit=False)
    with holder.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM Table1")
    started = time.monotonic()
    proc = source(line, "factory", "012_source_cursor_index.sql", lock_wait_seconds="1")
    assert proc.returncode != 0 and "1205" in proc.stderr
    assert time.monotonic() - started < 20
    holder.rollback()
    holder.close()
    assert set(line.sql(index_sql)) == {("PRIMARY", "id")}
    for _ in range(2):
        ok(source(line, "factory", "012_source_cursor_index.sql"))
    assert set(line.sql(index_sql)) == {
        ("PRIMARY", "id"),
        ("ix_sync_cursor", "CreatedDate,PackCode"),
    }
    # an index with another name on the same leading columns already serves: nothing added
    line.sql("ALTER TABLE factory.Table1 DROP INDEX ix_sync_cursor, "
             "ADD INDEX ix_own (CreatedDate, PackCode, product)")  # fmt: skip
    ok(source(line, "factory", "012_source_cursor_index.sql"))
    assert set(line.sql(index_sql)) == {
        ("PRIMARY", "id"),
        ("ix_own", "CreatedDate,PackCode,product"),
    }


def readme_setup_blocks() -> list[str]:
    """The fenced code blocks of README's setup section, in order."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## From an empty cloud database", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```[a-z]*\n(.*?)```", section, re.S)


def test_readme_setup_order_and_invocations_are_the_tested_ones():
    blocks = readme_setup_blocks()
    scripts = [m for b in blocks for m in re.findall(r"sql/(0\d\d)_\w+\.sql", b)]
    # route A: 001 003 002 011 010 012, job; route B: 001 003 013 010 012, job, 011
    assert scripts == ["001", "003", "002", "011", "013", "010", "012", "011"]
    for block in blocks:
        for cmd in re.findall(r"^mariadb .*$", block, re.M):
            # a script on stdin stops at its first error; a session for SOURCE must be told to
            assert " < mysql_sync/sql/" in cmd or "--abort-source-on-error" in cmd, cmd
    job_steps = [b.strip() for b in blocks if "sync.py" in b]
    assert [re.sub(r".*sync\.toml", "", s) for s in job_steps] == [
        " --init-target --dry-run",
        " --init-target",
        " --verify",
    ]
    assert all(
        s.startswith("sudo -u mysql_sync .venv/bin/python mysql_sync/sync.py") for s in job_steps
    )


def run_route(line, cloud, tmp_path: Path, route: str) -> Path:
    """README's steps 2-8 for route "A" (hand-made table) or "B" (--init-target makes it)."""
    ok(feed(cloud, "mysql", "001_target_database.sql"))
    ok(feed(cloud, "cloud", "003_bookkeeping.sql"))
    if route == "A":
        ok(feed(cloud, "cloud", "002_target_tables.sql"))
        ok(source(cloud, "cloud", "011_grants_target.sql", **WRITER))
    else:
        ok(source(cloud, "cloud", "013_grants_target_for_init.sql", **WRITER))
    ok(source(line, "factory", "010_grants_source.sql", **READER))
    ok(source(line, "factory", "012_source_cursor_index.sql"))
    config = write_config(tmp_path, line, cloud)
    proc = job(config, "--init-target", "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert cloud.sql("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA='cloud' "
                     "AND TABLE_NAME='Table1'") == [(1 if route == "A" else 0,)]  # fmt: skip
    proc = job(config, "--init-target")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ok(source(cloud, "cloud", "011_grants_target.sql", **WRITER))  # step 8 (harmless for A)
    return config


@pytest.mark.parametrize("route", ["A", "B"])
def test_readme_route_syncs_with_least_privilege_users(fresh, tmp_path, route):
    line, cloud = fresh
    add_rows(line, "A", 30, "2024-05-01 08:00:00")
    config = run_route(line, cloud, tmp_path, route)
    assert cloud.sql("SELECT COUNT(*) FROM cloud.Table1") == [(30,)]
    add_rows(line, "B", 5, "2024-05-02 08:00:00")
    proc = job(config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "inserted=5" in proc.stdout
    proc = job(config, "--verify")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    copied = "SELECT PackCode, CreatedDate, product, weight FROM {} ORDER BY PackCode"
    assert cloud.sql(copied.format("cloud.Table1")) == line.sql(copied.format("factory.Table1"))
    assert cloud.sql("SELECT COUNT(*) FROM cloud.Table1 WHERE chuku IS NOT NULL") == [(0,)]
    # the writer's final rights: no UPDATE on the outbound columns, no DELETE, no DROP,
    # whatever the route gave it before 011
    writer = login(cloud, "sync_writer", WRITER["writer_password"], "cloud")
    assert denied(writer, "UPDATE Table1 SET chuku = 'x'") == 1143
    assert denied(writer, "UPDATE Table1 SET jxs = 'x', cky = 'y'") == 1143
    assert denied(writer, "DELETE FROM Table1") == 1142
    assert denied(writer, "DROP TABLE sync_state") == 1142
    writer.close()
    reader = login(line, "sync_reader", READER["reader_password"], "factory")
    assert denied(reader, "SELECT * FROM users") == 1142
    reader.close()
    # every script can be run again: same rights, the job still syncs
    for _ in range(2):
        ok(feed(cloud, "mysql", "001_target_database.sql"))
        ok(feed(cloud, "cloud", "002_target_tables.sql"))
        ok(feed(cloud, "cloud", "003_bookkeeping.sql"))
        ok(source(cloud, "cloud", "011_grants_target.sql", **WRITER))
        ok(source(line, "factory", "010_grants_source.sql", **READER))
        ok(source(line, "factory", "012_source_cursor_index.sql"))
    assert job(config).returncode == 0


def test_a_column_added_later_needs_011_again(fresh, tmp_path):
    line, cloud = fresh
    add_rows(line, "A", 3, "2024-05-01 08:00:00")
    config = run_route(line, cloud, tmp_path, "A")
    for server, db in ((line, "factory"), (cloud, "cloud")):
        server.sql(f"ALTER TABLE {db}.Table1 ADD COLUMN batch_no VARCHAR(16) NULL")
    add_rows(line, "B", 2, "2024-05-02 08:00:00")
    proc = job(config)
    assert proc.returncode != 0 and "1143" in proc.stdout + proc.stderr  # as README warns
    # A GRANT list longer than the server's group_concat_max_len (MySQL's default of 1024 is
    # reached with a few wide tables) must not be cut: 011 sets its own.
    cloud.sql("SET GLOBAL group_concat_max_len = 256")
    ok(source(cloud, "cloud", "011_grants_target.sql", **WRITER))
    proc = job(config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert cloud.sql("SELECT COUNT(*) FROM cloud.Table1") == [(5,)]


def test_operator_queries_and_outbound_backup_restore(fresh, tmp_path):
    line, cloud = fresh
    add_rows(line, "A", 6, "2024-05-01 08:00:00")
    line.sql("INSERT INTO factory.Table1 (PackCode, parentcode, CreatedDate, product) VALUES "
             "('DUP', 'P9', '2024-05-01 09:00:00', 'd1'), ('DUP', 'P9', '2024-05-01 09:00:01', 'd2')")  # fmt: skip
    run_route(line, cloud, tmp_path, "A")
    assert cloud.sql("SELECT COUNT(*) FROM cloud.Table1") == [(7,)]  # DUP's second: a conflict
    assert ok(feed(line, "factory", "021_duplicate_packcodes.sql")).split() == ["DUP", "2"]
    since = ok(source(line, "factory", "020_rows_since.sql", since="2024-05-01 09:00"))
    assert [row.split("\t")[1] for row in since.splitlines()] == ["DUP", "DUP"]
    cloud.sql("UPDATE cloud.Table1 SET chuku='是', jxs='甲', cky='仓' WHERE parentcode='PA0'")
    outbound = "SELECT COUNT(*) FROM cloud.Table1 WHERE chuku='是' AND jxs='甲' AND cky='仓'"
    assert cloud.sql(outbound) == [(3,)]
    for _ in range(2):
        ok(source(cloud, "cloud", "022_backup_outbound_fields.sql", backup_table="Table1_bak"))
    ok(source(cloud, "cloud", "023_undo_outbound_by_parent.sql", parent_code="PA0"))
    assert cloud.sql(outbound) == [(0,)]
    for _ in range(2):
        ok(
            source(
                cloud, "cloud", "024_restore_outbound_from_backup.sql", backup_table="Table1_bak"
            )
        )
    assert cloud.sql(outbound) == [(3,)]
