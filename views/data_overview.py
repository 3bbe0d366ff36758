"""Data page: what the loaded dataset holds and its quality report."""

from pathlib import Path

import pandas as pd
import streamlit as st

from data import DataError, load_dataset
from data.quality import quality_report
from views.loaders import data_dir, directory_stamp
from views.quality import dataset_counts, quality_findings


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

dataset_counts(summary)
st.subheader("Quality report")
quality_findings(findings)
with st.expander("Dataset summary"):
    st.json(summary)
