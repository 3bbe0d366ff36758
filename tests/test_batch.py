"""Batch exports in this process: unknown users, one shared plotly.js beside an escaped index, resuming without
redoing finished users, and the command line's one-line errors (the Ray engine's too, where no Ray is needed)."""

import json
import re
import shutil
import sys

import pytest

from explain.__main__ import main
from explain.batch import (
    INDEX,
    MANIFEST,
    PLOTLYJS,
    BatchSettings,
    InProcess,
    batch_file_names,
    export_batch,
    read_manifest,
    run_batch,
)
from explain.batch_ray import NO_RAY
from explain.report import Report, ReportError, build_report, report_file_name, to_html
from model.checkpoint import load
from tests.test_report import Tags, external_references

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STEPS = 4
EVIL_USER = "<img src=x onerror=alert(1)>&'\""


def listing(directory):
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture(scope="module")
def users(recommender):
    return [str(u) for u in recommender.user_ids[:3]]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_model, tiny_shop, users):
    """The tiny model serving its shop with the first user renamed to markup."""
    from data.io import write_tables
    from data.schema import make_dataset

    root = tmp_path_factory.mktemp("hostile-users")
    events = tiny_shop.events.assign(user_id=tiny_shop.events["user_id"].astype(str).replace(users[0], EVIL_USER))
    write_tables(make_dataset(tiny_shop.items, events, source="hostile", format="table"), root)
    return load(tiny_model, data=root)


@pytest.fixture(scope="module")
def html_batch(hostile, users, tmp_path_factory):
    out = tmp_path_factory.mktemp("html-batch")
    result = export_batch(hostile, [EVIL_USER, users[1]], out, fmt="html", k=2, n_steps=STEPS, progress=False)
    return out, result


class Counting(InProcess):
    """The serial engine, counting the reports it is asked for; `stop_after` interrupts as Ctrl-C would."""

    def __init__(self, recommender, stop_after=None):
        super().__init__(recommender)
        self.made, self.stop_after = [], stop_after

    def reports(self, user_ids, settings):
        for made in super().reports(user_ids, settings):
            self.made.append(made.user_id)
            yield made
            if len(self.made) == self.stop_after:
                raise KeyboardInterrupt


# ---- what a batch writes ----------------------------------------------------------------------------------------

def test_batch_reports_unknown_users_and_exports_the_rest(recommender, users, tmp_path, capsys):
    seen = []
    result = export_batch(recommender, [users[0], "nobody", users[1], users[0]], tmp_path / "out", fmt="json", k=2,
                          n_steps=STEPS, progress=lambda done, total, label: seen.append((done, total, label)))
    assert result.unknown == ["nobody"] and result.failed == {} and result.skipped == []
    assert sorted(result.written) == sorted(users[:2])
    assert "nobody" in capsys.readouterr().err
    for user_id, path in result.written.items():
        assert path.parent == tmp_path / "out" and path.suffix == ".json"
        loaded = Report.from_json(path.read_text())
        assert loaded.user_id == user_id and len(loaded.items) == 2
    assert seen == [(1, 2, users[0]), (2, 2, users[1])]
    assert listing(tmp_path / "out") == sorted([*(p.name for p in result.written.values()), INDEX, MANIFEST])


def test_batch_of_only_unknown_users_or_a_bad_format_is_refused(recommender, tmp_path):
    with pytest.raises(ReportError, match="none of the 2 user ids is known"):
        export_batch(recommender, ["nobody", "nemo"], tmp_path / "out", progress=False)
    with pytest.raises(ReportError, match="'docx' is not one of"):
        export_batch(recommender, ["nobody"], tmp_path / "out", fmt="docx", progress=False)
    with pytest.raises(ReportError, match="k 0"):
        BatchSettings(k=0)
    assert list(tmp_path.iterdir()) == []


def test_batch_file_names_differ_without_case_and_never_replace_the_index():
    """'Ann' and 'ann' would be one file on macOS and Windows: both get the id's hash; 'u1' keeps its name, and a
    user called 'index' does not overwrite the index page."""
    names = batch_file_names(["Ann", "ann", "u1", "index", "INDEX"], "html")
    assert len({name.casefold() for name in names.values()}) == 5
    assert names["u1"] == "u1.html" and names["Ann"].startswith("Ann-") and names["ann"].startswith("ann-")
    assert INDEX.casefold() not in {name.casefold() for name in names.values()}
    assert batch_file_names(["index"], "json") == {"index": "index.json"}


