"""mysql_sync edge cases from an adversarial review, each reproduced on real throwaway servers
before it was fixed: rows that share (cursor, key) across a page boundary, keys matched under
the wrong collation, a row hidden by another unique key, a year-1 cursor, rows larger than
either server's max_allowed_packet, a NULL key at the watermark's own cursor, over-long keys,
and TLS refused before any password is sent."""

from __future__ import annotations

import socket
import struct
import threading

import pymysql
import pytest
from mysql_env import cloud, line_sql, rows, source, sync

pytestmark = pytest.mark.mysql


def test_rows_sharing_cursor_and_key_across_a_page_boundary_are_all_read(env):
    filler = [(f"F{i:03d}", "p", "2024-05-01 08:00:00", "f", "1") for i in range(49)]
    twins = [("DUP", "p", "2024-05-01 08:00:01", "first", "1"),
             ("DUP", "p", "2024-05-01 08:00:01", "second", "2")]  # fmt: skip
    env.add("line1", filler + twins)  # page = batch_rows = 50: the twins straddle it
    code, rep = env.run("--init-target", "--source", "line1")
    r = source(rep, "line1")["tables"][0]
    assert (code, r["read"], r["conflicts"]) == (0, 51, 1)
    assert cloud(env, "SELECT key_value FROM sync_conflicts") == [("DUP",)]


def test_keys_are_matched_under_the_target_collation(env):
    for line in ("line1", "line2"):
        line_sql(env, line, "ALTER TABLE Table1 MODIFY PackCode VARCHAR(64) COLLATE utf8mb4_bin")
    assert env.run("--init-target")[0] == 0
    cloud(env, "ALTER TABLE Table1 MODIFY PackCode VARCHAR(64) COLLATE utf8mb4_general_ci")
    env.add("line1", [("abc", "p", "2024-05-01 08:00:00", "from line1", "1")])
    env.add("line2", [("ABC", "p", "2024-05-01 08:00:01", "from line2", "2")])
    code, rep = env.run(max_parallel_lines=1)
    r2 = source(rep, "line2")["tables"][0]
    assert (code, r2["inserted"], r2["present"], r2["conflicts"]) == (0, 0, 0, 1)


def test_a_latin1_line_key_against_a_utf8mb4_cloud_key(env):
    for line in ("line1", "line2"):
        line_sql(env, line, "ALTER TABLE Table1 MODIFY PackCode VARCHAR(64) CHARACTER SET latin1")
    assert env.run("--init-target")[0] == 0
    cloud(env, "ALTER TABLE Table1 MODIFY PackCode VARCHAR(64) CHARACTER SET utf8mb4 NOT NULL")
    env.add("line1", rows("A", 3))
    for _ in range(2):  # the second run re-reads the rows in the lookback pass
        code, rep = env.run("--source", "line1")
        assert code == 0, source(rep, "line1")
    assert source(rep, "line1")["tables"][0]["present"] == 3


def test_a_row_hidden_by_another_unique_key_is_a_reject(env):
    assert env.run("--init-target")[0] == 0
    cloud(env, "ALTER TABLE Table1 ADD UNIQUE KEY uq_parent (parentcode)")
    env.add("line1", [("K1", "P1", "2024-05-01 08:00:00", "a", "1"),
                      ("K2", "P1", "2024-05-01 08:00:01", "b", "1")])  # fmt: skip
    code, rep = env.run("--source", "line1")
    r = source(rep, "line1")["tables"][0]
    assert (code, r["inserted"], r["present"], r["rejected"]) == (0, 1, 0, 1)
    assert cloud(env, "SELECT key_value, error_code FROM sync_rejects") == [("K2", 1062)]


def test_a_year_one_cursor_does_not_stop_the_line(env):
    env.add("line1", [("MIN", "p", "0001-01-01 00:00:00", "min", "1")])
    assert env.run("--init-target", "--source", "line1")[0] == 0
    env.add("line1", rows("A", 3))
    for _ in range(2):
        code, rep = env.run("--source", "line1")
        assert code == 0, source(rep, "line1")
    assert {"A00000", "A00001", "A00002", "MIN"} <= set(env.target_rows())


