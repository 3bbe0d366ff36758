"""Load test of the dashboard's server alone: N sessions at once over Streamlit's own protocol, no browser.

`bench.load` drives real browsers, and on one small machine their drawing shares the CPU with the server: at 16
sessions the 16 pages' rendering is most of the work, which a person's own laptop would do. This bench asks what
the server itself answers, as a load tool such as locust would. Each client is one dashboard tab speaking the
protocol the browser speaks (a WebSocket to /_stcore/stream, protobuf BackMsg/ForwardMsg from the streamlit
package): it opens the Recommend page on its first user's link (`?user=U`), then chooses each next user in that
page's user chooser, sending the chooser's new value with the rerun as the browser does on a person's choice.
`--new-sessions` opens every user's link in a new session instead (a new tab per visit: the session's setup on top
of the same script). It times:

    list   the request sent -> the ranked list's grid received (its "Top N" heading, then its data)
    page   the request sent -> the end of the script run (the explanation panel of #1 and its deletion test
           included: from the explanation cache, or computed)

and checks that each session was answered about its own user (the link the run ends on names it), that no
error or exception element came back, and that the list's titles and scores equal those of the one-session level
(the same users, one after another). Sessions take users from a queue, with a think time between visits
(uniform 0.5-1.5x `--think`, seeded; the sessions start spread over one think time). `--rounds R` visits every
user R times at each level but the serial one, for a longer run at the same load.

`--variant NAME=VALUE[,NAME=VALUE]` reruns `--variant-sessions` (default: the largest level) with another server
setting against the same serial lists, e.g. the explanation cache off (`WHYREC_CACHE=off`) or one of Streamlit's
own options as an environment variable (`STREAMLIT_RUNNER_POST_SCRIPT_GC=true`).

    python -m bench.load_server --sessions 1 4 16 32 --users 48 --rounds 5 --variant WHYREC_CACHE=off
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode

from bench.load import CpuSeconds, DashboardServer, level_arguments, level_setup, percentiles, run_with_variants

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "load_server.json"
LIST_P99_TARGET_S = 1.0  # the recommend target at 16 sessions
SCORE_TOLERANCE = 1e-5


@dataclass
class Visit:
    """One session's visit: its timings, what it was shown and what went wrong."""

    user: str
    list_s: float | None = None
    page_s: float | None = None
    top: list[tuple[str, float]] = field(default_factory=list)  # (title, score) of the ranked list
    users_named: set[str] = field(default_factory=set)  # ?user= of the link the run ended on
    errors: list[str] = field(default_factory=list)
    chosen: bool = False  # chosen in the open session's chooser (else: the session opened on the user's link)


def _ranked_rows(data: bytes) -> list[tuple[str, float]]:
    import pyarrow as pa

    table = pa.ipc.open_stream(data).read_all()
    return list(zip(table.column("title").to_pylist(), table.column("score").to_pylist()))


