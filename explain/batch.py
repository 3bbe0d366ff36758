"""Batch exports: one report per user in a directory, with an index page, one shared plotly.js, and a manifest that
lets an interrupted batch resume where it stopped.

    export_batch(recommender, user_ids, out_dir, fmt="html")          # this process, one user after another
    export_batch_ray(model_dir, user_ids, out_dir, workers=2)         # explain.batch_ray: the same files, on Ray

Both engines go through `run_batch`: it checks the settings and the users, skips the users whose reports an earlier
run finished, has the engine make the rest (`make_report`, wherever the engine runs it), and writes each report as
it arrives: to a temporary file renamed into place, then recorded in the manifest. The directory holds:

    DIR/<user>.html|.json|.pdf   one report per user (explain.report); an HTML one loads DIR/plotly.min.js
    DIR/plotly.min.js            the installed plotly's plotly.js, once for every report (HTML batches)
    DIR/index.html               a page that links every report of the directory
    DIR/manifest.jsonl           line 1: what the reports were made with (settings, checkpoint, data); then one
                                 line per finished report: {"user_id", "file", "bytes", "sha256", "items", ...}

A rerun with the same settings, model and data skips every user whose file is still the one the manifest recorded
(same size and SHA-256); a change to any of them makes every report again.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from data.errors import WhyRecError
from explain.charts import escape
from explain.report import (
    _check_parameters,
    _format_name,
    _probe,
    _write_atomically,
    build_report,
    find_browser,
    render,
    report_file_name,
)
from explain.report_page import STYLE
from explain.report_record import ReportError

PLOTLYJS = "plotly.min.js"  # the name plotly's own include_plotlyjs="directory" gives the shared copy
INDEX = "index.html"
MANIFEST = "manifest.jsonl"
MANIFEST_SCHEMA = "whyrec-batch"
MANIFEST_VERSION = 1
INDEX_POLICY = "default-src 'none'; style-src 'unsafe-inline'"  # the index runs nothing and fetches nothing


@dataclass(frozen=True)
class BatchSettings:
    """What every report of a batch is made with."""

    fmt: str = "html"  # one of explain.report.FORMATS
    k: int = 10  # items per report
    n_steps: int = 50  # Integrated Gradients steps
    query: str | None = None  # the same typed query beside every user, or none
    drill_down: int = 0  # top history items opened to their words

    def __post_init__(self) -> None:
        object.__setattr__(self, "fmt", _format_name(self.fmt))
        _check_parameters(self.k, self.n_steps, self.drill_down)

    @property
    def plotlyjs(self) -> str | None:
        """The shared plotly.js an HTML report loads from beside itself; None for JSON and PDF."""
        return PLOTLYJS if self.fmt == "html" else None


@dataclass(frozen=True)
class MadeReport:
    """One user's report as a file's bytes and a summary for the index, or why it could not be made."""

    user_id: str
    content: bytes | None = None
    summary: dict = field(default_factory=dict)  # items, mode, top_item
    error: str | None = None


@dataclass
class BatchResult:
    """What a batch export did: the files written, the users it did not know, any that failed, and those skipped
    because an earlier run had finished them."""

    written: dict[str, Path]  # user id -> report file
    unknown: list[str]  # user ids not in the data (with nothing written for them)
    failed: dict[str, str]  # user id -> why its report could not be made
    seconds: float
    skipped: list[str] = field(default_factory=list)  # finished by an earlier run and left as they were


# ---- what runs where the model is: the same for every engine ----------------------------------------------------

def prepare(recommender, settings: BatchSettings) -> dict:
    """What the batch's reports are made from (checkpoint and data), after checking what the format needs."""
    if settings.fmt == "pdf":
        find_browser()  # before hours of explaining, not after
    return {"checkpoint_id": recommender.checkpoint_id, "data_fingerprint": recommender.dataset.meta.fingerprint}


def unknown_users(recommender, user_ids: Iterable[str]) -> dict[str, str]:
    """{user id: why} for the ids the recommender does not know."""
    unknown = {}
    for user in user_ids:
        try:
            recommender.check_user(user)
        except WhyRecError as exc:
            unknown[user] = str(exc)
    return unknown


def make_report(recommender, user_id: str, settings: BatchSettings, cache=None) -> MadeReport:
    """Build and render one user's report, its explanations read from and added to `cache` (an
    explain.cache.ExplanationCache) if given; a ReportError becomes the result's `error`."""
    try:
        report = build_report(recommender, user_id, settings.query, settings.k, settings.n_steps,
                              drill_down=settings.drill_down, cache=cache)
        content = render(report, settings.fmt, plotlyjs=settings.plotlyjs)
    except ReportError as exc:
        return MadeReport(user_id, error=str(exc))
    top = report.items[0].title if report.items else None
    return MadeReport(user_id, content, {"items": len(report.items), "mode": report.mode, "top_item": top})


# ---- engines ------------------------------------------------------------------------------------------------------

