"""RecBole atomic files (.inter, .item, .user) and UniSRec sequence files (.text, .item2index), as a Dataset."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.adapters.raw_records import file_lines, read_delimited, require_fields
from data.errors import DataError
from data.schema import Dataset, line_numbers_locator, make_dataset, normalise_events, normalise_items, row_locator
from data.text_files import open_text

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
SPLITS = ("train", "valid", "test")  # RecBole's benchmark files, in chronological order
SUFFIXES = (".inter", ".item", ".user", ".text", ".item2index", ".user2index")

# Sources with an order but no clock get one: every user's first interaction on SYNTHETIC_EPOCH, then one
# step per interaction. A day per step keeps recency features in readable units (a gap of n days = n steps);
# 2000-01-01 is plainly made up. Users share the calendar, so cross-user time (e.g. popularity "so far")
# means "at the same position in their histories" — the synthetic_clock flag tells features that.
SYNTHETIC_EPOCH = pd.Timestamp("2000-01-01", tz="UTC")
SYNTHETIC_STEP = pd.Timedelta(days=1)

TITLE_FIELDS = ("title", "movie_title", "name")
# Where a category comes from, best first: a category path (its last level), a genre list (its first genre),
# RecBole's Amazon sales_type (one label).
CATEGORY_FIELDS = ("categories", "genre", "class", "sales_type")


@dataclass(frozen=True)
class AtomicFiles:
    directory: Path
    name: str  # the dataset name every file starts with: `<name>.inter`, `<name>.text`, ...
    inter: dict[str, Path]  # split ("" for the whole `<name>.inter`) -> file, in chronological order

    def beside(self, suffix: str) -> Path | None:
        path = self.directory / f"{self.name}{suffix}"
        return path if path.is_file() else None


def detect(path: Path) -> bool:
    if path.is_file():
        return path.name.endswith(SUFFIXES) and detect(path.parent)
    return path.is_dir() and any(p.is_file() for p in path.glob("*.inter"))


def load(path: Path) -> Dataset:
    files = _resolve(path)
    interactions = {split: read_atomic(file) for split, file in files.inter.items()}
    notes = [f"RecBole atomic files: {', '.join(file.name for file in files.inter.values())}"]
    sequences = any("item_id_list" in frame.columns for frame in interactions.values())
    if sequences:
        events, synthetic_clock, event_notes = _sequence_events(files, interactions)
    else:
        events, synthetic_clock, event_notes = _interaction_events(files, interactions)
    notes += event_notes
    items, item_notes = _items(files, events)
    notes += item_notes
    users = None
    # A .user file is keyed like the .inter rows; UniSRec users are remapped through user2index instead.
    if not sequences and (user_path := files.beside(".user")) is not None:
        users = read_atomic(user_path)
        require_fields(users, ("user_id",), file=str(user_path), locate=file_lines(users))
        users = users.apply(lambda column: column.str.strip())
        notes.append(f"user attributes ({', '.join(users.columns[1:])}) come from {user_path.name}")
    return make_dataset(
        items, events, source=str(path), format="recbole", synthetic_clock=synthetic_clock, notes=notes, users=users
    )


# ---------------------------------------------------------------------------------------------
# Files.


def read_atomic(path: Path) -> pd.DataFrame:
    """An atomic file as strings, columns named by its `name:type` header (the types are checked, then dropped)."""
    try:
        with open_text(path) as text:
            header = text.readline().rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"not a UTF-8 text file (byte {exc.start} cannot be decoded)", file=str(path)) from exc
    if not header.strip():
        raise DataError("file is empty (an atomic file opens with a `name:type` header line)", file=str(path))
    names = []
    for declared in header.split("\t"):
        name, _, kind = declared.strip().rpartition(":")
        if not name or kind not in ATOMIC_TYPES:
            raise DataError(
                f"an atomic header field is `name:type` with type one of {', '.join(ATOMIC_TYPES)}",
                file=str(path), line=1, value=declared,
            )  # fmt: skip
        names.append(name)
    return read_delimited(path, separator="\t", names=names, skip_lines=1)


def _dataset_name(file_name: str) -> tuple[str, str]:
    """`Scientific.test.inter` -> ("Scientific", "test"); `ml-100k.inter` -> ("ml-100k", "")."""
    stem = file_name
    for suffix in SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    for split in SPLITS:
        if file_name.endswith(".inter") and stem.endswith(f".{split}"):
            return stem[: -len(split) - 1], split
    return stem, ""


def _resolve(path: Path) -> AtomicFiles:
    directory = path if path.is_dir() else path.parent
    found: dict[str, dict[str, Path]] = {}
    for file in sorted(directory.glob("*.inter")):
        name, split = _dataset_name(file.name)
        found.setdefault(name, {})[split] = file
    if path.is_file():
        name = _dataset_name(path.name)[0]
        found = {name: found[name]} if name in found else {}
    if not found:
        raise DataError("no RecBole interactions here: expected <name>.inter or <name>.{train,valid,test}.inter",
                        file=str(path))
    if len(found) > 1:
        raise DataError(f"several RecBole datasets here ({', '.join(sorted(found))}); pass one of their files",
                        file=str(path))
    name, by_split = next(iter(found.items()))
    # The whole <name>.inter holds everything the split files would; reading both would double-count.
    whole = {"": by_split[""]} if "" in by_split else None
    inter = whole or {split: by_split[split] for split in SPLITS if split in by_split}
    return AtomicFiles(directory=directory, name=name, inter=inter)


def _read_index(path: Path) -> pd.Series:
    """`<name>.item2index` / `.user2index` lines `original_id<TAB>index`: a Series index -> original id."""
    table = read_delimited(path, separator="\t", names=("original_id", "index"))
    require_fields(table, ("original_id", "index"), file=str(path), locate=file_lines(table))
    index = table["index"].str.strip()
    repeated = index.duplicated()
    if repeated.any():
        i = int(np.flatnonzero(repeated.to_numpy())[0])
        raise DataError("index given to two ids", file=str(path), field="index", value=index.iat[i],
                        **file_lines(table)(i))
    return pd.Series(table["original_id"].str.strip().to_numpy(), index=index.to_numpy())


# ---------------------------------------------------------------------------------------------
# Events.


def _synthetic_timestamps(user_ids: pd.Series) -> pd.Series:
    """Monotone per-user timestamps in file order, as unix seconds (what `normalise_events` parses)."""
    step = user_ids.groupby(user_ids, sort=False).cumcount()
    epoch = int(SYNTHETIC_EPOCH.timestamp())
    return epoch + step * int(SYNTHETIC_STEP.total_seconds())


def _clock_note(what: str) -> str:
    return (
        f"{what} no timestamps: each user's interactions get synthetic ones in file order, starting "
        f"{SYNTHETIC_EPOCH.date()} in {SYNTHETIC_STEP.days}-day steps (synthetic_clock)"
    )


def _interaction_events(files: AtomicFiles, interactions: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, bool, list]:
    """Plain `.inter` rows (user_id, item_id, optional rating and timestamp), one event each."""
    parts = []
    for split, frame in interactions.items():
        require_fields(frame, ("user_id", "item_id"), file=str(files.inter[split]), locate=file_lines(frame))
        parts.append(frame.assign(split=split, line=frame.index))
    rows = pd.concat(parts, ignore_index=True)
    notes = []
    has_clock = all("timestamp" in frame.columns for frame in interactions.values())
    if not has_clock:
        rows["timestamp"] = _synthetic_timestamps(rows["user_id"].str.strip())
        notes.append(_clock_note("the interactions have"))
    if all("rating" in frame.columns for frame in interactions.values()):
        rows = rows.assign(event="rating", value=rows["rating"])
        notes.append("interactions with a rating are 'rating' events whose value is the rating")
    else:
        rows = rows.assign(event="purchase", value=np.nan)
        notes.append("interactions without a rating are 'purchase' events")
    return _normalise_by_file(rows, files), not has_clock, notes


def _sequence_events(files: AtomicFiles, interactions: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, bool, list]:
    """UniSRec lines `user, history, target`: each user's longest line, history + target, is their sequence."""
    parts = []
    for split, frame in interactions.items():
        require_fields(frame, ("user_id", "item_id"), file=str(files.inter[split]), locate=file_lines(frame))
        history = frame["item_id_list"] if "item_id_list" in frame.columns else ""
        parts.append(
            pd.DataFrame({"user_id": frame["user_id"].str.strip(), "sequence": history + " " + frame["item_id"],
                          "split": split, "line": frame.index})
        )  # fmt: skip
    lines = pd.concat(parts, ignore_index=True)
    lines["sequence"] = lines["sequence"].str.split()
    # Test lines hold the most history (history + last item); ties go to the later split.
    lines["length"] = lines["sequence"].str.len()
    lines["split_order"] = lines["split"].map({split: -i for i, split in enumerate(SPLITS)}).fillna(1)
    longest = lines.sort_values(["length", "split_order"], ascending=[False, True], kind="stable")
    longest = longest.drop_duplicates("user_id").sort_values(["split_order", "line"], kind="stable")
    steps = longest.explode("sequence").rename(columns={"sequence": "item_id"}).reset_index(drop=True)
    steps["is_target"] = ~steps.duplicated(["split", "line"], keep="last")  # the rest came from item_id_list

    notes = [
        "UniSRec sequences: each user's longest line (the test line where there is one) gives the history + "
        "target in order; every step is a 'purchase' event",
        _clock_note("the sequences have"),
    ]
    for what in ("user", "item"):
        index_path = files.beside(f".{what}2index")
        if index_path is None:
            notes.append(f"no {files.name}.{what}2index: {what} ids are the indices in the .inter files")
            continue
        original = steps[f"{what}_id"].map(_read_index(index_path))
        unknown = original.isna()
        if unknown.any():
            i = int(np.flatnonzero(unknown.to_numpy())[0])
            in_history = what == "item" and not steps["is_target"].iat[i]
            raise DataError(
                f"{what} index not in {index_path.name}", file=str(files.inter[steps['split'].iat[i]]),
                line=int(steps["line"].iat[i]), field="item_id_list" if in_history else f"{what}_id",
                value=steps[f"{what}_id"].iat[i],
            )  # fmt: skip
        steps[f"{what}_id"] = original
        notes.append(f"{what} indices are mapped back to the original ids through {index_path.name}")
    steps["timestamp"] = _synthetic_timestamps(steps["user_id"])
    steps = steps.assign(event="purchase", value=np.nan)
    return _normalise_by_file(steps, files), True, notes


