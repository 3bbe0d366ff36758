"""Public-format adapters: every format from tiny files written here, the shared real datasets, and bad input."""

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data import DataError, load_dataset
from data.adapters import amazon, movielens, recbole
from data.schema import EVENT_COLUMNS, ITEM_COLUMNS

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ADAPTERS = {"amazon": amazon, "movielens": movielens, "recbole": recbole}


def write_lines(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{line}\n" for line in lines)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding=encoding) as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding=encoding)
    return path


def json_lines(records: list[dict]) -> list[str]:
    return [json.dumps(record) for record in records]


def caught(path: Path) -> DataError:
    with pytest.raises(DataError) as error:
        load_dataset(path)
    return error.value


# ---------------------------------------------------------------------------------------------
# Fixtures: one tiny directory per format.

REVIEWS_2014 = [
    {"reviewerID": "U1", "asin": "B001", "overall": 5.0, "unixReviewTime": 1400000000, "reviewTime": "05 13, 2014"},
    {"reviewerID": "U1", "asin": "B002", "overall": 3.0, "unixReviewTime": 1400086400},
    {"reviewerID": "U2", "asin": "B001", "overall": 4.0, "unixReviewTime": 1300000000},
    {"reviewerID": "U2", "asin": "B999", "overall": 1.0, "unixReviewTime": 1300000001},  # no metadata
]
# 2014 metadata lines are Python literals: single quotes, a salesRank dict, several category paths.
META_2014 = [
    "{'asin': 'B001', 'title': 'Rose Face Cream', 'price': 12.5, 'brand': 'Rosa', "
    "'categories': [['Beauty', 'Skin Care', 'Face'], ['Beauty', 'Gifts']], 'description': 'A cream for the face.'}",
    "{'asin': 'B002', 'title': \"Men's Shaver\", 'categories': [['Beauty', 'Shaving']], 'salesRank': {'Beauty': 10}}",
]


def amazon_2014(directory: Path) -> Path:
    write_lines(directory / "reviews_Beauty_5.json.gz", json_lines(REVIEWS_2014))
    write_lines(directory / "meta_Beauty.json.gz", META_2014)
    return directory


def amazon_2018(directory: Path) -> Path:
    meta = [
        {"asin": "A1", "title": "Drill &amp; Driver <b>Set</b>", "brand": "Bosch",
         "category": ["Tools & Home Improvement", "Power Tools", "Drills", "</span></span>"],
         "description": ["<p>Cordless drill.</p>", "Two batteries."], "price": "$89.99"},
        {"asin": "A2", "title": "Saw", "brand": "", "category": [], "description": [], "price": "$5.99 - $9.99"},
        {"asin": "A3", "title": "Hammer", "category": ["Tools"], "price": ""},
        {"asin": "A4", "title": "Level", "price": ".a-box-inner{background-color:#fff}"},
    ]  # fmt: skip
    reviews = [
        {"reviewerID": "R1", "asin": asin, "overall": float(stars), "unixReviewTime": 1500000000 + i}
        for i, (asin, stars) in enumerate([("A1", 5), ("A2", 4), ("A3", 3), ("A4", 2)])
    ]
    write_lines(directory / "Tools_5.json", json_lines(reviews))
    write_lines(directory / "meta_Tools.json", json_lines(meta))
    return directory


def amazon_2023(directory: Path) -> Path:
    reviews = [
        {"rating": 5.0, "title": "Great", "text": "Soft lips", "asin": "V1", "parent_asin": "P1", "user_id": "AG1",
         "timestamp": 1588687728923, "verified_purchase": True},
        {"rating": 4.0, "asin": "V2", "parent_asin": "P1", "user_id": "AG2", "timestamp": 1588687729923},
        {"rating": 2.0, "asin": "P2", "parent_asin": "P2", "user_id": "AG1", "timestamp": 1600000000000},
    ]  # fmt: skip
    meta = [
        {"main_category": "All Beauty", "title": "Lip Balm", "features": ["SPF 15"], "description": ["Keeps lips soft."],
         "price": None, "store": "Balmy", "categories": [], "parent_asin": "P1"},
        {"main_category": "All Beauty", "title": "Hair Oil", "features": [], "description": [], "price": 7.5,
         "store": None, "categories": ["Beauty", "Hair Care", "Oils"], "parent_asin": "P2"},
    ]  # fmt: skip
    write_lines(directory / "All_Beauty.jsonl", json_lines(reviews))
    write_lines(directory / "meta_All_Beauty.jsonl", json_lines(meta))
    return directory


ML_GENRES = ["unknown", "Action", "Comedy", "Drama"]


def movielens_100k(directory: Path) -> Path:
    write_lines(directory / "u.data", ["1\t10\t4\t881250949", "1\t20\t2\t881250950", "2\t10\t5\t891717742"])
    write_lines(directory / "u.genre", [f"{genre}|{i}" for i, genre in enumerate(ML_GENRES)] + [""])
    write_lines(
        directory / "u.item",
        [
            "10|Les Misérables (1995)|01-Jan-1995||http://imdb/x|0|1|1|0",
            "20|unknown|||http://imdb/y|1|0|0|0",
        ],
        encoding="latin-1",
    )
    write_lines(directory / "u.user", ["1|24|M|technician|85711", "2|53|F|other|94043"])
    return directory


def movielens_1m(directory: Path) -> Path:
    write_lines(directory / "ratings.dat", ["1::1193::5::978300760", "1::661::3::978302109", "2::1193::4::978298413"])
    write_lines(
        directory / "movies.dat",
        ["1193::One Flew Over the Cuckoo's Nest (1975)::Drama", "661::Amélie (2001)::Comedy|Romance"],
        encoding="latin-1",
    )
    write_lines(directory / "users.dat", ["1::F::1::10::48067", "2::M::56::16::70072"])
    return directory


def recbole_plain(directory: Path) -> Path:
    write_lines(
        directory / "ml.inter",
        ["user_id:token\titem_id:token\trating:float\ttimestamp:float", "1\t7\t4\t881250949", "1\t8\t2\t881250000",
         "2\t7\t5\t881251000"],
    )  # fmt: skip
    write_lines(
        directory / "ml.item",
        ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq", "7\tToy Story\t1995\tAnimation Comedy",
         "8\tHeat\t1995\tAction Crime Thriller"],
    )  # fmt: skip
    write_lines(directory / "ml.user", ["user_id:token\tage:token\tgender:token", "1\t24\tM", "2\t53\tF"])
    return directory