class Session:
    """One dashboard tab over the protocol: a WebSocket to the server, whose first run opens the Recommend page on a
    user's link and whose later runs choose another user in the page's chooser, as a person's click does (the
    chooser's widget state, the link the server last wrote)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url, self.timeout_s = url, timeout_s
        self.socket = None
        self.chooser_id: str | None = None  # the Recommend page's user chooser (widget key rec_user)
        self.query_string = ""
        self.page_script_hash = ""  # the page the session is on: a rerun for another page starts that page afresh

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
            self.socket = None

    async def visit(self, user: str) -> Visit:
        """`user`'s list: the page opened on their link (the session's first visit) or chosen in the chooser; reads
        every message until the run ends. Never raises: what went wrong is in the visit's errors."""
        import websockets
        from streamlit.proto.BackMsg_pb2 import BackMsg

        seen = Visit(user)
        request = BackMsg()
        try:
            if self.socket is None or self.chooser_id is None:
                await self.close()
                self.socket = await websockets.connect(
                    self.url.replace("http", "ws", 1) + "/_stcore/stream", subprotocols=["streamlit"],
                    origin=self.url, max_size=None, open_timeout=self.timeout_s)
                request.rerun_script.query_string = urlencode({"user": user})
            else:
                seen.chosen = True
                request.rerun_script.query_string = self.query_string  # what the browser's address bar holds
                request.rerun_script.page_script_hash = self.page_script_hash
                chosen = request.rerun_script.widget_states.widgets.add()
                chosen.id, chosen.string_value = self.chooser_id, user
            started = time.perf_counter()
            await self.socket.send(request.SerializeToString())
            async with asyncio.timeout(self.timeout_s):
                await self._read_run(seen, started)
        except Exception as exc:  # a load test counts every failure, of any kind, and goes on
            seen.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            await self.close()  # the next visit starts a new session
        if seen.list_s is None and not seen.errors:
            seen.errors.append("no ranked list came back")
        return seen

    async def _read_run(self, seen: Visit, started: float) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        heading = False
        while True:
            message = ForwardMsg()
            message.ParseFromString(await self.socket.recv())
            kind = message.WhichOneof("type")
            if kind == "new_session":
                self.page_script_hash = message.new_session.page_script_hash
            elif kind == "page_info_changed":  # the link the page writes as it runs
                self.query_string = message.page_info_changed.query_string
            elif kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                element = message.delta.new_element
                what = element.WhichOneof("type")
                if what == "selectbox" and element.selectbox.id.endswith("rec_user"):
                    self.chooser_id = element.selectbox.id
                elif what == "heading" and element.heading.body.startswith("Top "):
                    heading = True
                elif what == "dataframe" and heading and seen.list_s is None:
                    seen.list_s = time.perf_counter() - started
                    seen.top = _ranked_rows(element.dataframe.arrow_data.data)
                elif what == "exception":
                    seen.errors.append(f"exception: {element.exception.message[:200]}")
                elif what == "alert" and element.alert.format == 1:  # Alert.ERROR
                    seen.errors.append(f"error: {element.alert.body[:200]}")
            elif kind == "script_finished":
                seen.page_s = time.perf_counter() - started
                # The link the run ends on (on the way, a choice first drops the last list's item from the old link).
                seen.users_named.update(parse_qs(self.query_string).get("user", []))
                return


async def visit(url: str, user: str, timeout_s: float) -> Visit:
    """Open the Recommend page on `user`'s link in a new session, and close it."""
    session = Session(url, timeout_s)
    try:
        return await session.visit(user)
    finally:
        await session.close()


async def run_level(url: str, users: list[str], sessions: int, timeout_s: float, think_s: float,
                    rounds: int = 1, new_sessions: bool = False, seed: int = 0) -> tuple[list[Visit], float]:
    """`sessions` clients visiting `users`, `rounds` times each (after the first round, in a shuffled order): each
    client keeps its session and chooses the next user in it, or (`new_sessions`) opens each user's link in a new
    session."""
    draws = random.Random(seed)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for round_ in range(rounds):
        for user in users if round_ == 0 else draws.sample(users, len(users)):
            queue.put_nowait(user)
    visits: list[Visit] = []

    async def client() -> None:
        if think_s > 0:
            await asyncio.sleep(draws.uniform(0.0, think_s))
        session = Session(url, timeout_s)
        try:
            while not queue.empty():
                if new_sessions:
                    await session.close()
                visits.append(await session.visit(queue.get_nowait()))
                if think_s > 0:
                    await asyncio.sleep(think_s * draws.uniform(0.5, 1.5))
        finally:
            await session.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(sessions)))
    return visits, time.perf_counter() - started


def summarise(visits: list[Visit], reference: dict[str, list] | None, wall_s: float) -> dict:
    # Each run must end on a link that names its own user, and only it.
    crossed = {v.user: sorted(v.users_named) for v in visits if not v.errors and v.users_named != {v.user}}
    differs = {}
    for v in visits:
        expected = (reference or {}).get(v.user)
        if expected is None or not v.top:
            continue
        same = [t for t, _ in v.top] == [t for t, _ in expected] and all(
            abs(a - b) <= SCORE_TOLERANCE * max(1.0, abs(b)) for (_, a), (_, b) in zip(v.top, expected))
        if not same:
            differs[v.user] = "ranked list differs"
    return {"visits": len(visits), "chosen_in_open_session": sum(v.chosen for v in visits), "wall_s": round(wall_s, 1),
            "list": percentiles([v.list_s for v in visits if v.list_s is not None]),
            "page": percentiles([v.page_s for v in visits if v.page_s is not None]),
            "errors": {v.user: v.errors for v in visits if v.errors},
            "other_user_named": crossed, "differs_from_serial": differs,
            "distinct_lists": len({json.dumps(v.top) for v in visits if v.top})}


