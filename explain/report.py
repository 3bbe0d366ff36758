"""Explanation reports: one user's (or one query's) top-k with every explanation, exported as HTML, PDF or JSON.

    report = build_report(recommender, user_id=None, query=None, k=10, n_steps=50, *, progress=None)
    write_report(report, "alice.html")      # or .pdf / .json, by suffix; written atomically
    to_html(report), to_pdf(report), report.to_json()       # a file's content, in memory
    report_file_name(user_id, "html")       # a safe file name for a user's report

The ranked list is `Recommender.recommend` and each item's explanation is `explain(...)` for the same user and
query, so the item explained is the item shown. HTML and PDF draw the dashboard's own charts and fragments
(explain.charts): the HTML is one self-contained file (plotly.js inlined once, no external URL, a Content
Security Policy that lets the page fetch nothing); the PDF is the same page with static charts, printed by a
headless Chromium: the charts become vector drawings and the text stays text. The browser is BROWSER_PATH,
else the one kaleido would use (its own download, then PATH and the usual install places); nothing is
downloaded. A batch, one file per user, is explain.batch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from data.errors import WhyRecError
from explain.errors import ExplanationError
from explain.explanations import explain
from explain.gradients import PathSettings
from explain.report_page import page
from explain.report_record import Report, ReportError, ReportItem

FORMATS = ("html", "pdf", "json")
# What a reader needs to repeat the numbers: the stack that computed them.
PACKAGES = ("torch", "transformers", "tokenizers", "captum", "shap", "numpy", "pandas", "plotly", "kaleido")
PDF_TIMEOUT_S = 180  # a report of 50 items prints in well under a minute; past this the browser is stuck
NO_BROWSER = "PDF export needs Chromium (or Chrome): apt-get install chromium, or set BROWSER_PATH=/path/to/chromium"


def to_html(report: Report, *, plotlyjs: str | None = None) -> str:
    """One self-contained page: summary, one section per item, provenance; works offline. `plotlyjs` names a copy
    of plotly.js beside the page instead (a batch's shared one, explain.batch), which the page then needs."""
    return page(report, static=False, plotlyjs=plotlyjs)


def to_pdf(report: Report, *, browser: str | Path | None = None) -> bytes:
    """The page with static charts, printed to A4 by a headless Chromium (`browser`, else found as kaleido does)."""
    return _print_to_pdf(page(report, static=True), find_browser(browser))


def render(report: Report, fmt: str, *, plotlyjs: str | None = None) -> bytes:
    """The report as the bytes of one file in `fmt` (one of FORMATS); `plotlyjs` as in `to_html`."""
    fmt = _format_name(fmt)
    if fmt == "pdf":
        return to_pdf(report)
    return (to_html(report, plotlyjs=plotlyjs) if fmt == "html" else report.to_json()).encode("utf-8")


# ---- building ---------------------------------------------------------------------------------------------------

def build_report(recommender, user_id=None, query=None, k: int = 10, n_steps: int = 50, *,
                 progress: Callable[[int, int, str], None] | None = None, drill_down: int = 0,
                 cache=None) -> Report:
    """Rank the top-k for a user, a query or both, and explain every item; `progress(done, total, label)` after each.

    `drill_down` > 0 also opens that many top history items to their words (one more IG run per history item).
    `cache` (an explain.cache.ExplanationCache) reads the explanations it holds and keeps the ones computed.
    """
    started = time.perf_counter()
    if user_id is None and query is None:
        raise ReportError("give a user, a query, or both")
    path_settings = _check_parameters(k, n_steps, drill_down)
    try:
        ranked = recommender.recommend(user_id=user_id, query=query, k=int(k))
    except WhyRecError as exc:
        raise ReportError(str(exc)) from exc
    items, from_cache = [], 0
    for recommendation in ranked:
        arguments = {"user_id": user_id, "query": query, "n_steps": n_steps, "drill_down": drill_down}
        try:
            if cache is None:
                explanation = explain(recommender, recommendation.item_id, **arguments)
            else:
                found = cache.explain(recommender, recommendation.item_id, **arguments)
                explanation, from_cache = found.explanation, from_cache + found.from_cache
        except WhyRecError as exc:
            raise ReportError(f"cannot explain #{recommendation.rank} '{recommendation.item_id}': {exc}") from exc
        items.append(ReportItem(recommendation.rank, recommendation.item_id, recommendation.title,
                                recommendation.score, explanation))
        if progress is not None:
            progress(len(items), len(ranked), f"#{recommendation.rank} {recommendation.title}")
    parameters = {"k": int(k), "mode": ranked.mode, "user_id": user_id, "query": query, **path_settings.parameters(),
                  "drill_down": int(drill_down), "exclude_seen": True}
    provenance = _provenance(recommender, parameters, time.perf_counter() - started)
    provenance["explanations_from_cache"] = from_cache
    return Report(user_id, query, ranked.mode, items, provenance, tuple(ranked.notes))


def _check_parameters(k, n_steps, drill_down) -> PathSettings:
    """Refuse bad settings before any work; the path settings are the ones `explain` uses with these n_steps."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ReportError(f"k {k!r} must be a whole number of items, 1 or more")
    if isinstance(drill_down, bool) or not isinstance(drill_down, int | np.integer) or drill_down < 0:
        raise ReportError(f"drill_down {drill_down!r} must be a whole number of history items, 0 or more")
    try:
        return PathSettings(n_steps)
    except ExplanationError as exc:
        raise ReportError(str(exc)) from exc


def _provenance(recommender, parameters: dict, seconds: float) -> dict:
    metadata = recommender.metadata or {}
    meta = recommender.dataset.meta
    return {
        "checkpoint_id": recommender.checkpoint_id,
        "model_created": metadata.get("created"),
        "base_encoder": metadata.get("base_encoder") or None,
        "data_fingerprint": meta.fingerprint,
        "model_data_fingerprint": metadata.get("data", {}).get("fingerprint"),
        "data_source": meta.source,
        "parameters": parameters,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(seconds, 3),
        "versions": versions(),
    }


def versions() -> dict[str, str | None]:
    """Versions of WhyRec, Python and the packages that computed the numbers (None: not installed)."""
    found = {"whyrec": _whyrec_version(), "python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _whyrec_version() -> str | None:
    try:
        return importlib.metadata.version("whyrec")
    except importlib.metadata.PackageNotFoundError:  # run from the source tree: read it where it is declared
        import tomllib

        try:
            project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
            return str(project["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return None


# ---- writing ----------------------------------------------------------------------------------------------------

def output_format(path: str | Path) -> str:
    """The format a report path asks for, from its suffix (one of FORMATS)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        said = f"suffix '.{suffix}'" if suffix else "no suffix"
        raise ReportError(f"{path}: {said}; a report is written as .html, .pdf or .json")
    return suffix


def check_output(path: str | Path) -> Path:
    """Refuse early a report path that cannot be written: bad suffix, a directory, a folder we cannot write in."""
    path = Path(path)
    output_format(path)
    if path.is_dir():
        raise ReportError(f"cannot write {path}: it is a directory")
    _probe(path.parent, path)
    return path


def write_report(report: Report, path: str | Path) -> Path:
    """Write the report in the format its suffix names; atomically, so nothing half-written is ever left."""
    path = Path(path)
    content = render(report, output_format(path))  # render first: a failed PDF leaves no file at all
    _write_atomically(path, content)
    return path


def _write_atomically(path: Path, content: bytes) -> None:
    handle = _temporary_beside(path)
    temporary = Path(handle.name)
    try:
        with handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # a report is for reading: not the temporary file's private 0600
        os.replace(temporary, path)
    except BaseException as exc:
        temporary.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ReportError(_cannot_write(path, exc)) from exc
        raise


def _temporary_beside(path: Path):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    except OSError as exc:
        raise ReportError(_cannot_write(path, exc)) from exc


def _probe(directory: Path, named: Path) -> None:
    """Create `directory` if need be and try a temporary file in it; ReportError naming `named` if that fails."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ReportError(_cannot_write(named, exc)) from exc


def _cannot_write(path: Path, exc: OSError) -> str:
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # mkdir's own words ("File exists") would not say which
        return f"cannot write {path}: {blocker} is a file, not a directory"
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) not in (str(path), str(path.parent)) else ""
    return f"cannot write {path}: {exc.strerror or exc}{where}"


def _format_name(fmt: str) -> str:
    name = str(fmt).lower().lstrip(".")
    if name not in FORMATS:
        raise ReportError(f"report format '{fmt}' is not one of {', '.join(FORMATS)}")
    return name


# ---- file names ------------------------------------------------------------------------------------------------

def report_file_name(user_id: str, fmt: str, hashed: bool = False) -> str:
    """A safe, distinct file name for a user's report: the id itself when it is safe, else a cleaned id + hash of
    the id (`hashed` adds the hash to a safe id too)."""
    user_id = str(user_id)
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", user_id).strip("_")[:80]
    if hashed or safe != user_id or not safe:  # changed ids keep apart by a hash: 'a/b' and 'a_b' get two files
        safe = f"{safe or 'user'}-{hashlib.sha256(user_id.encode()).hexdigest()[:8]}"
    return f"{safe}.{_format_name(fmt)}"


# ---- PDF --------------------------------------------------------------------------------------------------------

def find_browser(path: str | Path | None = None) -> str:
    """The Chromium-based browser that prints PDFs: `path`, else where kaleido looks; ReportError if there is none."""
    # BROWSER_PATH first, as the message says: kaleido's own finder would prefer a browser it downloaded once.
    path = path or os.environ.get("BROWSER_PATH")
    if not path:
        try:
            from choreographer.browsers.chromium import Chromium  # kaleido's browser finder
        except ImportError:
            import shutil

            path = shutil.which("chromium") or shutil.which("chromium-browser")
        else:
            path = Chromium.find_browser(skip_local=False)  # kaleido's download, PATH, the usual install places
    if not path:
        raise ReportError(f"{NO_BROWSER} (no browser found)")
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        raise ReportError(f"{NO_BROWSER} ({path} is not an executable file)")
    return str(path)


def _print_to_pdf(page: str, browser: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="whyrec-pdf-") as work:
        source, target = Path(work) / "report.html", Path(work) / "report.pdf"
        source.write_text(page, encoding="utf-8")
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                   "--disable-background-networking", "--disable-component-update", "--mute-audio",
                   f"--user-data-dir={Path(work) / 'profile'}", "--no-pdf-header-footer",
                   "--virtual-time-budget=10000",  # let the inline scripts draw the charts before printing
                   f"--print-to-pdf={target}", source.as_uri()]
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
        except OSError as exc:
            raise ReportError(f"{NO_BROWSER} ({browser}: {exc.strerror or exc})") from exc
        try:
            _, errors = process.communicate(timeout=PDF_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the browser and the renderers it started
            process.communicate()
            raise ReportError(f"PDF export: {browser} did not finish printing in {PDF_TIMEOUT_S} s") from None
        if not target.is_file() or target.stat().st_size == 0:
            said = [line for line in errors.splitlines() if line.strip() and "dbus" not in line.lower()]
            raise ReportError(f"PDF export: {browser} wrote no PDF (exit code {process.returncode})"
                              + (f": {said[-1].strip()[:300]}" if said else ""))
        return target.read_bytes()
