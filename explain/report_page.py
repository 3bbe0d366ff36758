"""A report as one HTML page: summary of the top-k, one section per item, what the features mean, provenance.

The interactive page (`static=False`) is what `explain.report.to_html` writes; the static one is what the PDF prints:
charts a page wide and drawn once, with no hover. Both draw the dashboard's own charts and fragments
(explain.charts) and pass every string from data through its `escape`.
"""

from __future__ import annotations

import math

from explain.base import Explanation
from explain.charts import (
    PART_LABELS,
    behaviour_bars,
    escape,
    history_bars,
    history_token_sections,
    legend_html,
    token_html,
    waterfall,
)
from explain.explanations import FLAGS
from explain.report_record import Report, ReportItem

PRINT_WIDTH = 680  # px: a chart as wide as an A4 page inside 12 mm margins (794 px at 96 dpi)
# The page may run its own inline scripts and styles and show data: images, and fetch nothing at all; a batch's
# report may also load the plotly.js beside it ('self'), and nothing else.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                           "img-src data:; font-src data:")
SHARED_PLOTLYJS_POLICY = CONTENT_SECURITY_POLICY.replace("script-src ", "script-src 'self' ")
STYLE = """
@page { size: A4; margin: 12mm; }
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; color: #111; max-width: 1000px; margin: 0 auto;
       padding: 16px 20px; font-size: 14px; line-height: 1.45; }
* { font-variant-ligatures: none; }  /* "fi" stays two letters: a PDF reader finds and copies what it shows */
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 0 0 4px; }
h3 { font-size: 15px; margin: 14px 0 4px; }
.meta, .muted { color: #555; } .small { font-size: 12px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 10px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { font-family: "DejaVu Sans Mono", monospace; font-size: 12px; overflow-wrap: anywhere; }
section.item { border-top: 2px solid #333; margin-top: 30px; padding-top: 10px; }
.chart { margin: 6px 0; break-inside: avoid; }
.flag { color: #8a4b00; }
a { color: #1f4e9c; }
table, .whyrec-tokens, .chart, .block { break-inside: avoid; }
ul.flags { margin: 2px 0 6px; padding-left: 20px; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  th, td { padding: 2px 6px; }
  section.item { break-before: page; border-top: none; margin-top: 0; }
  a { color: inherit; text-decoration: none; }
}
"""
HOW_TO_READ = (
    "Each score splits into parts that add up to it: the <b>base value</b> (what an empty input scores), the "
    "<b>item's words</b> and the <b>query's words</b> (Integrated Gradients over the words the encoder read), "
    "<b>history</b> (how much each past interaction pulled the score), the <b>item ID</b> (what the model learned "
    "about this item from other shoppers) and <b>behaviour features</b> (SHAP values of recency, affinity, price "
    "fit, popularity...). The <b>completeness gap</b> is how far the parts miss the score (smaller is better).")


def page(report: Report, *, static: bool, plotlyjs: str | None = None) -> str:
    """The whole page; `static` for print (fixed-width charts, no interaction). `plotlyjs`: None inlines plotly.js
    (a self-contained page); a file name loads it from beside the page (the one copy a batch of reports shares)."""
    from plotly.offline import get_plotlyjs

    p = report.provenance
    subject = _subject(report)
    body = [
        f"<h1>Why these recommendations: {subject}</h1>",
        f"<p class='meta'>Top {len(report.items)} items ranked for {subject} (mode {escape(report.mode)}) by model "
        f"<code>{escape(p.get('checkpoint_id'))}</code>, built {escape(p.get('created'))}.</p>",
        *(f"<p class='muted small'>Note: {escape(note)}</p>" for note in report.notes),
        f"<p class='small'>{HOW_TO_READ}</p>",
        f"<p class='small'>{legend_html()}</p>",
        _summary_table(report),
        *(_item_section(item, static=static) for item in report.items),
        _glossary(report),
        _provenance_section(report),
    ]
    return "\n".join([
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' "
        f"content=\"{CONTENT_SECURITY_POLICY if plotlyjs is None else SHARED_PLOTLYJS_POLICY}\">",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>WhyRec report: {_subject(report, plain=True)}</title>",
        f"<style>{STYLE}</style>",
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>",
        # once, for every chart of the page
        f"<script id='plotly-js'>{get_plotlyjs()}</script>" if plotlyjs is None else
        f"<script id='plotly-js' charset='utf-8' src='{escape(plotlyjs)}'></script>",
        "</head><body>",
        *body,
        "</body></html>",
    ])


