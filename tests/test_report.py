"""Exported reports: JSON in rank order that round-trips, self-contained escaped HTML, PDF text, atomic writes, batch, CLI."""

import html
import json
import re
import shutil
from html.parser import HTMLParser

import pytest
import torch

from explain import Explanation, ExplanationError
from explain.__main__ import main
from explain.report import (
    FORMATS,
    NO_BROWSER,
    Report,
    ReportError,
    build_report,
    report_file_name,
    to_html,
    write_report,
)
from model.checkpoint import load

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EVIL = "<img src=x onerror=alert(1)>"
K, STEPS = 3, 4  # small: the report's machinery is under test, not the explanations' precision


@pytest.fixture(scope="module")
def calls():
    return []


@pytest.fixture(scope="module")
def report(recommender, user, calls):
    return build_report(recommender, user_id=user, k=K, n_steps=STEPS,
                        progress=lambda done, total, label: calls.append((done, total, label)))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_model, tiny_shop):
    """The tiny model serving a copy of its shop whose titles and brands are markup (same items: `load(data=)`)."""
    from data.io import write_tables
    from data.schema import make_dataset

    root = tmp_path_factory.mktemp("hostile")
    items = tiny_shop.items.assign(title=EVIL + " " + tiny_shop.items["title"], brand="<script>alert(2)</script>")
    write_tables(make_dataset(items, tiny_shop.events, source="hostile", format="table"), root)
    return load(tiny_model, data=root)


@pytest.fixture(scope="module")
def hostile_html(hostile, user):
    return to_html(build_report(hostile, user_id=user, query="<b>wool</b> sock", k=2, n_steps=STEPS))


# ---- building and JSON ------------------------------------------------------------------------------------------

def test_json_lists_the_ranked_items_with_explanations_that_round_trip(recommender, user, report):
    data = json.loads(report.to_json())
    assert data["schema_version"] == 2 and data["user_id"] == user and data["query"] is None
    ranked = recommender.recommend(user_id=user, k=K)
    assert [item["item_id"] for item in data["items"]] == [r.item_id for r in ranked]
    assert [item["rank"] for item in data["items"]] == [1, 2, 3]
    for item, recommendation in zip(data["items"], ranked):
        assert item["title"] == recommendation.title and item["score"] == pytest.approx(recommendation.score)
        explanation = Explanation.from_dict(item["explanation"])
        assert explanation.item_id == item["item_id"] and explanation.user_id == user
        assert explanation.to_dict() == item["explanation"]
    assert Report.from_json(report.to_json()).to_dict() == data
    older = {**data, "schema_version": 1}  # a report from before the history part was the removal game
    with pytest.raises(ReportError, match=r"schema_version 1.*export it again"):
        Report.from_json(json.dumps(older))


def test_each_items_parts_add_up_to_the_score_shown(report):
    for item in report.items:
        e = item.explanation
        assert e.score == pytest.approx(item.score, abs=1e-5)  # the item explained is the item shown
        scale = max(1.0, abs(e.score - e.base_value))
        assert e.base_value + e.total == pytest.approx(item.score, abs=0.05 * scale)


