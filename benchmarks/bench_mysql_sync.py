"""Benchmark mysql_sync/sync.py against a `mariadb-dump | mariadb` pipeline of the same table on
the same two throwaway MariaDB servers (one source, one target, loopback ports).

Measures, in one run:
  1. full sync of N rows (default 1,000,000, about 200 bytes each) into an empty target: rows/s,
     time the writer waited for the source vs time in target writes, and the job's resident
     memory sampled every 0.2 s while it streams (flat = streaming reads);
  2. `mariadb-dump --opt factory Table1 | mariadb dumpcopy` of the same table: rows/s;
  1 and 2 alternate --repeats times (default 2) into fresh databases; medians are compared, so
  load from other jobs on a shared machine hits both alike;
  3. an incremental run with nothing new against the N-row source: wall seconds of the whole
     process (Python start included) and the job's own seconds;
  4. `--verify` over the N rows (informational);
  5. eight lines (seven databases on one line server, the eighth on a second one) synced in one
     run, first with every line up, then with the eighth server frozen (SIGSTOP): total wall
     time of each run and when each line finished. Lines run in parallel, so the frozen line
     costs its own timeouts and the other seven finish as if it were up.
Targets: full sync >= 40,000 rows/s and >= 0.8x the dump pipeline; incremental no-op < 1 s;
memory flat; with a frozen line, the seven others finish no later than without it (+ 20%).

Both copies move the same 9 columns (the benchmark config protects and excludes nothing).

Full (about 1-3 minutes on a 2-core machine, depending on its load):
    python benchmarks/bench_mysql_sync.py
Quick smoke run (seconds):
    python benchmarks/bench_mysql_sync.py --rows 20000
Writes outputs/bench_mysql_sync/<run-name>/metrics.json, prints the same JSON, and with
--results writes results/mysql_sync_benchmark.json (the tables in mysql_sync/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import mariadb_harness as mh  # noqa: E402

from results import RESULTS_DIR, git_commit, machine  # noqa: E402

SYNC = REPO_ROOT / "mysql_sync" / "sync.py"
PW_ENV = "BENCH_MYSQL_SYNC_PASSWORD"

SOURCE_DDL = mh.SOURCE_DDL

# Server-side generation from MariaDB's sequence engine: fast and reproducible. Rows are 0.5 s
# apart (1M rows span ~5.8 days), so a 10-minute lookback re-reads ~1200 rows.
FILL_SQL = """
INSERT INTO Table1 (PackCode, parentcode, CreatedDate, product, weight, chuku, jxs, cky)
SELECT CONCAT('LY', LPAD(seq, 12, '0')),
       CONCAT('LYB', LPAD(seq DIV 24, 10, '0')),
       TIMESTAMP('2024-01-01 00:00:00') + INTERVAL (seq * 500000 + seq MOD 997) MICROSECOND,
       CONCAT('产品批次-', seq MOD 1000, '-', REPEAT(SUBSTR(MD5(seq), 1, 8), 15)),
       (seq MOD 100000) / 1000,
       '否', CONCAT('经销商', seq MOD 50), CONCAT('仓库', seq MOD 7)