def _subject(report: Report, *, plain: bool = False) -> str:
    user = f"user {escape(report.user_id)}" if report.user_id is not None else ""
    query = f"the query “{escape(report.query)}”" if report.query is not None else ""
    if not plain:
        user = f"user <code>{escape(report.user_id)}</code>" if user else ""
    return " and ".join(part for part in (user, query) if part)


def _summary_table(report: Report) -> str:
    if not report.items:
        return "<p><em>No items to show: nothing is left to recommend.</em></p>"
    rows = []
    for item in report.items:
        reasons = "; ".join(escape(reason) for reason in top_reasons(item.explanation)) or "—"
        rows.append(f"<tr><td class='num'>{item.rank}</td><td><a href='#item-{item.rank}'>{escape(item.title)}</a>"
                    f"<br><span class='muted small'>{escape(item.item_id)}</span></td>"
                    f"<td class='num'>{item.score:.4f}</td><td class='small'>{reasons}</td></tr>")
    return ("<h2>Top items</h2><table><thead><tr><th class='num'>Rank</th><th>Item</th><th class='num'>Score</th>"
            f"<th>Top reasons</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def top_reasons(explanation: Explanation, n: int = 2) -> list[str]:
    """The parts that raised the score most, each with its strongest entry: 'History +0.41 (Wool sock)'."""
    raised = sorted((p for p in explanation.parts if p.in_total and len(p) and p.total > 0), key=lambda p: -p.total)
    reasons = []
    for part in raised[:n]:
        entries = part.words() if part.kind in ("item_tokens", "query_tokens") else part
        name, value = max(zip(entries.names, entries.values), key=lambda entry: entry[1])
        lead = f" ({name})" if value > 0 else ""
        reasons.append(f"{PART_LABELS[part.kind]} {part.total:+.3f}{lead}")
    return reasons


def _item_section(item: ReportItem, *, static: bool) -> str:
    e = item.explanation
    chart = _chart_html(static=static, prefix=f"chart-{item.rank}")
    out = [
        f"<section class='item' id='item-{item.rank}'>",
        f"<h2>#{item.rank} {escape(item.title)}</h2>",
        f"<p class='meta'>item <code>{escape(item.item_id)}</code> · score <b>{item.score:.4f}</b> = base value "
        f"{e.base_value:+.4f} + parts {e.total:+.4f} · completeness gap {e.completeness_gap:+.1e}"
        f"{'' if e.flags or e.notes else ' · no flags'}</p>",
        _flags(e),
        chart(waterfall(e), "waterfall"),
        _parts_table(e),
        "<h3>The item's words</h3>", token_html(e.part("item_tokens")),
    ]
    query = e.part("query_tokens")
    if query is not None and len(query):
        out += ["<h3>The query's words</h3>", token_html(query)]
    history = history_bars(e)
    out.append(chart(history, "history") if history is not None else
               "<h3>History</h3><p class='muted'>No history: this score does not depend on past interactions.</p>")
    for title, fragment in history_token_sections(e):
        out += [f"<h3>Words in the history item “{escape(title)}”</h3>", fragment]
    behaviour = behaviour_bars(e)
    if behaviour is not None:
        out += [chart(behaviour, "behaviour"), _behaviour_table(e)]
    out.append("</section>")
    return "\n".join(out)


# A report looks the same wherever it is made: figures take plotly's own template, not the process's default (the
# dashboard's Streamlit sets its own, whose placeholder colours only Streamlit's front end fills in).
EXPORT_TEMPLATE = "plotly"


def _chart_html(*, static: bool, prefix: str):
    config = {"displayModeBar": False, "displaylogo": False, "staticPlot": static, "responsive": not static}

    def chart(figure, name: str) -> str:
        figure.layout.template = None  # whatever the default put there, gone, so the same template is written
        figure.layout.template = EXPORT_TEMPLATE
        if static:  # a page wide, and the waterfall shorter, so an item fits two pages
            figure.update_layout(width=PRINT_WIDTH, height=min(figure.layout.height or 340, 280)
                                 if name == "waterfall" else figure.layout.height)
        html = figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"{prefix}-{name}", config=config)
        return f"<div class='chart'>{html}</div>"

    return chart


