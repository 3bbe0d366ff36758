"""Load test of the dashboard: N concurrent browser sessions against `streamlit run app.py`, timed per action.

Each session is one Playwright browser context (its own cookies and cache, so its own Streamlit session) in one
headless Chromium, all driven at once from one event loop. A session opens the dashboard once ("open": the page
load, timed apart), then, for each user it visits: chooses the user in the Recommend page's user chooser (typed
and entered, as a person pastes an id), opens the explanation of the list's #2, runs the what-if that the panel's
"What-if without it" button opens (the top credited past item removed), and compares #1 with #2 by opening the
link the Recommend page's button opens (`/compare?user=U&a=..&b=..`). Each action is timed from the click (or the
link being opened) to its result on screen: the element that carries it drawn and no longer marked stale by the
rerun. The values a session saw (its top-10 list, the explanation's score,
the what-if score and delta, the margin) are checked against the one-session level, which runs the same users one
after another; every page must show the session's own user and no error.

Every level starts a fresh server, so no level reads what an earlier one cached in memory; the explanation
cache on disk (beside the model) is shared: `--env WHYREC_CACHE=off` measures without it. The browser runs on
the same CPU as the server: on a small machine its rendering is part of the measured time, as it is for a person
whose laptop serves the dashboard.

    python -m bench.load --model demo/model --data demo/data --sessions 1 4 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "load.json"
ACTIONS = ("open", "recommend", "explain", "whatif", "compare")
VISIT_ACTIONS = ACTIONS[1:]  # what each visit does; "open" is once per session
RECOMMEND_P99_TARGET_S = 1.0  # the target at 16 sessions
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1440, "height": 2400}
SCORE_TOLERANCE = 1e-5  # grid scores print every digit; thread counts may move the last float bits, never more

# True once the first element matching `selector` after the heading whose text matches `heading` (a regular
# expression) is on the page and not marked stale: the rerun has drawn it anew (no selector: the heading alone).
DRAWN_AFTER = """([heading, selector]) => {
  const pattern = new RegExp(heading);
  const title = Array.from(document.querySelectorAll('h1, h2, h3, h4')).find(h => pattern.test(h.innerText.trim()));
  if (!title || title.closest('[data-stale="true"]')) return false;
  if (!selector) return true;
  const after = Array.from(document.querySelectorAll(selector))
    .find(e => title.compareDocumentPosition(e) & Node.DOCUMENT_POSITION_FOLLOWING);
  return !!after && !after.closest('[data-stale="true"]');
}"""
# True once the page shows `user`'s list: the link names the user (the rerun has read the chooser), and the grid
# after the heading is drawn anew, not stale, with cells other than `before` (GRID_ROWS of the list shown before the
# choice; null: none to replace).
LIST_OF = """([heading, user, before]) => {
  if (new URLSearchParams(location.search).get('user') !== user) return false;
  const pattern = new RegExp(heading);
  const title = Array.from(document.querySelectorAll('h3')).find(h => pattern.test(h.innerText.trim()));
  if (!title || title.closest('[data-stale="true"]')) return false;
  const grid = Array.from(document.querySelectorAll('[data-testid="stDataFrame"]'))
    .find(e => title.compareDocumentPosition(e) & Node.DOCUMENT_POSITION_FOLLOWING);
  if (!grid || grid.closest('[data-stale="true"]')) return false;
  const rows = Array.from(grid.querySelectorAll('table tbody tr'))
    .map(row => Array.from(row.querySelectorAll('td')).map(cell => cell.innerText.trim()));
  return rows.length > 0 && JSON.stringify(rows) !== JSON.stringify(before);
}"""
# Milliseconds since the running indicator went away, once that is 300 ms or more; else false.
QUIET = """() => {
  const now = performance.now();
  if (document.querySelector('[data-testid="stStatusWidget"]')) { window.__whyrecQuietSince = undefined; return false; }
  if (window.__whyrecQuietSince === undefined) window.__whyrecQuietSince = now;
  return now - window.__whyrecQuietSince >= 300 ? now - window.__whyrecQuietSince : false;
}"""
# The ranked list's grid keeps an accessible table of its cells beside the canvas it draws.
GRID_ROWS = """(heading) => {
  const pattern = new RegExp(heading);
  const title = Array.from(document.querySelectorAll('h3')).find(h => pattern.test(h.innerText.trim()));
  const grid = Array.from(document.querySelectorAll('[data-testid="stDataFrame"]'))
    .find(e => title && (title.compareDocumentPosition(e) & Node.DOCUMENT_POSITION_FOLLOWING));
  if (!grid) return [];
  return Array.from(grid.querySelectorAll('table tbody tr'))
    .map(row => Array.from(row.querySelectorAll('td')).map(cell => cell.innerText.trim()));
}"""
METRICS = """() => Array.from(document.querySelectorAll('[data-testid="stMetric"]')).map(m => ({
  label: (m.querySelector('[data-testid="stMetricLabel"]') || {}).innerText || '',
  value: (m.querySelector('[data-testid="stMetricValue"]') || {}).innerText || '',
  delta: (m.querySelector('[data-testid="stMetricDelta"]') || {}).innerText || ''}))"""
ERRORS = """() => Array.from(document.querySelectorAll(
  '[data-testid="stException"], [data-testid="stAlertContentError"]')).map(e => e.innerText.trim().slice(0, 300))"""


# ---- the server -----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DashboardServer:
    """`streamlit run app.py` on a free loopback port (model and data as `make run` passes them), stopped at exit."""

    def __init__(self, model: Path, data: Path, log: Path, env: dict[str, str] | None = None,
                 timeout: float = 180.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log, "w")  # noqa: SIM115 (open while the server runs)
        server_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                      "WHYREC_MODEL": str(model), "WHYREC_DATA": str(data), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(self.port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],  # a file edited meanwhile must not rerun the sessions
            cwd=ROOT, env=server_env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"streamlit did not come up; see {log}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ---- one session ----------------------------------------------------------------------------------------------


@dataclass
class SessionResult:
    """What one session measured and saw."""

    user: str
    seconds: dict[str, float] = field(default_factory=dict)  # action -> click to result drawn
    arrived: dict[str, float] = field(default_factory=dict)  # action -> click to the result's heading on the page
    settled: dict[str, float] = field(default_factory=dict)  # action -> click to the rerun's end
    values: dict[str, object] = field(default_factory=dict)
    wrong_user: list[str] = field(default_factory=list)  # pages that showed another user
    errors: list[str] = field(default_factory=list)


async def drawn(page, heading: str, selector: str, timeout_s: float) -> None:
    await page.wait_for_function(DRAWN_AFTER, arg=[heading, selector], timeout=timeout_s * 1e3, polling=50)


async def arrived(page, heading: str, timeout_s: float) -> None:
    """The result's heading is on the page, fresh: the server has computed the result and sent it."""
    await page.wait_for_function(DRAWN_AFTER, arg=[heading, ""], timeout=timeout_s * 1e3, polling=50)


