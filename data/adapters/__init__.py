"""Adapters from public dataset formats to the WhyRec data contract."""
