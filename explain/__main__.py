"""Command line for explanations: why one item got its score, or why one item scored above another."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from data.cli import run
from explain.gradients import BASELINES, N_STEPS_RANGE

TOP = 5  # entries shown per part


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

    args = parser.parse_args(argv)
    return run({"item": _item, "pair": _pair}, args)


def _context_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="checkpoint directory")
    parser.add_argument("--user", help="user id (give a user, a query, or both)")
    parser.add_argument("--query", help="typed query")
    low, high = N_STEPS_RANGE
    parser.add_argument("--steps", type=int, default=50, help=f"Integrated Gradients steps, {low}..{high}")
    parser.add_argument("--baseline", choices=tuple(BASELINES), default="pad", help="what text starts from in IG")
    parser.add_argument("--json", type=Path, help="write the explanation here (explain.base JSON schema)")


def _load(args):
    from explain.errors import ExplanationError
    from model.checkpoint import load

    if args.user is None and args.query is None:
        raise ExplanationError("give --user, --query, or both")
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar per encoder load would bury the one line a bad input gets
    return load(args.model)


def _item(args) -> int:
    from explain import explain, faithfulness

    recommender = _load(args)
    explanation = explain(recommender, args.item, user_id=args.user, query=args.query, n_steps=args.steps,
                          baseline=args.baseline)
    measured = faithfulness(recommender, explanation, agreement=args.agreement)
    print(summary(explanation, measured))
    _write(explanation, args.json)
    return 0


def _pair(args) -> int:
    from explain import explain_pair

    recommender = _load(args)
    explanation = explain_pair(recommender, args.a, args.b, user_id=args.user, query=args.query,
                               n_steps=args.steps, baseline=args.baseline)
    print(summary(explanation))
    _write(explanation, args.json)
    return 0


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
    lines += _section("top history items", [
        (d["title"] or d["item_id"], value, f"{d['event']}, {d['age_days']:.1f} days before")
        for _, value, d in e.part("history").top(TOP)])
    drill = e.part("history_tokens")
    if drill is not None and len(drill):
        lines += _section("top words in those history items", [
            (name, value, f"in {d['title'][:40]!r}") for name, value, d in drill.words().top(TOP)])
    lines += _section("top behaviour features", [
        (name, value, f"value {d['value']:.3g} {d['unit']} (typical {d['background_mean']:.3g})")
        for name, value, d in e.part("behaviour").top(TOP)])
    if measured is not None:
        lines.append("faithfulness (item tokens removed to the baseline token):")
        lines.append(f"  top-3 drop {measured['deletion_top3_drop']:+.4f} vs random-3 drop "
                     f"{measured['deletion_random3_drop']:+.4f}")
        lines.append(f"  AOPC comprehensiveness {measured['aopc_comprehensiveness']:+.4f} (random "
                     f"{measured['aopc_comprehensiveness_random']:+.4f}), sufficiency "
                     f"{measured['aopc_sufficiency']:+.4f} (random {measured['aopc_sufficiency_random']:+.4f})")
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


def _section(title: str, rows: list[tuple[str, float, str]]) -> list[str]:
    if not rows:
        return []
    return [f"{title}:"] + [f"  {value:+9.4f}  {name[:50]:<50}  {extra}".rstrip() for name, value, extra in rows]


if __name__ == "__main__":
    sys.exit(main())
