"""Amazon review datasets (2014 and 2018 JSON, 2023 JSON Lines) with their product metadata, as a Dataset."""

from __future__ import annotations

import ast
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.adapters.raw_records import require_fields
from data.errors import DataError
from data.schema import Dataset, line_locator, make_dataset, normalise_events, normalise_items
from data.text_files import read_json_lines

JSON_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json")  # longest first, so ".json.gz" is not read as ".gz"
META_PREFIX = "meta_"

# Review fields per edition: who, which item, the star rating, when.
REVIEW_FIELDS = {
    "2014": ("reviewerID", "asin", "overall", "unixReviewTime"),
    "2018": ("reviewerID", "asin", "overall", "unixReviewTime"),
    "2023": ("user_id", "parent_asin", "rating", "timestamp"),
}

# A price or a price range such as "$5.99 - $9.99" (the low end is kept); anything else is not a price.
_PRICE = re.compile(r"^\s*\$?\s*(\d[\d,]*(?:\.\d+)?)\s*(?:-\s*\$?\s*\d[\d,]*(?:\.\d+)?\s*)?$")


@dataclass(frozen=True)
class AmazonFiles:
    reviews: Path
    meta: Path | None
    edition: str  # "2014", "2018" or "2023"


def detect(path: Path) -> bool:
    return bool(_candidate_pairs(path))


def load(path: Path) -> Dataset:
    files = _resolve(path)
    notes = [
        f"Amazon {files.edition} reviews from {files.reviews.name}, product metadata from {files.meta.name}",
        "each review is a 'rating' event whose value is the star rating",
    ]
    events, review_notes = _read_reviews(files)
    items, meta_notes = _read_meta(files)
    notes += review_notes + meta_notes
    without_meta = ~events["item_id"].isin(items["item_id"])
    if without_meta.any():
        notes.append(
            f"{int(events.loc[without_meta, 'item_id'].nunique())} reviewed items have no metadata; their "
            f"{int(without_meta.sum())} reviews are set aside as 'unknown item'"
        )
    return make_dataset(items, events, source=str(path), format="amazon", notes=notes)


# ---------------------------------------------------------------------------------------------
# Finding the reviews file and its metadata file by name.


def _split_suffix(name: str) -> tuple[str, str] | None:
    for suffix in JSON_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return None


def _dataset_key(reviews_stem: str) -> str:
    """`reviews_Beauty_5` (2014) and `Beauty_5` (2018) both describe the products in `meta_Beauty`."""
    return re.sub(r"_\d+$", "", reviews_stem.removeprefix("reviews_"))


def _edition(reviews: Path) -> str:
    stem, suffix = _split_suffix(reviews.name)
    if suffix.startswith(".jsonl"):
        return "2023"
    return "2014" if stem.startswith("reviews_") else "2018"


def _candidate_pairs(path: Path) -> list[tuple[Path, Path | None]]:
    """(reviews, meta) pairs here. A 2014 `reviews_*` file counts alone: its name alone says what it is."""
    if path.is_dir():
        files = [p for p in sorted(path.iterdir()) if p.is_file() and _split_suffix(p.name)]
    elif path.is_file() and _split_suffix(path.name):
        files = [p for p in sorted(path.parent.iterdir()) if p.is_file() and _split_suffix(p.name)]
    else:
        return []
    metas = {}
    for meta in (p for p in files if p.name.startswith(META_PREFIX)):
        stem, suffix = _split_suffix(meta.name)
        metas[(stem.removeprefix(META_PREFIX), suffix.startswith(".jsonl"))] = meta
    pairs = []
    for reviews in (p for p in files if not p.name.startswith(META_PREFIX)):
        stem, suffix = _split_suffix(reviews.name)
        meta = metas.get((_dataset_key(stem), suffix.startswith(".jsonl")))
        if meta is not None or stem.startswith("reviews_"):
            pairs.append((reviews, meta))
    if path.is_file():
        pairs = [pair for pair in pairs if path in pair]
    return pairs


def _resolve(path: Path) -> AmazonFiles:
    pairs = _candidate_pairs(path)
    if not pairs:
        raise DataError(
            "no Amazon reviews here: expected reviews_<Name>.json(.gz) (2014), <Name>.json(.gz) beside "
            "meta_<Name>.json(.gz) (2018), or <Name>.jsonl(.gz) beside meta_<Name>.jsonl(.gz) (2023)",
            file=str(path),
        )
    if len(pairs) > 1:
        names = ", ".join(reviews.name for reviews, _ in pairs)
        raise DataError(f"several Amazon review files here ({names}); pass the one to load", file=str(path))
    reviews, meta = pairs[0]
    if meta is None:
        stem, suffix = _split_suffix(reviews.name)
        raise DataError(
            f"no product metadata beside the reviews: expected {META_PREFIX}{_dataset_key(stem)}{suffix}",
            file=str(reviews),
        )
    return AmazonFiles(reviews=reviews, meta=meta, edition=_edition(reviews))


# ---------------------------------------------------------------------------------------------
# Reviews -> events, metadata -> items.


