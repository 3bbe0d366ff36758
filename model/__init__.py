"""WhyRec recommender: a pretrained text encoder fine-tuned on behaviour."""