def recbole_unclocked(directory: Path) -> Path:
    write_lines(directory / "shop.inter", ["user_id:token\titem_id:token", "u1\ta", "u2\tb", "u1\tb", "u1\ta"])
    write_lines(
        directory / "shop.item",
        ["item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\tprice:float\tsales_rank:float",
         "a\tRed Mug\t'Home', 'Kitchen', 'Mugs'\tAcme\t9.5\t3", "b\tPan\t\t\t\t"],
    )  # fmt: skip
    return directory


# UniSRec layout: indices into item2index/user2index; train = prefixes, valid/test = leave-one-out.
# User 0 buys 0,1,2,3 (test line); user 1 buys 2,1,0 but has no test line (valid is their longest).
UNISREC = {
    "Shop.train.inter": ["0\t0\t1", "0\t0 1\t2", "1\t2\t1"],
    "Shop.valid.inter": ["0\t0 1\t2", "1\t2\t1", "1\t2 1\t0"],
    "Shop.test.inter": ["0\t0 1 2\t3"],
}
UNISREC_ITEMS = ["ASIN0", "ASIN1", "ASIN2", "ASIN3"]
UNISREC_TEXT = [
    "ASIN0\tRed Mug. Home Kitchen Mugs. Acme. ",
    "ASIN1\tPropane Connector Kit 3/8 in. Home Heating Connectors. Mr. Heater. ",
    "ASIN2\tBlue Pan. . Forge. ",
    "ASIN3\tSteel Pot. Home Kitchen Pots. . ",
]