async def settle(page, timeout_s: float) -> float:
    """Wait for the rerun to end; returns how long ago, in seconds, it ended.

    Ended: no running indicator for 0.3 s (it shows a moment after a rerun starts, and between a page's reruns).
    """
    await page.evaluate("() => { window.__whyrecQuietSince = undefined; }")
    handle = await page.wait_for_function(QUIET, timeout=timeout_s * 1e3, polling=50)
    return float(await handle.json_value()) / 1e3


async def timed_action(result: SessionResult, name: str, page, start, heading: str, selector: str,
                       timeout_s: float) -> None:
    """Start an action (`start`: a click or a link), time it to its result drawn, then to the rerun's end."""
    started = time.perf_counter()
    await start()
    await arrived(page, heading, timeout_s)
    result.arrived[name] = time.perf_counter() - started
    await drawn(page, heading, selector, timeout_s)
    result.seconds[name] = time.perf_counter() - started
    quiet_for = await settle(page, timeout_s)
    result.settled[name] = time.perf_counter() - quiet_for - started
    result.errors += [f"{name}: {text}" for text in await page.evaluate(ERRORS)]


async def shown_user(page, key: str) -> str:
    """The user the page shows: the user chooser's text (by its widget key), else the link's ?user=."""
    chooser = page.locator(f".st-key-{key}")
    if await chooser.count():
        field = chooser.first.locator("input")
        if await field.count():
            return (await field.first.input_value()).strip()
        return (await chooser.first.inner_text()).strip()
    return parse_qs(urlparse(page.url).query).get("user", [""])[0]


