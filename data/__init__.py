"""WhyRec data layer: the data contract, readers for common formats, and what is computed from events."""

from data.errors import DataError, WhyRecError
from data.io import load_dataset
from data.schema import EVENT_TYPES, Dataset, DatasetMeta, Event, Item

__all__ = ["EVENT_TYPES", "DataError", "Dataset", "DatasetMeta", "Event", "Item", "WhyRecError", "load_dataset"]
