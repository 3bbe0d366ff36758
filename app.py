"""WhyRec dashboard: page config, the shared sidebar and the router. Pages live in views/."""

import os

import streamlit as st

st.set_page_config(page_title="WhyRec", page_icon="🔎", layout="wide")

with st.sidebar:
    st.title("WhyRec")
    st.text_input(
        "Data directory",
        value=os.environ.get("WHYREC_DATA", "demo/data"),
        key="data_path",
        help="Defaults to $WHYREC_DATA, else the demo data that `make run` builds",
    )

pages = [st.Page("views/data_overview.py", title="Data", icon="🗂️", default=True)]
st.navigation(pages).run()