async def check_user(result: SessionResult, page, page_name: str, key: str, timeout_s: float = 10.0) -> None:
    """The page shows the session's user in its chooser and its link. The chooser may be drawn a moment after the
    result (a busy browser): an empty one is read again, for up to `timeout_s`, before it counts."""
    shown = await shown_user(page, key)
    deadline = time.perf_counter() + timeout_s
    while not shown and time.perf_counter() < deadline:
        await asyncio.sleep(0.1)
        shown = await shown_user(page, key)
    url_user = parse_qs(urlparse(page.url).query).get("user", [None])[0]
    if result.user not in shown.split() or url_user != result.user:
        result.wrong_user.append(f"{page_name}: shows {shown!r}, link user {url_user!r}")


async def read_metric(page, label: str, timeout_s: float = 10.0) -> dict:
    """The page's metric labelled `label`, read again for up to `timeout_s` while a busy browser has not drawn it."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = await page.evaluate(METRICS)
        if any(m["label"].strip().startswith(label) for m in metrics) or time.monotonic() > deadline:
            return metric(metrics, label)
        await asyncio.sleep(0.2)


def metric(metrics: list[dict], label: str) -> dict:
    found = [m for m in metrics if m["label"].strip().startswith(label)]
    if not found:
        raise LookupError(f"no metric labelled {label!r} on the page")
    return found[0]


def link_param(page, key: str) -> str | None:
    return parse_qs(urlparse(page.url).query).get(key, [None])[0]


TOP_LIST = r"^Top \d+$"


async def open_dashboard(page, url: str, user: str | None, timeout_s: float) -> float:
    """Open the dashboard (on `user`'s list, else the first user's) until its list is drawn; returns the seconds."""
    started = time.perf_counter()
    await page.goto(f"{url}/?{urlencode({'user': user})}" if user else f"{url}/")
    await drawn(page, TOP_LIST, '[data-testid="stDataFrame"] tbody tr', timeout_s)
    seconds = time.perf_counter() - started
    await settle(page, timeout_s)
    return seconds


async def to_recommend(page, timeout_s: float) -> None:
    """Back to the Recommend page by the sidebar's link (no page load), its list drawn and its rerun ended."""
    if urlparse(page.url).path.strip("/") == "":
        return
    await page.locator('[data-testid="stSidebarNav"] a', has_text="Recommend").first.click()
    await page.locator(".st-key-rec_user input").first.wait_for(timeout=timeout_s * 1e3)
    await drawn(page, TOP_LIST, '[data-testid="stDataFrame"] tbody tr', timeout_s)
    await settle(page, timeout_s)


