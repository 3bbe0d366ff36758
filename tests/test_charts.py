"""The explanation charts' layout: what a reader sees on a half-page-wide chart at 1440 px."""

import pytest

from explain import Attribution, Explanation
from explain.charts import age_label, behaviour_bars, history_bars


def history_explanation(values) -> Explanation:
    """An explanation with a history part of the given values, one unit each, ages 1, 2, ... days."""
    names = [f"i{n}" for n in range(len(values))]
    details = [{"item_id": name, "title": f"A rather long product title number {n}, in olive", "event": "view",
                "age_days": float(n + 1)} for n, name in enumerate(names)]
    part = Attribution("history", names, values, 0.0, "integrated_gradients", {}, details=details)
    return Explanation("i9", "t", "u1", None, "user", "2024-01-01T00:00:00+00:00", "c", sum(values), 0.0, (part,))


@pytest.mark.parametrize("values", [[0.32, 0.23, 0.11, 0.05, 0.01], [0.321, 0.231, -0.185, 0.114, -0.049, 0.015]])
def test_history_chart_x_labels_are_few_and_short(values):
    axis = history_bars(history_explanation(values)).layout.xaxis
    # A plot ~100 px wide holds three labels such as "-0.25" side by side; five ".2f" ones ran together.
    assert axis.nticks is not None and axis.nticks <= 3
    assert axis.tickformat == "~g"  # 0.1, not 0.10: no trailing zeros
    assert axis.automargin


def test_behaviour_chart_shares_the_x_axis_settings():
    details = [{"value": 0.5, "unit": "share", "meaning": "m"}] * 3
    part = Attribution("behaviour", ["a", "b", "c"], [0.3, -0.2, 0.1], 0.0, "shap_exact", {}, details=details)
    explanation = Explanation("i9", "t", "u1", None, "user", "2024-01-01T00:00:00+00:00", "c", 0.2, 0.0, (part,))
    assert behaviour_bars(explanation).layout.xaxis.nticks <= 3


@pytest.mark.parametrize(("days", "label"), [(0.0, "just now"), (0.5 / 24, "just now"), (0.25, "6 h ago"),
                                             (1.0, "1 d ago"), (39.6, "40 d ago")])
def test_age_label(days, label):
    assert age_label(days) == label
