"""Plotly figures and HTML fragments drawn from one `Explanation`: the dashboard and the reports share them.

Every string that comes from data passes through `escape` before it reaches HTML or a Plotly label
(Plotly reads a subset of HTML in labels, so a title could otherwise become a link).
"""

from __future__ import annotations

import html
import math

import plotly.graph_objects as go

from explain.base import Attribution, Explanation

# Colour-blind-safe diverging pair (ColorBrewer PuOr ends): orange raises the score, purple lowers it.
RAISES = "#e66101"
LOWERS = "#5e3c99"
NEUTRAL = "#9e9e9e"
PART_LABELS = {
    "item_tokens": "Item words",
    "query_tokens": "Query words",
    "history": "Past interactions",
    "collaborative": "Item memory (ID, bias)",
    "behaviour": "Item's own behaviour",
    "history_tokens": "Words in history items",
    "behaviour_full": "Behaviour features",
}
PUNCTUATION = set(".,;:!?)]}%'\"")
X_TICKS = 3  # the most value labels a bar chart's x axis shows (see _bars)


def escape(text) -> str:
    """The one HTML escape for text from data (titles, brands, queries, user ids)."""
    return html.escape(str(text), quote=True)


def _clip(text: str, limit: int = 60) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def age_label(days: float) -> str:
    """An age in days (model.sequences.age_days, from the moment scored) as a person reads it: "just now" within
    the hour, then hours, then days."""
    if days < 1 / 24:
        return "just now"
    if days < 1:
        return f"{days * 24:.0f} h ago"
    return f"{days:.0f} d ago"


def _layout(figure: go.Figure, title: str, height: int) -> go.Figure:
    figure.update_layout(title={"text": escape(title), "x": 0, "font": {"size": 15}}, height=height,
                         margin={"l": 10, "r": 10, "t": 40, "b": 10}, plot_bgcolor="white",
                         font={"family": "DejaVu Sans, Arial, sans-serif", "size": 12}, showlegend=False)
    figure.update_xaxes(gridcolor="#eeeeee", zerolinecolor="#bbbbbb")
    return figure


def waterfall(explanation: Explanation) -> go.Figure:
    """Base value → each top-level part → the score (or the margin, for a pair)."""
    parts = [p for p in explanation.parts if p.in_total and len(p)]
    labels = ["Base value", *(PART_LABELS[p.kind] for p in parts), "Margin" if explanation.is_pair else "Score"]
    values = [explanation.base_value, *(p.total for p in parts), explanation.score]
    figure = go.Figure(go.Waterfall(
        orientation="v", x=labels, y=values, measure=["absolute", *(["relative"] * len(parts)), "total"],
        text=[f"{v:+.3f}" if 0 < i < len(values) - 1 else f"{v:.3f}" for i, v in enumerate(values)],
        textposition="outside", connector={"line": {"color": "#bbbbbb"}},
        increasing={"marker": {"color": RAISES}}, decreasing={"marker": {"color": LOWERS}},
        totals={"marker": {"color": "#4d4d4d"}},
    ))
    figure.update_yaxes(title_text="score", gridcolor="#eeeeee", automargin=True)
    figure.update_xaxes(automargin=True)  # the margins fit the labels where the page does not (a report)
    title = "How the margin builds up" if explanation.is_pair else "How the score builds up"
    return _layout(figure, title, 340)


def _bars(names, values, hover, title: str, axis: str, notes=None) -> go.Figure:
    """Horizontal bars, one per name, largest first as given; each value printed in a column on the right.

    `notes`, when given, a grey second line under each name. The values stand in an axis of their own rather
    than on the bars: a short bar's number, pushed outside it, would be cut off by the names beside it. Rows are
    placed by number, so two names alike after clipping stay two rows.
    """
    labels = [escape(_clip(n, 48 if notes is None else 40)) for n in names]
    if notes is not None:
        labels = [f"{label}<br><span style='color:#777777'>{escape(note)}</span>" for label, note in zip(labels, notes)]
    values, rows = [float(v) for v in values], list(range(len(labels)))
    figure = go.Figure(go.Bar(
        x=values, y=rows, orientation="h", marker={"color": [RAISES if v >= 0 else LOWERS for v in values]},
        hovertext=[escape(h) for h in hover], hoverinfo="text",
    ))
    # An invisible point per row on the right-hand axis, so that it is drawn with the values as its labels.
    figure.add_trace(go.Scatter(x=[0.0] * len(rows), y=rows, yaxis="y2", mode="markers", marker={"opacity": 0},
                                hoverinfo="skip"))
    row_axis = {"tickmode": "array", "tickvals": rows, "autorange": "reversed", "automargin": True, "zeroline": False}
    figure.update_layout(yaxis={**row_axis, "ticktext": labels},
                         yaxis2={**row_axis, "ticktext": [f"{v:+.3f}" for v in values], "overlaying": "y",
                                 "side": "right", "matches": "y", "showgrid": False})
    # Half a page wide, the names and the values column leave the plot itself ~100 px at 1440 px: five ".2f" labels
    # ran into one another ("0.000.100.200.30"). At most three, without trailing zeros, keep apart; the exact
    # values are in the column on the right.
    figure.update_xaxes(title_text=axis, nticks=X_TICKS, tickformat="~g", tickfont={"size": 11}, automargin=True)
    return _layout(figure, title, 70 + (28 if notes is None else 40) * max(3, len(names)))