async def run_session(page, url: str, user: str, timeout_s: float = 300.0, think=None) -> SessionResult:
    """One person's visit in their open dashboard: their list, an explanation, a what-if and a comparison; never
    raises. `think()` gives the seconds the person reads a result before the next click (None: no pause)."""
    result = SessionResult(user)

    async def pause() -> None:
        if think is not None:
            await asyncio.sleep(think())

    def page_error(error) -> None:
        result.errors.append(f"page error: {error}")

    page.on("pageerror", page_error)
    try:
        # 1. The user's list: the user typed into the Recommend page's chooser and entered.
        await to_recommend(page, timeout_s)
        # The list shown before the choice, which the new one must replace (none to replace: the user is shown).
        before = None if link_param(page, "user") == user else await page.evaluate(GRID_ROWS, TOP_LIST)

        async def choose_user() -> None:
            chooser = page.locator(".st-key-rec_user input").first
            await chooser.click()
            await chooser.fill(user)
            await chooser.press("Enter")

        started = time.perf_counter()
        await choose_user()
        await page.wait_for_function(LIST_OF, arg=[TOP_LIST, user, before], timeout=timeout_s * 1e3, polling=50)
        result.seconds["recommend"] = result.arrived["recommend"] = time.perf_counter() - started
        quiet_for = await settle(page, timeout_s)
        result.settled["recommend"] = time.perf_counter() - quiet_for - started
        result.errors += [f"recommend: {text}" for text in await page.evaluate(ERRORS)]
        await check_user(result, page, "recommend", "rec_user")
        rows = await page.evaluate(GRID_ROWS, TOP_LIST)
        top = [{"rank": int(r[0]), "title": r[1], "score": float(r[5])} for r in rows if len(r) >= 6]
        if len(top) < 2:
            raise LookupError(f"the ranked list shows {len(top)} rows")
        result.values["top10"] = top
        result.values["item_1"] = link_param(page, "item")  # the panel explains #1 first and names it in the link

        await pause()
        # 2. The explanation of #2, chosen in the panel's item chooser.
        async def choose_second() -> None:
            await page.locator(".st-key-explain_item input").click()
            await page.get_by_role("option", name=re.compile(r"^#2\s")).click()

        second = re.escape(top[1]["title"])
        await timed_action(result, "explain", page, choose_second, rf"^Why this score: {second}$",
                           '[data-testid="stPlotlyChart"] .main-svg', timeout_s)
        result.values["item_2"] = link_param(page, "item")
        result.values["explanation_score"] = (await read_metric(page, "Score"))["value"]

        await pause()
        # 3. What-if without the past item the explanation credits most (the panel's first such button).
        buttons = page.locator(f"[class*='st-key-whatif_{result.values['item_2']}_'] button")
        if not await buttons.count():
            raise LookupError("the explanation names no past item to remove")
        await timed_action(result, "whatif", page, lambda: buttons.first.click(), r"^Top \d+: what-if against real$",
                           '[data-testid="stPlotlyChart"] .main-svg', timeout_s)
        await check_user(result, page, "whatif", "wi_user")
        focus = await read_metric(page, "Score of")
        result.values["whatif_removed"] = link_param(page, "remove")
        result.values["whatif_score"], result.values["whatif_delta"] = focus["value"], focus["delta"].split()[0]

        await pause()
        # 4. #1 against #2, from the link the Recommend page's "Compare #1 and #2" opens.
        link = urlencode({"user": user, "a": result.values["item_1"], "b": result.values["item_2"]})
        await timed_action(result, "compare", page, lambda: page.goto(f"{url}/compare?{link}"),
                           r"^Why [AB] ranks above [AB]$", '[data-testid="stPlotlyChart"] .main-svg', timeout_s)
        await check_user(result, page, "compare", "cmp_user")
        result.values["margin"] = (await read_metric(page, "Margin"))["value"]
        await settle(page, timeout_s)  # the comparison's rerun ends before the next visit's choice
    except Exception as exc:  # a load test counts every failure, of any kind, and goes on
        result.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    finally:
        page.remove_listener("pageerror", page_error)
    return result


# ---- levels ---------------------------------------------------------------------------------------------------


async def run_level(browser, url: str, users: list[str], sessions: int, timeout_s: float,
                    opener: str | None = None, think_s: float = 0.0, seed: int = 0
                    ) -> tuple[list[SessionResult], list[float], float]:
    """`sessions` browser contexts at once, each opening the dashboard (on `opener`'s list) and then taking the next
    user until every user has had a visit; returns the visits, the seconds each open took, and the seconds from the
    first visit's click to the last result.

    `think_s`: the mean pause between a result and the next click (drawn uniformly from half to one and a half times
    it, seeded); the sessions then also start spread over one such pause, as people do, rather than all in the
    same instant. The opens come first, all at once: a person's dashboard is open before they choose a user."""
    draws = random.Random(seed)
    think = (lambda: think_s * draws.uniform(0.5, 1.5)) if think_s > 0 else None
    queue: asyncio.Queue[str] = asyncio.Queue()
    for user in users:
        queue.put_nowait(user)
    results: list[SessionResult] = []
    contexts = [await browser.new_context(viewport=VIEWPORT) for _ in range(sessions)]
    pages = [await context.new_page() for context in contexts]

    async def visitor(page) -> None:
        if think is not None:
            await asyncio.sleep(draws.uniform(0.0, think_s))
        while not queue.empty():
            results.append(await run_session(page, url, queue.get_nowait(), timeout_s, think))

    try:
        opens = await asyncio.gather(*(open_dashboard(page, url, opener, timeout_s) for page in pages))
        started = time.perf_counter()
        await asyncio.gather(*(visitor(page) for page in pages))
        return results, list(opens), time.perf_counter() - started
    finally:
        for context in contexts:
            await context.close()


