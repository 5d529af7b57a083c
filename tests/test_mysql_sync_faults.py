"""mysql_sync under the faults a factory produces, each against real throwaway MariaDB servers.
One test (or more) per observation of the fault report, numbered as there:

 1 zero / zero-in-date cursor values           6 config that could inject SQL
 2 every column type                           7 secrets in messages and in the secrets file
 3 a stale lock, a run that dies half-open,    8 TLS modes
   max_rows_per_run below the lookback rows   10 lines in parallel; line-side ALTER
 4 a verifier that explains only what it can     not blocked; flat dry-run memory
 5 values that would change silently
(9, least-privilege grants, is in test_mysql_sync_ops.py.)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mysql_env import SYNC_PATH, cloud, line_sql, rows, source, sync, wait_lock_free

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mariadb_harness as mh  # noqa: E402

pytestmark = pytest.mark.mysql


# ---------------------------------------------------------------------------------------- 1
def test_zero_and_zero_in_date_cursor_rows_are_rejected_and_later_rows_flow(env):
    env.add("line1", rows("A", 3))
    # A line application in sql_mode='' stores zero and zero-in-date values.
    for key, value in [("Z0", "0000-00-00 00:00:00"), ("Z1", "2024-05-00 09:00:00")]:
        line_sql(env, "line1", "INSERT INTO Table1 (PackCode, CreatedDate, product) VALUES "
                 "(%s, %s, 'bad')", (key, value), mode="")  # fmt: skip
    # Z1 ('2024-05-00') sorts after every April row and before 2024-05-01: with one row per run
    # it would have been the watermark of a batch.
    env.add("line1", rows("B", 3, start="2024-04-30 23:00:00"))
    code, rep = env.run("--init-target", "--source", "line1", batch_rows=1)
    assert code == 0, rep
    r = source(rep, "line1")["tables"][0]
    assert (r["inserted"], r["rejected"]) == (6, 2)
    assert sync.usable_time(r["watermark"])
    reasons = dict(cloud(env, "SELECT key_value, error FROM sync_rejects"))
    assert set(reasons) == {"Z0", "Z1"} and all("zero" in e for e in reasons.values())
    env.add("line1", rows("C", 2, start="2024-05-02 08:00:00"))
    code, rep = env.run("--source", "line1", batch_rows=1)
    assert code == 0 and source(rep, "line1")["tables"][0]["inserted"] == 2
    assert len(env.target_rows()) == 8


def test_an_unusable_stored_watermark_is_repaired_with_a_message(env, capsys):
    env.add("line1", rows("A", 5))
    assert env.run("--init-target", "--source", "line1")[0] == 0
    # What the old version left behind after adopting a zero-in-date cursor.
    cloud(env, "UPDATE sync_state SET cursor_value = '2024-05-00 09:00:00.000000', key_value = 'Z'")
    env.add("line1", rows("B", 4, start="2024-05-01 09:00:00"))
    code, rep = env.run("--source", "line1")
    assert code == 0, rep
    r = source(rep, "line1")["tables"][0]
    assert r["inserted"] == 4 and r["watermark"].startswith("2024-05-01 09:00:03")
    assert "is not a usable date; repaired" in capsys.readouterr().err
    (state,) = cloud(env, "SELECT cursor_value FROM sync_state")
    assert sync.usable_time(state[0])


# ---------------------------------------------------------------------------------------- 2
TYPE_COLUMNS = {
    "c_tiny": ("TINYINT", "-128"), "c_utiny": ("TINYINT UNSIGNED", "255"),
    "c_big": ("BIGINT", "-9223372036854775808"), "c_ubig": ("BIGINT UNSIGNED", "18446744073709551615"),
    "c_dec": ("DECIMAL(30,10)", "-12345678901234567890.0123456789"),
    "c_float": ("FLOAT", "16777216"), "c_float2": ("FLOAT", "3.14159274"),
    "c_double": ("DOUBLE", "0.1"), "c_bit1": ("BIT(1)", "b'1'"), "c_bit10": ("BIT(10)", "b'1010'"),
    "c_bit64": ("BIT(64)", "b'1" + "0" * 63 + "'"),
    "c_char": ("CHAR(5)", "'ab'"), "c_text": ("TEXT", "'a\\\\b''c\\nd 😀'"),
    "c_latin": ("VARCHAR(10) CHARACTER SET latin1", "'café'"),
    "c_bin": ("BINARY(4)", "X'00FF10'"), "c_vbin": ("VARBINARY(8)", "X'00'"),
    "c_blob": ("BLOB", "X'DEADBEEF00'"), "c_date": ("DATE", "'2024-02-29'"),
    "c_time": ("TIME(3)", "'-838:59:58.999'"), "c_dt": ("DATETIME(6)", "'2024-05-01 08:00:00.123456'"),
    "c_ts": ("TIMESTAMP(3) NULL", "'2024-05-01 08:00:00.125'"), "c_year": ("YEAR", "2155"),
    "c_enum": ("ENUM('a','b c','d''e')", "'d''e'"), "c_set": ("SET('x','y','z')", "'x,z'"),
    "c_json": ("JSON", "'{\"a\": [1, 2.5, \"\\\\u00e9\"]}'"),
    "c_inet6": ("INET6", "'2001:db8::1'"), "c_uuid": ("UUID", "'123e4567-e89b-12d3-a456-426614174000'"),
    "c_point": ("POINT", "ST_GeomFromText('POINT(1.5 -2)')"),
    "c_geom": ("GEOMETRY", "ST_GeomFromText('POLYGON((0 0,1 0,1 1,0 0))', 4326)"),
}  # fmt: skip


def exact(col: str, kind: str) -> str:
    """An independent exact rendering of a value for the comparison (not the job's own)."""
    if kind.startswith("FLOAT") or kind.startswith("DOUBLE"):
        return f"CAST(CAST({col} AS DOUBLE) AS CHAR)"  # shortest text of the exact double
    if kind.startswith("BIT"):
        return f"BIN({col})"
    if kind in ("POINT", "GEOMETRY"):
        return f"CONCAT(HEX(ST_AsBinary({col})), '/', ST_SRID({col}))"
    return f"HEX({col})"


def test_every_column_type_is_copied_exactly(env):
    cols = ", ".join(f"{name} {kind} NULL" for name, (kind, _) in TYPE_COLUMNS.items())
    for line in ("line1",):
        line_sql(env, line, f"CREATE TABLE Types (PackCode VARCHAR(20) PRIMARY KEY, "
                 f"CreatedDate DATETIME(6) NOT NULL, {cols})")  # fmt: skip
        values = ", ".join(v for _, v in TYPE_COLUMNS.values())
        line_sql(env, line, f"INSERT INTO Types VALUES ('T1', '2024-05-01 08:00:00', {values})")
        nulls = ", ".join("NULL" for _ in TYPE_COLUMNS)
        line_sql(env, line, f"INSERT INTO Types VALUES ('T2', '2024-05-01 08:00:01', {nulls})")
        # A value the line accepted in sql_mode='' but a strict target refuses: rejected per
        # row with the server's error, and the rows after it still flow.
        line_sql(env, line, "INSERT INTO Types (PackCode, CreatedDate, c_dt) VALUES "
                 "('T3', '2024-05-01 08:00:02', '2024-02-30 00:00:00')", mode="")  # fmt: skip
        line_sql(env, line, "INSERT INTO Types (PackCode, CreatedDate, c_tiny) VALUES "
                 "('T4', '2024-05-01 08:00:03', 1)")  # fmt: skip
    path = env.config()
    text = path.read_text().replace('source = "Table1"', 'source = "Types"')
    text = text.replace('target = "Table1"', 'target = "Types"')
    text = text.replace('protected = ["chuku", "jxs", "cky"]', "protected = []")
    text = text.replace('exclude = ["id"]', "exclude = []")
    path.write_text(text)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = sync.main(["--config", str(path), "--json", "--init-target", "--source", "line1"])
    rep = json.loads(out.getvalue())
    assert code == 0, rep
    r = source(rep, "line1")["tables"][0]
    assert (r["inserted"], r["rejected"]) == (3, 1), r
    (err,) = cloud(env, "SELECT key_value, error_code FROM sync_rejects")
    assert err == ("T3", 1292)
    expr = ", ".join(exact(n, k) for n, (k, _) in TYPE_COLUMNS.items())
    query = f"SELECT PackCode, {expr} FROM Types WHERE PackCode <> 'T3' ORDER BY PackCode"
    assert line_sql(env, "line1", query) == cloud(env, query)
    # The same copy again is recognised as present, not as a conflict (exact round trip).
    with contextlib.redirect_stdout(io.StringIO()) as again:
        assert sync.main(["--config", str(path), "--json", "--source", "line1"]) == 0
    r = json.loads(again.getvalue())["sources"][0]["tables"][0]
    assert (r["conflicts"], r["present"]) == (0, 3)


# ---------------------------------------------------------------------------------------- 3
def test_a_stale_lock_is_reported_stuck_not_skipped(env):
    env.add("line1", rows("A", 3))
    assert env.run("--init-target", "--source", "line2")[0] == 0
    holder = env.s["cloud"].connect()
    with holder.cursor() as cur:
        cur.execute("SELECT GET_LOCK('mysql_sync:cloud:line1', 0)")
    try:
        code, rep = env.run(lock_stale_seconds=30)
        assert code == 0 and source(rep, "line1")["status"] == "locked"  # a live holder
        time.sleep(2.2)
        code, rep = env.run(lock_stale_seconds=2)
        assert code == 1
        s = source(rep, "line1")
        assert s["status"] == "stuck" and "KILL" in s["error"] and "line1" in s["error"]
        assert source(rep, "line2")["status"] == "ok"
    finally:
        holder.close()
    wait_lock_free(env.s["cloud"], "mysql_sync:cloud:line1")
    code, rep = env.run()
    assert code == 0 and source(rep, "line1")["status"] == "ok"


def test_a_run_that_dies_half_open_releases_its_lock_within_wait_timeout(env, tmp_path):
    env.add("line1", rows("A", 400))
    assert env.run("--init-target", "--source", "line2")[0] == 0
    config = env.config(batch_rows=10, throttle_seconds=0.2, target_wait_timeout=5)
    proc = subprocess.Popen(
        [sys.executable, str(SYNC_PATH), "--config", str(config), "--source", "line1"],
        env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not cloud(env, "SELECT 1 FROM sync_state WHERE source_name = 'line1'"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGSTOP)  # the run hangs with its session (and lock) open
        code, rep = env.run("--source", "line1")
        assert code == 0 and source(rep, "line1")["status"] == "locked"
        time.sleep(7)  # > wait_timeout: the cloud closes the silent session, freeing the lock
        code, rep = env.run("--source", "line1")
        assert code == 0 and source(rep, "line1")["status"] == "ok", rep
    finally:
        proc.kill()
        proc.wait()
    assert len(env.target_rows()) == 400


def test_max_rows_per_run_below_the_lookback_rows_still_advances(env):
    env.add("line1", rows("A", 60))  # 60 rows within one minute, all inside the lookback
    assert env.run("--init-target", "--source", "line1", max_rows_per_run=10)[0] == 0
    marks = []
    for _ in range(6):
        code, rep = env.run("--source", "line1", max_rows_per_run=10)
        assert code == 0
        marks.append(source(rep, "line1")["tables"][0]["watermark"])
    assert all(a < b for a, b in zip(marks[:5], marks[1:5]))  # each run moved it forward
    assert marks[5] == marks[4]  # and then there was nothing left
    assert len(env.target_rows()) == 60
    code, rep = env.run("--verify", "--source", "line1")
    assert code == 0 and source(rep, "line1")["verify"][0]["checked"] == 60


# ---------------------------------------------------------------------------------------- 4
def test_verify_explains_a_reject_only_while_it_matches_the_line_row(env):
    env.add("line1", rows("A", 5))
    assert env.run("--init-target", "--source", "line1")[0] == 0
    cloud(env, "ALTER TABLE Table1 MODIFY product VARCHAR(12)")
    env.add("line1", [("LONG1", "p", "2024-05-02 08:00:00", "x" * 40, "1")])
    env.add("line1", rows("B", 3, start="2024-05-02 09:00:00"))
    code, rep = env.run("--source", "line1")
    assert code == 0 and source(rep, "line1")["tables"][0]["rejected"] == 1
    code, rep = env.run("--verify", "--source", "line1", lookback_seconds=1)
    v = source(rep, "line1")["verify"][0]
    assert code == 0 and v["missing_explained"] == ["LONG1"] and v["missing"] == []
    # Fixed on the line: the stored reject no longer describes the row: a real loss now.
    line_sql(env, "line1", "UPDATE Table1 SET product = 'short' WHERE PackCode = 'LONG1'")
    code, rep = env.run("--verify", "--source", "line1", lookback_seconds=1)
    v = source(rep, "line1")["verify"][0]
    assert code == 1 and v["missing"] == ["LONG1"]


def test_verify_runs_beside_a_sync_and_reports_what_it_did_not_check(env):
    env.add("line1", rows("A", 5) + [(None, "p", "2024-05-01 08:00:02", "nokey", "1")])
    assert env.run("--init-target", "--source", "line1")[0] == 0
    env.add("line1", rows("B", 2, start="2024-06-01 08:00:00"))
    holder = env.s["cloud"].connect()
    with holder.cursor() as cur:
        cur.execute("SELECT GET_LOCK('mysql_sync:cloud:line1', 0)")  # a sync is running
    try:
        code, rep = env.run("--verify", "--source", "line1")
    finally:
        holder.close()
    v = source(rep, "line1")["verify"][0]
    assert code == 0 and source(rep, "line1")["status"] == "ok"
    assert (v["checked"], v["unchecked_after_watermark"], v["unchecked_not_copyable"]) == (5, 2, 1)
    crontab = (SYNC_PATH.parent / "crontab.example").read_text()
    flocks = [line.split("flock -n ")[1].split()[0] for line in crontab.splitlines()
              if "flock -n" in line and not line.startswith("#")]  # fmt: skip
    assert len(flocks) == len(set(flocks)) == 2, "sync and verify need their own flock files"


# ---------------------------------------------------------------------------------------- 5
def test_timestamps_keep_their_instant_across_time_zones(env):
    for line in ("line1",):
        line_sql(env, line, "ALTER TABLE Table1 ADD COLUMN shipped TIMESTAMP(6) NULL")
    cloud_tz = {"time_zone": '"+00:00"'}
    env.add("line1", rows("A", 2))
    # The line application writes TIMESTAMPs in its own +08:00 session.
    conn = env.s["line1"].connect("factory")
    with conn.cursor() as cur:
        cur.execute("SET time_zone = '+08:00'")
        cur.execute("UPDATE Table1 SET shipped = '2024-05-01 16:00:00'")
    conn.close()
    code, rep = env.run("--init-target", "--source", "line1", target=cloud_tz,
                        sources={"line1": {"time_zone": '"+08:00"'}})  # fmt: skip
    assert code == 0, rep
    instant = "SELECT UNIX_TIMESTAMP(shipped) FROM Table1 ORDER BY PackCode"
    assert cloud(env, instant) == line_sql(env, "line1", instant)
    assert str(cloud(env, instant)[0][0]).startswith("1714550400")  # 08:00 UTC
    code, rep = env.run(
        "--verify", "--source", "line1", sources={"line1": {"time_zone": '"+08:00"'}}
    )
    assert code == 0 and source(rep, "line1")["verify"][0]["different"] == []


def test_a_narrower_target_column_is_refused_at_start(env):
    env.add("line1", rows("A", 3))
    assert env.run("--init-target", "--source", "line1")[0] == 0
    cloud(env, "ALTER TABLE Table1 MODIFY weight DECIMAL(10,2)")
    env.add("line1", rows("B", 2, start="2024-05-02 08:00:00"))
    code, rep = env.run("--source", "line1")
    assert code == 2 and source(rep, "line1")["status"] == "config_error"
    assert "weight" in source(rep, "line1")["error"]
    cloud(env, "ALTER TABLE Table1 MODIFY weight DECIMAL(12,3), MODIFY CreatedDate DATETIME(0)")
    code, rep = env.run("--source", "line1")
    assert code == 2 and "CreatedDate" in source(rep, "line1")["error"]
    assert len(env.target_rows()) == 3  # nothing was rounded into the cloud


def test_a_key_equal_under_the_collation_is_a_conflict_not_present(env):
    env.add("line1", [("CAFÉ", "p", "2024-05-01 08:00:00", "from line1", "1")])
    env.add("line2", [("CAFE", "p", "2024-05-01 08:00:01", "from line2", "2")])
    code, rep = env.run("--init-target", max_parallel_lines=1)
    assert code == 0
    r2 = source(rep, "line2")["tables"][0]
    assert (r2["inserted"], r2["present"], r2["conflicts"]) == (0, 0, 1)
    (c,) = cloud(env, "SELECT source_name, key_value, winner_source FROM sync_conflicts")
    assert c == ("line2", "CAFE", "line1")


# ---------------------------------------------------------------------------------------- 6
def test_config_that_could_inject_is_refused(env):
    mode = '"STRICT_ALL_TABLES,NO_BACKSLASH_ESCAPES"'
    for where in ({"target": {"sql_mode": mode}}, {"sources": {"line1": {"sql_mode": mode}}},
                  {"sources": {"line1": {"name": '"line1\\n"'}}}):  # fmt: skip
        code, rep = env.run(**where)
        assert code == 2 and rep == {}
    # The cloud server itself defaulting to NO_BACKSLASH_ESCAPES is harmless: the job sets its
    # own session mode, and a backslash and a quote typed on a line arrive as typed.
    env.s["cloud"].sql("SET GLOBAL sql_mode = 'NO_BACKSLASH_ESCAPES'")
    try:
        evil = "x\\', 'YES', 'HACKED') -- "
        env.add("line1", [("Q1", "p", "2024-05-01 08:00:00", evil, "1")])
        assert env.run("--init-target", "--source", "line1")[0] == 0
    finally:
        env.s["cloud"].sql("SET GLOBAL sql_mode = DEFAULT")
    assert cloud(env, "SELECT product, chuku, jxs FROM Table1") == [(evil, None, None)]


# ---------------------------------------------------------------------------------------- 7
def test_no_message_shows_a_password(env, tmp_path, capsys):
    secret = "s3cr3t-Pa55"
    bad = tmp_path / "bad.cnf"
    bad.write_text(f"user=root\npassword={secret}\n")  # no [client] section
    for flags in ((), ("--verify",)):
        code, rep = env.run(*flags, sources={"line1": {"password_env": None,
                                                        "option_file": f'"{bad}"'}})  # fmt: skip
        captured = capsys.readouterr()
        assert code == 2
        assert secret not in captured.err + captured.out + str(rep)
    # A malformed secrets file line is named by number, never echoed.
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"{secret}\n")
    secrets.chmod(0o600)
    code, rep = env.run(secrets_file=str(secrets))
    captured = capsys.readouterr()
    assert code == 2 and "line 1" in captured.err and secret not in captured.err + captured.out


def test_the_secrets_file_is_read_literally_and_must_be_private(env, tmp_path, monkeypatch):
    password = "a$HOME`touch pwned`\"b' #c"
    for name in ("line1", "cloud"):
        env.s[name].sql("CREATE USER IF NOT EXISTS 'tricky'@'%%' IDENTIFIED BY %s", (password,))
        env.s[name].sql("GRANT ALL ON *.* TO 'tricky'@'%'")
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"# the job reads this itself\nTRICKY={password}\n")
    secrets.chmod(0o644)
    user = {"user": '"tricky"', "password_env": '"TRICKY"'}
    env.add("line1", rows("A", 2))
    code, _ = env.run("--init-target", "--source", "line1", secrets_file=str(secrets),
                      target=user, sources={"line1": user})  # fmt: skip
    assert code == 2  # readable by others: refused
    secrets.chmod(0o600)
    monkeypatch.chdir(tmp_path)
    code, rep = env.run("--init-target", "--source", "line1", secrets_file=str(secrets),
                        target=user, sources={"line1": user})  # fmt: skip
    assert code == 0, rep
    assert len(env.target_rows()) == 2 and not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------------------- 8