def _parts_table(e: Explanation) -> str:
    rows = [f"<tr><td>Base value</td><td class='num'>{e.base_value:+.4f}</td><td></td><td></td></tr>"]
    for part in e.parts:
        if not part.in_total or not len(part):
            continue
        rows.append(f"<tr><td>{escape(PART_LABELS[part.kind])}</td><td class='num'>{part.total:+.4f}</td>"
                    f"<td class='small'>{escape(part.method)}, {len(part)} entries</td>"
                    f"<td class='num small'>{part.completeness_gap:+.1e}</td></tr>")
    rows.append(f"<tr><th>Score</th><th class='num'>{e.score:.4f}</th><th></th><th></th></tr>")
    return ("<table class='block'><thead><tr><th>Part</th><th class='num'>Contribution</th><th>Method</th>"
            f"<th class='num'>Gap of its run</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _behaviour_table(e: Explanation) -> str:
    part = e.features()
    rows = []
    for name, value, detail in part.top(len(part)):
        rows.append(f"<tr><td>{escape(name)}</td><td class='num'>{_number(detail.get('value'))}</td>"
                    f"<td>{escape(detail.get('unit', ''))}</td>"
                    f"<td class='num'>{_number(detail.get('background_mean'))}</td>"
                    f"<td class='num'>{value:+.4f}</td></tr>")
    return ("<table class='block'><thead><tr><th>Behaviour feature</th><th class='num'>Value</th><th>Unit</th>"
            "<th class='num'>Typical</th><th class='num'>Contribution</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
            f"<p class='muted small'>Typical: the mean over SHAP's background, "
            f"{escape(str(part.parameters.get('background', 'a summarised background')))}.</p>")


def _number(value) -> str:
    return "?" if value is None or not math.isfinite(float(value)) else f"{float(value):.3g}"


def _flags(e: Explanation) -> str:
    lines = [f"<li class='flag'><b>{escape(flag)}</b>: {escape(FLAGS.get(flag, ''))}</li>" for flag in e.flags]
    lines += [f"<li>{escape(note)}</li>" for note in e.notes]
    return f"<ul class='small flags'>{''.join(lines)}</ul>" if lines else ""


def _glossary(report: Report) -> str:
    """What each behaviour feature means, once for the whole report (the explanations carry it in their details)."""
    meanings = {}
    for item in report.items:
        part = item.explanation.features()
        for name, detail in zip(part.names, part.details) if part is not None else ():
            meanings.setdefault(name, detail)
    if not meanings:
        return ""
    rows = "".join(f"<tr><td>{escape(name)}</td><td>{escape(d.get('unit', ''))}</td><td class='small'>"
                   f"{escape(d.get('meaning', ''))}</td></tr>" for name, d in meanings.items())
    return ("<section class='block'><h2>Behaviour features: what they mean</h2><table><thead><tr><th>Feature</th>"
            f"<th>Unit</th><th>Meaning</th></tr></thead><tbody>{rows}</tbody></table></section>")


def _provenance_section(report: Report) -> str:
    p = report.provenance
    rows = [
        ("Model checkpoint", p.get("checkpoint_id")),
        ("Model trained", p.get("model_created")),
        ("Base encoder", p.get("base_encoder")),
        ("Data fingerprint", p.get("data_fingerprint")),
    ]
    if p.get("model_data_fingerprint") not in (None, p.get("data_fingerprint")):
        rows.append(("Model trained on data", p.get("model_data_fingerprint")))
    rows += [
        ("Data source", p.get("data_source")),
        ("Parameters", ", ".join(f"{k}={v}" for k, v in p.get("parameters", {}).items())),
        ("Report created (UTC)", p.get("created")),
        ("Built in", f"{p.get('seconds', 0):.1f} s"),
        ("Versions", ", ".join(f"{k} {v}" for k, v in p.get("versions", {}).items())),
    ]
    cells = "".join(f"<tr><th>{escape(key)}</th><td><code>{escape(value)}</code></td></tr>" for key, value in rows)
    return f"<section class='block'><h2>Provenance</h2><table><tbody>{cells}</tbody></table></section>"
