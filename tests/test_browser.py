"""The dashboard in a real browser: Playwright drives the system Chromium against `streamlit run app.py`."""

import shutil
from pathlib import Path

import pytest

from bench.load import CHROMIUM_ARGS, DashboardServer

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EVIL = "<img src=x onerror=alert(1)>"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="system Chromium is not installed (.ci/run installs it)"),
]


class App(DashboardServer):
    """`streamlit run app.py` on a free loopback port (bench.load's server), its log in test-artifacts/."""

    def __init__(self, model: Path, data: Path) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        super().__init__(model, data, ARTIFACTS / f"streamlit-{Path(model).parent.name}.log")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo shop and a demo model trained on it with the real encoder, as `make demo` trains it (a short run)."""
    from data.io import write_tables
    from data.synthetic import generate
    from model.train import TrainConfig, train

    root = tmp_path_factory.mktemp("demo")
    shop = generate(n_users=400, n_items=300, seed=0, target_events=12_000)
    write_tables(shop, root / "data")
    train(shop, root / "model", model_overrides={"use_id_embedding": False, "lexical_text": True},
          train_config=TrainConfig(epochs=3, behaviour_epochs=5), progress=False, log=lambda *_: None)
    return root


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_encoder, tiny_shop):
    """A shop whose item titles and brands are markup, and a tiny model trained on it."""
    from data.io import write_tables
    from data.schema import make_dataset
    from model.train import TrainConfig, train

    root = tmp_path_factory.mktemp("hostile")
    items = tiny_shop.items.assign(title=EVIL, brand="<script>alert(2)</script>")
    shop = make_dataset(items, tiny_shop.events, source="hostile", format="table")
    write_tables(shop, root / "data")
    train(shop, root / "model", model_overrides={"dim": 16, "max_item_tokens": 24}, base_model=str(tiny_encoder),
          train_config=TrainConfig(epochs=1, batch_size=16, behaviour_epochs=1), progress=False, log=lambda *_: None)
    return root


@pytest.fixture(scope="module")
def hostile_app(hostile):
    app = App(hostile / "model", hostile / "data")
    yield app
    app.stop()


def wait_for_page(page) -> None:
    page.wait_for_selector("h1, h2", timeout=60_000)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)


def test_choose_a_user_and_open_an_explanation(browser, demo):
    app = App(demo / "model", demo / "data")
    try:
        page = browser.new_page(viewport={"width": 1440, "height": 3000})
        dialogs = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(app.url)
        wait_for_page(page)
        page.get_by_text("Recommend", exact=True).first.wait_for()
        # Choose a user through the searchable select box.
        select = page.get_by_test_id("stSelectbox").first
        select.click()
        page.keyboard.type("u0007")
        page.keyboard.press("Enter")
        page.wait_for_function("() => window.location.search.includes('user=u0007')", timeout=60_000)
        wait_for_page(page)
        # The explanation panel of the top item: its charts render.
        page.get_by_text("Why this score").first.wait_for(timeout=120_000)
        page.wait_for_selector(".js-plotly-plot", timeout=120_000)
        wait_for_page(page)
        charts = page.locator(".js-plotly-plot").count()
        assert charts >= 3, f"{charts} charts rendered"
        page.screenshot(path=str(ARTIFACTS / "recommend-explanation.png"), full_page=True)
        assert not dialogs
        assert page.get_by_test_id("stException").count() == 0
    finally:
        app.stop()


def test_markup_in_data_shows_as_text(browser, hostile_app):
    page = browser.new_page(viewport={"width": 1440, "height": 3000})
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(hostile_app.url)
    wait_for_page(page)
    page.get_by_text("Why this score").first.wait_for(timeout=120_000)
    wait_for_page(page)
    # Shown literally as text: in the panel's heading and among the shaded words of the item.
    page.get_by_role("heading", name=f"Why this score: {EVIL}").wait_for(timeout=30_000)
    words = page.locator("p.whyrec-tokens").first.inner_text()
    assert "onerror" in words and "<" in words  # the item's words, markup characters included, as text
    assert page.locator("img[src='x']").count() == 0
    page.screenshot(path=str(ARTIFACTS / "hostile-titles.png"), full_page=True)
    assert not dialogs, dialogs


def test_downloaded_report_renders_and_runs_no_markup(browser, hostile_app):
    page = browser.new_page(viewport={"width": 1440, "height": 2000})
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{hostile_app.url}/report?k=3&steps=8")
    wait_for_page(page)
    page.get_by_role("button", name="Build report").click()
    html_button = page.get_by_test_id("stDownloadButton").filter(has_text="HTML").locator("button")
    html_button.wait_for(timeout=120_000)
    with page.expect_download() as download:
        html_button.click()
    assert download.value.suggested_filename.endswith(".html")
    saved = ARTIFACTS / "hostile-report.html"
    download.value.save_as(saved)
    # The downloaded file, opened on its own: it renders its titles and charts, and the markup in the data
    # stays text (an injected script would open a dialog).
    report = browser.new_page(viewport={"width": 1200, "height": 2000})
    report.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    report.goto(saved.as_uri())
    report.get_by_role("heading", name=f"#1 {EVIL}").wait_for(timeout=30_000)
    report.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
    assert report.locator(".js-plotly-plot").count() >= 3 * 2  # per item: at least a waterfall and behaviour
    assert report.locator("img[src='x']").count() == 0
    words = report.locator("p.whyrec-tokens").first.inner_text()
    assert "onerror" in words and "<" in words  # the item's words, markup characters included, as text
    report.screenshot(path=str(ARTIFACTS / "hostile-report.png"), full_page=True)
    assert not dialogs, dialogs


def test_recommend_opens_by_its_name_in_a_toolbar_without_deploy(browser, hostile_app):
    page = browser.new_page(viewport={"width": 1440, "height": 1200})
    page.goto(f"{hostile_app.url}/recommend?query=wool")  # the name the sidebar gives the page, typed as a URL
    wait_for_page(page)
    page.get_by_role("heading", name="Recommend").first.wait_for(timeout=60_000)
    page.get_by_text("Top ").first.wait_for(timeout=60_000)  # the ranked list for the query in the link
    wait_for_page(page)
    assert "query=wool" in page.url
    assert page.get_by_text("Page not found").count() == 0
    page.get_by_test_id("stToolbar").wait_for(timeout=30_000)
    assert page.get_by_role("button", name="Deploy").count() == 0
    assert page.get_by_text("Deploy", exact=True).count() == 0
    page.screenshot(path=str(ARTIFACTS / "recommend-by-name.png"))


def test_models_page_compares_two_models_and_links_users(browser, hostile, tiny_encoder, tiny_shop):
    """Two models of the hostile shop side by side: metrics, moves and agreement render, titles stay text, and a
    "changed most" link opens that user's comparison."""
    from model.train import TrainConfig, train

    second = hostile / "second-model"
    if not (second / "config.json").exists():
        from data.io import load_dataset

        train(load_dataset(hostile / "data"), second, model_overrides={"dim": 16, "max_item_tokens": 24},
              base_model=str(tiny_encoder), train_config=TrainConfig(epochs=1, batch_size=16, behaviour_epochs=1,
                                                                     seed=1), progress=False, log=lambda *_: None)
    app = App(hostile / "model", hostile / "data")
    try:
        page = browser.new_page(viewport={"width": 1440, "height": 3000})
        dialogs = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(f"{app.url}/models?model_b={second}")
        wait_for_page(page)
        page.get_by_role("heading", name="Models").first.wait_for(timeout=60_000)
        page.get_by_text("Overlap@10").first.wait_for(timeout=180_000)
        wait_for_page(page)
        assert page.locator(".js-plotly-plot").count() >= 1  # the rank moves
        assert page.locator("img[src='x']").count() == 0 and not dialogs
        assert "model_b=" in page.url and "model_a=" in page.url
        link = page.locator("a[href*='user=']").first
        href = link.get_attribute("href")
        user = href.split("user=")[1].split("&")[0]
        page.screenshot(path=str(ARTIFACTS / "models.png"), full_page=True)
        page.goto(f"{app.url}/{href}")
        wait_for_page(page)
        page.get_by_text("Overlap@10").first.wait_for(timeout=180_000)
        assert f"user={user}" in page.url
        assert page.get_by_test_id("stException").count() == 0 and page.get_by_test_id("stAlertContentError").count() == 0
    finally:
        app.stop()
