"""WhyRec dashboard: page config, the shared sidebar and the router. Pages live in views/."""

import os

import streamlit as st

from views.loaders import DEFAULT_DATA, DEFAULT_MODEL

st.set_page_config(page_title="WhyRec", page_icon=":material/manage_search:", layout="wide")

with st.sidebar:
    st.title("WhyRec")
    st.caption("Recommendations, and why.")
    st.text_input("Model directory", value=os.environ.get("WHYREC_MODEL", DEFAULT_MODEL), key="model_dir",
                  help="A checkpoint from `python -m model train` (default: $WHYREC_MODEL or the demo model)")
    st.text_input("Data directory", value=os.environ.get("WHYREC_DATA", DEFAULT_DATA), key="data_dir",
                  help="Events and items to serve; must match the model's catalog (default: $WHYREC_DATA)")

# Streamlit serves the default page at "/" only, whatever its url_path: "/recommend" would be "Page not found".
# A hidden page at "/recommend" forwards there, the link's parameters kept, so the sidebar's name works as a URL.
recommend = st.Page("views/recommend.py", title="Recommend", icon=":material/recommend:", default=True, url_path="")


def recommend_by_name() -> None:
    st.switch_page(recommend, query_params={key: st.query_params.get_all(key) for key in st.query_params})


pages = [
    recommend,
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
    st.Page("views/whatif.py", title="What-if", icon=":material/tune:", url_path="what-if"),
    st.Page("views/insights.py", title="Insights", icon=":material/insights:", url_path="insights"),
    st.Page("views/report.py", title="Report", icon=":material/description:", url_path="report"),
    st.Page("views/models.py", title="Models", icon=":material/difference:", url_path="models"),
    st.Page("views/data_overview.py", title="Data", icon=":material/dataset:", url_path="data"),
    st.Page(recommend_by_name, title="Recommend", url_path="recommend", visibility="hidden"),
]
st.navigation(pages).run()