def percentiles(seconds: list[float]) -> dict:
    if not seconds:
        return {"n": 0, "p50_s": None, "p95_s": None, "p99_s": None, "max_s": None}
    values = np.asarray(seconds)
    return {"n": len(values), **{f"p{q}_s": round(float(np.percentile(values, q)), 3) for q in (50, 95, 99)},
            "max_s": round(float(values.max()), 3)}


def differences(seen: dict, reference: dict) -> list[str]:
    """Where one session's values differ from the serial session's for the same user (empty: identical)."""
    if not reference:
        return ["no serial reference for this user"]
    found = []
    for key, expected in reference.items():
        got = seen.get(key)
        if key == "top10":
            got_list = got or []
            same_items = [r["title"] for r in got_list] == [r["title"] for r in expected]
            close = same_items and all(abs(a["score"] - b["score"]) <= SCORE_TOLERANCE * max(1.0, abs(b["score"]))
                                       for a, b in zip(got_list, expected))
            if not close:
                found.append("top10 differs")
        elif got != expected:
            found.append(f"{key}: {got!r} vs serial {expected!r}")
    return found


def summarise(results: list[SessionResult], opens: list[float], reference: dict[str, dict] | None,
              wall_s: float) -> dict:
    mismatches = {}
    if reference is not None:
        for r in results:
            if r.values and (diff := differences(r.values, reference.get(r.user, {}))):
                mismatches[r.user] = diff
    lists = {json.dumps([row["title"] for row in r.values.get("top10", [])]) for r in results if r.values.get("top10")}
    return {
        "sessions_run": len(results), "wall_s": round(wall_s, 1),
        "actions": {"open": percentiles(opens),
                    **{a: percentiles([r.seconds[a] for r in results if a in r.seconds]) for a in VISIT_ACTIONS}},
        "arrived": {a: percentiles([r.arrived[a] for r in results if a in r.arrived]) for a in VISIT_ACTIONS},
        "settled": {a: percentiles([r.settled[a] for r in results if a in r.settled]) for a in VISIT_ACTIONS},
        "complete_sessions": sum(all(a in r.seconds for a in VISIT_ACTIONS) for r in results),
        "errors": {r.user: r.errors for r in results if r.errors},
        "wrong_user": {r.user: r.wrong_user for r in results if r.wrong_user},
        "differs_from_serial": mismatches,
        "distinct_top10_lists": len(lists),  # different users see different lists, so a crossed state would show
    }


async def measure(model: Path, data: Path, users: list[str], levels: list[int], warm_up_user: str | None,
                  env: dict[str, str], logs: Path, timeout_s: float = 300.0,
                  reference: dict[str, dict] | None = None, think_s: float = 0.0,
                  log=print) -> tuple[list[dict], dict[str, dict]]:
    """Every level on a fresh server; returns the level summaries and the serial values per user (level 1).

    `warm_up_user`: a visit, unmeasured, that loads the model and warms the explainers up, and the list every
    session's dashboard opens on; None skips the visit (the first open pays for the model) and opens on the
    first user's list."""
    from playwright.async_api import async_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    summaries = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            for sessions in levels:
                label = "-".join(f"{k}={v}" for k, v in sorted(env.items())) or "default"
                with DashboardServer(model, data, logs / f"streamlit-{label}-{sessions}.log", env) as server:
                    # The first visit pays the model's loading and the explainers' warm-up: not a measurement.
                    if warm_up_user is not None:
                        await run_level(browser, server.url, [warm_up_user], 1, timeout_s)
                    cpu = CpuSeconds(server.process.pid)
                    results, opens, wall = await run_level(browser, server.url, users, sessions, timeout_s,
                                                           warm_up_user, think_s)
                    cpu_s = cpu.stop()
                if sessions == 1 and reference is None:
                    reference = {r.user: r.values for r in results if not r.errors}
                summary = {"sessions": sessions, **summarise(results, opens, reference, wall), "cpu_s": cpu_s,
                           "cores": os.cpu_count()}
                summaries.append(summary)
                log(f"{label}, {sessions} session(s): " + ", ".join(
                    f"{a} p50 {s['p50_s']} p99 {s['p99_s']} s" for a, s in summary["actions"].items())
                    + f"; errors {len(summary['errors'])}, wrong user {len(summary['wrong_user'])}, "
                      f"differ {len(summary['differs_from_serial'])}")
        finally:
            await browser.close()
    return summaries, reference or {}


