"""Seconds from `make run` to the first ranked list on the Recommend page, as a new analyst meets it.

Starts the command (default `make run`) in a checkout on a free loopback port, and polls the dashboard with
Playwright and the system Chromium until the Recommend page shows its ranked list (the "Top N" table). The
clock starts when the command starts, so a fresh clone counts its set-up (.venv, the demo shop and model) and a
built one only the dashboard's start. While the demo model trains, the first ranked list is its stage-1 preview's
(under the "Preview" banner); the clock then goes on to the trained model's list, when the banner has gone. The
command and everything it started are stopped at the end. Writes bench/results/first_run.json (one entry per
--label, earlier labels kept).

    python -m bench.first_run --label warm
    python -m bench.first_run --cwd /tmp/fr-clone --label cold
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "first_run.json"
# The Recommend page's ranked list: the table under its "Top N" heading (the user's profile card has a table too).
RANKED_LIST = "xpath=//h3[starts-with(normalize-space(.), 'Top ')]/following::*[@data-testid='stDataFrame']"
PREVIEW_BANNER = "Shown meanwhile: its stage-1 checkpoint"  # views.training.preview_banner


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C to the command's own process group (as a terminal sends it), then SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGINT, 60), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            break
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # whatever of the group outlived its leader
        os.killpg(process.pid, signal.SIGKILL)


def time_to_ranked_list(command: list[str], cwd: Path, port: int, timeout: float, log: Path,
                        screenshot: Path | None) -> dict:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("system Chromium is not installed (apt-get install chromium)")
    url = f"http://127.0.0.1:{port}/"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1440, "height": 1600})
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as output:
            started = time.monotonic()
            process = subprocess.Popen(command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # its own group: stopped whole at the end
            marks: dict[str, float] = {}
            try:
                while time.monotonic() - started < timeout:
                    if process.poll() is not None:
                        raise SystemExit(f"{shlex.join(command)} exited with {process.returncode}; see {log}")
                    if "page" not in marks:
                        try:
                            page.goto(url, timeout=5_000)
                            marks["page"] = time.monotonic() - started
                        except PlaywrightError:
                            time.sleep(0.25)
                            continue
                    try:  # the page moves on by itself (a waiting page turns into the dashboard): no reload
                        page.wait_for_selector(RANKED_LIST, state="visible", timeout=1_000)
                    except PlaywrightError:
                        continue
                    now = time.monotonic() - started
                    marks.setdefault("ranked_list", now)
                    if page.get_by_text(PREVIEW_BANNER).count():
                        marks.setdefault("preview_ranked_list", now)
                        time.sleep(0.5)
                        continue
                    marks["trained_ranked_list"] = now
                    break
                if screenshot is not None:
                    page.screenshot(path=str(screenshot))
            finally:
                stop(process)
        browser.close()
    if "ranked_list" not in marks:
        raise SystemExit(f"no ranked list within {timeout:.0f} s; see {log}")
    return {"seconds": marks["ranked_list"], "first_page_seconds": marks["page"],
            "first_list_was_preview": "preview_ranked_list" in marks,
            "trained_model_seconds": marks.get("trained_ranked_list")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cwd", type=Path, default=ROOT, help="the checkout to run it in (default: this one)")
    parser.add_argument("--command", default="make run", help="started with PORT=<free port> added")
    parser.add_argument("--label", default="warm", help="the entry of first_run.json to write (cold, warm, ...)")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    port = free_port()
    command = [*shlex.split(args.command), f"PORT={port}"]
    cwd = args.cwd.resolve()
    demo_built = (cwd / "demo" / "model" / "config.json").exists()
    venv_built = (cwd / ".venv" / ".installed").exists()
    load_before = os.getloadavg()
    log = args.out.parent / f"first_run-{args.label}.log"
    result = time_to_ranked_list(command, cwd, port, args.timeout, log, args.out.parent / f"first_run-{args.label}.png")
    entry = {"command": shlex.join(command), "cwd": str(cwd), "venv_built_before": venv_built,
             "demo_built_before": demo_built, **result, "cpus": os.cpu_count(),
             "load_average_1m_before": load_before[0], "load_average_1m_after": os.getloadavg()[0],
             "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results = json.loads(args.out.read_text()) if args.out.exists() else {"benchmark": "first_run"}
    results[args.label] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    preview = " (the preview's)" if entry["first_list_was_preview"] else ""
    trained = entry["trained_model_seconds"]
    print(f"{args.label}: first ranked list{preview} {entry['seconds']:.1f} s after `{entry['command']}` "
          f"(first page at {entry['first_page_seconds']:.1f} s; the trained model's list at "
          f"{'-' if trained is None else f'{trained:.1f}'} s; load average {load_before[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
