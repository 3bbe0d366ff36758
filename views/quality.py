"""The dataset's counts and its quality report, as the Data and Insights pages show them."""

import pandas as pd
import streamlit as st


def dataset_counts(summary: dict) -> None:
    """Users, items and events, side by side."""
    left, middle, right = st.columns(3)
    left.metric("Users", f"{summary['users']:,}")
    middle.metric("Items", f"{summary['items']:,}")
    right.metric("Events", f"{summary['events']:,}")


def quality_findings(findings: pd.DataFrame) -> None:
    """The findings of data.quality.quality_report (its to_frame), or one line saying there are none."""
    if findings.empty:
        st.success("No findings: the data looks clean.")
    else:
        st.dataframe(findings, hide_index=True, width="stretch")