def test_provenance_names_the_model_the_data_the_settings_and_the_versions(recommender, user, report):
    p = report.provenance
    assert p["checkpoint_id"] == recommender.checkpoint_id
    assert p["data_fingerprint"] == recommender.dataset.meta.fingerprint == p["model_data_fingerprint"]
    assert p["parameters"] | {"k": K, "n_steps": STEPS, "user_id": user, "query": None, "mode": "user"} \
        == p["parameters"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", p["created"])
    for package in ("whyrec", "python", "torch", "transformers", "captum", "shap", "plotly"):
        assert p["versions"][package], package
    assert torch.__version__.startswith(p["versions"]["torch"])


def test_progress_is_reported_after_each_item(report, calls):
    assert [(done, total) for done, total, _ in calls] == [(1, K), (2, K), (3, K)]
    assert calls[0][2].startswith("#1 ") and report.items[0].title in calls[0][2]


def test_a_query_report_has_the_query_words(recommender):
    report = build_report(recommender, query="warm wool sock", k=2, n_steps=STEPS)
    assert report.mode == "query" and report.user_id is None and len(report.items) == 2
    page = to_html(report)
    assert page.count("The query's words") == 2 and "No history" in page


@pytest.mark.parametrize(("arguments", "message"), [
    ({}, "give a user, a query"),
    ({"user_id": "nobody"}, "unknown user 'nobody'"),
    ({"user_id": "{user}", "k": 0}, "k 0"),
    ({"user_id": "{user}", "k": True}, "k True"),
    ({"user_id": "{user}", "n_steps": 0}, "n_steps 0"),
    ({"user_id": "{user}", "drill_down": -1}, "drill_down -1"),
    ({"query": "   "}, "query is empty"),
])
def test_bad_requests_are_one_report_error(recommender, user, arguments, message):
    arguments = {key: value.format(user=user) if isinstance(value, str) else value for key, value in arguments.items()}
    with pytest.raises(ReportError, match=re.escape(message)) as raised:
        build_report(recommender, **({"n_steps": STEPS} | arguments))
    assert isinstance(raised.value, ExplanationError) and "\n" not in str(raised.value)


# ---- HTML -------------------------------------------------------------------------------------------------------

class Tags(HTMLParser):
    """Every tag with its attributes, and the text of every <style> and <script> but the inlined plotly.js."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.code: list[str] = []  # style and script bodies, the plotly.js library left out
        self._inside: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag in ("style", "script"):
            self._inside = "library" if attributes.get("id") == "plotly-js" else tag

    def handle_endtag(self, tag):
        if tag in ("style", "script"):
            self._inside = None

    def handle_data(self, data):
        if self._inside in ("style", "script"):
            self.code.append(data)


URL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)  # http://, https://, //host, ftp://...


def external_references(page: str) -> list[str]:
    """Everything in a page that would fetch from elsewhere: URL attributes, <link>, url(...), @import, fetches."""
    parsed = Tags()
    parsed.feed(page)
    found = []
    for tag, attributes in parsed.tags:
        if tag in ("link", "base", "iframe", "object", "embed"):
            found.append(f"<{tag}>")
        for name, value in attributes.items():
            if name in ("src", "href", "action", "srcset", "poster", "data", "background", "formaction") \
                    and value and (URL.match(value) or not value.startswith(("#", "data:"))):
                found.append(f"{tag} {name}={value}")
    code = "\n".join(parsed.code)
    found += re.findall(r"url\(\s*['\"]?(?!data:|#)[^)]*\)|@import[^;]*|https?://[^\s'\"<>)]+", code)
    text = re.sub(r"<script id='plotly-js'>.*?</script>", "", page, flags=re.DOTALL)
    found += re.findall(r"https?://[^\s'\"<>)]+", text)
    return found


def test_the_url_check_finds_what_it_looks_for():
    page = ("<html><head><link rel=stylesheet href='https://cdn.example/x.css'><script src=//cdn.plot.ly/p.js></script>"
            "<style>@import 'x.css'; body{background:url(http://e.x/a.png)}</style></head><body>"
            "<a href='https://example.com'>x</a><img src='pic.png'><p>see http://example.org</p></body></html>")
    assert len(external_references(page)) >= 6
    assert external_references("<html><body><a href='#item-1'>x</a><img src='data:image/png;base64,AA'></body></html>") == []


def test_html_is_self_contained(hostile_html):
    assert external_references(hostile_html) == []
    parsed = Tags()
    parsed.feed(hostile_html)
    scripts = [attributes for tag, attributes in parsed.tags if tag == "script"]
    assert [a.get("id") for a in scripts].count("plotly-js") == 1 and not any("src" in a for a in scripts)
    library = re.search(r"<script id='plotly-js'>(.*?)</script>", hostile_html, flags=re.DOTALL).group(1)
    assert len(library) > 1_000_000  # plotly.js itself, inlined once
    assert "Content-Security-Policy" in hostile_html and "Plotly.newPlot" in hostile_html


def test_html_escapes_every_title_and_never_lets_one_become_a_tag(hostile, hostile_html):
    parsed = Tags()
    parsed.feed(hostile_html)
    assert "img" not in {tag for tag, _ in parsed.tags}
    assert not any(name.startswith("on") for _, attributes in parsed.tags for name in attributes)
    assert EVIL not in hostile_html and "<script>alert(2)" not in hostile_html and "<b>wool</b>" not in hostile_html
    assert "&lt;img src=x onerror=alert(1)&gt;" in hostile_html
    assert "&lt;b&gt;wool&lt;/b&gt;" in hostile_html  # the query, in the heading
    for item in hostile.recommend(user_id=None, query="<b>wool</b> sock", k=2):
        assert item.title.startswith(EVIL)


def test_history_chart_keeps_each_event_and_age_whole_under_an_escaped_title(hostile, user):
    from explain import explain
    from explain.charts import age_label, history_bars

    item = hostile.recommend(user_id=user, k=1)[0]
    explanation = explain(hostile, item.item_id, user_id=user, n_steps=STEPS, drill_down=0)
    figure = history_bars(explanation)
    labels, values = list(figure.layout.yaxis.ticktext), list(figure.layout.yaxis2.ticktext)
    part = explanation.part("history")
    entries = [entry for entry in part.top(len(part)) if not entry[2].get("shared")][:8]  # the past items
    assert len(labels) == len(entries) > 0 and list(figure.data[0].y) == list(range(len(entries)))
    assert values == [f"{value:+.3f}" for _, value, _ in entries]  # each value in the right-hand column
    for label, (_, _, detail) in zip(labels, entries):
        title, note = label.split("<br>")
        assert detail["title"].startswith(EVIL) and len(detail["title"]) > 40  # long enough to be clipped
        assert title == html.escape(detail["title"][:39] + "…") and "<img" not in label
        assert note == f"<span style='color:#777777'>{detail['event']}, {age_label(detail['age_days'])}</span>"

@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="system Chromium is not installed (.ci/run installs it)")
def test_html_opens_offline_in_a_browser_with_its_charts_and_no_dialog(hostile_html, tmp_path):
    from playwright.sync_api import sync_playwright

    page_file = tmp_path / "report.html"
    page_file.write_text(hostile_html, encoding="utf-8")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            requests, dialogs = [], []
            page.on("request", lambda request: requests.append(request.url))
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(page_file.as_uri())
            page.wait_for_selector(".plotly-graph-div svg.main-svg", timeout=30_000)
            charts = page.locator(".plotly-graph-div").count()
            drawn = page.locator(".plotly-graph-div svg.main-svg").count()
            heading = page.locator("section.item h2").first.inner_text()
        finally:
            browser.close()
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
    assert dialogs == []
    assert charts >= 2 * 3 and drawn >= charts  # waterfall, history and behaviour for each of the 2 items
    assert heading.startswith("#1 " + EVIL)  # shown as text, exactly as written


# ---- PDF --------------------------------------------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="system Chromium is not installed (.ci/run installs it)")
def test_pdf_holds_the_titles_and_the_top_behaviour_features_as_text(report, tmp_path):
    from pypdf import PdfReader

    path = write_report(report, tmp_path / "report.pdf")
    assert path.read_bytes().startswith(b"%PDF")
    pages = PdfReader(path).pages
    assert len(pages) >= len(report.items)
    text = " ".join(" ".join(page.extract_text() for page in pages).split())
    for item in report.items:
        assert " ".join(item.title.split()) in text
        top_feature = item.explanation.part("behaviour").top(1)[0][0]
        assert top_feature in text
    assert report.provenance["checkpoint_id"] in text


def test_pdf_without_a_browser_says_what_to_install_and_writes_nothing(report, tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-browser-here"))
    with pytest.raises(ReportError) as raised:
        write_report(report, tmp_path / "report.pdf")
    message = str(raised.value)
    assert message.startswith(NO_BROWSER) and "no-browser-here" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


# ---- writing ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["html", "json"])
def test_write_report_picks_the_format_by_suffix(report, tmp_path, fmt):
    path = write_report(report, tmp_path / "deeper" / f"report.{fmt.upper()}")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") if fmt == "html" else json.loads(text)["items"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left beside it


def test_an_unknown_suffix_is_named(report, tmp_path):
    with pytest.raises(ReportError, match=r"suffix '\.txt'.*\.html, \.pdf or \.json"):
        write_report(report, tmp_path / "report.txt")
    assert list(tmp_path.iterdir()) == []


def test_a_path_that_cannot_be_written_is_named_and_nothing_is_left(report, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    target = blocker / "report.html"
    with pytest.raises(ReportError, match=re.escape(f"cannot write {target}: {blocker} is a file")):
        write_report(report, target)
    folder = tmp_path / "folder.html"
    folder.mkdir()
    with pytest.raises(ReportError, match=re.escape(f"cannot write {folder}: Is a directory")):
        write_report(report, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "folder.html"]
    assert list(folder.iterdir()) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(report, tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("the previous report")

    def full_disk(source, destination):
        raise OSError(28, "No space left on device", str(destination))

    monkeypatch.setattr("explain.report.os.replace", full_disk)
    with pytest.raises(ReportError, match=re.escape(f"cannot write {target}: No space left on device")):
        write_report(report, target)
    assert target.read_text() == "the previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_file_names_are_safe_and_distinct():
    names = [report_file_name(u, "html") for u in ("u1", "a/b", "a_b", "../../etc/passwd", "", "Ü ü", ".hidden")]
    assert names[0] == "u1.html" and len(set(names)) == len(names)
    for name in names:
        assert "/" not in name and not name.startswith(".") and name.endswith(".html")
    assert set(FORMATS) == {"html", "pdf", "json"}


# ---- command line -----------------------------------------------------------------------------------------------

def test_cli_writes_a_report_and_a_batch(tiny_model, user, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["report", "--model", str(tiny_model), "--user", user, "--k", "2", "--n-steps", str(STEPS),
                 "--out", str(out), "--no-progress"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert [item.rank for item in Report.from_json(out.read_text()).items] == [1, 2]
    users = tmp_path / "users.txt"
    users.write_text(f"{user}\nnobody\n")
    assert main(["report", "--model", str(tiny_model), "--users", str(users), "--k", "1", "--n-steps", str(STEPS),
                 "--out", str(tmp_path / "batch"), "--format", "html", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "wrote 1 reports" in captured.out and "skipped 1 unknown" in captured.out and "nobody" in captured.err
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == sorted(
        [report_file_name(user, "html"), "index.html", "manifest.jsonl", "plotly.min.js"])


@pytest.mark.parametrize("argv", [
    ["--user", "nobody", "--out", "{tmp}/r.html"],
    ["--user", "{user}", "--k", "0", "--out", "{tmp}/r.html"],
    ["--user", "{user}", "--out", "{tmp}/r.txt"],
    ["--user", "{user}", "--out", "{tmp}/a-file/r.html"],
    ["--out", "{tmp}/r.html"],
    ["--user", "{user}", "--format", "pdf", "--out", "{tmp}/r.html"],
    ["--users", "nobody,nemo", "--out", "{tmp}/batch"],
    ["--users", "{user}", "--out", "{tmp}/r.html"],
])
def test_cli_bad_input_exits_2_with_one_line(tiny_model, user, tmp_path, argv, capsys):
    (tmp_path / "a-file").write_text("not a directory")
    argv = [a.format(user=user, tmp=tmp_path) for a in argv]
    assert main(["report", "--model", str(tiny_model), "--n-steps", str(STEPS), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_report_looks_the_same_whatever_the_process_default_template(report, monkeypatch):
    """The dashboard's Streamlit sets plotly's default template to its own (placeholder colours its front end fills
    in): a report exported there must not carry it."""
    import plotly.io as pio

    plain = to_html(report)
    monkeypatch.setattr(pio.templates, "default", "plotly_dark")
    assert to_html(report) == plain