def _read_reviews(files: AmazonFiles) -> tuple[pd.DataFrame, list[str]]:
    raw = read_json_lines(files.reviews)
    file, locate = str(files.reviews), line_locator(first_line=1)
    user_field, item_field, rating_field, time_field = REVIEW_FIELDS[files.edition]
    notes = []
    if files.edition == "2023":
        if item_field in raw.columns:
            notes.append("items are keyed by parent_asin: reviews of a product's variants count for the product")
        else:
            # Some 2023 extracts drop parent_asin; the variant's own asin is the best id left.
            item_field = "asin"
            notes.append("the reviews carry no parent_asin; items are keyed by asin")
    require_fields(raw, (user_field, item_field, rating_field, time_field), file=file, locate=locate)
    events = pd.DataFrame(
        {
            "user_id": raw[user_field],
            "item_id": raw[item_field],
            "timestamp": raw[time_field],
            "event": "rating",
            "value": raw[rating_field],
        }
    )
    return normalise_events(events, file=file, locate=locate), notes


def _parse_meta_line(line: str) -> object:
    """2014 metadata lines are Python dict literals (single quotes), not JSON; later editions are JSON."""
    try:
        return json.loads(line)
    except ValueError:
        try:
            return ast.literal_eval(line)
        except (TypeError, MemoryError, RecursionError) as exc:
            raise ValueError(str(exc)) from exc


def _read_meta(files: AmazonFiles) -> tuple[pd.DataFrame, list[str]]:
    raw = read_json_lines(files.meta, parse=_parse_meta_line)
    file, locate = str(files.meta), line_locator(first_line=1)
    id_field = "parent_asin" if files.edition == "2023" else "asin"
    require_fields(raw, (id_field,), file=file, locate=locate)

    def field(name: str) -> pd.Series:
        # Editions differ in which fields they carry; an absent field reads as all-missing.
        return raw[name] if name in raw.columns else pd.Series(None, index=raw.index, dtype="object")

    category = pd.Series(
        [_most_specific_category(v) for v in field("categories" if "categories" in raw.columns else "category")],
        index=raw.index,
        dtype="object",
    )
    notes = ["category is the most specific (last) level of the product's category path"]
    if "main_category" in raw.columns:
        category = category.where(category.notna(), raw["main_category"])
        notes[-1] += ", or main_category where the path is empty"
    description = _joined_text(field("description"))
    if "features" in raw.columns:
        features = _joined_text(raw["features"])
        description = (description.fillna("") + " " + features.fillna("")).str.strip().replace("", None)
        notes.append("description = the description paragraphs followed by the feature bullets")
    prices, unparseable = _prices(field("price"))
    if unparseable:
        notes.append(f"{unparseable} prices are neither a number nor a '$low - $high' range and are left empty")
    items = pd.DataFrame(
        {
            "item_id": raw[id_field],
            "title": _plain_text(field("title")),
            "category": _plain_text(category),
            "brand": _plain_text(field("store" if files.edition == "2023" else "brand")),
            "description": _plain_text(description),
            "price": prices,
        }
    )
    notes.append("HTML tags and entities are removed from titles, brands, categories and descriptions")
    return normalise_items(items, file=file, locate=locate), notes


def _most_specific_category(value) -> str | None:
    """The last non-empty level of a category path; 2014 lists several paths and the first is the main one."""
    if isinstance(value, list | tuple) and value and isinstance(value[0], list | tuple):
        value = value[0]
    if isinstance(value, list | tuple):
        # 2018 paths sometimes end in page debris ("</span></span>"): a level that is only markup is no level.
        levels = [re.sub(r"<[^>]*>", "", level).strip() for level in value if isinstance(level, str)]
        levels = [level for level in levels if level]
        return levels[-1] if levels else None
    return value if isinstance(value, str) and value.strip() else None


def _joined_text(values: pd.Series) -> pd.Series:
    """Descriptions come as one string (2014) or a list of paragraphs (2018, 2023): one string each."""
    joined = [
        " ".join(str(part) for part in v if isinstance(part, str) and part.strip()) if isinstance(v, list | tuple)
        else v if isinstance(v, str) else None
        for v in values
    ]
    return pd.Series(joined, index=values.index, dtype="object").replace("", None)


def _plain_text(values: pd.Series) -> pd.Series:
    text = values.astype("string").str.replace(r"<[^>]*>", " ", regex=True)
    text = text.map(html.unescape, na_action="ignore").astype("string")
    text = text.str.replace(r"\s+", " ", regex=True).str.strip()
    return text.astype(object).where(text.notna() & (text != ""), None)


def _prices(values: pd.Series) -> tuple[pd.Series, int]:
    """Prices as floats: numbers stay, "$12.99" and the low end of "$5.99 - $9.99" are read, the rest is NaN.

    2018 metadata holds page fragments in `price` for some products; those are not errors in a public dataset
    the user cannot fix, so they become missing prices and the count goes into the notes.
    """
    is_number = values.map(lambda v: isinstance(v, int | float) and not isinstance(v, bool))
    numbers = pd.to_numeric(values.where(is_number), errors="coerce").astype("float64")
    is_text = values.map(lambda v: isinstance(v, str))
    text = values.where(is_text).astype("string")
    parsed = pd.to_numeric(text.str.extract(_PRICE, expand=False).str.replace(",", ""), errors="coerce")
    prices = numbers.where(is_number, parsed.astype("float64"))
    given = values.notna() & ~(is_text & (text.str.strip() == "").fillna(False))
    unreadable = given & (prices.isna() | (prices < 0))
    return prices.where(~unreadable, np.nan), int(unreadable.sum())