FROM seq_1_to_{n}
"""


def write_lines_config(path: Path, lines: list[tuple[str, int, str]], target) -> Path:
    """One [[sources]] block per (name, port, database), default timeouts and retries."""
    blocks = [
        f'[[sources]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {port}\nuser = "root"\n'
        f'password_env = "{PW_ENV}"\ndatabase = "{db}"\n'
        # The defaults (connect 10 s, 3 retries with 2-4-8 s backoff): a frozen line costs
        # about 4 x 10 + 14 = 54 s.
        for name, port, db in lines
    ]
    path.write_text(
        f'[target]\nhost = "127.0.0.1"\nport = {target.port}\nuser = "root"\n'
        f'password_env = "{PW_ENV}"\ndatabase = "cloud"\n\n'
        + "\n".join(blocks)
        + '\n[[tables]]\nsource = "Table1"\nprotected = ["chuku", "jxs", "cky"]\nexclude = ["id"]\n',
        encoding="utf-8",
    )
    return path


def eight_lines(tmp: Path, rows_per_line: int) -> dict:
    """Part 5: 8 lines, one frozen, against the same 8 lines all up."""
    servers = mh.start_servers(tmp, ["lines", "line8", "cloud8"])
    try:
        lines_srv, line8, cloud = servers["lines"], servers["line8"], servers["cloud8"]
        lines = []
        for i in range(1, 9):
            server = line8 if i == 8 else lines_srv
            db = f"factory{i}"
            server.sql(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
            server.sql(SOURCE_DDL, database=db)
            server.sql(FILL_SQL.format(n=rows_per_line).replace("'LY'", f"'L{i}'"), database=db)
            lines.append((f"line{i}", server.port, db))
        config = write_lines_config(tmp / "eight.toml", lines, cloud)
        out = {}
        for case in ("all_up", "line8_frozen"):
            cloud.sql("DROP DATABASE IF EXISTS cloud")
            cloud.sql("CREATE DATABASE cloud CHARACTER SET utf8mb4")
            if case == "line8_frozen":
                line8.freeze()
            try:
                run = run_sync(config, "--init-target", check=False)
            finally:
                if line8.frozen:
                    line8.thaw()
            report = run["report"]
            finished = {s["source"]: s["finished_s"] for s in report["sources"]}
            out[case] = {
                "wall_s": round(run["wall_s"], 2),
                "exit_code": report["exit_code"],
                "seven_lines_done_s": max(v for k, v in finished.items() if k != "line8"),
                "line8_status": [s["status"] for s in report["sources"] if s["source"] == "line8"][
                    0
                ],
                "line8_done_s": finished["line8"],
            }
        return out
    finally:
        for server in servers.values():
            server.stop()


def write_config(path: Path, source, target) -> Path:
    path.write_text(
        f"""[target]
host = "127.0.0.1"
port = {target.port}
user = "root"
password_env = "{PW_ENV}"
database = "cloud"
time_zone = "+00:00"

[[sources]]
name = "line1"
host = "127.0.0.1"
port = {source.port}
user = "root"
password_env = "{PW_ENV}"
database = "factory"