def history_bars(explanation: Explanation, top: int = 8) -> go.Figure | None:
    """The past items that moved the score most, with their event, age and measured removal effect.

    The entry of what the history does as a whole (no single past item's) is left out of the bars and named in
    the title with its value, so the bars compare past items with each other."""
    part = explanation.part("history")
    if part is None or not len(part):
        return None
    items = [i for i, d in enumerate(part.details) if not d.get("shared")]
    shared = math.fsum(v for v, d in zip(part.values, part.details) if d.get("shared"))
    items = sorted(items, key=lambda i: -abs(part.values[i]))[:top]
    if not items:
        return None
    entries = [(part.names[i], part.values[i], part.details[i]) for i in items]
    # The title on the first line, the event and its age always whole on the second: a long title would push
    # them out of a one-line label, and the plot would be left too narrow for its axis title.
    notes = [f"{d.get('event', '')}, {age_label(d.get('age_days', 0.0))}" for _, _, d in entries]
    hover = [f"{d.get('title', n)} · {note} · removing it: {-d['removal_effect']:+.3f}"
             if "removal_effect" in d else f"{d.get('title', n)} · {note}" for (n, _, d), note in zip(entries, notes)]
    title = "Past interactions that mattered"
    if any(d.get("shared") for d in part.details):
        title += f" (the history as a whole: {shared:+.2f} more)"
    return _bars([d.get("title", n) for n, _, d in entries], [v for _, v, _ in entries], hover, title,
                 "contribution to the score", notes)


def behaviour_bars(explanation: Explanation) -> go.Figure | None:
    """SHAP values of the behaviour features as the history sets them, each named with its actual value and unit."""
    part = explanation.features()
    if part is None or not len(part):
        return None
    entries = part.top(len(part))
    names = [f"{n} = {_value(d)}" for n, _, d in entries]
    hover = [f"{n}: {d.get('meaning', '')}" for n, _, d in entries]
    return _bars(names, [v for _, v, _ in entries], hover, "Behaviour features (SHAP)", "contribution to the score")


def _value(detail: dict) -> str:
    value = detail.get("value")
    if value is None:
        return "?"
    unit = detail.get("unit", "")
    return f"{value:.2f} {unit}".strip()


def token_html(part: Attribution | None, *, limit: int = 120) -> str:
    """The words of a token part, each shaded by its attribution; escaped, self-contained HTML."""
    if part is None or not len(part):
        return "<p class='whyrec-tokens'><em>no words</em></p>"
    words = part.words()
    scale = max((abs(v) for v in words.values), default=0.0) or 1.0
    spans = []
    for index, (name, value, detail) in enumerate(zip(words.names, words.values, words.details)):
        if index >= limit:
            spans.append("<span class='whyrec-more'>…</span>")
            break
        word = detail.get("word", name)
        colour = RAISES if value >= 0 else LOWERS
        alpha = min(1.0, abs(value) / scale)
        separator = "" if index == 0 or str(word)[:1] in PUNCTUATION else " "
        spans.append(
            f"{separator}<span title='{value:+.4f}' style='background:{_rgba(colour, 0.85 * alpha)};"
            f"padding:1px 2px;border-radius:3px;color:{'#ffffff' if alpha > 0.6 else '#111111'}'>"
            f"{escape(word)}</span>"
        )
    return f"<p class='whyrec-tokens' style='line-height:1.9;font-size:15px'>{''.join(spans)}</p>"


def history_token_sections(explanation: Explanation) -> list[tuple[str, str]]:
    """(history item title, shaded words) for each history item of the drill-down, most important first."""
    part = explanation.part("history_tokens")
    if part is None or not len(part):
        return []
    sections = []
    for item_id in dict.fromkeys(detail.get("item_id") for detail in part.details):
        rows = [i for i, detail in enumerate(part.details) if detail.get("item_id") == item_id]
        subset = Attribution(part.kind, tuple(part.names[i] for i in rows), tuple(part.values[i] for i in rows),
                             part.base_value, part.method, part.parameters, part.completeness_gap, part.seconds,
                             tuple(part.details[i] for i in rows))
        sections.append((part.details[rows[0]].get("title", str(item_id)), token_html(subset)))
    return sections


def legend_html() -> str:
    return (f"<span style='background:{_rgba(RAISES, 0.85)};color:#fff;padding:1px 6px;border-radius:3px'>"
            f"raises the score</span> <span style='background:{_rgba(LOWERS, 0.85)};color:#fff;padding:1px 6px;"
            f"border-radius:3px'>lowers the score</span> <span style='color:#555'>· stronger colour, larger "
            f"effect; hover a word for its value</span>")


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha:.2f})"
