"""Data page: what the loaded dataset holds and its quality report."""

from pathlib import Path

import pandas as pd
import streamlit as st

from data import DataError, load_dataset
from data.quality import quality_report
from views.loaders import data_dir, directory_stamp


@st.cache_data(show_spinner="Reading the dataset…")
def dataset_report(path: str, mtime: float) -> tuple[dict, pd.DataFrame]:
    dataset = load_dataset(path)
    return dataset.summary(), quality_report(dataset).to_frame()


st.header("Data")
st.caption("What the loaded dataset holds, and what is wrong with it.")
path = Path(data_dir())
try:
    if not path.exists():
        raise DataError("no such directory: run `make run` to build the demo data, or choose another", file=str(path))
    summary, findings = dataset_report(str(path), directory_stamp(path))
except DataError as exc:
    st.error(str(exc))
    st.stop()

left, middle, right = st.columns(3)
left.metric("Users", f"{summary['users']:,}")
middle.metric("Items", f"{summary['items']:,}")
right.metric("Events", f"{summary['events']:,}")
st.subheader("Quality report")
if findings.empty:
    st.success("No findings: the data looks clean.")
else:
    st.dataframe(findings, hide_index=True, width="stretch")
with st.expander("Dataset summary"):
    st.json(summary)
