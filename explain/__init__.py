"""WhyRec explanations: token attributions (Integrated Gradients) and behaviour attributions (SHAP)."""
