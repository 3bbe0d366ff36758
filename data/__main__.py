"""Command line for the data layer: generate the demo shop, check a dataset's quality, describe it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data.cli import run
from data.io import FORMATS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write the seeded synthetic shop (with planted ground truth)")
    generate.add_argument("--out", required=True, type=Path, help="directory to write items/events/ground truth")
    generate.add_argument("--users", type=int, default=2000)
    generate.add_argument("--items", type=int, default=1500)
    generate.add_argument("--events-per-user", type=float, default=None,
                          help="average events per user (default: 60,000 events in all, the demo shop's size)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--kind", choices=("csv", "parquet", "jsonl"), default="csv", help="table file type")

    check = commands.add_parser("check", help="print the data-quality report of a dataset")
    check.add_argument("path", type=Path)
    check.add_argument("--format", choices=FORMATS, default="auto")
    check.add_argument("--json", type=Path, help="also write the report as JSON here")

    describe = commands.add_parser("describe", help="print what a dataset holds")
    describe.add_argument("path", type=Path)
    describe.add_argument("--format", choices=FORMATS, default="auto")

    args = parser.parse_args(argv)
    return run({"generate": _generate, "check": _check, "describe": _describe}, args)


def _generate(args) -> int:
    from data.io import write_tables
    from data.synthetic import generate

    if args.users < 10 or args.items < 20:
        print(f"error: --users {args.users} / --items {args.items}: need at least 10 users and 20 items",
              file=sys.stderr)
        return 2
    sizes = {} if args.events_per_user is None else {"target_events": max(1, round(args.events_per_user * args.users))}
    dataset = generate(n_users=args.users, n_items=args.items, seed=args.seed, **sizes)
    write_tables(dataset, args.out, kind=args.kind)
    summary = dataset.summary()
    print(f"wrote {args.out}: {summary['users']} users, {summary['items']} items, {summary['events']} events "
          f"(fingerprint {summary['fingerprint']})")
    return 0


def _check(args) -> int:
    from data.io import load_dataset
    from data.quality import quality_report

    dataset = load_dataset(args.path, format=args.format)
    report = quality_report(dataset)
    print(_render_summary(dataset.summary()))
    print()
    print(_render_findings(report))
    if args.json:
        _write_json(args.json, report.to_dict())
    return 0


def _describe(args) -> int:
    from data.io import load_dataset

    dataset = load_dataset(args.path, format=args.format)
    print(_render_summary(dataset.summary()))
    items = dataset.items
    print()
    print("top categories:", ", ".join(f"{k} ({v})" for k, v in items["category"].value_counts().head(8).items()))
    print("top brands:    ", ", ".join(f"{k} ({v})" for k, v in items["brand"].value_counts().head(8).items()))
    per_user = dataset.events.groupby("user_id").size()
    print(f"events per user: median {per_user.median():.0f}, p90 {per_user.quantile(0.9):.0f}, max {per_user.max()}")
    print()
    print(items.head(5).to_string(index=False, max_colwidth=48))
    return 0


def _render_summary(summary: dict) -> str:
    rows = [(key, value) for key, value in summary.items() if key != "notes"]
    width = max(len(key) for key, _ in rows)
    lines = [f"{key:<{width}}  {value}" for key, value in rows]
    lines += [f"{'note':<{width}}  {note}" for note in summary.get("notes", [])]
    return "\n".join(lines)


def _render_findings(report) -> str:
    if not report.findings:
        return "no findings: the data looks clean"
    header = ("severity", "finding", "count", "share", "example")
    rows = []
    for finding in report.findings:
        example = json.dumps(finding.examples[0], default=str) if finding.examples else ""
        rows.append((finding.severity, finding.title, str(finding.count), f"{finding.share:.2%}", example[:60]))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)])


def _write_json(path: Path, payload: dict) -> None:
    """Write through a temporary file and rename, so a failed write leaves nothing half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
