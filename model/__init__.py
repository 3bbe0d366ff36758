"""WhyRec recommender: a pretrained text encoder fine-tuned on behaviour.

    model.load(path) -> Recommender   # recommend(user_id=None, query=None, k=10, exclude_seen=True), score(...)
"""

from model.checkpoint import load
from model.errors import CheckpointError, EncoderError, ModelError
from model.serving import Recommendation, Recommendations, Recommender

__all__ = ["CheckpointError", "EncoderError", "ModelError", "Recommendation", "Recommendations", "Recommender",
           "load"]
