"""Load test of the dashboard's server alone: N sessions at once over Streamlit's own protocol, no browser.

`bench.load` drives real browsers, and on one small machine their drawing shares the CPU with the server: at 16
sessions the 16 pages' rendering is most of the work, which a person's own laptop would do. This bench asks what
the server itself answers. Each client speaks the protocol the browser speaks (a WebSocket to /_stcore/stream,
protobuf BackMsg/ForwardMsg from the streamlit package) and opens the Recommend page on a user's link (`?user=U`),
a new session as a new tab is, which runs the same script a choice of user in the chooser runs. It times:

    list   the request sent -> the ranked list's grid received (its "Top N" heading, then its data)
    page   the request sent -> the end of the script run (the explanation panel of #1 and its deletion test
           included: from the explanation cache, or computed)

and checks that each session was answered about its own user (the link the server writes back names it), that no
error or exception element came back, and that the list's titles and scores equal those of the one-session level
(the same users, one after another). Sessions take users from a queue, with a think time between visits
(uniform 0.5-1.5x `--think`, seeded; the sessions start spread over one think time). `--rounds R` visits every
user R times at each level but the serial one, for a longer run at the same load.

`--variant NAME=VALUE[,NAME=VALUE]` reruns `--variant-sessions` (default: the largest level) with another server
setting against the same serial lists, e.g. the explanation cache off (`WHYREC_CACHE=off`) or one of Streamlit's
own options as an environment variable (`STREAMLIT_RUNNER_POST_SCRIPT_GC=true`).

    python -m bench.load_server --sessions 1 4 16 32 --users 48 --variant WHYREC_CACHE=off --variant-sessions 16
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

from bench.load import CpuSeconds, DashboardServer, level_arguments, level_setup, parse_env, percentiles, variant_envs

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
    users_named: set[str] = field(default_factory=set)  # ?user= of every link the server wrote back
    errors: list[str] = field(default_factory=list)


def _ranked_rows(data: bytes) -> list[tuple[str, float]]:
    import pyarrow as pa

    table = pa.ipc.open_stream(data).read_all()
    return list(zip(table.column("title").to_pylist(), table.column("score").to_pylist()))


async def visit(url: str, user: str, timeout_s: float) -> Visit:
    """Open the Recommend page on `user`'s link in a new session and read every message until the run ends."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    seen = Visit(user)
    request = BackMsg()
    request.rerun_script.query_string = urlencode({"user": user})
    try:
        async with websockets.connect(url.replace("http", "ws", 1) + "/_stcore/stream", subprotocols=["streamlit"],
                                      origin=url, max_size=None, open_timeout=timeout_s) as socket:
            started = time.perf_counter()
            await socket.send(request.SerializeToString())
            heading = False
            async with asyncio.timeout(timeout_s):
                while True:
                    message = ForwardMsg()
                    message.ParseFromString(await socket.recv())
                    kind = message.WhichOneof("type")
                    if kind == "page_info_changed":
                        seen.users_named.update(parse_qs(message.page_info_changed.query_string).get("user", []))
                    elif kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                        element = message.delta.new_element
                        what = element.WhichOneof("type")
                        if what == "heading" and element.heading.body.startswith("Top "):
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
                        break
    except Exception as exc:  # a load test counts every failure, of any kind, and goes on
        seen.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if seen.list_s is None and not seen.errors:
        seen.errors.append("no ranked list came back")
    return seen


async def run_level(url: str, users: list[str], sessions: int, timeout_s: float, think_s: float,
                    rounds: int = 1, seed: int = 0) -> tuple[list[Visit], float]:
    """`sessions` clients visiting `users`, `rounds` times each (after the first round, in a shuffled order)."""
    draws = random.Random(seed)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for round_ in range(rounds):
        for user in users if round_ == 0 else draws.sample(users, len(users)):
            queue.put_nowait(user)
    visits: list[Visit] = []

    async def client() -> None:
        if think_s > 0:
            await asyncio.sleep(draws.uniform(0.0, think_s))
        while not queue.empty():
            visits.append(await visit(url, queue.get_nowait(), timeout_s))
            if think_s > 0:
                await asyncio.sleep(think_s * draws.uniform(0.5, 1.5))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(sessions)))
    return visits, time.perf_counter() - started


def summarise(visits: list[Visit], reference: dict[str, list] | None, wall_s: float) -> dict:
    crossed = {v.user: sorted(v.users_named - {v.user}) for v in visits if v.users_named - {v.user}}
    differs = {}
    for v in visits:
        expected = (reference or {}).get(v.user)
        if expected is None or not v.top:
            continue
        same = [t for t, _ in v.top] == [t for t, _ in expected] and all(
            abs(a - b) <= SCORE_TOLERANCE * max(1.0, abs(b)) for (_, a), (_, b) in zip(v.top, expected))
        if not same:
            differs[v.user] = "ranked list differs"
    return {"visits": len(visits), "wall_s": round(wall_s, 1),
            "list": percentiles([v.list_s for v in visits if v.list_s is not None]),
            "page": percentiles([v.page_s for v in visits if v.page_s is not None]),
            "errors": {v.user: v.errors for v in visits if v.errors},
            "other_user_named": crossed, "differs_from_serial": differs,
            "distinct_lists": len({json.dumps(v.top) for v in visits if v.top})}


async def measure(model: Path, data: Path, users: list[str], levels: list[int], warm_up: str, env: dict,
                  logs: Path, timeout_s: float, think_s: float, reference: dict | None = None,
                  rounds: int = 1, log=print) -> tuple[list[dict], dict]:
    """Every level on a fresh server; returns the level summaries and the serial lists per user (level 1's, unless
    `reference` gives them). The serial level visits each user once, the others `rounds` times."""
    summaries = []
    for sessions in levels:
        label = "-".join(f"{k}={v}" for k, v in sorted(env.items())) or "default"
        with DashboardServer(model, data, logs / f"streamlit-protocol-{label}-{sessions}.log", env) as server:
            await visit(server.url, warm_up, timeout_s)  # the model's loading and the explainers' warm-up
            cpu = CpuSeconds(server.process.pid)
            visits, wall = await run_level(server.url, users, sessions, timeout_s, think_s,
                                           rounds=1 if sessions == 1 else rounds)
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
        "client": "Streamlit's WebSocket protocol (BackMsg/ForwardMsg), no browser: one new session per visit, "
                  "opened on the user's link (?user=U)",
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
    parser.add_argument("--rounds", type=int, default=1,
                        help="visits to each user at every level but the serial one: a longer run at one load")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be 1 or more, not {args.rounds}")
    reference, warm_up, users = level_setup(parser, args, "serial_lists")
    logs = args.out.parent / "load-logs"
    main_env = parse_env(args.env)
    levels, reference = asyncio.run(measure(args.model, args.data, users, args.sessions, warm_up, main_env, logs,
                                            args.timeout, args.think, reference, args.rounds))
    runs = [{"server_env": main_env, "levels": levels}]
    write(args, users, warm_up, runs, reference)
    for env in variant_envs(args):
        variant_levels, _ = asyncio.run(measure(args.model, args.data, users, args.variant_sessions
                                                or [max(args.sessions)], warm_up, env, logs, args.timeout,
                                                args.think, reference, args.rounds))
        runs.append({"server_env": env, "levels": variant_levels})
        write(args, users, warm_up, runs, reference)  # each run's figures are kept as soon as they are measured
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
