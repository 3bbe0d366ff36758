"""The Ray engine of a batch export: N workers, each loading the model once, share out the users.

    export_batch_ray(model_dir, user_ids, out_dir, data_dir=None, fmt="html", workers=None, address=None)

Each worker is a Ray actor (one CPU, one torch thread) that loads the checkpoint when it starts and then makes one
user's report at a time (explain.batch.make_report) and sends its bytes back; this process writes every file, the
manifest and the index (explain.batch.run_batch), so the files are the serial engine's and the workers need no
shared output directory. Without `address` a local Ray starts with `workers` CPUs (no dashboard, quiet logs) and
stops at the end; with one, the batch joins that cluster, whose nodes must see the model (and data) directory at
the same path and run the same WhyRec and packages. A process already connected to Ray (`ray.init` before) is used
as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

from explain.batch import (
    BatchResult,
    BatchSettings,
    MadeReport,
    make_report,
    prepare,
    run_batch,
    unknown_users,
)
from explain.report_record import ReportError

RAY_REQUIREMENT = "ray==2.60.0"  # the pin of requirements-dist.txt
NO_RAY = (f"--engine ray needs Ray: pip install {RAY_REQUIREMENT} (or pip install -r requirements-dist.txt), "
          "or leave out --engine for the serial batch")
OBJECT_STORE_BYTES = 256 * 2**20  # holds only the reports in flight; Ray's default takes 30% of the memory
CONNECT_TIMEOUT_S = 5.0  # an address that does not answer in this long is not a cluster we can use
WORKER_EXIT_S = 30  # a worker with nothing to do ends in well under a second
IN_FLIGHT_PER_WORKER = 2  # one being made, one waiting, so a worker never idles while this process writes
ROOT = Path(__file__).resolve().parents[1]  # the source tree the workers import WhyRec from


def export_batch_ray(model_dir: str | Path, user_ids: Iterable, out_dir: str | Path, *, data_dir: str | Path | None
                     = None, fmt: str = "html", k: int = 10, n_steps: int = 50, query: str | None = None,
                     drill_down: int = 0, workers: int | None = None, address: str | None = None,
                     progress=True, cache_dir: str | Path | None = None) -> BatchResult:
    """explain.batch.export_batch on Ray: the same files, made by `workers` actors (default: one per CPU of the
    local Ray or of the cluster at `address`), each reading and filling the explanation cache at `cache_dir` if
    given (safe for several processes: explain.cache)."""
    settings = BatchSettings(fmt, k, n_steps, query, drill_down)
    with RayEngine(model_dir, data_dir, workers=workers, address=address, cache_dir=cache_dir) as engine:
        return run_batch(engine, user_ids, out_dir, settings, progress=progress)


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ReportError(NO_RAY) from exc
    return ray


class ReportWorker:
    """One Ray worker: the model loaded once, then reports one user at a time. Errors come back as values."""

    def __init__(self, model_dir: str, data_dir: str | None, threads: int, cache_dir: str | None = None) -> None:
        # One CPU is this worker's share: Integrated Gradients' path runs would otherwise take every core.
        os.environ["WHYREC_PATH_THREADS"] = str(threads)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from transformers.utils import logging as transformers_logging

        from data.errors import WhyRecError
        from explain.cache import ExplanationCache
        from model.checkpoint import load

        torch.set_num_threads(threads)
        transformers_logging.disable_progress_bar()
        self.recommender, self.error = None, None
        self.cache = ExplanationCache(cache_dir) if cache_dir else None
        try:
            self.recommender = load(Path(model_dir), data=Path(data_dir) if data_dir else None)
        except (WhyRecError, OSError) as exc:
            self.error = str(exc) if isinstance(exc, WhyRecError) else f"{exc.filename or ''}: {exc.strerror or exc}"

    def prepare(self, settings: BatchSettings) -> dict:
        if self.error is not None:
            return {"error": self.error}
        try:
            return prepare(self.recommender, settings)
        except ReportError as exc:
            return {"error": str(exc)}

    def unknown(self, user_ids: list[str]) -> dict[str, str]:
        return unknown_users(self.recommender, user_ids)

    def report(self, user_id: str, settings: BatchSettings) -> MadeReport:
        return make_report(self.recommender, user_id, settings, self.cache)


class RayEngine:
    """A batch engine on Ray (explain.batch.Engine): started on entering, its workers and any Ray it started stopped
    on leaving."""

    def __init__(self, model_dir: str | Path, data_dir: str | Path | None = None, *, workers: int | None = None,
                 address: str | None = None, threads_per_worker: int = 1, cache_dir: str | Path | None = None) -> None:
        if workers is not None and workers < 1:
            raise ReportError(f"--workers {workers} must be 1 or more")
        self.model_dir, self.data_dir = Path(model_dir).resolve(), data_dir and Path(data_dir).resolve()
        self.workers, self.address, self.threads = workers, address, threads_per_worker
        self.actors, self.started_ray = [], False
        self.cache_dir = str(Path(cache_dir).resolve()) if cache_dir else None

    def __enter__(self) -> RayEngine:
        ray = self.ray = import_ray()
        if not ray.is_initialized():
            self._start(ray)
        try:
            count = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            worker = ray.remote(num_cpus=1)(ReportWorker)
            if self.address:  # a local Ray's workers inherit this process's environment; a cluster's are told it
                worker = worker.options(runtime_env={"env_vars": _worker_environment()})
            data = str(self.data_dir) if self.data_dir else None
            self.actors = [worker.remote(str(self.model_dir), data, self.threads, self.cache_dir)
                           for _ in range(count)]
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _start(self, ray) -> None:
        if self.address:
            join_cluster(self.address)
        else:
            start_local_ray(self.workers or os.cpu_count() or 1)
        self.started_ray = True

    def __exit__(self, *exc_info) -> None:
        actors, self.actors = self.actors, []
        # A worker with nothing left to do ends itself (and waits for nothing); one still busy after Ctrl-C or an
        # error is killed, so that no worker outlives the batch.
        with contextlib.suppress(Exception):  # it died, or did not end in time: killed next
            self.ray.get([actor.__ray_terminate__.remote() for actor in actors],
                         timeout=WORKER_EXIT_S if exc_info[0] is None else 0)
        for actor in actors:
            self.ray.kill(actor)
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False

    def _call_first(self, method: str, *args):
        """A call on the first worker, whose start-up failure (model not found, ...) is the batch's one error line."""
        try:
            return self.ray.get(getattr(self.actors[0], method).remote(*args))
        except self.ray.exceptions.RayActorError as exc:
            raise ReportError(f"a Ray worker could not start: {_last_line(exc)}") from exc

    def prepare(self, settings: BatchSettings) -> dict:
        made_from = self._call_first("prepare", settings)
        if "error" in made_from:
            raise ReportError(made_from["error"])
        return made_from

    def unknown(self, user_ids: list[str]) -> dict[str, str]:
        return self._call_first("unknown", user_ids)

    def reports(self, user_ids: list[str], settings: BatchSettings) -> Iterator[MadeReport]:
        """Each user's result as a worker finishes it; a worker is given the next user when it returns one."""
        ray, waiting = self.ray, deque(user_ids)
        running = {}  # object ref -> (user id, actor)

        def give(actor) -> None:
            if waiting:
                user = waiting.popleft()
                running[actor.report.remote(user, settings)] = (user, actor)

        for _ in range(IN_FLIGHT_PER_WORKER):
            for actor in self.actors:
                give(actor)
        while running:
            [ready], _ = ray.wait(list(running), num_returns=1)
            user, actor = running.pop(ready)
            try:
                made = ray.get(ready)
            except ray.exceptions.RayActorError as exc:
                raise ReportError(f"a Ray worker stopped while explaining user '{user}' ({_last_line(exc)}); "
                                  "run the batch again to resume it") from exc
            give(actor)
            yield made