def unisrec(directory: Path, *, text: bool = True) -> Path:
    header = "user_id:token\titem_id_list:token_seq\titem_id:token"
    for name, lines in UNISREC.items():
        write_lines(directory / name, [header, *lines])
    write_lines(directory / "Shop.item2index", [f"{asin}\t{i}" for i, asin in enumerate(UNISREC_ITEMS)])
    write_lines(directory / "Shop.user2index", ["REVIEWER_A\t0", "REVIEWER_B\t1"])
    if text:
        write_lines(directory / "Shop.text", ["item_id:token\ttext:token_seq", *UNISREC_TEXT])
    return directory


FORMATS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "amazon-2014": ("amazon", amazon_2014),
    "amazon-2018": ("amazon", amazon_2018),
    "amazon-2023": ("amazon", amazon_2023),
    "movielens-100k": ("movielens", movielens_100k),
    "movielens-1m": ("movielens", movielens_1m),
    "recbole-plain": ("recbole", recbole_plain),
    "recbole-unclocked": ("recbole", recbole_unclocked),
    "recbole-unisrec": ("recbole", unisrec),
}


# ---------------------------------------------------------------------------------------------
# Contract: every format is detected by its adapter alone and loads into the data contract.


@pytest.mark.parametrize("case", FORMATS)
def test_each_format_is_detected_by_its_adapter_alone(tmp_path, case):
    expected, build = FORMATS[case]
    directory = build(tmp_path / case)
    assert {name for name, adapter in ADAPTERS.items() if adapter.detect(directory)} == {expected}