class CpuSeconds:
    """CPU seconds spent between creation and `stop()` by the server process (with its threads and children), and
    by the clients: this process and everything it started but the server (the browser and its renderers, or the
    protocol clients), ended processes included as far as their parents have reaped them."""

    def __init__(self, server_pid: int) -> None:
        self._server_pid = server_pid
        self._start = self._read()
        self._started = time.perf_counter()

    def _read(self) -> tuple[float, float]:
        import psutil

        def busy(process) -> float:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                return 0.0
            return times.user + times.system + times.children_user + times.children_system

        server = psutil.Process(self._server_pid)
        server_tree = {server.pid, *(child.pid for child in server.children(recursive=True))}
        server_s = sum(busy(psutil.Process(pid)) for pid in server_tree if psutil.pid_exists(pid))
        me = psutil.Process()
        clients_s = busy(me) + sum(busy(child) for child in me.children(recursive=True)
                                                 if child.pid not in server_tree)
        return server_s, clients_s

    def stop(self) -> dict[str, float]:
        server_s, clients_s = self._read()
        return {"server": round(server_s - self._start[0], 2), "clients": round(clients_s - self._start[1], 2),
                "over_s": round(time.perf_counter() - self._started, 1)}  # the level's whole time, opens included


def pick_users(data: Path, n: int, min_items: int = 3) -> list[str]:
    """n users spread over the data (every len/n-th of those with at least `min_items` distinct past items)."""
    from data.io import load_dataset

    events = load_dataset(data).events
    counts = events.groupby(events["user_id"].astype(str))["item_id"].nunique()
    eligible = sorted(counts[counts >= min_items].index)
    if len(eligible) < n + 1:
        raise SystemExit(f"{data} has {len(eligible)} users with {min_items}+ past items; {n + 1} are needed")
    step = len(eligible) / (n + 1)
    return [eligible[int(i * step)] for i in range(n + 1)]  # the first is the warm-up visit's


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env {pair!r}: expected NAME=VALUE")
        env[key] = value
    return env


def write(args, users: list[str], warm_up: str, runs: list[dict], reference: dict[str, dict]) -> None:
    top = max(args.sessions)
    at_top = next(level for level in runs[0]["levels"] if level["sessions"] == top)
    result = {
        "model": str(args.model), "data": str(args.data), "users": users, "warm_up_user": warm_up,
        "cpus": os.cpu_count(), "load_average_1m_at_end": os.getloadavg()[0],
        "browser": "one headless Chromium on the same CPU, one browser context per session",
        "think_s": args.think, "think": "pause between a result and the next click: uniform 0.5-1.5x think_s; "
                                         "sessions start spread over one think_s",
        "actions": {"open": "open the dashboard (/?user=warm-up user) until its top-10 grid is drawn: the page load, "
                            "once per session, every session at once",
                    "recommend": "type the user's id into the Recommend page's chooser and press Enter, until that "
                                 "user's top-10 grid is drawn (the rerun, the ranking and the grid drawn)",
                    "explain": "choose #2 in the panel until its waterfall is drawn",
                    "whatif": "click 'What-if without it' (top credited past item) until the bump chart is drawn",
                    "compare": "open /compare?user=U&a=#1&b=#2 until the margin's waterfall is drawn"},
        "timings": {"actions": "click to the result drawn (grid rows or chart on screen): the figure that counts",
                    "arrived": "click to the result's heading on the page: the server's part, before the browser "
                               "draws the grid or chart", "settled": "click to the end of the page's rerun"},
        "runs": runs,
        "serial_values": reference,  # what each user's session showed alone: what every level is checked against
        "target": {"sessions": top, "recommend_p99_s_max": RECOMMEND_P99_TARGET_S,
                   "recommend_p99_s": at_top["actions"]["recommend"]["p99_s"],
                   "met": bool(at_top["actions"]["recommend"]["p99_s"] is not None
                               and at_top["actions"]["recommend"]["p99_s"] <= RECOMMEND_P99_TARGET_S),
                   "no_crossed_state": not any(level["wrong_user"] or level["differs_from_serial"]
                                               for run in runs for level in run["levels"]),
                   "no_errors": not any(level["errors"] for run in runs for level in run["levels"])},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


def level_arguments(parser: argparse.ArgumentParser, *, sessions: list[int], users: int, out: Path,
                    reference: str, think: str, timeout: str) -> None:
    """The arguments both load tests take (this one and bench.load_server): the model and data served, the levels,
    the users, the server's environment, an earlier run to check against, the think time, a timeout and the JSON."""
    parser.add_argument("--model", type=Path, default=ROOT / "demo" / "model")
    parser.add_argument("--data", type=Path, default=ROOT / "demo" / "data")
    parser.add_argument("--sessions", type=int, nargs="+", default=sessions,
                        help="concurrency levels; 1 must come first (the serial reference) unless --reference")
    parser.add_argument("--reference", type=Path, default=None, help=reference)
    parser.add_argument("--users", type=int, default=users, help="visits per level, each to a different user")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="server environment (e.g. WHYREC_THREADS=1)")
    parser.add_argument("--think", type=float, default=2.0, help=think)
    parser.add_argument("--timeout", type=float, default=300.0, help=timeout)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=VALUE[,NAME=VALUE]",
                        help="a server setting to compare, run at --variant-sessions against the same reference")
    parser.add_argument("--variant-sessions", type=int, nargs="+", default=None,
                        help="levels for each variant (default: the largest of --sessions)")


