"""Errors of the explain layer, in the WhyRec family (see data.errors)."""

from data.errors import WhyRecError


class ExplanationError(WhyRecError):
    """An explanation that cannot be made as asked: unknown user or item, bad parameters, a mismatched model."""
