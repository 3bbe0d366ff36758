"""WhyRec explanations: token attributions (Integrated Gradients) and behaviour attributions (SHAP).

    explain(recommender, item_id, user_id=None, query=None, n_steps=50, *, history=None, baseline="template")
    explain_pair(recommender, item_a, item_b, user_id=None, query=None, n_steps=50)
    faithfulness(recommender, explanation, *, agreement=False)

Each returns an `Explanation` (a dict for faithfulness); see explain.base for the type and its JSON schema.
"""

from explain.base import KINDS, SCHEMA_VERSION, TOP_LEVEL_KINDS, Attribution, Explanation
from explain.behaviour import BehaviourAttributor
from explain.errors import ExplanationError
from explain.explanations import FLAGS, explain, explain_pair
from explain.faithfulness import faithfulness
from explain.gradients import BASELINES, N_STEPS_RANGE, PathSettings
from explain.history import HistoryTokenAttributor
from explain.tokens import TokenAttributor

__all__ = [
    "BASELINES", "FLAGS", "KINDS", "N_STEPS_RANGE", "SCHEMA_VERSION", "TOP_LEVEL_KINDS", "Attribution",
    "BehaviourAttributor", "Explanation", "ExplanationError", "HistoryTokenAttributor", "PathSettings",
    "TokenAttributor", "explain", "explain_pair", "faithfulness",
]
