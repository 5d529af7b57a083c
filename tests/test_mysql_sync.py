"""mysql_sync/sync.py against real throwaway MariaDB servers: two sources (line1, line2) and one
target (cloud), started once per session on free loopback ports and stopped by PID at the end.
Each test starts from empty databases; a test that stops, freezes or kills a server brings it
back before it ends."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mysql_env import PW_ENV, SYNC_PATH, load_sync, rows, sync, wait_lock_free  # noqa: E402

pytestmark = pytest.mark.mysql


def test_first_sync_creates_target_and_copies_union(env):
    env.add("line1", rows("A", 120))
    env.add("line2", rows("B", 80))
    code, rep = env.run("--init-target")
    assert code == 0, rep
    r1, r2 = env.table_result(rep, "line1"), env.table_result(rep, "line2")
    assert (r1["read"], r1["inserted"], r1["present"]) == (120, 120, 0)
    assert (r2["read"], r2["inserted"], r2["present"]) == (80, 80, 0)
    target = env.target_rows()
    expected = {r[0]: r + ("line1",) for r in env.source_rows("line1")}
    expected.update({r[0]: r + ("line2",) for r in env.source_rows("line2")})
    assert target == expected
    pk = env.s["cloud"].sql(
        "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA='cloud' "
        "AND TABLE_NAME='Table1' AND CONSTRAINT_NAME='PRIMARY'"
    )
    assert pk == [("PackCode",)]
    # protected columns exist in the target but were never written (the source had chuku='否')
    assert env.s["cloud"].sql("SELECT COUNT(*) FROM cloud.Table1 WHERE chuku IS NOT NULL") == [(0,)]
    state = env.s["cloud"].sql(
        "SELECT source_name, cursor_value, key_value FROM cloud.sync_state ORDER BY 1"
    )
    assert state == [
        ("line1", "2024-05-01 08:01:59.000000", "A00119"),
        ("line2", "2024-05-01 08:01:19.000000", "B00079"),
    ]


def test_incremental_then_rerun_is_noop(env):
    env.add("line1", rows("A", 30))
    env.add("line2", rows("B", 20))
    assert env.run("--init-target")[0] == 0
    env.add("line1", rows("C", 7, start="2024-05-02 09:00:00"))
    code, rep = env.run()
    assert code == 0
    r1, r2 = env.table_result(rep, "line1"), env.table_result(rep, "line2")
    assert r1["inserted"] == 7 and r2["inserted"] == 0
    # the lookback window (10 min) re-reads the last 30 s of old rows: present, not inserted
    assert (r1["read"], r1["present"]) == (37, 30) and r2["present"] == r2["read"] == 20
    assert len(env.target_rows()) == 57
    before = env.s["cloud"].sql(
        "CHECKSUM TABLE cloud.Table1, cloud.sync_state, cloud.sync_conflicts"
    )
    state_before = env.s["cloud"].sql("SELECT * FROM cloud.sync_state ORDER BY 1")
    code, rep = env.run()
    assert code == 0
    assert [env.table_result(rep, s)["inserted"] for s in ("line1", "line2")] == [0, 0]
    assert (
        env.s["cloud"].sql("CHECKSUM TABLE cloud.Table1, cloud.sync_state, cloud.sync_conflicts")
        == before
    )
    assert env.s["cloud"].sql("SELECT * FROM cloud.sync_state ORDER BY 1") == state_before


def test_rows_sharing_one_timestamp_across_batches_and_runs(env):
    # 55 rows with the SAME cursor value, inserted in shuffled key order; batches of 7 and at
    # most 20 rows per run, no lookback: each run resumes inside the timestamp via (cursor, key).
    same = "2024-05-01 10:00:00.500000"
    keys = [f"S{(i * 37) % 55:03d}" for i in range(55)]
    env.add("line1", [(k, "p", same, "x", "1.000") for k in keys])
    env.add("line2", [("Z001", "p", same, "x", "1.000")])
    assert env.run("--init-target", "--source", "line2")[0] == 0
    inserted_per_run = []
    for _ in range(6):
        code, rep = env.run(
            "--source", "line1", lookback_seconds=0, batch_rows=7, max_rows_per_run=20
        )
        assert code == 0
        inserted_per_run.append(env.table_result(rep, "line1")["inserted"])
    assert inserted_per_run == [20, 20, 15, 0, 0, 0]
    assert sorted(k for k, r in env.target_rows().items() if r[-1] == "line1") == sorted(keys)
    assert env.s["cloud"].sql(
        "SELECT cursor_value, key_value FROM cloud.sync_state WHERE source_name='line1'"
    ) == [(same, "S054")]
    assert env.s["cloud"].sql("SELECT COUNT(*) FROM cloud.sync_conflicts") == [(0,)]


def test_datetime6_precision_and_4byte_characters_round_trip(env):
    data = [
        (
            "包装😀01",
            "父码𠀀",
            "2024-05-01 08:00:00.000001",
            "中文 产品 😀 𠀀 'quote' \\ back",
            "0.001",
        ),
        ("包装😀02", None, "2024-05-01 08:00:00.000002", "tab\tnew\nline\x00nul", None),
        ("包装😀03", "p", "2024-05-01 08:00:00.999999", "", "-9999999.999"),
    ]
    env.add("line1", data)
    code, _ = env.run("--init-target", lookback_seconds=0)
    assert code == 0
    assert list(env.target_rows().values()) == [r + ("line1",) for r in env.source_rows("line1")]
    assert env.s["cloud"].sql(
        "SELECT cursor_value FROM cloud.sync_state WHERE source_name='line1'"
    ) == [("2024-05-01 08:00:00.999999",)]
    # a row one microsecond after the watermark is new; one microsecond before (no lookback) is not
    env.add("line1", [("包装😀04", "p", "2024-05-01 08:00:01.000000", "later", "1.000")])
    code, rep = env.run(lookback_seconds=0)
    assert env.table_result(rep, "line1")["inserted"] == 1


def test_late_commit_inside_lookback_window_is_copied(env):
    assert env.run("--init-target")[0] == 0
    late = env.s["line1"].connect("factory", autocommit=False)
    with late.cursor() as cur:  # cursor value taken now, committed only after the next run
        cur.execute(
            "INSERT INTO Table1 (PackCode, CreatedDate, product) VALUES ('LATE', NOW(6), 'late')"
        )
    time.sleep(0.05)
    env.s["line1"].sql(
        "INSERT INTO factory.Table1 (PackCode, CreatedDate, product) VALUES ('EARLY', NOW(6), 'e')"
    )
    code, rep = env.run()
    assert code == 0 and env.table_result(rep, "line1")["inserted"] == 1
    late.commit()
    late.close()
    late_at, wm = env.s["line1"].sql(
        "SELECT (SELECT CreatedDate FROM factory.Table1 WHERE PackCode='LATE'), "
        "(SELECT CreatedDate FROM factory.Table1 WHERE PackCode='EARLY')"
    )[0]
    assert late_at < wm  # behind the watermark: only the lookback window can find it
    code, rep = env.run()
    assert code == 0 and env.table_result(rep, "line1")["inserted"] == 1
    assert set(env.target_rows()) == {"LATE", "EARLY"}


def test_duplicates_within_and_across_sources_go_to_conflicts(env):
    t = "2024-05-01 08:00:0"
    env.add("line1", [("K1", "p", t + "1", "A", "1.000"), ("K2", "p", t + "2", "first", "1.000"),
                      ("K2", "p", t + "3", "second", "1.000"), ("K3", "p", t + "4", "C", "3.000")])  # fmt: skip
    env.add("line2", [("K1", "p", t + "1", "A-prime", "1.000"), ("K3", "p", t + "4", "C", "3.000"),
                      ("K4", "p", t + "5", "D", "4.000")])  # fmt: skip
    # One line at a time, in config order, so that line1 is the first writer of K1 and K3.
    code, rep = env.run("--init-target", max_parallel_lines=1)
    assert code == 0
    r1, r2 = env.table_result(rep, "line1"), env.table_result(rep, "line2")
    assert (r1["inserted"], r1["present"], r1["conflicts"]) == (3, 0, 1)
    assert (r2["inserted"], r2["present"], r2["conflicts"]) == (1, 1, 1)
    target = env.target_rows()
    assert {k: (r[3], r[-1]) for k, r in target.items()} == {
        "K1": ("A", "line1"), "K2": ("first", "line1"), "K3": ("C", "line1"), "K4": ("D", "line2")
    }  # fmt: skip
    conflicts = env.s["cloud"].sql(
        "SELECT source_name, key_value, row_json, winner_source, seen_count "
        "FROM cloud.sync_conflicts ORDER BY source_name"
    )
    assert [(c[0], c[1], json.loads(c[2])["product"], c[3], c[4]) for c in conflicts] == [
        ("line1", "K2", "second", "line1", 1),
        ("line2", "K1", "A-prime", "line1", 1),
    ]
    # a rerun meets them again (lookback) but records each conflict once
    assert env.run()[0] == 0
    assert env.s["cloud"].sql("SELECT COUNT(*), SUM(seen_count) FROM cloud.sync_conflicts") == [
        (2, 4)
    ]
    assert env.target_rows() == target


def test_protected_columns_edited_in_target_survive_later_runs(env):
    env.add("line1", rows("A", 5))
    assert env.run("--init-target")[0] == 0
    env.s["cloud"].sql(
        "UPDATE cloud.Table1 SET chuku='是', jxs='经销商甲', cky='一号仓' WHERE PackCode='A00003'"
    )
    # the source changes the same fields (and the product) of that row; more rows arrive
    env.s["line1"].sql(
        "UPDATE factory.Table1 SET chuku='否', jxs='x', cky='y', product='changed' "
        "WHERE PackCode='A00003'"
    )
    env.add("line1", rows("B", 3, start="2024-05-01 08:00:06"))
    for _ in range(3):
        code, rep = env.run()
        assert code == 0
    assert env.s["cloud"].sql(
        "SELECT chuku, jxs, cky, product FROM cloud.Table1 WHERE PackCode='A00003'"
    ) == [("是", "经销商甲", "一号仓", "产品-A-3")]
    assert len(env.target_rows()) == 8
    # the changed source row is a recorded conflict, never an overwrite
    assert env.s["cloud"].sql("SELECT key_value FROM cloud.sync_conflicts") == [("A00003",)]


def test_null_key_null_cursor_and_oversize_value_go_to_rejects(env):
    env.add("line1", rows("A", 1))
    assert env.run("--init-target")[0] == 0
    env.s["cloud"].sql("ALTER TABLE cloud.Table1 MODIFY product VARCHAR(8) NULL")
    t = "2024-05-01 09:00:0"
    env.add("line1", [("OK1", "p", t + "1", "short", "1.000"), (None, "p", t + "2", "nokey", "1"),
                      ("", "p", t + "3", "emptykey", "1"), ("BIG", "p", t + "4", "x" * 50, "1"),
                      ("NOCUR", "p", None, "nocursor", "1"), ("OK2", "p", t + "5", "short2", "2")])  # fmt: skip
    code, rep = env.run(batch_rows=100)
    assert code == 0
    r = env.table_result(rep, "line1")
    assert (r["inserted"], r["rejected"]) == (2, 4)
    assert set(env.target_rows()) == {"A00000", "OK1", "OK2"}
    rejects = env.s["cloud"].sql(
        "SELECT key_value, error_code, error, row_json FROM cloud.sync_rejects ORDER BY id"
    )
    by_product = {json.loads(x[3])["product"]: x for x in rejects}
    assert set(by_product) == {"nocursor", "nokey", "emptykey", "x" * 50}
    assert by_product["x" * 50][:2] == ("BIG", 1406)
    assert "NULL cursor" in by_product["nocursor"][2]
    assert by_product["nokey"][0] is None and "key" in by_product["nokey"][2]


def test_kill9_target_mid_sync_then_rerun_gives_exact_union(env):
    env.add("line1", rows("A", 3000))
    env.add("line2", rows("B", 1500))
    assert env.run("--init-target", "--source", "line2", max_rows_per_run=1)[0] == 0
    cfg = env.config(batch_rows=100, throttle_seconds=0.02)
    proc = subprocess.Popen(
        [sys.executable, str(SYNC_PATH), "--config", str(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    cloud = env.s["cloud"]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = cloud.sql("SELECT COALESCE(SUM(rows_inserted), 0) FROM cloud.sync_state")[0][0]
            if got >= 600:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "sync finished before the kill"
        cloud.kill9()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if cloud.proc.poll() is not None:
            cloud.start()
            cloud.wait_ready()
    assert proc.returncode == 1, (out, err)
    assert "FAILED" in out
    partial = cloud.sql("SELECT COUNT(*) FROM cloud.Table1")[0][0]
    assert 0 < partial < 4500
    code, rep = env.run()
    assert code == 0, rep
    expected = {r[0]: r + ("line1",) for r in env.source_rows("line1")}
    expected.update({r[0]: r + ("line2",) for r in env.source_rows("line2")})
    assert env.target_rows() == expected
    assert cloud.sql("SELECT COUNT(*) FROM cloud.sync_conflicts") == [(0,)]


def test_source_down_or_frozen_is_skipped_while_the_other_syncs(env):
    env.add("line1", rows("A", 10))
    env.add("line2", rows("B", 10))
    assert env.run("--init-target", "--source", "line1")[0] == 0
    line2 = env.s["line2"]
    line2.stop()
    try:
        env.add("line1", rows("C", 4, start="2024-05-02 08:00:00"))
        code, rep = env.run()
    finally:
        line2.start()
        line2.wait_ready()
    assert code == 1
    status = {s["source"]: s for s in rep["sources"]}
    assert status["line1"]["status"] == "ok" and status["line1"]["tables"][0]["inserted"] == 4
    assert status["line2"]["status"] == "failed" and status["line2"]["attempts"] == 2
    assert "2003" in status["line2"]["error"]  # can't connect

    line2.freeze()
    try:
        env.add("line1", rows("D", 3, start="2024-05-03 08:00:00"))
        started = time.monotonic()
        code, rep = env.run()
        elapsed = time.monotonic() - started
    finally:
        line2.thaw()
    assert code == 1
    status = {s["source"]: s for s in rep["sources"]}
    assert status["line1"]["status"] == "ok" and status["line1"]["tables"][0]["inserted"] == 3
    assert status["line2"]["status"] == "failed"
    assert elapsed < 30  # bounded by the timeouts, not hanging on the frozen server
    code, rep = env.run()
    assert code == 0 and env.table_result(rep, "line2")["inserted"] == 10


def test_overlapping_run_steps_aside(env):
    env.add("line1", rows("A", 5))
    env.add("line2", rows("B", 5))
    assert env.run("--init-target", "--source", "line2")[0] == 0
    holder = env.s["cloud"].connect()
    with holder.cursor() as cur:
        cur.execute("SELECT GET_LOCK('mysql_sync:cloud:line1', 0)")
        assert cur.fetchone() == (1,)
    code, rep = env.run()
    assert code == 0
    status = {s["source"]: s["status"] for s in rep["sources"]}
    assert status == {"line1": "locked", "line2": "ok"}
    assert not any(k.startswith("A") for k in env.target_rows())
    holder.close()  # releases the lock
    wait_lock_free(env.s["cloud"], "mysql_sync:cloud:line1")
    code, rep = env.run()
    assert code == 0 and env.table_result(rep, "line1")["inserted"] == 5


def test_dry_run_writes_nothing(env):
    env.add("line1", rows("A", 10))
    # on an empty target: shows the DDL and the counts, creates nothing
    code, rep = env.run("--init-target", "--dry-run")
    assert code == 0
    assert any("PRIMARY KEY (`PackCode`)" in s for s in rep["init_statements"])
    assert env.table_result(rep, "line1")["inserted"] == 10
    assert env.s["cloud"].sql("SHOW TABLES FROM cloud") == []
    # a plain run without the bookkeeping tables is a configuration error, not a crash
    assert env.run()[0] == 2
    assert env.run("--init-target", "--source", "line1", max_rows_per_run=4)[0] == 0
    env.add("line2", rows("B", 6) + [(None, "p", "2024-05-01 08:00:09", "nokey", "1")])
    tables = "cloud.Table1, cloud.sync_state, cloud.sync_conflicts, cloud.sync_rejects"
    before = env.s["cloud"].sql(f"CHECKSUM TABLE {tables}")
    code, rep = env.run("--dry-run")
    assert code == 0
    assert env.s["cloud"].sql(f"CHECKSUM TABLE {tables}") == before
    r1, r2 = env.table_result(rep, "line1"), env.table_result(rep, "line2")
    assert (r1["inserted"], r1["present"]) == (6, 4)
    assert (r2["inserted"], r2["rejected"]) == (6, 1)
    code, rep = env.run()
    assert [env.table_result(rep, s)["inserted"] for s in ("line1", "line2")] == [6, 6]


def test_verify_finds_rows_deleted_or_changed_in_target(env):
    env.add("line1", rows("A", 40))
    env.add("line2", rows("B", 30))
    assert env.run("--init-target")[0] == 0
    code, rep = env.run("--verify")
    assert code == 0
    v1 = rep["sources"][0]["verify"][0]
    assert v1["checked"] == 40 and v1["chunks"] == 3 and v1["missing"] == []
    env.s["cloud"].sql("DELETE FROM cloud.Table1 WHERE PackCode = 'A00017'")
    env.s["cloud"].sql("UPDATE cloud.Table1 SET weight = 0 WHERE PackCode = 'B00003'")
    env.s["cloud"].sql(
        "UPDATE cloud.Table1 SET chuku = '是' WHERE PackCode = 'B00004'"
    )  # protected
    # Rows inside the lookback window would be re-copied by the next sync: only older ones
    # count as missing (the window is 5 s here; A00017 lies 22 s before the watermark).
    code, rep = env.run("--verify", lookback_seconds=5)
    assert code == 1
    v = {s["source"]: s["verify"][0] for s in rep["sources"]}
    assert (v["line1"]["missing"], v["line1"]["different"]) == (["A00017"], [])
    assert (v["line2"]["missing"], v["line2"]["different"]) == ([], ["B00003"])
    assert v["line1"]["chunks_differing"] == 1


def test_statements_stay_under_max_allowed_packet(env, servers):
    env.add(
        "line1", [(f"M{i:04d}", "p", "2024-05-01 08:00:00", "y" * 190, "1") for i in range(600)]
    )
    assert env.run("--init-target", "--source", "line2")[0] == 0
    cloud = servers["cloud"]
    cloud.sql("SET GLOBAL max_allowed_packet = 32768")  # 600 rows x ~250 bytes is ~150 KB
    try:
        code, rep = env.run("--source", "line1", batch_rows=10000)
    finally:
        cloud.sql("SET GLOBAL max_allowed_packet = 16777216")
    assert code == 0 and env.table_result(rep, "line1")["inserted"] == 600


def test_config_errors_exit_2(env, tmp_path, monkeypatch):
    good = env.config().read_text()
    cases = {
        "unknown key": good.replace('database = "cloud"', 'database = "cloud"\nbogus = 1'),
        "no password": good.replace(
            f'password_env = "{PW_ENV}"', 'password_env = "NOPE_NOT_SET"', 1
        ),
        "key protected": good.replace('protected = ["chuku"', 'protected = ["PackCode", "chuku"'),
        "bad toml": good + "[[[",
        "no cursor column": good.replace('cursor = "CreatedDate"', 'cursor = "Nope"'),
        "cursor not temporal": good.replace('cursor = "CreatedDate"', 'cursor = "weight"'),
        "bad time zone": good.replace('time_zone = "+00:00"', 'time_zone = "+08:00\'; DROP"'),
    }
    for name, text in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.toml"
        path.write_text(text)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = sync.main(["--config", str(path)])
        assert code == 2, name
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert sync.main(["--config", str(env.config()), "--source", "line9"]) == 2
    assert "line9" in err.getvalue()
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()):
        sync.main(["--config", str(env.config()), "--verify", "--dry-run"])
    assert exc.value.code == 2


def test_literal_parser_inverts_server_quoting(servers):
    value = "a'b\\c\x00d\x1ae\n中😀"
    (lit,) = servers["cloud"].sql(
        "SELECT CONCAT_WS(',', QUOTE(%s), QUOTE(NULL), QUOTE(''), CONCAT('X''', HEX(x'00ff'), "
        "''''), IFNULL(CAST(-12.5 AS DECIMAL(6,2)), 'NULL'), IFNULL(NULL, 'NULL'))",
        (value,),
    )[0]
    assert sync.parse_literal_row(lit) == [value, None, "", "0x00FF", "-12.50", None]


def test_no_torch_import():
    source = SYNC_PATH.read_text(encoding="utf-8")
    assert "import torch" not in source
    before = set(sys.modules)
    load_sync("mysql_sync_sync_again")
    assert not any(m == "torch" or m.startswith("torch.") for m in set(sys.modules) - before)