def variant_envs(args) -> list[dict[str, str]]:
    """Each --variant's server environment: --env's, with the variant's settings over it."""
    main_env = parse_env(args.env)
    return [{**main_env, **parse_env(variant.split(","))} for variant in args.variant]


def run_with_variants(args, reference: dict | None, measure_levels, write) -> None:
    """The main run at --sessions with --env, then each --variant at --variant-sessions against the same serial
    values. `measure_levels(levels, env, reference)` returns the level summaries and the serial values;
    `write(runs, reference)` keeps each run's figures as soon as they are measured."""
    main_env = parse_env(args.env)
    levels, reference = measure_levels(args.sessions, main_env, reference)
    runs = [{"server_env": main_env, "levels": levels}]
    write(runs, reference)
    for env in variant_envs(args):
        variant_levels, _ = measure_levels(args.variant_sessions or [max(args.sessions)], env, reference)
        runs.append({"server_env": env, "levels": variant_levels})
        write(runs, reference)
    print(f"wrote {args.out}")


def level_setup(parser: argparse.ArgumentParser, args, serial_key: str) -> tuple[dict | None, str, list[str]]:
    """Check what `level_arguments` parsed; returns the reference (the earlier run's `serial_key`, or None), the
    warm-up user and the users to visit."""
    reference = json.loads(args.reference.read_text())[serial_key] if args.reference else None
    if args.sessions[0] != 1 and reference is None:
        parser.error("--sessions must start with 1 (the serial run every other level is checked against), "
                     "or --reference must name an earlier run's results")
    if not (args.model / "config.json").exists():
        parser.error(f"no model at {args.model} (make demo builds the demo model)")
    users = pick_users(args.data, args.users)
    return reference, users[0], users[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    level_arguments(parser, sessions=[1, 4, 16], users=16, out=RESULTS,
                    reference="an earlier load.json whose serial values (same model and users) to check against",
                    think="mean seconds a person reads a result before the next click (0: none, all at once)",
                    timeout="seconds one action may take")
    args = parser.parse_args(argv)
    # Stopped from outside (a timeout, Ctrl-C's sibling): unwind, so the servers started here are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    reference, warm_up, users = level_setup(parser, args, "serial_values")
    logs = args.out.parent / "load-logs"
    run_with_variants(
        args, reference,
        lambda levels, env, serial: asyncio.run(measure(args.model, args.data, users, levels, warm_up, env, logs,
                                                        args.timeout, serial, think_s=args.think)),
        lambda runs, serial: write(args, users, warm_up, runs, serial))
    return 0


if __name__ == "__main__":
    sys.exit(main())
