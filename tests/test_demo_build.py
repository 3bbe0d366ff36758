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
# Stands in for .venv/bin/python: `-m data generate --out DIR` and `-m model train ... --out DIR ...`.
log="$(dirname "$0")/../../calls.log"
out=""; previous=""
for arg in "$@"; do [ "$previous" = "--out" ] && out="$arg"; previous="$arg"; done
case "$2" in
  data) mkdir -p "$out" && touch "$out/events.csv" && echo "generate" >> "$log" ;;
  model)
    mkdir -p "$out"
    if [ -e "$out/train_state.json" ]; then echo "train $* (state found)" >> "$log"
    else echo "train $* (no state)" >> "$log"; fi
    echo '{"format": "whyrec-checkpoint"}' > "$out/config.json"
    echo '{"log": []}' > "$out/train_state.json"
    if [ -n "$HANG" ]; then trap 'exit 130' INT; sleep 60 & wait $!; exit 1; fi
    rm "$out/train_state.json" ;;
esac
"""
SOURCES = ("data/synthetic.py", "data/features.py", "model/recommender.py", "model/train.py", "requirements.txt",
           "requirements-dev.txt")


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


def make_demo(checkout: Path) -> subprocess.CompletedProcess:
    return subprocess.run([MAKE, "demo"], cwd=checkout, capture_output=True, text=True, timeout=60)


def calls(checkout: Path) -> list[str]:
    log = checkout / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def interrupted_build(checkout: Path) -> None:
    """`make demo` stopped with Ctrl-C (SIGINT to its process group, as a terminal sends it) while training."""
    build = subprocess.Popen([MAKE, "demo"], cwd=checkout, env={**os.environ, "HANG": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state = checkout / "demo" / "model-training" / "train_state.json"
    deadline = time.monotonic() + 30
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(build.pid, signal.SIGINT)
    assert build.wait(timeout=30) != 0


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

    assert make_demo(checkout).returncode == 0
    assert len([c for c in calls(checkout) if c.startswith("train")]) == 2  # built: reused, not retrained


def test_a_changed_input_starts_the_training_afresh(checkout):
    interrupted_build(checkout)
    (checkout / "model" / "train.py").write_text("# changed\n")
    finished = make_demo(checkout)
    assert finished.returncode == 0, finished.stderr
    assert calls(checkout)[-1].endswith("(no state)")  # the interrupted run of the old recipe was cleared
    assert (checkout / "demo" / "model" / "config.json").exists()