def test_an_html_batch_shares_one_plotlyjs_and_each_report_loads_it(html_batch):
    from plotly.offline import get_plotlyjs

    out, result = html_batch
    assert listing(out) == sorted([*(p.name for p in result.written.values()), INDEX, MANIFEST, PLOTLYJS])
    assert (out / PLOTLYJS).read_text(encoding="utf-8") == get_plotlyjs()
    for path in result.written.values():
        page = path.read_text(encoding="utf-8")
        parsed = Tags()
        parsed.feed(page)
        scripts = [attributes for tag, attributes in parsed.tags if tag == "script"]
        assert [a.get("src") for a in scripts if a.get("id") == "plotly-js"] == [PLOTLYJS]
        assert len(page) < 500_000 and get_plotlyjs()[:2000] not in page  # no copy of the library inside
        assert [ref for ref in external_references(page) if ref != f"script src={PLOTLYJS}"] == []
        assert "script-src 'self' 'unsafe-inline'" in page and "Plotly.newPlot" in page


def test_a_single_report_stays_self_contained(hostile, users, tmp_path):
    """The same report, alone: plotly.js inlined and a policy that lets the page load nothing."""
    page = to_html(build_report(hostile, user_id=users[1], k=2, n_steps=STEPS))
    assert external_references(page) == [] and len(page) > 1_000_000
    assert "script-src 'unsafe-inline'" in page and "'self'" not in page


def test_the_index_links_every_report_and_escapes_the_user_ids(html_batch, hostile, users):
    from explain.charts import escape

    out, result = html_batch
    page = (out / INDEX).read_text(encoding="utf-8")
    parsed = Tags()
    parsed.feed(page)
    names = [result.written[EVIL_USER].name, result.written[users[1]].name]  # in the order asked for
    assert [attributes["href"] for tag, attributes in parsed.tags if tag == "a"] == names
    assert external_references(page) == [f"a href={name}" for name in names]  # the reports beside it, nothing else
    assert {tag for tag, _ in parsed.tags}.isdisjoint({"img", "script"})
    assert EVIL_USER not in page and "&lt;img src=x onerror=alert(1)&gt;&amp;&#x27;&quot;" in page
    top = hostile.recommend(user_id=EVIL_USER, k=1)[0].title
    assert f"<td>{escape(top)}</td>" in page


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="system Chromium is not installed (.ci/run installs it)")
def test_from_the_index_a_report_opens_offline_and_draws_its_charts_with_the_shared_plotlyjs(html_batch):
    from playwright.sync_api import sync_playwright

    out, _ = html_batch
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            requests, errors = [], []
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.goto((out / INDEX).as_uri())
            page.locator("a").nth(1).click()
            page.wait_for_selector(".plotly-graph-div svg.main-svg", timeout=30_000)
            charts = page.locator(".plotly-graph-div").count()
            drawn = page.locator(".plotly-graph-div svg.main-svg").count()
        finally:
            browser.close()
    assert [url for url in requests if not url.startswith("file:")] == []
    assert any(url.endswith("/" + PLOTLYJS) for url in requests) and errors == []
    assert charts >= 2 * 2 and drawn >= charts


# ---- resuming ---------------------------------------------------------------------------------------------------

def test_a_rerun_skips_finished_users_and_redoes_missing_or_damaged_files(recommender, users, tmp_path, capsys):
    out, settings = tmp_path / "out", BatchSettings("json", k=1, n_steps=STEPS)
    first = Counting(recommender)
    result = run_batch(first, users, out, settings, progress=False)
    assert first.made == users and sorted(result.written) == sorted(users)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".json"}

    again = Counting(recommender)
    result = run_batch(again, users, out, settings, progress=False)
    assert again.made == [] and result.skipped == users and result.written == {}
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".json"} == stamps

    names = batch_file_names(users, "json")
    (out / names[users[0]]).unlink()
    with open(out / names[users[2]], "a", encoding="utf-8") as damaged:
        damaged.write(" ")
    with open(out / MANIFEST, "a", encoding="utf-8") as manifest:
        manifest.write('{"user_id": "cut sho')  # a line a crash cut short
    third = Counting(recommender)
    result = run_batch(third, users, out, settings, progress=False)
    assert third.made == [users[0], users[2]] and result.skipped == [users[1]]
    header, entries = read_manifest(out / MANIFEST)
    assert list(entries) == [users[1], users[0], users[2]] and header["made_with"]["k"] == 1
    assert "made again" not in capsys.readouterr().err


