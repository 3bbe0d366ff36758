"""Cached loaders shared by the pages: the model once per process, results once per checkpoint."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import streamlit as st

from data.errors import WhyRecError
from views.training import preview, preview_banner, read_progress, waiting_page

DEFAULT_MODEL = "demo/model"
DEFAULT_DATA = "demo/data"


def model_dir() -> str:
    return st.session_state.get("model_dir") or os.environ.get("WHYREC_MODEL", DEFAULT_MODEL)


def data_dir() -> str:
    return st.session_state.get("data_dir") or os.environ.get("WHYREC_DATA", DEFAULT_DATA)


def directory_stamp(path: Path) -> float:
    """Changes when the directory's files change, so a retrained model is picked up."""
    if not path.exists():
        return 0.0
    files = [path] if path.is_file() else list(path.iterdir())
    return max((p.stat().st_mtime for p in files), default=0.0)


@st.cache_resource(show_spinner="Loading the model…", max_entries=3)  # the sidebar's, and the Models page's two
def _load_recommender(model: str, data: str | None, stamp: float):
    import torch

    from model.checkpoint import load
    from model.quantize import DEFAULT_QUANTIZE

    # One thread per request: the small matrix work of one explanation gains little from a second thread,
    # and a busy machine makes threads wait on each other (measured: 2 ms vs 240 ms per ranking under load).
    torch.set_num_threads(int(os.environ.get("WHYREC_THREADS", "1")))
    # Queries encoded in int8 on the CPU (WHYREC_QUANTIZE: auto, int8 or none; docs/model.md has the measurements).
    recommender = load(model, data=data, quantize=os.environ.get("WHYREC_QUANTIZE", DEFAULT_QUANTIZE))
    start_warm_up(recommender)
    return recommender


def start_warm_up(recommender) -> threading.Thread:
    """Warm the explainers up in the background; the process waits for it at exit.

    Not a daemon, though Streamlit's script thread that starts it is one (threads inherit that flag): a daemon
    thread still inside torch when the interpreter finalises is killed in native code, and the process aborts
    ("terminate called without an active exception") after everything else has finished.
    """
    thread = threading.Thread(target=_warm_up, args=(recommender,), name="whyrec-warm-up", daemon=False)
    thread.start()
    return thread


def _warm_up(recommender) -> None:
    """Pay the one-time costs (SHAP's background and compilation) while the user reads the first list."""
    from explain import explain

    try:
        user = next(u for u in recommender.user_ids if len(recommender.histories[u]))
        item = recommender.recommend(user_id=user, k=1)[0].item_id
        explain(recommender, item, user_id=user, n_steps=2, drill_down=0)
    except (WhyRecError, StopIteration, IndexError):
        pass  # a warm-up only: the real request reports its own errors


def _model_in_training(model: Path) -> Path | None:
    """For a model still being trained: its preview checkpoint to serve meanwhile (under a banner), or None after
    the page has shown the training's progress or said what is missing."""
    progress = read_progress(model)
    is_demo = str(model) == DEFAULT_MODEL
    if progress is None:
        hint = "run `make run` to build the demo model" if is_demo else "check the path"
        st.error(f"No model at `{model}`: {hint}, or choose another model directory in the sidebar.")
        return None
    stage1 = preview(model, progress)  # make run trains the demo model while the dashboard starts
    if stage1 is None:
        waiting_page(model, progress, is_demo=is_demo)
        return None
    preview_banner(model, progress, is_demo=is_demo)
    return stage1


@st.cache_resource(show_spinner=False, max_entries=4)
def _explanation_cache(directory: str | None):
    from explain.cache import ExplanationCache

    return ExplanationCache(directory)


def explanation_cache():
    """The explanation cache every page and session shares: in memory, and on disk where explain.cache's
    cache_directory says ($WHYREC_CACHE, else explanation-cache/ beside the model directory)."""
    from explain.cache import cache_directory

    directory = cache_directory(model_dir())
    return _explanation_cache(None if directory is None else str(directory))


def recommender_or_error():
    """The loaded Recommender, or None after one st.error saying what is wrong and what to do."""
    model, data = Path(model_dir()), data_dir()
    if not (model / "config.json").exists():
        model = _model_in_training(model)
        if model is None:
            return None
    use_data = data if data and Path(data).exists() else None
    if data and use_data is None:
        st.warning(f"Data directory `{data}` does not exist: using the data stored with the model.")
    try:
        stamp = directory_stamp(model) + directory_stamp(Path(use_data or model))
        return _load_recommender(str(model), use_data, stamp)
    except WhyRecError as exc:
        st.error(f"Cannot open the model: {exc}")
        return None


def checkpoint_at(model: str):
    """The checkpoint in directory `model`, served over the sidebar's data when that exists (else its own);
    a WhyRecError says why it cannot be (the Models page shows it)."""
    from model.errors import CheckpointError

    path, data = Path(model), data_dir()
    if not (path / "config.json").exists():
        raise CheckpointError(f"no model at {model} (a directory written by `python -m model train` or `update`)")
    use_data = data if data and Path(data).exists() else None
    stamp = directory_stamp(path) + directory_stamp(Path(use_data or path))
    return _load_recommender(str(path), use_data, stamp)
