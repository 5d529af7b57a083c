"""Render the result tables of README.md and docs/*.md from results/*.json.

Markers in a Markdown file (the text between them is replaced on every run):

    <!-- results: NAME -->...<!-- /results -->            summary table: held-out and tuning
                                                           seeds, mean ± sd (min-max) per metric
    <!-- results: NAME seeds -->...<!-- /results -->      one row per seed
    <!-- results: NAME table -->...<!-- /results -->      a benchmark's own table (doc["table"])
    <!-- headline: NAME METRIC -->...<!-- /headline -->   inline `mean ± sd` over held-out seeds

    python benchmarks/report.py            # rewrite the documents in place
    python benchmarks/report.py --check    # exit 1 and name the file when a table is stale
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import REPO_ROOT, SPLITS, load_results  # noqa: E402

BLOCK_RE = re.compile(
    r"(<!-- results: (?P<name>[\w.-]+)(?: (?P<mode>seeds|table))? -->)(?P<body>.*?)(<!-- /results -->)",
    re.S,
)
INLINE_RE = re.compile(
    r"(<!-- headline: (?P<name>[\w.-]+) (?P<metric>\w+) -->)(?P<body>.*?)(<!-- /headline -->)"
)
SPLIT_LABEL = {"held_out": "held-out", "tuning": "tuning"}


def fmt(value: float) -> str:
    """Three significant digits, plain notation."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    digits = 3 if magnitude < 1 else max(0, 3 - len(str(int(magnitude))))
    if magnitude < 0.001:
        return f"{value:.2e}"
    if magnitude < 1:
        digits = max(3, -int(f"{magnitude:e}".split("e")[1]) + 2)
    return f"{value:.{digits}f}"


def target_text(target: list) -> str:
    return f"{target[0]} {fmt(target[1])}"


def summary_table(doc: dict) -> str:
    metrics, targets = doc["metrics"], doc.get("targets", {})
    head = ["seeds"] + [
        desc + (f" (target {target_text(targets[m])})" if m in targets else "")
        for m, desc in metrics.items()
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for split in SPLITS:
        part = doc["summary"].get(split)
        if not part:
            continue
        seeds = sorted(r["seed"] for r in doc["runs"] if r["split"] == split)
        span = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else (
            ", ".join(map(str, seeds)))  # fmt: skip
        cells = [f"{SPLIT_LABEL[split]} ({len(seeds)}: {span})"]
        for m in metrics:
            s = part.get(m)
            if s is None:
                cells.append("-")
                continue
            cell = f"{fmt(s['mean'])} ± {fmt(s['sd'])} ({fmt(s['min'])}–{fmt(s['max'])})"
            if "met" in s:
                cell += f"; {s['met']} of {s['n']} meet it"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_table(doc: dict) -> str:
    metrics = doc["metrics"]
    lines = ["| seed | split | " + " | ".join(metrics.values()) + " |",
             "|" + "---|" * (len(metrics) + 2)]  # fmt: skip
    for r in doc["runs"]:
        cells = [str(r["seed"]), SPLIT_LABEL[r["split"]]]
        cells += ["-" if r.get(m) is None else fmt(float(r[m])) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plain_table(doc: dict) -> str:
    table = doc["table"]
    lines = ["| " + " | ".join(table["columns"]) + " |", "|" + "---|" * len(table["columns"])]
    for row in table["rows"]:
        cells = [fmt(v) if isinstance(v, float) else str(v).replace("|", "\\|") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def footnote(doc: dict) -> str:
    text = (f"<sub>`{doc['command']}`; {doc['machine']}; {doc['date']}, commit "
            f"{doc['git_commit']}; source `results/{doc['name']}.json`.")  # fmt: skip
    if doc.get("note"):
        text += " " + doc["note"]
    return text + "</sub>"


def render_block(match: re.Match) -> str:
    doc = load_results(match["name"])
    render = {"seeds": seeds_table, "table": plain_table, None: summary_table}[match["mode"]]
    table = render(doc)
    return f"{match[1]}\n{table}\n\n{footnote(doc)}\n{match[5]}"


def render_inline(match: re.Match) -> str:
    doc = load_results(match["name"])
    split = "held_out" if match["metric"] in doc["summary"].get("held_out", {}) else "tuning"
    s = doc["summary"][split][match["metric"]]
    spread = f" ± {fmt(s['sd'])}" if s["n"] > 1 else ""
    text = f"{fmt(s['mean'])}{spread} ({s['n']} {SPLIT_LABEL[split]} seed{'s' * (s['n'] > 1)})"
    return f"{match[1]}{text}{match[5]}"


def render(text: str) -> str:
    return INLINE_RE.sub(render_inline, BLOCK_RE.sub(render_block, text))


def documents() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")),
            *sorted((REPO_ROOT / "mysql_sync").glob("*.md"))]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale tables")
    args = parser.parse_args(argv)
    stale = []
    for path in documents():
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        try:
            new = render(text)
        except (FileNotFoundError, KeyError) as exc:
            print(f"{path.relative_to(REPO_ROOT)}: cannot render: {exc}", file=sys.stderr)
            return 1
        if new != text:
            stale.append(path.relative_to(REPO_ROOT))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for path in stale:
        print(f"{'stale' if args.check else 'rendered'}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