def _normalise_by_file(rows: pd.DataFrame, files: AtomicFiles) -> pd.DataFrame:
    """Validate events file by file so an error names the file and the line each row came from."""
    columns = ["user_id", "item_id", "timestamp", "event", "value"]
    parts = [
        normalise_events(
            group[columns].reset_index(drop=True),
            file=str(files.inter[split]),
            locate=line_numbers_locator(group["line"].to_numpy()),
        )
        for split, group in rows.groupby("split", sort=False)
    ]
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Items.


def _items(files: AtomicFiles, events: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    if (item_path := files.beside(".item")) is not None:
        items, notes = _items_from_item_file(item_path)
    elif (text_path := files.beside(".text")) is not None:
        items, notes = _items_from_text_file(text_path)
    else:
        ids = pd.Series(events["item_id"].unique())
        items = normalise_items(pd.DataFrame({"item_id": ids, "title": ids}), file=files.name, locate=row_locator())
        notes = [f"no {files.name}.item or {files.name}.text: item titles are the item ids"]
    without_item = ~events["item_id"].isin(items["item_id"])
    if without_item.any():
        notes.append(
            f"{int(events.loc[without_item, 'item_id'].nunique())} items of the interactions have no item record; "
            f"their {int(without_item.sum())} events are set aside as 'unknown item'"
        )
    return items, notes


def _items_from_item_file(path: Path) -> tuple[pd.DataFrame, list[str]]:
    raw = read_atomic(path)
    require_fields(raw, ("item_id",), file=str(path), locate=file_lines(raw))
    title_field = next((name for name in TITLE_FIELDS if name in raw.columns), None)
    notes = [f"items from {path.name}"]
    if title_field is None:
        notes.append(f"{path.name} has no title field ({', '.join(TITLE_FIELDS)}): titles are the item ids")
    category = pd.Series(None, index=raw.index, dtype="object")
    for name in (n for n in CATEGORY_FIELDS if n in raw.columns):
        category = category.where(category.notna(), _category_from(name, raw[name]))
    used = {"item_id", title_field, *CATEGORY_FIELDS, "brand", "price", "description"}
    if unused := [name for name in raw.columns if name not in used]:
        notes.append(f"item fields not used: {', '.join(unused)}")
    items = pd.DataFrame(
        {
            "item_id": raw["item_id"],
            "title": raw[title_field or "item_id"],
            "category": category,
            **{name: raw[name] for name in ("brand", "price", "description") if name in raw.columns},
        }
    )
    return normalise_items(items, file=str(path), locate=file_lines(raw)), notes


def _category_from(field: str, values: pd.Series) -> pd.Series:
    values = values.str.strip()
    if field == "categories":
        # RecBole writes Amazon category paths as a comma list ("'Beauty', 'Skin Care', 'Face'"): keep the leaf.
        category = values.str.split(",").str[-1].str.strip(" '\"[]")
    elif field in ("genre", "class"):
        category = values.str.split().str[0]  # a genre list ("Action Adventure"): the first genre, as MovieLens
    else:
        category = values
    return category.where(category.notna() & (category != ""), None)


def _items_from_text_file(path: Path) -> tuple[pd.DataFrame, list[str]]:
    raw = read_atomic(path)
    require_fields(raw, ("item_id", "text"), file=str(path), locate=file_lines(raw))
    parts, root, resplit, unshaped = split_item_text(raw["text"])
    items = normalise_items(pd.DataFrame({"item_id": raw["item_id"], **parts}), file=str(path), locate=file_lines(raw))
    note = (
        f"items from {path.name}, whose text is 'title. category path. brand. ' (UniSRec): brand = the last "
        "'. ' segment, category = the one before (its levels are joined by spaces and cannot be told apart), "
        "title = the rest"
    )
    if resplit:
        note += f"; {resplit} texts whose brand or category held '. ' were re-split at the path starting '{root}'"
    if unshaped:
        note += f"; {unshaped} texts without that shape are kept whole as the title"
    return items, [note]


def split_item_text(text: pd.Series) -> tuple[dict[str, pd.Series], str | None, int, int]:
    """Split UniSRec item texts `title. category. brand. ` into their fields (a heuristic; see the notes).

    Splitting on the last two ". " goes wrong when the brand holds ". " ("Mr. Heater", "J.V. Converting").
    Category paths start with the dataset's root category ("Industrial & Scientific ..."), so a category
    that does not is re-found as the last ". <root>" segment. Returns the fields, the root, how many texts
    were re-split that way, and how many did not have three segments at all.
    """
    body = text.str.rstrip().str.removesuffix(".")
    segments = body.str.rsplit(". ", n=2)
    shaped = segments.str.len() == 3
    title = segments.str[0].where(shaped, body)
    category = segments.str[-2].where(shaped, None)
    brand = segments.str[-1].where(shaped, None)

    root, resplit = None, 0
    first_words = category.str.extract(r"^(\S+)", expand=False).dropna()
    if len(first_words):
        common = first_words.value_counts()
        if common.iloc[0] * 2 >= len(first_words):
            root = str(common.index[0])
    if root is not None:
        at_root = re.compile(rf"^(?P<title>.*)\. (?P<category>{re.escape(root)}(?:\s.*?)?)(?:\. (?P<brand>.*))?$")
        on_root = category.str.match(rf"{re.escape(root)}(?:\s|$)", na=False)
        astray = shaped & (category.str.strip() != "").fillna(False) & ~on_root
        found = body[astray].str.extract(at_root)
        found = found[found["title"].notna()]
        title[found.index] = found["title"]
        category[found.index] = found["category"]
        brand[found.index] = found["brand"]
        resplit = len(found)
    fields = {"title": title, "category": category, "brand": brand}
    return fields, root, resplit, int((~shaped).sum())