[[tables]]
source = "Table1"
target = "Table1"
key = "PackCode"
cursor = "CreatedDate"
protected = []
source_column = "source_name"
""",
        encoding="utf-8",
    )
    return path


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def run_sync(config: Path, *flags: str, check: bool = True) -> dict:
    """Run sync.py as its own process; wall time, peak RSS (kernel), RSS samples, JSON report."""
    env = dict(os.environ, **{PW_ENV: ""})
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(SYNC), "--config", str(config), "--json", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    samples: list[tuple[float, int]] = []

    def sample() -> None:
        while proc.poll() is None:
            value = rss_kib(proc.pid)
            if value:
                samples.append((round(time.monotonic() - started, 2), value))
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    wall = time.monotonic() - started
    thread.join()
    if check and proc.returncode != 0:
        raise SystemExit(f"error: sync exited {proc.returncode}\n{out.decode()}\n{err.decode()}")
    return {"wall_s": wall, "report": json.loads(out), "rss_samples_kib": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", default="outputs")
    parser.add_argument("--run-name", default=time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--repeats", type=int, default=2, help="sync/dump pairs (median)")
    parser.add_argument("--buffer-pool", default="1G", help="innodb_buffer_pool_size per server")
    parser.add_argument("--rows-per-line", type=int, default=50_000, help="part 5, per line")
    parser.add_argument("--results", action="store_true",
                        help="also write results/mysql_sync_benchmark.json")  # fmt: skip
    args = parser.parse_args()
    if args.rows < 1000:
        parser.error("--rows must be >= 1000")
    bins = mh.find_binaries()
    out_dir = Path(args.out) / "bench_mysql_sync" / args.run_name
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict = {"rows": args.rows, "machine_cores": os.cpu_count()}

    with tempfile.TemporaryDirectory(prefix="bench_mysql_sync_") as tmp:
        servers = mh.start_servers(
            Path(tmp), ["source", "target"], [f"--innodb-buffer-pool-size={args.buffer_pool}"]
        )
        try:
            src, tgt = servers["source"], servers["target"]
            src.sql("CREATE DATABASE factory CHARACTER SET utf8mb4")
            src.sql(SOURCE_DDL, database="factory")
            t0 = time.monotonic()
            src.sql(FILL_SQL.format(n=args.rows), database="factory")
            metrics["fill_s"] = round(time.monotonic() - t0, 2)
            (avg_bytes,) = src.sql(
                "SELECT AVG(4 + LENGTH(PackCode) + LENGTH(parentcode) + 8 + LENGTH(product) + 5 "
                "+ LENGTH(chuku) + LENGTH(jxs) + LENGTH(cky)) FROM factory.Table1"
            )[0]
            metrics["avg_row_bytes"] = round(float(avg_bytes), 1)
            src.sql("SELECT COUNT(*), SUM(LENGTH(product)) FROM factory.Table1")  # warm the cache
            # warm both access paths: the clustered index (dump) and (CreatedDate, PackCode) (sync)
            src.sql(
                "SELECT COUNT(*) FROM factory.Table1 FORCE INDEX (ix_created) WHERE CreatedDate > 0"
            )
            config = write_config(Path(tmp) / "bench.toml", src, tgt)
            dump = (
                f"{bins['mariadb-dump']} --no-defaults -h127.0.0.1 -P{src.port} -uroot "
                f"--default-character-set=utf8mb4 factory Table1 | {bins['mariadb']} --no-defaults "
                f"-h127.0.0.1 -P{tgt.port} -uroot --default-character-set=utf8mb4 dumpcopy"
            )

            # 1 + 2, interleaved --repeats times into fresh target databases so that load from
            # other jobs on the machine hits both methods alike; medians are reported.
            sync_runs, dump_runs = [], []
            for _ in range(args.repeats):
                for db in ("cloud", "dumpcopy"):
                    tgt.sql(f"DROP DATABASE IF EXISTS {db}")
                    tgt.sql(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
                # full sync; the target table is created empty by --init-target inside the run
                full = run_sync(config, "--init-target")
                table = full["report"]["sources"][0]["tables"][0]
                assert table["inserted"] == args.rows, table
                rss = [v for _, v in full["rss_samples_kib"]]
                sync_runs.append({
                    "wall_s": round(full["wall_s"], 2),
                    "job_seconds": table["seconds"],
                    "source_wait_s": table["source_wait_s"],
                    "target_write_s": table["target_write_s"],
                    "rows_per_s_wall": round(args.rows / full["wall_s"]),
                    "rss_kib_min_max": [min(rss), max(rss)] if rss else None,
                    "rss_kib_at_25_50_75_100pct": [rss[int(q * (len(rss) - 1))] for q in (0.25, 0.5, 0.75, 1)] if rss else None,
                })  # fmt: skip
                # the dump pipeline, same servers, same table
                t0 = time.monotonic()
                subprocess.run(["bash", "-o", "pipefail", "-c", dump], check=True)
                dump_s = time.monotonic() - t0
                (copied,) = tgt.sql("SELECT COUNT(*) FROM dumpcopy.Table1")[0]
                assert copied == args.rows
                dump_runs.append(
                    {"wall_s": round(dump_s, 2), "rows_per_s": round(args.rows / dump_s)}
                )
            sync_s = statistics.median(r["wall_s"] for r in sync_runs)
            dump_s = statistics.median(r["wall_s"] for r in dump_runs)
            metrics["sync_full_runs"] = sync_runs
            metrics["dump_pipeline_runs"] = dump_runs
            metrics["sync_full_median"] = {
                "wall_s": sync_s,
                "rows_per_s": round(args.rows / sync_s),
            }
            metrics["dump_pipeline_median"] = {
                "wall_s": dump_s,
                "rows_per_s": round(args.rows / dump_s),
            }
            metrics["sync_vs_dump"] = round(dump_s / sync_s, 3)
            metrics["sync_vs_dump_per_pair"] = [
                round(d["wall_s"] / s["wall_s"], 3) for s, d in zip(sync_runs, dump_runs)
            ]

            # 3. nothing new: the whole process, Python start included
            noop = run_sync(config)
            nt = noop["report"]["sources"][0]["tables"][0]
            assert nt["inserted"] == 0
            metrics["sync_noop"] = {"wall_s": round(noop["wall_s"], 3), "job_seconds": nt["seconds"],
                                    "rows_reread_in_lookback": nt["read"],
                                    "peak_rss_kib": max((v for _, v in noop["rss_samples_kib"]), default=None)}  # fmt: skip

            # 4. verify (informational)
            ver = run_sync(config, "--verify")
            v = ver["report"]["sources"][0]["verify"][0]
            metrics["verify"] = {"wall_s": round(ver["wall_s"], 2), "checked": v["checked"],
                                 "missing": len(v["missing"]), "different": len(v["different"])}  # fmt: skip
        finally:
            for server in servers.values():
                server.stop()
        metrics["eight_lines"] = eight_lines(Path(tmp) / "eight", args.rows_per_line)

    eight = metrics["eight_lines"]
    metrics["targets"] = {
        "sync_rows_per_s_ge_40000": metrics["sync_full_median"]["rows_per_s"] >= 40_000,
        "sync_ge_0.8x_dump": metrics["sync_vs_dump"] >= 0.8,
        "noop_lt_1s": metrics["sync_noop"]["wall_s"] < 1.0,
        "frozen_line_does_not_delay_the_others": eight["line8_frozen"]["seven_lines_done_s"]
        <= 1.2 * eight["all_up"]["seven_lines_done_s"],
    }
    if args.results:
        write_results_file(args, metrics)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics, indent=1))
    print(f"wrote {out_dir / 'metrics.json'}")


def write_results_file(args, m: dict) -> None:
    """The numbers mysql_sync/README.md renders (benchmarks/report.py, `table` blocks)."""
    eight = m["eight_lines"]
    rows = [
        ["full copy, sync.py (median wall s)", m["sync_full_median"]["wall_s"],
         f"{m['sync_full_median']['rows_per_s']} rows/s"],
        ["full copy, mariadb-dump | mariadb (median wall s)", m["dump_pipeline_median"]["wall_s"],
         f"{m['dump_pipeline_median']['rows_per_s']} rows/s"],
        ["sync / dump speed", m["sync_vs_dump"], "target >= 0.8"],
        ["no-op run, whole process (s)", m["sync_noop"]["wall_s"], "target < 1"],
        ["8 lines all up: total wall s", eight["all_up"]["wall_s"],
         f"seven lines done at {eight['all_up']['seven_lines_done_s']} s"],
        ["8 lines, line8 frozen: total wall s", eight["line8_frozen"]["wall_s"],
         f"seven lines done at {eight['line8_frozen']['seven_lines_done_s']} s; line8 "
         f"{eight['line8_frozen']['line8_status']} at {eight['line8_frozen']['line8_done_s']} s, "
         f"exit {eight['line8_frozen']['exit_code']}"],
    ]  # fmt: skip
    doc = {
        "name": "mysql_sync_benchmark",
        "script": "benchmarks/bench_mysql_sync.py",
        "command": f"python benchmarks/bench_mysql_sync.py --rows {args.rows} "
        f"--rows-per-line {args.rows_per_line} --results",
        "table": {"columns": ["measurement", "value", "detail"], "rows": rows},
        "metrics_full": m,
        "git_commit": git_commit(),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "note": "",
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "mysql_sync_benchmark.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
