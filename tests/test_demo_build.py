"""The Makefile's demo build: Ctrl-C during training resumes next time, a changed input starts afresh.

The real Makefile runs in a scratch directory with stand-ins for the sources it depends on and for the venv's
python, which records each call and, for training, leaves a run's state as `python -m model train` does.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")

FAKE_PYTHON = """#!/bin/bash
# Stands in for .venv/bin/python: `-m data generate --out DIR`, `-m model train ... --out DIR ...`,
# `-m model quantize --model DIR`, `-m explain insights ... --out FILE` and `-m explain precompute ...`.
log="$(dirname "$0")/../../calls.log"
out=""; preview=""; previous=""
for arg in "$@"; do
  [ "$previous" = "--out" ] && out="$arg"; [ "$previous" = "--preview" ] && preview="$arg"; previous="$arg"
done
case "$2" in
  data) mkdir -p "$out" && touch "$out/events.csv" && echo "generate" >> "$log" ;;
  model)
    if [ "$3" = "quantize" ]; then echo "quantize" >> "$log"; exit 0; fi
    mkdir -p "$out"
    if [ -e "$out/train_state.json" ]; then echo "train $* (state found)" >> "$log"
    else echo "train $* (no state)" >> "$log"; fi
    echo '{"format": "whyrec-checkpoint"}' > "$out/config.json"
    echo '{"log": []}' > "$out/train_state.json"
    if [ -n "$preview" ]; then mkdir -p "$preview" && cp "$out/config.json" "$preview/"; fi
    if [ -n "$HANG" ]; then trap 'kill $!; exit 130' INT TERM; sleep 60 & wait $!; exit 1; fi
    rm "$out/train_state.json" ;;
  explain)
    if [ "$3" = "precompute" ]; then echo "precompute" >> "$log"
    else echo '{}' > "$out" && echo "insights" >> "$log"; fi ;;
  streamlit)  # serves until the model it was given is there, or until stopped
    echo "serve $WHYREC_MODEL" >> "$log"
    trap 'kill $! 2>/dev/null; echo "server stopped" >> "$log"; exit 0' INT TERM
    for i in $(seq 300); do
      if [ -e "$WHYREC_MODEL/config.json" ]; then echo "served the model" >> "$log"; exit 0; fi
      sleep 0.1 & wait $!
    done
    exit 1 ;;
esac
"""
SOURCES = ("data/synthetic.py", "data/features.py", "model/recommender.py", "model/train.py", "explain/insights.py",
           "requirements.txt", "requirements-dev.txt")


@pytest.fixture
def checkout(tmp_path) -> Path:
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    long_ago = time.time() - 3600
    for name in SOURCES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
        os.utime(tmp_path / name, (long_ago, long_ago))
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    (tmp_path / ".venv" / ".installed").touch()  # the venv is set up: newer than requirements.txt
    return tmp_path


def make_demo(checkout: Path, target: str = "demo") -> subprocess.CompletedProcess:
    return subprocess.run([MAKE, target], cwd=checkout, capture_output=True, text=True, timeout=60)


def calls(checkout: Path) -> list[str]:
    log = checkout / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def interrupted_build(checkout: Path, target: str = "demo") -> None:
    """`make demo` stopped with Ctrl-C (SIGINT to its process group, as a terminal sends it) while training."""
    build = subprocess.Popen([MAKE, target], cwd=checkout, env={**os.environ, "HANG": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state = checkout / "demo" / "model-training" / "train_state.json"
    deadline = time.monotonic() + 30
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(build.pid, signal.SIGINT)
    build.wait(timeout=30)
    if target == "demo":
        assert build.returncode != 0
    assert not running_in_group(build.pid)  # nothing it started is left running


def running_in_group(group: int) -> list[str]:
    """The live processes of a process group (zombies, already dead, left out), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, fields = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        state, _, pgid = fields.split()[:3]
        if int(pgid) == group and state != "Z":
            found.append(name)
    return found


def test_an_interrupted_demo_build_resumes_and_serves_only_a_whole_model(checkout):
    interrupted_build(checkout)
    assert not (checkout / "demo" / "model").exists()  # nothing half-trained where the dashboard looks
    assert (checkout / "demo" / "model-training" / "train_state.json").exists()

    finished = make_demo(checkout)
    assert finished.returncode == 0, finished.stderr
    trains = [c for c in calls(checkout) if c.startswith("train")]
    assert len(trains) == 2 and "--resume" in trains[1] and trains[1].endswith("(state found)")
    assert (checkout / "demo" / "model" / "config.json").exists()
    assert not (checkout / "demo" / "model-training").exists()
    assert not (checkout / "demo" / "model-preview").exists()  # the stage-1 preview goes with the training

    assert make_demo(checkout).returncode == 0
    assert len([c for c in calls(checkout) if c.startswith("train")]) == 2  # built: reused, not retrained
    assert calls(checkout).count("precompute") == 1  # the explanations too


def test_a_changed_input_starts_the_training_afresh(checkout):
    interrupted_build(checkout)
    (checkout / "model" / "train.py").write_text("# changed\n")
    finished = make_demo(checkout)
    assert finished.returncode == 0, finished.stderr
    trains = [c for c in calls(checkout) if c.startswith("train")]
    assert trains[-1].endswith("(no state)")  # the interrupted run of the old recipe was cleared
    assert "--preview demo/model-preview" in trains[-1]
    # and the Insights page's sample is computed on the new model, then the cached explanations
    assert calls(checkout)[-2:] == ["insights", "precompute"]
    assert (checkout / "demo" / "model" / "config.json").exists()


def test_make_run_serves_while_the_model_trains_and_ctrl_c_stops_both(checkout):
    interrupted_build(checkout, "run")
    assert calls(checkout)[-1] == "server stopped"  # the dashboard was up while the model trained
    assert not (checkout / "demo" / "model").exists()
    assert (checkout / "demo" / "model-training" / "train_state.json").exists()

    served = make_demo(checkout, "run")
    assert served.returncode == 0, served.stderr
    log = calls(checkout)
    trains = [c for c in log if c.startswith("train")]
    assert len(trains) == 2 and "--resume" in trains[1] and trains[1].endswith("(state found)")
    assert "served the model" in log and (checkout / "demo" / "model" / "config.json").exists()

    again = make_demo(checkout, "run")  # built: served at once, nothing trained
    assert again.returncode == 0, again.stderr
    assert len([c for c in calls(checkout) if c.startswith("train")]) == 2


def test_make_run_with_your_own_model_builds_nothing_of_the_demo(checkout, tmp_path):
    own = tmp_path / "own-model"
    own.mkdir()
    (own / "config.json").write_text("{}")
    served = subprocess.run([MAKE, "run", f"MODEL={own}", f"DATA={tmp_path}"], cwd=checkout, capture_output=True,
                            text=True, timeout=60)
    assert served.returncode == 0, served.stderr
    assert calls(checkout) == [f"serve {own}", "served the model"]  # no demo data, no training
    assert not (checkout / "demo").exists()


def test_make_n_run_only_prints(checkout):
    """`make -n` runs every recipe line that names $(MAKE); the background build must not be one of them."""
    model = checkout / "demo" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    printed = subprocess.run([MAKE, "-n", "run"], cwd=checkout, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert (model / "config.json").exists() and calls(checkout) == []