class Engine(Protocol):
    """Where a batch's reports are made. Each method runs `prepare`, `unknown_users` or `make_report` next to a
    loaded model; `reports` yields each user's result as it finishes, in any order."""

    def prepare(self, settings: BatchSettings) -> dict: ...

    def unknown(self, user_ids: list[str]) -> dict[str, str]: ...

    def reports(self, user_ids: list[str], settings: BatchSettings) -> Iterator[MadeReport]: ...


class InProcess:
    """The serial engine: this process's model, one user after another."""

    def __init__(self, recommender, cache=None) -> None:
        self.recommender, self.cache = recommender, cache

    def prepare(self, settings: BatchSettings) -> dict:
        return prepare(self.recommender, settings)

    def unknown(self, user_ids: list[str]) -> dict[str, str]:
        return unknown_users(self.recommender, user_ids)

    def reports(self, user_ids: list[str], settings: BatchSettings) -> Iterator[MadeReport]:
        for user in user_ids:
            yield make_report(self.recommender, user, settings, self.cache)


def export_batch(recommender, user_ids: Iterable, out_dir: str | Path, fmt: str = "html", k: int = 10,
                 n_steps: int = 50, *, query: str | None = None, drill_down: int = 0,
                 progress: bool | Callable[[int, int, str], None] = True, cache=None) -> BatchResult:
    """One report file per user in `out_dir`, made in this process; unknown users are listed (and printed) and the
    rest exported; users an earlier run finished are skipped.

    `progress`: True draws a tqdm bar on stderr, a callable gets (done, total, user id) after each user.
    `cache`: the explain.cache.ExplanationCache the explanations are read from and added to, if any.
    """
    settings = BatchSettings(fmt, k, n_steps, query, drill_down)
    return run_batch(InProcess(recommender, cache), user_ids, out_dir, settings, progress=progress)


# ---- the driver: one for every engine ----------------------------------------------------------------------------

