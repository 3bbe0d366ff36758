"""Errors of the model layer, in the WhyRec family (see data.errors)."""

from data.errors import WhyRecError


class ModelError(WhyRecError):
    """A request the model cannot answer as asked: unknown user or item, empty query, bad k."""


class EncoderError(ModelError):
    """The base text encoder is missing or broken."""


class CheckpointError(ModelError):
    """A checkpoint directory is missing, truncated, corrupted or does not match the data."""
