"""Benchmark of batch reports: users per minute in one process and on a local Ray with 1 and 2 workers, and the disk
a report takes with plotly.js inlined against the batch's one shared copy.

The same fixed users (the first --users of the data, in order) are exported as HTML by each engine into a fresh
directory, each run timed from nothing loaded to every file written: the serial engine loads the model and explains
one user after another with every core on its path runs; Ray starts, its workers load the model once each (one CPU
and one thread apiece) and share the users, then Ray stops. Ray with 1 worker against the serial engine is the cost
of the engine itself; 2 workers against 1 is what a second worker gives on this machine. Disk: the batch's report
files with their one plotly.min.js, against the same reports written alone (plotly.js inlined in each).
Writes bench/results/scale_ray.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scale_ray.json"
DEMO = ROOT / "demo"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_ray", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEMO / "model", help="checkpoint directory (default demo/model)")
    parser.add_argument("--data", type=Path, default=None, help="data served with it (default: the model's own)")
    parser.add_argument("--users", type=int, default=20, help="users in the batch (default 20)")
    parser.add_argument("--k", type=int, default=5, help="items per report (default 5)")
    parser.add_argument("--n-steps", type=int, default=50, help="Integrated Gradients steps (default 50)")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to run (default 1,2)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        print(f"error: {args.model}: not a checkpoint directory (no config.json)", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging

    from bench.latency import machine
    from explain.batch import export_batch
    from explain.batch_ray import export_batch_ray
    from explain.gradients import path_threads
    from model.checkpoint import load

    logging.disable_progress_bar()
    user_ids = [str(user) for user in load(args.model, data=args.data).user_ids[: args.users]]
    options = {"fmt": "html", "k": args.k, "n_steps": args.n_steps}
    runs = []
    with tempfile.TemporaryDirectory(prefix="whyrec-scale-ray-") as work:
        work = Path(work)

        def timed(name: str, export) -> dict:
            out, finished = work / name, []
            load_before, started = os.getloadavg()[0], time.perf_counter()
            result = export(out, lambda done, total, user: finished.append(time.perf_counter()))
            seconds = time.perf_counter() - started
            # Past the start-up (model loads, Ray, each process's first report): users per minute once running.
            running = (len(finished) - 1) * 60 / (finished[-1] - finished[0]) if len(finished) > 1 else None
            if result.failed or len(result.written) != len(user_ids):
                raise SystemExit(f"error: {name}: {len(result.written)} of {len(user_ids)} reports written "
                                 f"({result.failed})")
            run = {"engine": name, "users": len(user_ids), "seconds": round(seconds, 1),
                   "users_per_minute": round(60 * len(user_ids) / seconds, 2),
                   "seconds_to_first_report": round(finished[0] - started, 1),
                   "users_per_minute_after_first": running and round(running, 2),
                   "load_average_1m_before": load_before, "load_average_1m_after": os.getloadavg()[0]}
            print(f"{name:<16} {len(user_ids)} users in {seconds:7.1f} s: {run['users_per_minute']:6.2f} users/min, "
                  f"first report after {run['seconds_to_first_report']:.1f} s, then "
                  f"{run['users_per_minute_after_first']} users/min "
                  f"(load {load_before:.1f} -> {run['load_average_1m_after']:.1f})", flush=True)
            runs.append(run)
            return result

        serial = timed("serial", lambda out, progress: export_batch(load(args.model, data=args.data), user_ids, out,
                                                                    progress=progress, **options))
        for workers in (int(w) for w in args.workers.split(",")):
            timed(f"ray_{workers}_worker{'s' if workers > 1 else ''}",
                  lambda out, progress, workers=workers: export_batch_ray(
                      args.model, user_ids, out, data_dir=args.data, workers=workers, progress=progress, **options))
        disk = disk_per_report(serial.written, work / "serial", args.model, args.data, user_ids[0], options)
    baseline = runs[0]["users_per_minute"]
    for run in runs:
        run["speedup_vs_serial"] = round(run["users_per_minute"] / baseline, 3)
    summary = {"benchmark": "scale_ray", "model": str(args.model), "format": "html", "k": args.k,
               "n_steps": args.n_steps, "user_ids": user_ids, "serial_path_threads": path_threads(),
               "ray_threads_per_worker": 1, "runs": runs, "disk": disk, "machine": machine("cpu")}
    print(f"disk per report: {disk['self_contained_bytes_per_report'] / 1e6:.2f} MB alone, "
          f"{disk['shared_bytes_per_report'] / 1e6:.3f} MB in this batch with the shared plotly.js "
          f"({disk['plotlyjs_bytes'] / 1e6:.2f} MB once)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def disk_per_report(written: dict, directory: Path, model: Path, data: Path | None, user: str, options) -> dict:
    """Bytes per report in the batch (its file and its share of plotly.min.js) against the reports written alone,
    each of which would carry plotly.js inlined (measured on `user`'s report, made again alone)."""
    from explain.batch import PLOTLYJS
    from explain.report import build_report, to_html
    from model.checkpoint import load

    sizes = [path.stat().st_size for path in written.values()]
    library = (directory / PLOTLYJS).stat().st_size
    alone = len(to_html(build_report(load(model, data=data), user, k=options["k"],
                                     n_steps=options["n_steps"])).encode("utf-8"))
    inlined = alone - written[user].stat().st_size  # what writing it alone adds: plotly.js and its policy
    mean_report = statistics.fmean(sizes)
    return {"reports": len(sizes), "mean_report_bytes": round(mean_report), "plotlyjs_bytes": library,
            "shared_bytes_per_report": round(mean_report + library / len(sizes)),
            "self_contained_bytes": alone, "self_contained_bytes_per_report": round(mean_report + inlined),
            "batch_bytes": sum(sizes) + library, "batch_bytes_self_contained": sum(sizes) + len(sizes) * inlined,
            "directory_bytes": sum(p.stat().st_size for p in directory.iterdir())}


if __name__ == "__main__":
    sys.exit(main())