def run_batch(engine: Engine, user_ids: Iterable, out_dir: str | Path, settings: BatchSettings, *,
              progress: bool | Callable[[int, int, str], None] = True) -> BatchResult:
    """Check, skip what is finished, have `engine` make the rest and write each report as it arrives."""
    started = time.perf_counter()
    users = list(dict.fromkeys(str(user) for user in user_ids))
    if not users:
        raise ReportError("no user ids to export")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"cannot write reports into {out_dir}: it is a file, not a directory")
    made_from = engine.prepare(settings)
    unknown = engine.unknown(users)
    known = [user for user in users if user not in unknown]
    if not known:
        raise ReportError(f"none of the {len(users)} user ids is known ({'; '.join(list(unknown.values())[:3])}): "
                          "nothing to export")
    _probe(out_dir, out_dir)
    if unknown:
        shown = "; ".join(list(unknown.values())[:5]) + (f"; and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        print(f"skipping {len(unknown)} of {len(users)} users: {shown}", file=sys.stderr)

    directory = BatchDirectory(out_dir, {**asdict(settings), **made_from})
    if directory.restarted:
        print(f"{out_dir}: its reports were made with other settings, model or data; making them again",
              file=sys.stderr)
    file_names = batch_file_names(known, settings.fmt)
    skipped = [user for user in known if directory.finished(user, file_names[user])]
    pending = [user for user in known if not directory.finished(user, file_names[user])]
    if settings.plotlyjs:
        directory.write_plotlyjs()

    from tqdm.auto import tqdm

    bar = tqdm(total=len(pending), unit="user", desc="reports", file=sys.stderr, disable=progress is not True)
    written, failed = {}, {}
    try:
        for done, made in enumerate(engine.reports(pending, settings), start=1):
            if made.error is None:
                written[made.user_id] = directory.add(made, file_names[made.user_id])
            else:
                failed[made.user_id] = made.error
                bar.write(f"{made.user_id}: {made.error}", file=sys.stderr)
            bar.update()
            if callable(progress):
                progress(done, len(pending), made.user_id)
    finally:  # an interrupted batch still gets an index of what it finished
        bar.close()
        directory.write_index(users)
    return BatchResult(written, list(unknown), failed, time.perf_counter() - started, skipped)


def batch_file_names(user_ids: Iterable[str], fmt: str) -> dict[str, str]:
    """File names for a batch, distinct on a case-insensitive file system too (macOS, Windows): ids whose names
    differ only in case ('Ann', 'ann') get the hash of the id as well, so neither report overwrites the other."""
    names = {str(user): report_file_name(user, fmt) for user in user_ids}
    clashes = Counter(name.casefold() for name in names.values())
    # A user called 'index' gets the hash too: its report must not replace the index page.
    return {user: report_file_name(user, fmt, hashed=True) if clashes[name.casefold()] > 1
            or name.casefold() == INDEX.casefold() else name for user, name in names.items()}


# ---- the directory ----------------------------------------------------------------------------------------------

class BatchDirectory:
    """A batch's output directory: its reports, the manifest that records each finished one, the index, plotly.js.

    Opening it reads the manifest: with the same `made_with` (settings, checkpoint, data), the reports it records
    whose files are intact count as finished; with another, the manifest starts over. Either way it is rewritten
    whole (a line cut short by a crash is dropped), then each finished report appends one line.
    """

    def __init__(self, path: Path, made_with: dict) -> None:
        self.path = path
        self.header = {"schema": MANIFEST_SCHEMA, "version": MANIFEST_VERSION, "made_with": made_with}
        earlier_header, earlier = read_manifest(path / MANIFEST)
        self.restarted = earlier_header is not None and earlier_header != self.header
        self.entries: dict[str, dict] = {} if self.restarted else {
            user: entry for user, entry in earlier.items() if _intact(path / entry["file"], entry)}
        lines = [self.header, *self.entries.values()]
        _write_atomically(path / MANIFEST, "".join(json.dumps(line) + "\n" for line in lines).encode("utf-8"))

    def finished(self, user_id: str, file_name: str) -> bool:
        entry = self.entries.get(user_id)
        return entry is not None and entry["file"] == file_name

    def add(self, made: MadeReport, file_name: str) -> Path:
        """Write the report (temporary file, renamed), then record it: a crash between the two only redoes it."""
        target = self.path / file_name
        _write_atomically(target, made.content)
        entry = {"user_id": made.user_id, "file": file_name, "bytes": len(made.content),
                 "sha256": hashlib.sha256(made.content).hexdigest(), **made.summary}
        with open(self.path / MANIFEST, "a", encoding="utf-8") as manifest:
            manifest.write(json.dumps(entry) + "\n")
        self.entries[made.user_id] = entry
        return target

    def write_plotlyjs(self) -> Path:
        """The installed plotly's plotly.js, beside the reports; rewritten only when it differs."""
        from plotly.offline import get_plotlyjs

        target = self.path / PLOTLYJS
        library = get_plotlyjs().encode("utf-8")
        if not (target.is_file() and target.stat().st_size == len(library) and target.read_bytes() == library):
            _write_atomically(target, library)
        return target

    def write_index(self, order: list[str]) -> Path:
        """index.html: every report the manifest records, those of `order` first and in its order."""
        rank = {user: i for i, user in enumerate(order)}
        entries = sorted(self.entries.values(), key=lambda e: rank.get(e["user_id"], len(rank)))
        target = self.path / INDEX
        _write_atomically(target, index_page(entries, self.header["made_with"]).encode("utf-8"))
        return target


def read_manifest(path: Path) -> tuple[dict | None, dict[str, dict]]:
    """(header, {user id: entry}) of a manifest; (None, {}) when there is none or it is not a batch's manifest.
    A line that does not parse (cut short by a crash) is dropped; a later line for a user replaces an earlier."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None, {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"cannot read the batch manifest {path}: {exc}") from exc
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not records or not isinstance(records[0], dict) or records[0].get("schema") != MANIFEST_SCHEMA:
        return None, {}
    entries = {}
    for record in records[1:]:
        if isinstance(record, dict) and isinstance(record.get("user_id"), str) and isinstance(record.get("file"), str):
            entries[record["user_id"]] = record
    return records[0], entries


def _intact(path: Path, entry: dict) -> bool:
    """The file the manifest recorded: there, the same size, the same SHA-256."""
    try:
        if path.stat().st_size != entry.get("bytes"):
            return False
        return hashlib.sha256(path.read_bytes()).hexdigest() == entry.get("sha256")
    except OSError:
        return False


def index_page(entries: list[dict], made_with: dict) -> str:
    """A page that links each report, with its item count and top item; every string from data escaped."""
    from urllib.parse import quote

    rows = "".join(
        f"<tr><td><a href=\"{escape(quote(entry['file']))}\"><code>{escape(entry['user_id'])}</code></a></td>"
        f"<td class='num'>{int(entry.get('items') or 0)}</td><td>{escape(entry.get('mode') or '')}</td>"
        f"<td>{escape(entry.get('top_item') or '—')}</td></tr>" for entry in entries)
    query = made_with.get("query")
    settings = (f"top {made_with.get('k')} items, {made_with.get('n_steps')} Integrated Gradients steps"
                + (f", the query “{escape(query)}”" if query is not None else "")
                + (f", {made_with.get('drill_down')} history items opened to their words"
                   if made_with.get("drill_down") else ""))
    return "\n".join([
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{INDEX_POLICY}\">",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>WhyRec reports: {len(entries)} users</title>",
        f"<style>{STYLE}</style>",
        "</head><body>",
        f"<h1>Why these recommendations: {len(entries)} users</h1>",
        f"<p class='meta'>Model <code>{escape(made_with.get('checkpoint_id'))}</code>, data "
        f"<code>{escape(made_with.get('data_fingerprint'))}</code>; {settings}.</p>",
        "<table><thead><tr><th>User</th><th class='num'>Items</th><th>Mode</th><th>Top item</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>",
        "</body></html>",
    ])