def start_local_ray(cpus: int) -> None:
    """A Ray of this machine alone with `cpus` CPUs: no dashboard, no usage report, only errors logged."""
    ray = _quiet_ray()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
             logging_level=logging.ERROR, log_to_driver=False)


def join_cluster(address: str) -> None:
    """Connect to the Ray cluster at `address`; ReportError naming it when nothing answers or it refuses."""
    check_address(address)
    ray = _quiet_ray()
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ReportError(f"cannot join the Ray cluster at {address}: {_last_line(exc)}") from exc


def _quiet_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves this machine
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    return import_ray()


def check_address(address: str) -> None:
    """Refuse at once an address nothing answers at (Ray itself retries for minutes): ReportError naming it."""
    if address == "auto":
        return  # Ray finds the local cluster itself, and says so at once when there is none
    where = address.removeprefix("ray://").rstrip("/")
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise ReportError(f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, ray://10.0.0.5:10001 or "
                          "auto)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ReportError(f"cannot reach a Ray cluster at {address}: {exc.strerror or exc}") from exc


def _worker_environment() -> dict[str, str]:
    """What a worker needs to run WhyRec as this process does: its source tree, offline, and WHYREC_* settings."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.update({name: value for name, value in os.environ.items() if name.startswith("WHYREC_")})
    return env


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__
