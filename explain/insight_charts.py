"""Plotly figures of the global views in explain.insights: feature importance, its beeswarm, words, metrics.

Like explain.charts, every string from data (titles, user ids, categories, words) passes through `escape`
before it reaches a label or a hover text.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from data.features import FEATURES
from explain.charts import RAISES, _clip, _layout, escape
from explain.insights import METRICS, BehaviourImportance

# Okabe-Ito, colour-blind safe: the model first, then its baselines.
SCORER_COLOURS = ("#e66101", "#d9a066", "#0072b2", "#009e73", "#56b4e9", "#cc79a7", "#999999", "#000000")
FEATURE_SCALE = "Viridis"  # the feature's value within its range: perceptually even, colour-blind safe
SWARM_BINS = 60  # bins along the SHAP axis in which points are stacked
SWARM_HALF_HEIGHT = 0.4  # a feature's row spreads to ±0.4 of the gap between rows


def _feature_label(j: int) -> str:
    return f"{FEATURES[j].label} ({FEATURES[j].unit})"


def importance_bars(importance: BehaviourImportance) -> go.Figure:
    """Mean |SHAP| of each behaviour feature over the sampled rows, the largest on top."""
    summary = importance.summary()
    index = {spec.name: j for j, spec in enumerate(FEATURES)}
    labels = [_feature_label(index[name]) for name in summary["feature"]]
    hover = [f"{label}<br>mean |SHAP| {value:.4f}, mean SHAP {mean:+.4f}<br>{escape(meaning)}"
             for label, value, mean, meaning in zip(labels, summary["mean_abs_shap"], summary["mean_shap"],
                                                    summary["meaning"])]
    figure = go.Figure(go.Bar(
        x=summary["mean_abs_shap"], y=labels, orientation="h", marker={"color": RAISES},
        text=[f"{v:.3f}" for v in summary["mean_abs_shap"]], textposition="auto", hovertext=hover, hoverinfo="text",
    ))
    figure.update_yaxes(autorange="reversed", automargin=True)
    figure.update_xaxes(title_text="mean |SHAP value| (score units)", automargin=True)
    return _layout(figure, f"Behaviour features by importance ({len(importance)} recommended items)",
                   80 + 30 * len(labels))


def swarm_offsets(values: np.ndarray, bins: int = SWARM_BINS, half_height: float = SWARM_HALF_HEIGHT) -> np.ndarray:
    """Vertical offsets that stack points falling close together on the x axis: a beeswarm without randomness.

    Points share a bin of the x range; within a bin they alternate above and below the row's centre line,
    so a row is as tall as its densest place and the height shows where values crowd.
    """
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return np.zeros(0)
    low, high = float(values.min()), float(values.max())
    width = (high - low) / bins or 1.0
    slots = np.minimum(((values - low) / width).astype(np.int64), bins - 1)
    rank_in_bin = np.zeros(len(values), dtype=np.int64)
    filled: dict[int, int] = {}
    for i in np.argsort(values, kind="stable"):
        rank_in_bin[i] = filled.get(int(slots[i]), 0)
        filled[int(slots[i])] = rank_in_bin[i] + 1
    levels = (rank_in_bin + 1) // 2  # 0, 1, 1, 2, 2, ...: alternately above and below the centre line
    step = half_height / max(1, max(filled.values()) // 2)
    return np.where(rank_in_bin % 2 == 1, 1.0, -1.0) * levels * step


def beeswarm(importance: BehaviourImportance, titles: dict | None = None, max_rows: int = 2000) -> go.Figure:
    """One row per feature (most important on top), a point per sampled item: x its SHAP value, colour its value.

    The colour is the feature's value scaled within its range over the sample (dark: low, yellow: high); the
    hover gives the real value with its unit, the user and the item. `titles`: item id -> title, for the hover.
    """
    titles = titles or {}
    summary = importance.summary()
    index = {spec.name: j for j, spec in enumerate(FEATURES)}
    order = [index[name] for name in summary["feature"]]
    rows = np.arange(len(importance))
    if len(rows) > max_rows:  # a readable swarm; the bars above use every row
        rows = np.sort(np.random.default_rng(0).choice(len(rows), max_rows, replace=False))
    xs, ys, colours, hover = [], [], [], []
    for level, j in enumerate(order):
        shap_values = importance.values[rows, j]
        feature_values = importance.features[rows, j]
        low, high = float(feature_values.min(initial=0.0)), float(feature_values.max(initial=0.0))
        scaled = (feature_values - low) / (high - low) if high > low else np.full(len(rows), 0.5)
        offsets = swarm_offsets(shap_values)
        spec = FEATURES[j]
        for r, shap_value, value, shade, offset in zip(rows, shap_values, feature_values, scaled, offsets):
            xs.append(float(shap_value))
            ys.append(level + float(offset))
            colours.append(float(shade))
            item = importance.item_ids[r]
            hover.append(f"{escape(spec.label)} = {value:.3f} {escape(spec.unit)}<br>SHAP {shap_value:+.4f}<br>"
                         f"user {escape(importance.user_ids[r])}, #{importance.ranks[r]}: "
                         f"{escape(_clip(titles.get(item, item), 60))}")
    figure = go.Figure(go.Scatter(
        x=xs, y=ys, mode="markers", hovertext=hover, hoverinfo="text",
        marker={"color": colours, "colorscale": FEATURE_SCALE, "cmin": 0.0, "cmax": 1.0, "size": 5, "opacity": 0.8,
                "colorbar": {"title": {"text": "feature<br>value", "side": "top"}, "tickvals": [0, 1],
                             "ticktext": ["low", "high"], "thickness": 12, "len": 0.5}},
    ))
    figure.add_vline(x=0.0, line={"color": "#bbbbbb", "width": 1})
    figure.update_yaxes(tickvals=list(range(len(order))), ticktext=[_feature_label(j) for j in order],
                        autorange="reversed", automargin=True, showgrid=False, zeroline=False)
    figure.update_xaxes(title_text="SHAP value (effect on the score)", automargin=True)
    return _layout(figure, "Each recommended item's behaviour features (SHAP beeswarm)", 100 + 38 * len(order))


def word_bars(table: pd.DataFrame, columns: int = 3, max_categories: int = 12) -> go.Figure | None:
    """Small multiples: per category, its driving words by share of its items (from DrivingWords.by_category)."""
    if table.empty:
        return None
    categories = list(dict.fromkeys(table["category"]))[:max_categories]
    columns = max(1, min(columns, len(categories)))
    n_rows = math.ceil(len(categories) / columns)
    titles = [escape(_clip(f"{c} ({int(table.loc[table['category'] == c, 'pairs'].iloc[0])} items)", 40))
              for c in categories]
    figure = make_subplots(rows=n_rows, cols=columns, subplot_titles=titles, horizontal_spacing=0.12,
                           vertical_spacing=min(0.12, 0.5 / n_rows))
    for i, category in enumerate(categories):
        rows = table[table["category"] == category]
        figure.add_trace(go.Bar(
            x=rows["share"], y=[escape(_clip(w, 24)) for w in rows["word"]], orientation="h",
            marker={"color": RAISES}, hoverinfo="text",
            hovertext=[f"{escape(w)}: among the top words of {n} of {p} items, mean attribution {v:+.3f}"
                       for w, n, p, v in zip(rows["word"], rows["items"], rows["pairs"], rows["mean_value"])],
        ), row=i // columns + 1, col=i % columns + 1)
    figure.update_yaxes(autorange="reversed", automargin=True)
    figure.update_xaxes(range=[0, 1], tickformat=".0%", nticks=3)
    figure.update_annotations(font_size=12)
    return _layout(figure, "Words that drive recommendations, by category (share of items)", 60 + 170 * n_rows)


def metrics_bars(frame: pd.DataFrame, metrics: tuple[str, ...] = ("NDCG@10", "HR@10", "MRR")) -> go.Figure | None:
    """Grouped bars: each metric, the model and every baseline side by side (from insights.metrics_comparison)."""
    metrics = tuple(m for m in metrics if m in METRICS and frame[m].notna().any()) if len(frame) else ()
    if not metrics:
        return None
    figure = go.Figure()
    for i, row in enumerate(frame.to_dict("records")):
        values = [None if pd.isna(row[m]) else float(row[m]) for m in metrics]
        label = escape(f"{row['name']} ({row['split']})")
        figure.add_trace(go.Bar(
            name=label, x=list(metrics), y=values, marker={"color": SCORER_COLOURS[i % len(SCORER_COLOURS)]},
            text=["" if v is None else f"{v:.3f}" for v in values], textposition="outside",
            hovertext=[label] * len(metrics), hoverinfo="text+y",
        ))
    figure.update_layout(barmode="group")
    figure.update_yaxes(title_text="higher is better", gridcolor="#eeeeee", rangemode="tozero")
    figure = _layout(figure, "The model beside its baselines", 380)
    figure.update_layout(showlegend=True, legend={"orientation": "h", "y": -0.15})
    return figure