@pytest.mark.parametrize("case", FORMATS)
def test_each_format_loads_into_the_data_contract(tmp_path, case):
    expected, build = FORMATS[case]
    dataset = load_dataset(build(tmp_path / case))
    assert dataset.meta.format == expected
    assert tuple(dataset.items.columns) == ITEM_COLUMNS
    assert tuple(dataset.events.columns) == EVENT_COLUMNS
    assert dataset.items["item_id"].is_unique
    assert str(dataset.events["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert len(dataset.events) > 0 and dataset.meta.notes
    # Sorted by user then time, as the contract promises every reader.
    ordered = dataset.events.sort_values(["user_id", "timestamp"], kind="stable")
    assert ordered.index.tolist() == list(range(len(dataset.events)))


def test_a_directory_no_adapter_knows_is_refused(tmp_path):
    write_lines(tmp_path / "settings.json", ['{"a": 1}'])
    write_lines(tmp_path / "notes.dat", ["x::y"])
    assert "cannot tell the format" in str(caught(tmp_path))


# ---------------------------------------------------------------------------------------------
# Amazon.


def test_amazon_2014_reads_gzipped_reviews_and_python_literal_meta(tmp_path):
    dataset = load_dataset(amazon_2014(tmp_path))
    cream, shaver = dataset.item("B001"), dataset.item("B002")
    assert (cream.title, cream.category, cream.brand, cream.price) == ("Rose Face Cream", "Face", "Rosa", 12.5)
    assert cream.description == "A cream for the face."
    assert (shaver.title, shaver.category, shaver.brand, shaver.price) == ("Men's Shaver", "Shaving", None, None)
    first = dataset.user_events("U1").iloc[0]
    assert (first.item_id, first.event, first.value) == ("B001", "rating", 5.0)
    assert first.timestamp == pd.Timestamp("2014-05-13T16:53:20Z")
    assert "Amazon 2014" in dataset.meta.notes[0]


def test_amazon_reviews_without_metadata_are_set_aside_with_a_note(tmp_path):
    dataset = load_dataset(amazon_2014(tmp_path))
    assert len(dataset.events) == 3
    assert dataset.set_aside_events[["item_id", "reason"]].values.tolist() == [["B999", "unknown item"]]
    assert any("1 reviewed items have no metadata" in note for note in dataset.meta.notes)


def test_amazon_2018_cleans_html_and_reads_price_strings(tmp_path):
    dataset = load_dataset(amazon_2018(tmp_path))
    drill = dataset.item("A1")
    assert (drill.title, drill.description) == ("Drill & Driver Set", "Cordless drill. Two batteries.")
    assert (drill.category, drill.brand, drill.price) == ("Drills", "Bosch", 89.99)
    saw = dataset.item("A2")
    assert (saw.price, saw.category, saw.brand, saw.description) == (5.99, None, None, None)  # the low end
    assert dataset.item("A3").price is None and dataset.item("A4").price is None
    # Only the page fragment is unreadable; an empty price is just missing.
    assert any(note.startswith("1 prices") for note in dataset.meta.notes)
    assert "Amazon 2018" in dataset.meta.notes[0]


def test_amazon_2023_keys_items_by_parent_asin(tmp_path):
    dataset = load_dataset(amazon_2023(tmp_path))
    assert sorted(dataset.items["item_id"]) == ["P1", "P2"]
    assert sorted(dataset.events["item_id"]) == ["P1", "P1", "P2"]  # variants V1 and V2 count for P1
    balm, oil = dataset.item("P1"), dataset.item("P2")
    assert (balm.category, balm.brand, balm.price) == ("All Beauty", "Balmy", None)
    assert balm.description == "Keeps lips soft. SPF 15"
    assert (oil.category, oil.brand, oil.price) == ("Oils", None, 7.5)
    # Millisecond timestamps.
    assert dataset.user_events("AG1")["timestamp"].iloc[0] == pd.Timestamp("2020-05-05T14:08:48.923Z")


def test_amazon_reviews_file_can_be_named_directly(tmp_path):
    amazon_2018(tmp_path)
    write_lines(tmp_path / "Tools.json", json_lines(REVIEWS_2014[:1]))  # a second reviews file for meta_Tools
    assert "several Amazon review files" in str(caught(tmp_path))
    assert len(load_dataset(tmp_path / "Tools_5.json").events) == 4
    assert len(load_dataset(tmp_path / "Tools.json").events) == 0  # its one review names an item without metadata


def test_amazon_2014_reviews_without_meta_file_name_the_missing_file(tmp_path):
    write_lines(tmp_path / "reviews_Toys.json", json_lines(REVIEWS_2014))
    error = caught(tmp_path)
    assert "meta_Toys.json" in str(error) and error.file.endswith("reviews_Toys.json")


AMAZON_BAD_REVIEW = {
    "broken JSON": ('{"reviewerID": "U2", "asin": ', None, "broken JSON line"),
    "missing field": ('{"reviewerID": "U2", "asin": "A2", "unixReviewTime": 1500000000}', "overall", "missing"),
    "non-numeric rating": (
        '{"reviewerID": "U2", "asin": "A2", "overall": "five", "unixReviewTime": 1500000000}', "value", "not a number"
    ),
    "unparseable timestamp": (
        '{"reviewerID": "U2", "asin": "A2", "overall": 4, "unixReviewTime": "someday"}', "timestamp", "not a timestamp"
    ),
}


@pytest.mark.parametrize("case", AMAZON_BAD_REVIEW)
def test_amazon_bad_review_names_file_line_and_field(tmp_path, case):
    bad_line, field, rule = AMAZON_BAD_REVIEW[case]
    amazon_2018(tmp_path)
    good = '{"reviewerID": "U1", "asin": "A1", "overall": 5, "unixReviewTime": 1500000000}'
    write_lines(tmp_path / "Tools_5.json", [good, bad_line, good])
    error = caught(tmp_path)
    assert (Path(error.file).name, error.line, error.field) == ("Tools_5.json", 2, field)
    assert rule in error.rule


def test_amazon_broken_meta_line_names_the_meta_file(tmp_path):
    amazon_2014(tmp_path)
    write_lines(tmp_path / "meta_Beauty.json.gz", [META_2014[0], "{'asin': 'B002', 'title': "])
    error = caught(tmp_path)
    assert (Path(error.file).name, error.line) == ("meta_Beauty.json.gz", 2)


# ---------------------------------------------------------------------------------------------
# MovieLens.


def test_movielens_100k_reads_genres_dates_users_and_latin1(tmp_path):
    dataset = load_dataset(movielens_100k(tmp_path))
    movie = dataset.item("10")
    assert (movie.title, movie.category, movie.brand, movie.price) == ("Les Misérables (1995)", "Action", None, None)
    assert movie.description == "Genres: Action, Comedy. Released 01-Jan-1995."
    unknown = dataset.item("20")  # only the 'unknown' genre and no date: nothing to say
    assert (unknown.category, unknown.description) == (None, None)
    assert dataset.users.set_index("user_id").loc["2", ["age", "gender", "occupation", "zip"]].tolist() == [
        53, "F", "other", "94043"
    ]
    first = dataset.user_events("1").iloc[0]
    assert (first.item_id, first.event, first.value) == ("10", "rating", 4.0)
    assert first.timestamp == pd.Timestamp(881250949, unit="s", tz="UTC")


def test_movielens_1m_reads_double_colon_files(tmp_path):
    dataset = load_dataset(movielens_1m(tmp_path))
    assert dataset.summary()["events"] == 3 and dataset.summary()["users"] == 2
    amelie = dataset.item("661")
    assert (amelie.title, amelie.category) == ("Amélie (2001)", "Comedy")
    assert amelie.description == "Genres: Comedy, Romance. Released 2001."
    assert dataset.user_events("2")["value"].tolist() == [4.0]
    assert dataset.users["user_id"].tolist() == ["1", "2"]


MOVIELENS_BAD_RATING = {
    "non-numeric rating": ("1\t20\tfive\t881250950", "value", "not a number"),
    "unparseable timestamp": ("1\t20\t2\tlater", "timestamp", "not a timestamp"),
    "missing field": ("1\t20\t2", "timestamp", "missing"),
    "empty item": ("1\t\t2\t881250950", "item_id", "empty"),
    "extra field": ("1\t20\t2\t881250950\t9", None, "5 fields where 4 were expected"),
}


@pytest.mark.parametrize("case", MOVIELENS_BAD_RATING)
def test_movielens_bad_rating_names_file_line_and_field(tmp_path, case):
    bad_line, field, rule = MOVIELENS_BAD_RATING[case]
    movielens_100k(tmp_path)
    write_lines(tmp_path / "u.data", ["1\t10\t4\t881250949", bad_line])
    error = caught(tmp_path)
    assert (Path(error.file).name, error.line, error.field) == ("u.data", 2, field)
    assert rule in error.rule


def test_blank_lines_are_skipped_but_counted_in_error_lines(tmp_path):
    movielens_100k(tmp_path)
    write_lines(tmp_path / "u.data", ["1\t10\t4\t881250949", "", "1\t20\t2\t881250950", "", "1\t20\tfive\t1"])
    assert caught(tmp_path).line == 5
    write_lines(tmp_path / "u.data", ["1\t10\t4\t881250949", "", "1\t20\t2\t881250950", ""])
    assert len(load_dataset(tmp_path).events) == 2


def test_movielens_1m_bad_rating_names_its_line(tmp_path):
    movielens_1m(tmp_path)
    write_lines(tmp_path / "ratings.dat", ["1::1193::5::978300760", "1::661::three::978302109"])
    error = caught(tmp_path)
    assert (Path(error.file).name, error.line, error.field, error.value) == ("ratings.dat", 2, "value", "three")


def test_movielens_bad_genre_flag_is_named(tmp_path):
    movielens_100k(tmp_path)
    write_lines(tmp_path / "u.item", ["10|Heat (1995)|01-Jan-1995||url|0|1|yes|0"], encoding="latin-1")
    error = caught(tmp_path)
    assert (Path(error.file).name, error.line, error.field, error.value) == ("u.item", 1, "Comedy", "yes")


# ---------------------------------------------------------------------------------------------
# RecBole and UniSRec.


def test_recbole_inter_with_ratings_and_clock(tmp_path):
    dataset = load_dataset(recbole_plain(tmp_path))
    assert not dataset.meta.synthetic_clock
    assert dataset.user_events("1")["item_id"].tolist() == ["8", "7"]  # ordered by their timestamps
    assert set(dataset.events["event"]) == {"rating"} and dataset.user_events("2")["value"].tolist() == [5.0]
    toy = dataset.item("7")
    assert (toy.title, toy.category) == ("Toy Story", "Animation")
    assert any("release_year" in note for note in dataset.meta.notes)
    assert dataset.users["age"].tolist() == ["24", "53"]


def test_recbole_inter_without_clock_gets_synthetic_monotone_timestamps(tmp_path):
    dataset = load_dataset(recbole_unclocked(tmp_path))
    assert dataset.meta.synthetic_clock
    history = dataset.user_events("u1")
    assert history["item_id"].tolist() == ["a", "b", "a"]  # file order, a repeat kept
    assert history["timestamp"].diff().iloc[1:].tolist() == [pd.Timedelta(days=1)] * 2
    assert history["timestamp"].iloc[0] == pd.Timestamp("2000-01-01", tz="UTC")
    assert set(dataset.events["event"]) == {"purchase"} and dataset.events["value"].isna().all()
    mug = dataset.item("a")
    assert (mug.title, mug.category, mug.brand, mug.price) == ("Red Mug", "Mugs", "Acme", 9.5)
    assert dataset.item("b").category is None


def test_unisrec_rebuilds_each_users_longest_sequence_with_original_ids(tmp_path):
    dataset = load_dataset(unisrec(tmp_path))
    assert dataset.meta.synthetic_clock
    assert dataset.user_events("REVIEWER_A")["item_id"].tolist() == ["ASIN0", "ASIN1", "ASIN2", "ASIN3"]
    # No test line: the valid line (history 2 1 + target 0) is the longest there is.
    assert dataset.user_events("REVIEWER_B")["item_id"].tolist() == ["ASIN2", "ASIN1", "ASIN0"]
    assert dataset.user_events("REVIEWER_B")["timestamp"].is_monotonic_increasing
    assert set(dataset.events["event"]) == {"purchase"}


def test_unisrec_text_splits_into_title_category_brand(tmp_path):
    dataset = load_dataset(unisrec(tmp_path))
    mug, kit, pan, pot = (dataset.item(asin) for asin in UNISREC_ITEMS)
    assert (mug.title, mug.category, mug.brand) == ("Red Mug", "Home Kitchen Mugs", "Acme")
    # "Mr. Heater" holds the separator: the split anchors on the category path's root instead.
    assert (kit.title, kit.category, kit.brand) == ("Propane Connector Kit 3/8 in", "Home Heating Connectors",
                                                    "Mr. Heater")  # fmt: skip
    assert (pan.title, pan.category, pan.brand) == ("Blue Pan", None, "Forge")
    assert (pot.title, pot.category, pot.brand) == ("Steel Pot", "Home Kitchen Pots", None)
    assert any("re-split" in note for note in dataset.meta.notes)


def test_unisrec_without_text_titles_items_by_id(tmp_path):
    dataset = load_dataset(unisrec(tmp_path, text=False))
    assert dataset.item("ASIN3").title == "ASIN3"
    assert len(dataset.items) == 4 and len(dataset.events) == 7
    assert any("item titles are the item ids" in note for note in dataset.meta.notes)


@pytest.mark.parametrize(("bad_line", "field"), [("1\t2 1 0\t9", "item_id"), ("1\t2 9 0\t1", "item_id_list")])
def test_unisrec_unknown_index_names_the_inter_file_line_and_field(tmp_path, bad_line, field):
    unisrec(tmp_path)
    header = "user_id:token\titem_id_list:token_seq\titem_id:token"
    write_lines(tmp_path / "Shop.test.inter", [header, "0\t0 1 2\t3", bad_line])
    error = caught(tmp_path)
    assert (Path(error.file).name, error.line, error.field, error.value) == ("Shop.test.inter", 3, field, "9")
    assert "Shop.item2index" in error.rule


def test_unisrec_unknown_user_index_is_named(tmp_path):
    unisrec(tmp_path)
    header = "user_id:token\titem_id_list:token_seq\titem_id:token"
    write_lines(tmp_path / "Shop.test.inter", [header, "0\t0 1 2\t3", "7\t2 1 0\t1"])
    error = caught(tmp_path)
    assert (Path(error.file).name, error.line, error.field, error.value) == ("Shop.test.inter", 3, "user_id", "7")


RECBOLE_BAD_INTER = {
    "non-numeric rating": ("2\t8\tfive\t881251000", 3, "value", "not a number"),
    "unparseable timestamp": ("2\t8\t3\tsoon", 3, "timestamp", "not a timestamp"),
    "missing field": ("\t8\t3\t881251000", 3, "user_id", "missing"),
    "extra field": ("2\t8\t3\t881251000\tx", 3, None, "5 fields where 4 were expected"),
}


@pytest.mark.parametrize("case", RECBOLE_BAD_INTER)
def test_recbole_bad_interaction_names_file_line_and_field(tmp_path, case):
    bad_line, line, field, rule = RECBOLE_BAD_INTER[case]
    recbole_plain(tmp_path)
    write_lines(tmp_path / "ml.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
                                        "1\t7\t4\t881250949", bad_line])  # fmt: skip
    error = caught(tmp_path)
    assert (Path(error.file).name, error.line, error.field) == ("ml.inter", line, field)
    assert rule in error.rule


def test_recbole_header_type_must_be_known(tmp_path):
    recbole_plain(tmp_path)
    write_lines(tmp_path / "ml.inter", ["user_id:token\titem_id:token\trating:number", "1\t7\t4"])
    error = caught(tmp_path)
    assert (Path(error.file).name, error.line, error.value) == ("ml.inter", 1, "rating:number")


def test_recbole_bad_text_line_is_named(tmp_path):
    unisrec(tmp_path)
    write_lines(tmp_path / "Shop.text", ["item_id:token\ttext:token_seq", UNISREC_TEXT[0], "ASIN1\tKit\textra"])
    error = caught(tmp_path)
    assert (Path(error.file).name, error.line) == ("Shop.text", 3)


# ---------------------------------------------------------------------------------------------
# The shared real datasets, read in place (never copied into the repository).


def shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared dataset {name} is not at {path} (the sibling checkout ../shared/data is absent)")
    return path


def test_shared_movielens_100k_has_its_readme_counts():
    path = shared("movielens_100k")
    dataset = load_dataset(path)
    summary = dataset.summary()
    assert (summary["format"], summary["users"], summary["items"], summary["events"]) == (
        "movielens", 943, 1682, 100_000
    )
    assert len(dataset.set_aside_events) == 0 and len(dataset.users) == 943
    assert dataset.events["value"].between(1, 5).all()
    # The first line of u.data, read here without the adapter.
    user, item, stars, when = (path / "u.data").read_text().splitlines()[0].split("\t")
    match = dataset.events[(dataset.events["user_id"] == user) & (dataset.events["item_id"] == item)]
    assert match["value"].tolist() == [float(stars)]
    assert match["timestamp"].tolist() == [pd.Timestamp(int(when), unit="s", tz="UTC")]
    assert dataset.item("1").title == "Toy Story (1995)"


def test_shared_amazon_scientific_has_its_readme_counts():
    path = shared("amazon_scientific")
    dataset = load_dataset(path)
    summary = dataset.summary()
    assert (summary["format"], summary["users"], summary["items"], summary["events"]) == (
        "recbole", 8442, 4385, 59_384
    )
    assert dataset.meta.synthetic_clock and len(dataset.set_aside_events) == 0
    # The first test line, mapped back by hand: its history + target are that user's events in order.
    user_index, history, target = (path / "Scientific.test.inter").read_text().splitlines()[1].split("\t")
    asins = [line.split("\t")[0] for line in (path / "Scientific.item2index").read_text().splitlines()]
    reviewers = dict(line.split("\t")[::-1] for line in (path / "Scientific.user2index").read_text().splitlines())
    expected = [asins[int(i)] for i in [*history.split(), target]]
    assert dataset.user_events(reviewers[user_index])["item_id"].tolist() == expected
    titled = dataset.items["title"].str.len() > 0
    assert titled.all() and np.mean(dataset.items["brand"].notna()) > 0.9