@pytest.mark.parametrize("server", ["cloud", "line1"])
def test_a_row_over_either_max_allowed_packet_is_a_reject_and_later_rows_flow(env, server):
    for line in ("line1", "line2"):
        line_sql(env, line, "ALTER TABLE Table1 ADD note MEDIUMTEXT NULL")
    assert env.run("--init-target")[0] == 0
    env.add("line1", rows("A", 2))
    line_sql(env, "line1", "INSERT INTO Table1 (PackCode, CreatedDate, note) VALUES "
             "('BIG', '2024-05-01 09:00:00', REPEAT('x', 40000))")  # fmt: skip
    env.add("line1", [("Z1", "p", "2024-05-01 10:00:00", "after", "1")])
    env.s[server].sql("SET GLOBAL max_allowed_packet = 32768")
    try:
        for _ in range(2):
            code, rep = env.run("--source", "line1")
            assert code == 0, source(rep, "line1")
    finally:
        env.s[server].sql("SET GLOBAL max_allowed_packet = 16777216")
    assert "Z1" in env.target_rows() and "BIG" not in env.target_rows()
    ((key, error),) = cloud(env, "SELECT key_value, error FROM sync_rejects")
    assert key == "BIG" and "max_allowed_packet" in error


def test_a_null_key_committed_late_at_the_watermark_cursor_is_recorded(env):
    env.add("line1", [("K1", "p", "2024-05-01 08:00:10", "a", "1")])
    assert env.run("--init-target", "--source", "line1")[0] == 0
    env.add("line1", [(None, "p", "2024-05-01 08:00:09", "late, 1 s before", "1"),
                      (None, "p", "2024-05-01 08:00:10", "late, same cursor", "1")])  # fmt: skip
    assert env.run("--source", "line1")[0] == 0
    assert len(cloud(env, "SELECT row_json FROM sync_rejects")) == 2


def test_a_key_longer_than_the_bookkeeping_columns_is_refused_at_start(env):
    for line in ("line1", "line2"):
        line_sql(env, line, "ALTER TABLE Table1 MODIFY PackCode VARCHAR(300) NULL")
    code, rep = env.run("--init-target", "--source", "line1")
    assert code == 2 and "255" in source(rep, "line1")["error"]


def test_required_tls_sends_no_password_to_a_server_without_tls(monkeypatch):
    """A loopback stand-in for a server that offers no TLS and asks for the password in clear:
    the client must hang up after the greeting, whatever the PyMySQL version."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    seen: dict = {}

    def packet(seq: int, payload: bytes) -> bytes:
        return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload

    def serve() -> None:
        conn, _ = srv.accept()
        caps = 0x1 | 0x8 | 0x200 | 0x2000 | 0x8000 | 0x20000 | 0x80000  # no CLIENT_SSL (0x800)
        greeting = (b"\x0a5.7.99-fake\0" + struct.pack("<I", 7) + b"abcdefgh\0"
                    + struct.pack("<H", caps & 0xFFFF) + b"\x2d" + struct.pack("<H", 2)
                    + struct.pack("<H", caps >> 16) + bytes([21]) + b"\0" * 10
                    + b"ijklmnopqrst\0mysql_native_password\0")  # fmt: skip
        conn.sendall(packet(0, greeting))
        conn.settimeout(5)
        try:
            head = conn.recv(4, socket.MSG_WAITALL)
            if len(head) == 4:
                seen["answer"] = conn.recv(int.from_bytes(head[:3], "little"), socket.MSG_WAITALL)
                conn.sendall(packet(head[3] + 1, b"\xfemysql_clear_password\0\0"))
                head = conn.recv(4, socket.MSG_WAITALL)
                seen["password"] = conn.recv(int.from_bytes(head[:3], "little"), socket.MSG_WAITALL)
        except OSError:
            pass
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    monkeypatch.setenv("TLS_TEST_PW", "s3cret-cloud-pw")
    ep = sync.Endpoint(name="cloud", host="127.0.0.1", port=srv.getsockname()[1], user="sync",
                       database="cloud", password_env="TLS_TEST_PW", ssl_mode="required")  # fmt: skip
    with pytest.raises(pymysql.err.OperationalError, match="TLS"):
        sync.connect(ep, autocommit=True)
    thread.join(10)
    srv.close()
    assert "password" not in seen and b"s3cret" not in seen.get("answer", b"")
