"""Command line for the model: train a recommender, evaluate it against baselines, ask it for a ranking."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from data.cli import run
from data.io import FORMATS
from model.quantize import DEFAULT_QUANTIZE, QUANTIZE
from model.recommender import ENCODER_TUNINGS

# The model-shape options' defaults: a scenario adapter takes its shape from its backbone, so with --base any other
# value is refused rather than silently ignored.
SHAPE_DEFAULTS = {"encoder_tuning": "frozen", "dim": 128, "use_id_embedding": True, "lexical_text": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune a recommender on a dataset")
    train.add_argument("--data", required=True, type=Path)
    train.add_argument("--format", choices=FORMATS, default="auto")
    train.add_argument("--out", required=True, type=Path, help="checkpoint directory (the best epoch is kept)")
    train.add_argument("--encoder-tuning", choices=ENCODER_TUNINGS, default=SHAPE_DEFAULTS["encoder_tuning"])
    train.add_argument("--base-model", default=None, help="Hugging Face encoder directory or hub id "
                       "(default: the installed all-MiniLM-L6-v2)")
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--dim", type=int, default=SHAPE_DEFAULTS["dim"])
    train.add_argument("--no-id-embedding", action="store_true",
                       help="no per-item ID memory: the score is text, history and behaviour only, every part "
                            "of it explained (the demo model; see the README for what it costs)")
    train.add_argument("--lexical-text", action="store_true",
                       help="add the bag-of-words channel beside the encoder (learns made-up names such as brands)")
    train.add_argument("--batch-size", type=int, default=None,
                       help="users per step, over all processes under torchrun (default: about 60 steps an epoch, "
                            "16..128; GPUs take larger ones)")
    train.add_argument("--time-budget", type=float, default=0.0, help="seconds for stage 1 (0: no budget)")
    # Default None: TrainConfig's own default (torch is not imported for --help).
    train.add_argument("--patience", type=int, default=None,
                       help="stage-1 epochs without a better validation NDCG@10 before stopping (default: 3)")
    train.add_argument("--behaviour-epochs", type=int, default=None,
                       help="stage-2 epochs of each behaviour head, each keeping its best (default: 40)")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    train.add_argument("--progress-file", type=Path, default=None,
                       help="keep this JSON file up to date with where the run stands (the dashboard shows it "
                            "while it waits for the model)")
    train.add_argument("--preview", type=Path, default=None,
                       help="copy the best stage-1 checkpoint here once, for a dashboard to serve while stage 2 "
                            "trains (its behaviour heads still add 0)")
    train.add_argument("--preview-after", type=float, default=20.0,
                       help="seconds of stage 1 before the preview is written (default: 20)")
    train.add_argument("--base", type=Path, default=None,
                       help="a trained checkpoint to adapt: --out becomes a scenario adapter over it (LoRA and the "
                            "scenario's own heads; the backbone's files stay where they are and are not copied)")
    train.add_argument("--scenario", default="", help="the scenario's name, recorded in the adapter (with --base)")

    update = commands.add_parser("update", help="bring a model up to date: warm start on the events since its data "
                                               "ends; the new checkpoint records its parent")
    update.add_argument("--model", required=True, type=Path, help="the checkpoint to update (the parent)")
    update.add_argument("--data", required=True, type=Path,
                        help="the data with the new events (the parent's catalog; earlier events serve as history)")
    update.add_argument("--format", choices=FORMATS, default="auto")
    update.add_argument("--out", required=True, type=Path)
    update.add_argument("--epochs", type=int, default=10)
    update.add_argument("--patience", type=int, default=2)
    update.add_argument("--lr", type=float, default=1e-3, help="stage-1 learning rate (a fresh run uses 2e-3)")
    update.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    update.add_argument("--seed", type=int, default=0)

    evaluate = commands.add_parser("evaluate", help="full-catalog ranking metrics beside the baselines")
    evaluate.add_argument("--model", required=True, type=Path)
    evaluate.add_argument("--data", type=Path, help="dataset (default: the data stored with the model)")
    evaluate.add_argument("--format", choices=FORMATS, default="auto")
    evaluate.add_argument("--json", type=Path)
    evaluate.add_argument("--since", default=None, help="score only the test moments at or after this time "
                          "(ISO date or timestamp, UTC), e.g. the weeks after a model's data ends")
    evaluate.add_argument("--until", default=None, help="score only the test moments before this time")
    evaluate.add_argument("--base", type=Path, default=None,
                          help="for a scenario adapter: its backbone's directory, if it has moved")
    evaluate.add_argument("--quantize", choices=QUANTIZE, default="none",
                          help="int8: re-encode the catalog (and queries) with the int8 encoder and evaluate that "
                               "(a CPU path; auto: int8 on the CPU); none: the checkpoint's float embeddings")

    recommend = commands.add_parser("recommend", help="print the top-k for a user or a query")
    recommend.add_argument("--model", required=True, type=Path)
    recommend.add_argument("--user")
    recommend.add_argument("--query")
    recommend.add_argument("--k", type=int, default=10)
    recommend.add_argument("--quantize", choices=QUANTIZE, default=DEFAULT_QUANTIZE,
                           help="how the query is encoded: int8 (CPU), none (float) or auto (int8 on the CPU, "
                                "float on CUDA); the default is the dashboard's")

    quantize = commands.add_parser("quantize", help="derive the int8 encoder of a checkpoint now (it is kept in "
                                   "the encoder cache, so that the dashboard's first load does not derive it)")
    quantize.add_argument("--model", required=True, type=Path)

    args = parser.parse_args(argv)
    return run({"train": _train, "update": _update, "evaluate": _evaluate, "recommend": _recommend,
                "quantize": _quantize}, args,
               on_interrupt="interrupted: the last good checkpoint is kept")


def _train(args) -> int:
    from data.io import load_dataset
    from model import distributed
    from model.encoder import pick_device
    from model.train import TrainConfig, train

    counts = {"epochs": args.epochs, "patience": args.patience, "behaviour_epochs": args.behaviour_epochs,
              "batch_size": args.batch_size}
    for option, value in counts.items():
        if value is not None and value < 1:
            print(f"error: --{option.replace('_', '-')} {value} must be at least 1", file=sys.stderr)
            return 2
    overrides = {"encoder_tuning": args.encoder_tuning, "dim": args.dim, "use_id_embedding": not args.no_id_embedding,
                 "lexical_text": args.lexical_text}
    if args.base is not None:  # an adapter takes the backbone's shape: options that would change it are refused
        options = {"use_id_embedding": "no-id-embedding"}
        changed = [f"--{options.get(name, name.replace('_', '-'))}" for name, value in overrides.items()
                   if value != SHAPE_DEFAULTS[name]]
        if changed or args.base_model:
            print(f"error: {', '.join(changed + ['--base-model'] * bool(args.base_model))}: a scenario adapter "
                  f"takes its shape and encoder from the backbone {args.base}", file=sys.stderr)
            return 2
    dataset = load_dataset(args.data, format=args.format)
    config = TrainConfig(seed=args.seed, device=args.device, time_budget_s=args.time_budget,
                         **{option: value for option, value in counts.items() if value is not None})
    # Under torchrun this process is one of several (model/distributed.py); alone, the group is a no-op.
    with distributed.process_group(pick_device(args.device)):
        metrics = train(dataset, args.out, model_overrides=None if args.base else overrides, train_config=config,
                        base_model=args.base_model, resume=args.resume, progress_file=args.progress_file,
                        preview=args.preview, preview_after_s=args.preview_after, backbone=args.base,
                        scenario=args.scenario)
    return _trained(metrics, args.out)


def _trained(metrics: dict, out: Path) -> int:
    if metrics.get("interrupted"):
        return 130
    if "rank" in metrics:  # a helping process under torchrun: process 0 reports
        return 0
    valid = metrics["valid"]
    print(f"checkpoint {metrics['checkpoint_id']} in {out}: validation NDCG@10 {valid['NDCG@10']:.4f}, "
          f"HR@10 {valid['HR@10']:.4f}; trained in {metrics['train_seconds']:.0f} s "
          f"({metrics['trainable_parameters']:,} trainable parameters)")
    return 0


def _update(args) -> int:
    from data.io import load_dataset
    from model import distributed
    from model.encoder import pick_device
    from model.train import TrainConfig, train

    for option in ("epochs", "patience"):
        if getattr(args, option) < 1:
            print(f"error: --{option} {getattr(args, option)} must be at least 1", file=sys.stderr)
            return 2
    dataset = load_dataset(args.data, format=args.format)
    config = TrainConfig(seed=args.seed, device=args.device, epochs=args.epochs, patience=args.patience, lr=args.lr)
    with distributed.process_group(pick_device(args.device)):  # under torchrun too, as `train`
        metrics = train(dataset, args.out, train_config=config, parent=args.model)
    return _trained(metrics, args.out)


def _evaluate(args) -> int:
    from model.checkpoint import load
    from model.evaluate import evaluate_model

    recommender = load(args.model, data=args.data, backbone=args.base, quantize=args.quantize)
    if recommender.quantization == "int8":
        recommender = recommender.reencoded(progress=True)
    report = evaluate_model(recommender, progress=True, since=args.since, until=args.until)
    report["quantization"] = recommender.quantization
    print(json.dumps(report["summary"], indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(args.json)
    return 0


def _recommend(args) -> int:
    from model.checkpoint import load

    recommender = load(args.model, quantize=args.quantize)
    ranked = recommender.recommend(user_id=args.user, query=args.query, k=args.k)
    for note in ranked.notes:
        print(f"note: {note}")
    for item in ranked:
        print(f"{item.rank:>3}  {item.score:8.3f}  {item.item_id:<12} {item.title[:70]}")
    return 0


def _quantize(args) -> int:
    from model.checkpoint import load

    recommender = load(args.model, quantize="int8")
    transformer = recommender.text_encoder.transformer
    print(f"int8 encoder of {recommender.checkpoint_id}: {transformer.graph} (sha256 {transformer.checksum[:16]}…)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
