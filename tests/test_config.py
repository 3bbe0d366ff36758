"""The Streamlit settings the dashboard ships with, as Streamlit itself reads them from the repository root."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def streamlit_config(monkeypatch):
    """Streamlit's options parsed as `streamlit run app.py` parses them when started in the root (make run)."""
    from streamlit import config

    monkeypatch.chdir(ROOT)
    config.get_config_options(force_reparse=True)
    yield config
    monkeypatch.undo()
    config.get_config_options(force_reparse=True)


def test_the_toolbar_is_a_viewers_without_a_deploy_button(streamlit_config):
    assert streamlit_config.get_option("client.toolbarMode") == "viewer"
    assert Path(streamlit_config.get_where_defined("client.toolbarMode")) == ROOT / ".streamlit" / "config.toml"