@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """A MariaDB with a certificate for IP 127.0.0.1 only, signed by a test CA."""
    base = tmp_path_factory.mktemp("tls")
    ssl_dir = base / "ssl"
    ssl_dir.mkdir()

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=ssl_dir, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=test-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (ssl_dir / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    server = mh.start_servers(base, ["tlscloud"], extra_args=[
        f"--ssl-ca={ssl_dir / 'ca.pem'}", f"--ssl-cert={ssl_dir / 'server.pem'}",
        f"--ssl-key={ssl_dir / 'server.key'}"])["tlscloud"]  # fmt: skip
    server.sql("CREATE DATABASE cloud")
    yield server, ssl_dir / "ca.pem"
    server.stop()


def test_tls_modes_refuse_what_they_promise_to(env, tls_server):
    server, ca = tls_server
    env.add("line1", rows("A", 2))
    tls = {"port": str(server.port), "ssl_ca": f'"{ca}"'}

    def run(*flags, **target):
        return env.run(*flags, "--source", "line1", target={**tls, **target}, retries=0)

    code, rep = run("--init-target", host='"localhost"', ssl_mode='"required"')
    assert code == 0, rep  # required: the chain is checked against the CA, the name is not
    code, rep = run(host='"localhost"')  # default with a CA: verify_identity; name mismatch
    assert code == 1 and "certificate" in source(rep, "line1")["error"].lower()
    code, rep = run()  # 127.0.0.1 is the certificate's name
    assert code == 0, rep
    assert server.sql("SELECT COUNT(*) FROM cloud.Table1") == [(2,)]
    # `required` against a server without TLS (the plain cloud) never falls back to plain text.
    code, rep = env.run("--source", "line1", target={"ssl_mode": '"required"'}, retries=0)
    error = source(rep, "line1")["error"]
    assert code == 1 and ("TLS" in error or "SSL" in error), error


# --------------------------------------------------------------------------------------- 10
def test_a_frozen_line_does_not_delay_the_others(env):
    env.add("line1", rows("A", 30))
    env.add("line2", rows("B", 5))
    assert env.run("--init-target")[0] == 0
    env.add("line1", rows("C", 30, start="2024-05-02 08:00:00"))
    env.s["line2"].freeze()
    try:
        started = time.monotonic()
        code, rep = env.run(batch_rows=3, throttle_seconds=0.15)
        elapsed = time.monotonic() - started
    finally:
        env.s["line2"].thaw()
    assert code == 1
    assert source(rep, "line1")["status"] == "ok" and source(rep, "line2")["status"] == "failed"
    one, two = source(rep, "line1"), source(rep, "line2")
    # line2 burns connect_timeout x attempts (2 x 2 s) while line1 copies: the two overlap,
    # so the run takes about the longer of them, not their sum.
    assert one["started_s"] < two["finished_s"] and two["started_s"] < one["finished_s"]
    assert elapsed < (one["finished_s"] - one["started_s"]) + (two["finished_s"] - two["started_s"])


def test_a_line_side_alter_is_not_blocked_behind_the_copy(env):
    # 20 MB of rows: more than the socket buffers hold, so a single streaming read would keep
    # its statement (and the table's metadata lock) open for the whole throttled copy.
    big = [(f"A{i:06d}", "p" * 64, f"2024-05-01 08:00:00.{i:06d}", "x" * 199, "1")
           for i in range(70000)]  # fmt: skip
    env.add("line1", big)
    assert env.run("--init-target", "--source", "line2")[0] == 0
    done = threading.Event()
    result = {}

    def copy():
        result["run"] = env.run("--source", "line1", batch_rows=3500, throttle_seconds=0.4)
        done.set()

    worker = threading.Thread(target=copy)
    worker.start()
    time.sleep(2.0)
    assert not done.is_set()
    started = time.monotonic()
    line_sql(env, "line1", "ALTER TABLE Table1 ADD COLUMN note INT NULL")
    env.add("line1", [("NEW1", "p", "2025-01-01 00:00:00", "app write after the ALTER", "1")])
    waited = time.monotonic() - started
    finished_early = done.is_set()
    worker.join()
    line_sql(env, "line1", "ALTER TABLE Table1 DROP COLUMN note")
    assert not finished_early and waited < 1.5, waited  # one short page, not the whole copy
    assert result["run"][0] == 0


def test_dry_run_memory_is_bounded(env, monkeypatch):
    env.add("line1", rows("A", 40) + [("A00003", "p", "2024-05-01 08:01:00", "again", "1")])
    monkeypatch.setattr(sync, "DRY_RUN_KEYS", 10)
    code, rep = env.run("--init-target", "--dry-run", "--source", "line1", batch_rows=7)
    assert code == 0
    r = source(rep, "line1")["tables"][0]
    # The repeat of A00003 came 38 keys later, beyond the 10 remembered: counted as an insert.
    assert (r["inserted"], r["conflicts"]) == (41, 0)
    env.add("line1", [("A00039", "p", "2024-05-01 08:01:01", "again", "1")])
    code, rep = env.run("--init-target", "--dry-run", "--source", "line1", batch_rows=7)
    assert source(rep, "line1")["tables"][0]["conflicts"] == 1  # a near repeat is still seen


def test_a_wider_target_column_reads_back_as_present(env):
    line_sql(env, "line1", "ALTER TABLE Table1 ADD shipped DATETIME(3) NULL")
    env.add("line1", rows("A", 3))
    line_sql(env, "line1", "UPDATE Table1 SET shipped = '2024-05-01 08:00:00.125'")
    assert env.run("--init-target", "--source", "line1")[0] == 0
    cloud(env, "ALTER TABLE Table1 MODIFY weight DECIMAL(14,5), MODIFY shipped DATETIME(6)")
    code, rep = env.run("--source", "line1")
    r = source(rep, "line1")["tables"][0]
    assert code == 0 and (r["present"], r["conflicts"]) == (3, 0)
    code, rep = env.run("--verify", "--source", "line1", lookback_seconds=0)
    assert code == 0 and source(rep, "line1")["verify"][0]["different"] == []
