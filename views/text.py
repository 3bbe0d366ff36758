"""Text from data shown in Streamlit markdown: escaped so a title can never become a link, image or HTML."""

import re

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|>~<&$:])")


def md_escape(text) -> str:
    """Backslash-escape every character markdown (and Streamlit's extensions) could act on."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")