async def measure(model: Path, data: Path, users: list[str], levels: list[int], warm_up: str, env: dict,
                  logs: Path, timeout_s: float, think_s: float, reference: dict | None = None,
                  rounds: int = 1, new_sessions: bool = False, log=print) -> tuple[list[dict], dict]:
    """Every level on a fresh server; returns the level summaries and the serial lists per user (level 1's, unless
    `reference` gives them). The serial level visits each user once, the others `rounds` times."""
    summaries = []
    for sessions in levels:
        label = "-".join(f"{k}={v}" for k, v in sorted(env.items())) or "default"
        with DashboardServer(model, data, logs / f"streamlit-protocol-{label}-{sessions}.log", env) as server:
            await visit(server.url, warm_up, timeout_s)  # the model's loading and the explainers' warm-up
            cpu = CpuSeconds(server.process.pid)
            visits, wall = await run_level(server.url, users, sessions, timeout_s, think_s,
                                           rounds=1 if sessions == 1 else rounds, new_sessions=new_sessions)
            cpu_s = cpu.stop()
            load = os.getloadavg()[0]
        if reference is None and sessions == 1:
            reference = {v.user: v.top for v in visits if v.top and not v.errors}
        summary = {"sessions": sessions, "load_average_1m_at_end": load, **summarise(visits, reference, wall),
                   "cpu_s": cpu_s, "cores": os.cpu_count()}
        summaries.append(summary)
        log(f"{label}, {sessions} session(s): list p50 {summary['list']['p50_s']} p99 {summary['list']['p99_s']} s, "
            f"page p50 {summary['page']['p50_s']} p99 {summary['page']['p99_s']} s; errors {len(summary['errors'])}, "
            f"other user {len(summary['other_user_named'])}, differ {len(summary['differs_from_serial'])}")
    return summaries, reference or {}


def write(args, users: list[str], warm_up: str, runs: list[dict], reference: dict) -> None:
    """The JSON: every run (the main one, then each --variant), the serial lists, and the target read off the main
    run's 16 sessions."""
    at_16 = next((level for level in runs[0]["levels"] if level["sessions"] == 16), None)
    result = {
        "model": str(args.model), "data": str(args.data), "users": users, "warm_up_user": warm_up,
        "cpus": os.cpu_count(), "think_s": args.think, "rounds": args.rounds,
        "client": "Streamlit's WebSocket protocol (BackMsg/ForwardMsg), no browser: "
                  + ("one new session per visit, opened on the user's link (?user=U)" if args.new_sessions else
                     "one session per client, opened on its first user's link (?user=U); each later user chosen "
                     "in the Recommend page's user chooser (its widget state sent with the rerun)"),
        "new_sessions": args.new_sessions,
        "timings": {"list": "request sent -> the ranked list's grid received",
                    "page": "request sent -> the script run's end (the explanation panel of #1 included)"},
        "runs": runs, "serial_lists": reference,
        "target": {"sessions": 16, "list_p99_s_max": LIST_P99_TARGET_S,
                   "list_p99_s": at_16["list"]["p99_s"] if at_16 else None,
                   "met": bool(at_16 and at_16["list"]["p99_s"] is not None
                               and at_16["list"]["p99_s"] <= LIST_P99_TARGET_S),
                   "no_crossed_state": not any(level["other_user_named"] or level["differs_from_serial"]
                                               for run in runs for level in run["levels"]),
                   "no_errors": not any(level["errors"] for run in runs for level in run["levels"])},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_server", description=__doc__.splitlines()[0])
    level_arguments(parser, sessions=[1, 4, 16, 32], users=64, out=RESULTS,
                    reference="an earlier load_server.json whose serial lists (same model and users) to check "
                              "against",
                    think="mean seconds between a session's visits", timeout="seconds one visit may take")
    parser.add_argument("--new-sessions", action="store_true",
                        help="open every visit's link in a new session (a new tab), instead of choosing the user in "
                             "the client's open one")
    parser.add_argument("--rounds", type=int, default=1,
                        help="visits to each user at every level but the serial one: a longer run at one load")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be 1 or more, not {args.rounds}")
    reference, warm_up, users = level_setup(parser, args, "serial_lists")
    logs = args.out.parent / "load-logs"
    run_with_variants(
        args, reference,
        lambda levels, env, serial: asyncio.run(measure(args.model, args.data, users, levels, warm_up, env, logs,
                                                        args.timeout, args.think, serial, args.rounds,
                                                        args.new_sessions)),
        lambda runs, serial: write(args, users, warm_up, runs, serial))
    return 0


if __name__ == "__main__":
    sys.exit(main())