def test_an_interrupted_batch_keeps_what_it_finished_and_the_next_run_does_the_rest(recommender, users, tmp_path):
    out, settings = tmp_path / "out", BatchSettings("json", k=1, n_steps=STEPS)
    interrupted = Counting(recommender, stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        run_batch(interrupted, users, out, settings, progress=False)
    _, entries = read_manifest(out / MANIFEST)
    assert list(entries) == users[:1] and users[0] in (out / INDEX).read_text()
    rest = Counting(recommender)
    result = run_batch(rest, users, out, settings, progress=False)
    assert rest.made == users[1:] and result.skipped == users[:1]
    assert [user for user in users if user in (out / INDEX).read_text()] == users


def test_other_settings_make_every_report_again(recommender, users, tmp_path, capsys):
    out = tmp_path / "out"
    run_batch(InProcess(recommender), users[:2], out, BatchSettings("json", k=1, n_steps=STEPS), progress=False)
    again = Counting(recommender)
    result = run_batch(again, users[:2], out, BatchSettings("json", k=2, n_steps=STEPS), progress=False)
    assert again.made == users[:2] and result.skipped == []
    assert "made with other settings, model or data; making them again" in capsys.readouterr().err
    assert all(len(json.loads(path.read_text())["items"]) == 2 for path in result.written.values())


# ---- command line -----------------------------------------------------------------------------------------------

def test_cli_batch_says_what_it_kept_on_a_rerun(tiny_model, users, tmp_path, capsys):
    argv = ["report", "--model", str(tiny_model), "--users", ",".join(users[:2]), "--k", "1", "--n-steps",
            str(STEPS), "--out", str(tmp_path / "batch"), "--format", "json", "--no-progress"]
    assert main(argv) == 0
    assert "wrote 2 reports" in capsys.readouterr().out
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "wrote 0 reports" in said and "2 finished earlier were kept" in said
    assert f"index: {tmp_path / 'batch' / INDEX}" in said


@pytest.mark.parametrize(("argv", "message"), [
    (["--users", "{tmp}/missing.txt"], "--users {tmp}/missing.txt: no such file"),
    (["--users", "nobody"], "none of the 1 user ids is known"),
    (["--users", "{user}", "--workers", "2"], "--address and --workers are for --engine ray"),
    (["--user", "{user}", "--engine", "ray"], "--engine, --address and --workers are for a batch (--users)"),
    (["--users", "{user}", "--engine", "ray", "--address", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
    (["--users", "{user}", "--engine", "ray", "--address", "no-port"], "is not HOST:PORT"),
    (["--users", "{user}", "--engine", "ray", "--workers", "0"], "--workers 0 must be 1 or more"),
])
def test_cli_batch_bad_input_exits_2_with_one_line(tiny_model, user, tmp_path, argv, message, capsys):
    argv = [a.format(user=user, tmp=tmp_path) for a in argv]
    assert main(["report", "--model", str(tiny_model), "--n-steps", str(STEPS), "--no-progress",
                 "--out", str(tmp_path / "batch"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "batch").exists()


def test_cli_without_ray_installed_says_how_to_install_it(tiny_model, user, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as it does where Ray is not installed
    assert main(["report", "--model", str(tiny_model), "--users", user, "--engine", "ray", "--no-progress",
                 "--out", str(tmp_path / "batch")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {NO_RAY}\n" and "ray==2.60.0" in err and "requirements-dist.txt" in err


def test_a_report_file_name_is_the_batchs_when_nothing_clashes(users):
    assert batch_file_names(users, "html") == {user: report_file_name(user, "html") for user in users}
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.html", report_file_name(users[0], "html"))
