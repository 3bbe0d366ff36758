"""A what-if in the link: its edits read from and written to the page's query parameters, so it can be shared.

    ?user=U&remove=ITEM&remove=ITEM&add=EVENT:ITEM&set=FEATURE:VALUE&query=TEXT&k=10

`remove` and `add` repeat (adds in the order they happened), `set` repeats once per feature. A link is read once
per session, when the page first opens; the parts that cannot be used are named and left out, the rest applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from data.schema import EVENT_TYPES

K_RANGE = (5, 20)  # the page's "Top k" slider


@dataclass
class LinkedEdits:
    remove: list[str] = field(default_factory=list)
    add: list[dict] = field(default_factory=list)  # {"item_id", "event"}, in order
    values: dict[str, float] = field(default_factory=dict)  # feature -> value set by hand
    query: str = ""
    k: int | None = None
    problems: list[str] = field(default_factory=list)  # one line per part of the link left out


def read_link(params, history_items, catalog_items, ranges) -> LinkedEdits:
    """The edits a link asks for. `params` has get_all/get (st.query_params); `ranges` is model.whatif's
    feature_ranges frame (index: feature names; columns low, high)."""
    edits = LinkedEdits(query=str(params.get("query") or ""))
    history_items, catalog_items = set(map(str, history_items)), set(map(str, catalog_items))
    for item in params.get_all("remove"):
        if item in history_items:
            edits.remove.append(item)
        else:
            edits.problems.append(f"remove={item}: not an item of this user's history")
    for entry in params.get_all("add"):
        event, _, item = entry.partition(":")
        if event in EVENT_TYPES and item in catalog_items:
            edits.add.append({"item_id": item, "event": event})
        else:
            edits.problems.append(f"add={entry}: expected EVENT:ITEM, EVENT one of {', '.join(EVENT_TYPES)} and "
                                  "ITEM a catalog item id")
    for entry in params.get_all("set"):
        name, _, raw = entry.partition(":")
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if name not in ranges.index:
            edits.problems.append(f"set={entry}: '{name}' is not a behaviour feature")
        elif not float(ranges.at[name, "low"]) <= value <= float(ranges.at[name, "high"]):
            edits.problems.append(f"set={entry}: the value must be a number from {ranges.at[name, 'low']:.4g} to "
                                  f"{ranges.at[name, 'high']:.4g}, the range {name} takes in this data")
        else:
            edits.values[name] = value
    raw_k = params.get("k")
    if raw_k is not None:
        if raw_k.isdigit() and K_RANGE[0] <= int(raw_k) <= K_RANGE[1]:
            edits.k = int(raw_k)
        else:
            edits.problems.append(f"k={raw_k}: expected a whole number from {K_RANGE[0]} to {K_RANGE[1]}")
    return edits


def write_link(params, removed: list[str], added: list[tuple[str, str]], values: dict[str, float], query: str | None,
               k: int) -> None:
    """Put the page's current edits in the link (keys with nothing to say are dropped)."""
    wanted = {"remove": list(removed), "add": [f"{event}:{item}" for item, event in added],
              "set": [f"{name}:{float(value)!r}" for name, value in values.items()], "query": query or "", "k": str(k)}
    for key, value in wanted.items():
        if value:
            params[key] = value
        else:
            params.pop(key, None)
