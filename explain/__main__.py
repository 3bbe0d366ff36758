"""Command line for explanations: why one item got its score, why one scored above another, exported reports, and
the Insights page's samples and the dashboard's explanations computed ahead of time."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from data.cli import run
from explain.cache import CACHE_ENV, DEFAULT_NAME
from explain.gradients import BASELINES, DEFAULT_BASELINE, N_STEPS_RANGE
from explain.insights import DEFAULT_K, DEFAULT_PAIRS, DEFAULT_STEPS, DEFAULT_USERS
from explain.precompute import PANEL_STEPS
from explain.report import FORMATS

TOP = 5  # entries shown per part
ENGINES = ("serial", "ray")  # where a batch of reports runs
LIST_SUFFIXES = (".txt", ".csv", ".tsv", ".lst", ".list")  # --users X.txt names a file, even one that is missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m explain", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    item = commands.add_parser("item", help="explain one item's score for a user, a query or both")
    _context_arguments(item)
    item.add_argument("--item", required=True, help="item id to explain")
    item.add_argument("--agreement", action="store_true", help="also rank-compare IG with SHAP Partition on tokens")

    pair = commands.add_parser("pair", help="explain why item A scores above (or below) item B")
    _context_arguments(pair)
    pair.add_argument("--a", required=True, help="item id A")
    pair.add_argument("--b", required=True, help="item id B")

    report = commands.add_parser("report", help="export a user's or a query's top-k with every explanation "
                                                "(HTML, PDF or JSON); --users for a batch")
    report.add_argument("--model", required=True, type=Path, help="checkpoint directory")
    report.add_argument("--data", type=Path, help="serve these events with the model (the same items)")
    who = report.add_mutually_exclusive_group()
    who.add_argument("--user", help="user id (give a user, a query, or both)")
    who.add_argument("--users", help="batch: a file with one user id a line, or a comma-separated list of ids")
    report.add_argument("--query", help="typed query")
    report.add_argument("--k", type=int, default=10, help="items in the report (default 10)")
    low, high = N_STEPS_RANGE
    report.add_argument("--n-steps", "--steps", dest="steps", type=int, default=50,
                        help=f"Integrated Gradients steps, {low}..{high}")
    report.add_argument("--drill-down", type=int, default=0, metavar="N",
                        help="also open the top N history items to their words (slower)")
    report.add_argument("--out", required=True, type=Path,
                        help="FILE.html, FILE.pdf or FILE.json; with --users, a directory (a report per user, "
                             "index.html, one plotly.min.js; run again, the batch resumes)")
    report.add_argument("--format", choices=FORMATS, help="with --users: the format of each file (default html)")
    report.add_argument("--engine", choices=ENGINES, default="serial",
                        help="with --users: serial (this process, one user after another) or ray (workers that each "
                             "load the model once; needs ray, requirements-dist.txt)")
    report.add_argument("--address", help="with --engine ray: the Ray cluster to join (HOST:PORT, ray://HOST:PORT or "
                                          "auto); default: start a local Ray")
    report.add_argument("--workers", type=int, help="with --engine ray: Ray workers (default: one per CPU)")
    report.add_argument("--no-progress", action="store_true", help="no progress bar")
    _cache_argument(report)

    insights = commands.add_parser("insights", help="compute the Insights page's samples ahead of time, so that its "
                                                    "first visit is instant")
    insights.add_argument("--model", required=True, type=Path, help="checkpoint directory")
    insights.add_argument("--data", type=Path, help="the data the dashboard serves with the model (default: the "
                                                    "model's own); the page uses the file only for the same data")
    insights.add_argument("--out", type=Path, help="where to write (default: MODEL/insights.json, where the page "
                                                   "looks)")
    insights.add_argument("--users", type=int, default=DEFAULT_USERS, help=f"users sampled (default {DEFAULT_USERS})")
    insights.add_argument("--k", type=int, default=DEFAULT_K, help=f"their top items explained (default {DEFAULT_K})")
    insights.add_argument("--pairs", type=int, default=DEFAULT_PAIRS,
                          help=f"users whose top item's words are explained (default {DEFAULT_PAIRS})")
    insights.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                          help=f"Integrated Gradients steps for the words (default {DEFAULT_STEPS})")
    insights.add_argument("--no-progress", action="store_true", help="no progress bars")

    precompute = commands.add_parser("precompute", help="explain users' top-k into the explanation cache ahead of "
                                                        "time, so that the dashboard and reports find them there")
    precompute.add_argument("--model", required=True, type=Path, help="checkpoint directory")
    precompute.add_argument("--data", type=Path, help="the data the dashboard serves with the model (default: the "
                                                      "model's own)")
    users = precompute.add_mutually_exclusive_group(required=True)
    users.add_argument("--users", type=Path, metavar="FILE", help="a file with one user id a line")
    users.add_argument("--sample", type=int, metavar="N", help="the users the dashboard lists first and a seeded "
                                                               "sample, N in all")
    precompute.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    precompute.add_argument("--steps", type=int, default=PANEL_STEPS,
                            help=f"Integrated Gradients steps (default {PANEL_STEPS}, as the Recommend page's)")
    precompute.add_argument("--checks", type=int, default=None, metavar="N",
                            help="deletion tests (the panel's \"how far to trust it\") for each user's first N items "
                                 "(default: all k; 0: none)")
    precompute.add_argument("--no-progress", action="store_true", help="no progress bar")
    _cache_argument(precompute)

    args = parser.parse_args(argv)
    return run({"item": _item, "pair": _pair, "report": _report, "insights": _insights, "precompute": _precompute},
               args, on_interrupt="interrupted (a batch resumes where it stopped when run again)")


def _cache_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", metavar="DIR", help=f"the explanation cache: a directory, or 'off' (default: "
                                                       f"${CACHE_ENV}, else {DEFAULT_NAME}/ beside the model)")


def _context_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--user", help="user id (give a user, a query, or both)")
    parser.add_argument("--query", help="typed query")
    low, high = N_STEPS_RANGE
    parser.add_argument("--steps", type=int, default=50, help=f"Integrated Gradients steps, {low}..{high}")
    parser.add_argument("--baseline", choices=tuple(BASELINES), default=DEFAULT_BASELINE,
                        help="what text starts from in IG")
    parser.add_argument("--json", type=Path, help="write the explanation here (explain.base JSON schema)")
    _cache_argument(parser)


def _load(args):
    from explain.errors import ExplanationError

    if args.user is None and args.query is None:
        raise ExplanationError("give --user, --query, or both")
    return _open(args.model)


def _open(model: Path, data: Path | None = None):
    from transformers.utils import logging

    from model.checkpoint import load

    logging.disable_progress_bar()  # a bar per encoder load would bury the one line a bad input gets
    return load(model, data=data)


def _item(args) -> int:
    from explain import faithfulness

    recommender = _load(args)
    found = _cache(args).explain(recommender, args.item, user_id=args.user, query=args.query, n_steps=args.steps,
                                 baseline=args.baseline)
    measured = faithfulness(recommender, found.explanation, agreement=args.agreement)
    print(summary(found.explanation, measured))
    print(found.describe())
    _write(found.explanation, args.json)
    return 0


def _pair(args) -> int:
    recommender = _load(args)
    found = _cache(args).explain_pair(recommender, args.a, args.b, user_id=args.user, query=args.query,
                                      n_steps=args.steps, baseline=args.baseline)
    print(summary(found.explanation))
    print(found.describe())
    _write(found.explanation, args.json)
    return 0


def _cache(args):
    """The explanation cache the command reads and fills (explain.cache.cache_directory decides where)."""
    from explain.cache import ExplanationCache, cache_directory

    return ExplanationCache(cache_directory(args.model, args.cache))


def _precompute(args) -> int:
    from explain.errors import ExplanationError
    from explain.precompute import check_users, demo_users, precompute, read_user_ids

    _threads()
    cache = _cache(args)
    if cache.directory is None:
        raise ExplanationError(f"precompute fills the disk cache: give --cache DIR (${CACHE_ENV} says off)")
    users = read_user_ids(args.users) if args.users is not None else None
    if args.sample is not None and args.sample < 1:
        raise ExplanationError(f"--sample {args.sample} must be 1 or more users")
    recommender = _open(args.model, args.data)
    if users is None:
        users = demo_users(recommender, args.sample)
    else:
        check_users(recommender, users, f"--users {args.users}")
    with _progress_bar("explaining", args.no_progress) as progress:
        done = precompute(recommender, cache, users, k=args.k, n_steps=args.steps, checks=args.checks,
                          progress=progress)
    print(f"{done.explanations} explanations and {done.checks} deletion tests for {done.users} users in "
          f"{cache.directory}: {done.computed} computed, "
          f"{done.from_cache} already cached" + (f", {done.refused} cached entries refused and redone"
                                                 if done.refused else "") + f" ({done.seconds:.1f} s)")
    return 0


def _report(args) -> int:
    from explain.report import ReportError, build_report, check_output, output_format, write_report

    _threads()
    if args.users is not None:
        return _batch(args)
    if args.engine != "serial" or args.address is not None or args.workers is not None:
        raise ReportError("--engine, --address and --workers are for a batch (--users)")
    if args.user is None and args.query is None:
        raise ReportError("give --user, --query, or both (or --users for a batch)")
    if args.format is not None and args.format != output_format(args.out):
        raise ReportError(f"--format {args.format} contradicts --out {args.out}; the suffix names the format")
    check_output(args.out)  # before minutes of explaining, not after
    recommender = _open(args.model, args.data)
    from tqdm.auto import tqdm

    with tqdm(total=args.k, unit="item", desc="explaining", file=sys.stderr, disable=args.no_progress) as bar:
        def progress(done: int, total: int, label: str) -> None:
            bar.total = total
            bar.set_postfix_str(label[:40], refresh=False)
            bar.update(done - bar.n)

        report = build_report(recommender, user_id=args.user, query=args.query, k=args.k, n_steps=args.steps,
                              progress=progress, drill_down=args.drill_down, cache=_cache(args))
    path = write_report(report, args.out)
    print(f"wrote {path} ({len(report.items)} items, {report.provenance['seconds']:.1f} s, "
          f"{report.provenance['explanations_from_cache']} explanations from the cache)")
    return 0


def _batch(args) -> int:
    from explain.batch import INDEX
    from explain.report import ReportError

    if args.out.suffix.lower().lstrip(".") in FORMATS:
        raise ReportError(f"with --users, --out is a directory (one file per user), not {args.out}")
    if args.engine != "ray" and (args.address is not None or args.workers is not None):
        raise ReportError("--address and --workers are for --engine ray")
    users = _user_ids(args.users)
    options = {"fmt": args.format or "html", "k": args.k, "n_steps": args.steps, "query": args.query,
               "drill_down": args.drill_down, "progress": not args.no_progress}
    if args.engine == "ray":
        from explain.batch_ray import export_batch_ray

        result = export_batch_ray(args.model, users, args.out, data_dir=args.data, workers=args.workers,
                                  address=args.address, cache_dir=_cache(args).directory, **options)
    else:
        from explain.batch import export_batch

        result = export_batch(_open(args.model, args.data), users, args.out, cache=_cache(args), **options)
    if result.failed and not result.written and not result.skipped:
        user, why = next(iter(result.failed.items()))
        raise ReportError(f"no report written: all {len(result.failed)} failed (first, {user}: {why})")
    print(f"wrote {len(result.written)} reports to {args.out} in {result.seconds:.1f} s"
          + (f"; {len(result.skipped)} finished earlier were kept" if result.skipped else "")
          + (f"; skipped {len(result.unknown)} unknown users" if result.unknown else "")
          + (f"; {len(result.failed)} failed" if result.failed else "")
          + f"; index: {args.out / INDEX}")
    return 0


def _insights(args) -> int:
    from explain.insights_file import INSIGHTS_FILE, precompute, write_insights

    _threads()
    out = args.out or args.model / INSIGHTS_FILE
    recommender = _open(args.model, args.data)
    with _progress_bar("behaviour importance", args.no_progress) as importance, \
            _progress_bar("driving words", args.no_progress) as words:
        insights = precompute(recommender, args.users, args.k, args.pairs, args.steps, importance_progress=importance,
                              words_progress=words)
    path = write_insights(insights, out)
    print(f"wrote {path} ({len(insights.importance)} rows of behaviour importance, "
          f"{len(insights.words.pairs)} items' words, {insights.seconds:.1f} s)")
    return 0


@contextlib.contextmanager
def _progress_bar(description: str, disable: bool):
    """The `progress(done, total, label)` hook of a tqdm bar on stderr, drawn from its first call and closed when
    done reaches total, so that bars for work done one after another show one after another."""
    from tqdm.auto import tqdm

    bars = []

    def progress(done: int, total: int, label: str) -> None:
        if not bars:
            bars.append(tqdm(desc=description, total=total, file=sys.stderr, disable=disable))
        bar = bars[0]
        bar.total = total
        bar.set_postfix_str(label[:40], refresh=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()


def _user_ids(given: str) -> list[str]:
    """User ids from a file (one a line) when `given` names one, else from a comma-separated list; a name that looks
    like a file (a path, or a list's suffix) but is not there is an error, not one odd user id."""
    from explain.report import ReportError

    path = Path(given)
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
    elif "," not in given and (path.parent != Path(".") or path.suffix.lower() in LIST_SUFFIXES):
        raise ReportError(f"--users {given}: no such file (give a file with one user id a line, or ids a,b,c)")
    else:
        lines = given.split(",")
    return [line.strip() for line in lines if line.strip()]


def _threads() -> None:
    """Honour WHYREC_THREADS (as the app does): on a small shared machine one torch thread is often fastest."""
    threads = os.environ.get("WHYREC_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))


def _write(explanation, path: Path | None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(explanation.to_json())
    tmp.replace(path)
    print(f"wrote {path}")


def summary(explanation, measured: dict | None = None) -> str:
    """A readable account of an explanation: the sum, then the top entries of each part, then how far to trust it."""
    e = explanation
    who = " and ".join(x for x in (f"user {e.user_id}" if e.user_id else "", f"query {e.query[:60]!r}"
                                   if e.query else "") if x)
    if e.is_pair:
        lines = [f"A {e.item_id} {e.item_title!r}", f"B {e.versus_item_id} {e.versus_item_title!r}",
                 f"for {who} (mode {e.mode}, model {e.checkpoint_id})",
                 f"margin score(A) - score(B) {e.score:+.4f} = base {e.base_value:+.4f} + parts {e.total:+.4f}"
                 f"  (completeness gap {e.completeness_gap:+.2e})"]
    else:
        lines = [f"item {e.item_id} {e.item_title!r}", f"for {who} (mode {e.mode}, model {e.checkpoint_id})",
                 f"score {e.score:.4f} = base {e.base_value:+.4f} + parts {e.total:+.4f}"
                 f"  (completeness gap {e.completeness_gap:+.2e})"]
    lines.append("parts:")
    for part in e.parts:
        where = "" if part.in_total else "   drill-down, not in the total"
        lines.append(f"  {part.kind:<15}{part.total:+9.4f}  {len(part):>3} entries  {part.method}, "
                     f"gap {part.completeness_gap:+.1e}{where}")
    words = e.part("item_tokens").words()
    lines += _section("top item words", [(name, value, "") for name, value, _ in words.top(TOP)])
    query = e.part("query_tokens")
    if len(query):
        lines += _section("top query words", [(name, value, "") for name, value, _ in query.words().top(TOP)])
    history = e.part("history")
    lines += _section("top past items", [
        (d["title"] or d["item_id"], value, f"{d['event']}, {d['age_days']:.1f} days before; removing it "
                                            f"{-d['removal_effect']:+.4f}" if "removal_effect" in d else "")
        for _, value, d in history.top(len(history)) if not d.get("shared")][:TOP])
    lines += [f"  {name:<40}{value:+9.4f}  beyond the past items one by one"
              for name, value, d in zip(history.names, history.values, history.details) if d.get("shared")]
    drill = e.part("history_tokens")
    if drill is not None and len(drill):
        lines += _section("top words in those history items", [
            (name, value, f"in {d['title'][:40]!r}") for name, value, d in drill.words().top(TOP)])
    lines += _section("top behaviour features", [
        (name, value, f"value {_feature_values(d)} {d['unit']} (typical {d['background_mean']:.3g})")
        for name, value, d in e.features().top(TOP)])
    if measured is not None:
        lines.append("faithfulness (item tokens removed to the baseline token):")
        lines.append(f"  top-3 drop {measured['deletion_top3_drop']:+.4f} vs random-3 drop "
                     f"{measured['deletion_random3_drop']:+.4f}; whole words "
                     f"{measured['deletion_top3_words_drop']:+.4f} vs {measured['deletion_random3_words_drop']:+.4f}")
        lines.append(f"  AOPC comprehensiveness {measured['aopc_comprehensiveness']:+.4f} (random "
                     f"{measured['aopc_comprehensiveness_random']:+.4f}), sufficiency "
                     f"{measured['aopc_sufficiency']:+.4f} (random {measured['aopc_sufficiency_random']:+.4f})")
        if measured.get("history_players"):
            lines.append("faithfulness (past items removed, every event on them):")
            lines.append(f"  top-3 credited drop {measured['history_top3_drop']:+.4f} vs random-3 "
                         f"{measured['history_random3_drop']:+.4f}, most recent 3 "
                         f"{measured['history_recent3_drop']:+.4f}, leave-one-out top 3 "
                         f"{measured['history_loo3_drop']:+.4f}")
            lines += [f"  note: {note}" for note in measured["history_notes"]]
        agreement = measured.get("agreement")
        if agreement:
            rho = "n/a" if agreement["spearman"] is None else f"{agreement['spearman']:+.3f}"
            lines.append(f"  IG vs SHAP Partition (max_evals {agreement['max_evals']}): Spearman {rho}; "
                         f"SHAP {agreement['seconds']:.2f} s vs IG {agreement['ig_seconds']:.2f} s")
        lines += [f"  note: {note}" for note in measured["notes"]]
    lines += [f"flag: {flag}" for flag in e.flags]
    lines += [f"note: {note}" for note in e.notes]
    lines.append("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in e.timing.items()))
    return "\n".join(lines)


def _feature_values(detail: dict) -> str:
    """A feature's value, or A's and B's in a pair explanation."""
    if "value_b" in detail:
        return f"A {detail['value']:.3g}, B {detail['value_b']:.3g}"
    return f"{detail['value']:.3g}"


def _section(title: str, rows: list[tuple[str, float, str]]) -> list[str]:
    if not rows:
        return []
    return [f"{title}:"] + [f"  {value:+9.4f}  {name[:50]:<50}  {extra}".rstrip() for name, value, extra in rows]


if __name__ == "__main__":
    sys.exit(main())
