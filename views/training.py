"""What every page shows while its model is still being trained: the run's progress, until the model is there."""

from __future__ import annotations

import importlib
import json
import os
import threading
from pathlib import Path

import streamlit as st

REFRESH_S = 2.0  # how often the page looks for the model and the progress again


def progress_file(model: Path) -> Path:
    """Where a run that builds `model` reports its progress (`python -m model train --progress-file`; the
    Makefile passes this path for the demo model)."""
    return model.with_name(model.name + ".progress.json")


def read_progress(model: Path) -> dict | None:
    """The progress of the run building `model`, or None when there is none (or it cannot be read)."""
    try:
        progress = json.loads(progress_file(model).read_text())
    except (OSError, ValueError):
        return None
    return progress if isinstance(progress, dict) else None


def running(progress: dict) -> bool:
    """Whether the process that writes `progress` is still alive (it runs on this machine)."""
    pid = progress.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and another user's
        return True
    return True


def describe(progress: dict) -> str:
    """One line: how far the run is, and where."""
    percent = f"{100 * float(progress.get('fraction', 0.0)):.0f}%"
    stage = progress.get("stage")
    if stage == "stage 1":
        where = f"stage 1 of 2, epoch {progress.get('epoch')} of at most {progress.get('epochs')}"
        if progress.get("best_epoch"):
            where += f"; best validation NDCG@10 so far {progress.get('valid_ndcg', 0.0):.4f}"
    elif stage == "stage 2":
        where = f"stage 2 of 2, behaviour head {int(progress.get('head', 0)) + 1} of {progress.get('heads')}"
    elif stage == "done":
        where = "trained; moving it into place"
    else:
        where = "reading the data and embedding the catalog"
    return f"{percent} ({where})"


@st.cache_resource(show_spinner=False)
def _import_model_code() -> threading.Thread:
    """Import what loading the model needs (torch, transformers: seconds) while the page waits, once per process.

    Not a daemon: a daemon thread still inside torch's import when the interpreter finalises aborts the process.
    """
    thread = threading.Thread(target=importlib.import_module, args=("model.checkpoint",), name="whyrec-preload",
                              daemon=False)
    thread.start()
    return thread


def waiting_page(model: Path, progress: dict, *, is_demo: bool) -> None:
    """The run's progress, refreshed every REFRESH_S; the whole page reruns into the dashboard once the model is
    there. A run that stopped (Ctrl-C, an error) says how to go on."""
    if not running(progress) and progress.get("stage") != "done":
        hint = "run `make run` again to resume it" if is_demo else "resume it with `python -m model train --resume`"
        log = " (its output is in `demo/training.log`)" if is_demo else ""
        st.error(f"The model at `{model}` is not ready: its training stopped at "
                 f"{describe(progress)}{log}. To go on, {hint}.")
        return

    _import_model_code()

    @st.fragment(run_every=REFRESH_S)
    def progress_panel() -> None:
        now = read_progress(model) or progress
        if (model / "config.json").exists() or preview(model, now) is not None:
            st.rerun()  # the whole page, now with the model or its preview
        name = "The demo model" if is_demo else f"The model at `{model}`"
        st.info(f"{name} is being trained: {describe(now)}. This page turns into the dashboard when it is ready.",
                icon=":material/model_training:")
        st.progress(min(max(float(now.get("fraction", 0.0)), 0.0), 1.0))

    progress_panel()


def preview(model: Path, progress: dict) -> Path | None:
    """The stage-1 checkpoint that the run building `model` has copied out for the dashboard to serve meanwhile
    (`python -m model train --preview`), or None when there is none yet (or its run stopped)."""
    path = progress.get("preview")
    if not isinstance(path, str) or not running(progress) or not (Path(path) / "config.json").exists():
        return None
    return Path(path)


def preview_banner(model: Path, progress: dict, *, is_demo: bool) -> None:
    """Above a page served by the preview: what it is, how far the training is, and the switch to the model."""

    @st.fragment(run_every=REFRESH_S)
    def banner() -> None:
        if (model / "config.json").exists():
            st.rerun()  # the whole page, now with the trained model
        now = read_progress(model) or progress
        if not running(now):
            st.rerun()  # the run stopped: the page says so and how to go on
        name = "the demo model" if is_demo else f"the model at `{model}`"
        st.info(f"**Preview** while {name} trains: {describe(now)}. Shown meanwhile: its stage-1 checkpoint "
                f"(epoch {now.get('preview_epoch', '?')}), which ranks by the words and the history alone; its "
                "behaviour heads are not trained yet and add 0. The page switches to the trained model by itself.",
                icon=":material/model_training:")
        st.progress(min(max(float(now.get("fraction", 0.0)), 0.0), 1.0))

    banner()
