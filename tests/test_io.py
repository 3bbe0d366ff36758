"""The table reader: round trips in every file type, and one clear DataError for each kind of bad input."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data import DataError, load_dataset
from data.io import write_tables

ROOT = Path(__file__).resolve().parents[1]

ITEMS = "item_id,title,category,brand,price\na,Red mug,Kitchen,Acme,9.5\nb,Blue mug,Kitchen,Acme,\nc,Steel pan,Cook,Forge,30\n"
EVENTS = (
    "user_id,item_id,timestamp,event,value\n"
    "u1,a,2024-01-01T10:00:00Z,view,\n"
    "u1,b,1704103200,purchase,\n"
    "u2,c,2024-01-02,rating,4\n"
    "u2,a,2024-01-03 08:00,cart,\n"
)


def write(directory: Path, items: str = ITEMS, events: str = EVENTS, suffix: str = ".csv") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"items{suffix}").write_text(items)
    (directory / f"events{suffix}").write_text(events)
    return directory


def error_of(path, **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        load_dataset(path, **kwargs)
    return str(caught.value)


def test_csv_loads_with_typed_columns(tmp_path):
    dataset = load_dataset(write(tmp_path))
    assert list(dataset.items["item_id"]) == ["a", "b", "c"]
    assert dataset.items["price"].isna().tolist() == [False, True, False]
    assert str(dataset.events["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert dataset.events["event"].tolist() == ["view", "purchase", "rating", "cart"]
    # Unix seconds and date strings land on the same clock.
    assert dataset.events["timestamp"].iloc[1] == pd.Timestamp("2024-01-01T10:00:00Z")
    assert dataset.item("c").price == 30.0
    assert dataset.meta.format == "table"


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_round_trip_through_each_table_type(tmp_path, kind):
    original = load_dataset(write(tmp_path / "csv"))
    write_tables(original, tmp_path / kind, kind=kind)
    again = load_dataset(tmp_path / kind)
    pd.testing.assert_frame_equal(again.items, original.items)
    pd.testing.assert_frame_equal(again.events, original.events)
    assert again.meta.fingerprint == original.meta.fingerprint


def test_ids_stay_strings(tmp_path):
    items = "item_id,title\n007,Spy kit\n10,Ten\n"
    events = "user_id,item_id,timestamp,event\n0042,007,2024-01-01,view\n"
    dataset = load_dataset(write(tmp_path, items, events))
    assert dataset.items["item_id"].tolist() == ["007", "10"]
    assert dataset.events["user_id"].tolist() == ["0042"]


def test_orphans_and_duplicates_load_and_are_set_aside(tmp_path):
    events = EVENTS + "u1,zz,2024-01-05,view,\nu2,c,2024-01-02,rating,4\n"
    dataset = load_dataset(write(tmp_path, events=events))
    assert len(dataset.events) == 4
    assert sorted(dataset.set_aside_events["reason"]) == ["duplicate", "unknown item"]


@pytest.mark.parametrize(
    ("items", "events", "expected"),
    [
        ("item_id,titel\na,Mug\n", EVENTS, ["items.csv", "'title'", "did you mean 'titel'"]),
        (ITEMS, "user_id,item_id,time,event\nu1,a,2024-01-01,view\n", ["events.csv", "'timestamp'"]),
        ("", EVENTS, ["items.csv", "empty"]),
        ("item_id,title\n", EVENTS, ["items.csv", "header but no records"]),
        ("item_id;title\na;Mug\n", EVENTS, ["items.csv", "delimiter"]),
        (ITEMS, "user_id,item_id,timestamp,event\nu1,a,yesterday-ish,view\n", ["line 2", "'timestamp'", "yesterday-ish"]),
        (ITEMS, "user_id,item_id,timestamp,event\nu1,a,2024-01-01,view\nu1,b,2024-13-45,view\n", ["line 3", "2024-13-45"]),
        ("item_id,title,price\na,Mug,1\nb,Pan,-3\n", EVENTS, ["items.csv", "line 3", "'price'", "-3"]),
        ("item_id,title,price\na,Mug,cheap\n", EVENTS, ["line 2", "'price'", "cheap", "not a number"]),
        (ITEMS, "user_id,item_id,timestamp,event\nu1,a,2024-01-01,click\n", ["line 2", "'event'", "click"]),
        (ITEMS, "user_id,item_id,timestamp,event\nu1,,2024-01-01,view\n", ["line 2", "'item_id'", "empty"]),
        (ITEMS, "user_id,item_id,timestamp,event,value\nu1,a,2024-01-01,rating,five\n", ["line 2", "'value'", "five"]),
    ],
    ids=["misspelt", "missing", "empty", "header-only", "delimiter", "timestamp", "bad-date", "negative-price",
         "text-price", "event-type", "empty-id", "text-value"],
)
def test_bad_csv_names_file_line_field_value(tmp_path, items, events, expected):
    message = error_of(write(tmp_path, items, events))
    for part in expected:
        assert part in message
    assert "\n" not in message


def test_broken_json_line_is_named(tmp_path):
    items = '{"item_id": "a", "title": "Mug"}\n{"item_id": "b", "title": \n'
    events = '{"user_id": "u1", "item_id": "a", "timestamp": "2024-01-01", "event": "view"}\n'
    message = error_of(write(tmp_path, items, events, suffix=".jsonl"))
    assert "items.jsonl" in message and "line 2" in message and "broken JSON" in message


def test_json_line_that_is_not_an_object(tmp_path):
    message = error_of(write(tmp_path, '["a", "Mug"]\n', "{}\n", suffix=".jsonl"))
    assert "line 1" in message and "object" in message


def test_file_that_is_not_what_its_extension_says(tmp_path):
    write(tmp_path / "d", suffix=".csv")
    (tmp_path / "d" / "items.csv").unlink()
    (tmp_path / "d" / "items.parquet").write_text(ITEMS)
    assert "not a readable Parquet file" in error_of(tmp_path / "d")
    write(tmp_path / "e")
    (tmp_path / "e" / "items.csv").write_bytes(gzip.compress(ITEMS.encode()))
    assert "not a UTF-8 text CSV" in error_of(tmp_path / "e")


def test_paths_and_formats(tmp_path):
    assert "no such file" in error_of(tmp_path / "nowhere")
    assert "unknown format 'excel'" in error_of(write(tmp_path), format="excel")
    (tmp_path / "empty").mkdir()
    assert "cannot tell the format" in error_of(tmp_path / "empty")
    assert "directory" in error_of(write(tmp_path / "f") / "items.csv", format="csv")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    result = run_cli("describe", str(write(tmp_path, events="user_id,item_id,timestamp,event\nu1,a,2024-01-01,hover\n")))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "'hover'" in result.stderr and "line 2" in result.stderr


def test_cli_unknown_format_and_missing_path(tmp_path):
    assert run_cli("check", str(tmp_path / "nope")).returncode == 2
    result = run_cli("check", str(tmp_path), "--format", "excel")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_cli_check_writes_json(tmp_path):
    out = tmp_path / "report.json"
    result = run_cli("check", str(write(tmp_path / "d")), "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["summary"]["events"] == 4
    assert "severity" in result.stdout or "no findings" in result.stdout


def test_events_stored_out_of_time_order_are_reported_with_their_line(tmp_path):
    from data.quality import quality_report

    events = (
        "user_id,item_id,timestamp,event\n"
        "u1,a,2024-01-03,view\n"
        "u1,b,2024-01-01,view\n"  # line 3: older than the line before it
        "u2,c,2024-01-02,view\n"
    )
    dataset = load_dataset(write(tmp_path, events=events))
    assert dataset.events["item_id"].tolist() == ["b", "a", "c"]  # sorted by time within each user
    finding = quality_report(dataset).finding("out_of_order")
    assert finding is not None and finding.count == 1
    assert finding.examples[0]["source_row"] == 3 and finding.examples[0]["item_id"] == "b"


def test_ids_events_and_places_are_cleaned_as_row_by_row_rules_would(tmp_path):
    """The column-wise validation (distinct values cleaned once, then spread over the rows) gives what cleaning
    every record on its own gives: stripped string ids (1.0 read back as 1), event names lower-cased, and each
    record's own line for the quality report."""
    from data.schema import line_locator, normalise_events

    raw = pd.DataFrame({
        "user_id": [" u1", "u1 ", 7.0, 7.0, "u2"],
        "item_id": ["a", " a", "b ", "b", "c"],
        "timestamp": ["2024-01-01T10:00:00Z", "1704103200", "2024-01-02", "2024-01-03 08:00", "2024-01-04"],
        "event": [" View", "PURCHASE", "rating ", "view", "Cart"],
        "value": ["", None, "4", " ", "2.5"],
    }, dtype=object)
    events = normalise_events(raw, file="events.csv", locate=line_locator())
    assert events["user_id"].tolist() == [str(v).strip() for v in raw["user_id"]] and events["user_id"].dtype == object
    float_ids = normalise_events(raw.assign(user_id=[1.0, 2.5, 1.0, 3.0, 1.0]), file="events.csv", locate=line_locator())
    assert float_ids["user_id"].tolist() == ["1", "2.5", "1", "3", "1"]
    assert events["item_id"].tolist() == [str(v).strip() for v in raw["item_id"]]
    assert events["event"].astype(str).tolist() == [str(v).strip().lower() for v in raw["event"]]
    assert events["value"].isna().tolist() == [True, True, False, True, False]
    assert events["source_row"].tolist() == [2, 3, 4, 5, 6]
    # One string object per distinct id, shared by its rows.
    assert events["item_id"].iloc[0] is events["item_id"].iloc[1]


@pytest.mark.parametrize("kind", ["csv", "parquet", "jsonl"])
def test_tables_written_a_chunk_at_a_time_read_back_the_same(tmp_path, monkeypatch, kind):
    from data import io
    from data.synthetic import generate

    shop = generate(n_users=30, n_items=40, seed=1, target_events=600)
    write_tables(shop, tmp_path / "whole", kind=kind)
    monkeypatch.setattr(io, "WRITE_CHUNK_ROWS", 7)
    write_tables(shop, tmp_path / "chunked", kind=kind)
    again = load_dataset(tmp_path / "chunked")
    pd.testing.assert_frame_equal(again.events, shop.events)
    pd.testing.assert_frame_equal(again.set_aside_events, load_dataset(tmp_path / "whole").set_aside_events)
    if kind != "parquet":  # text files: the same bytes; Parquet differs in its row groups only
        for name in ("items", "events", "event_causes"):
            assert (tmp_path / "chunked" / f"{name}.{kind}").read_bytes() == (
                tmp_path / "whole" / f"{name}.{kind}").read_bytes()


def test_iso_strings_write_what_isoformat_writes():
    from data.schema import iso_strings

    stamps = pd.Series(pd.to_datetime(["2024-01-05T10:00:00Z", "1960-03-01T00:00:00.5Z", "2024-01-05T10:00:00.000001Z",
                                       "2024-01-05T10:00:00.000000001Z", "1969-12-31T23:59:59.999999999Z"],
                                      format="ISO8601"))
    assert iso_strings(stamps).tolist() == [stamp.isoformat() for stamp in stamps]


def test_set_aside_and_sort_follow_the_plain_pandas_rules():
    """make_dataset's one-copy path keeps, sets aside and orders events exactly as the plain rules say: repeats of
    (user, item, timestamp, event) and events on unknown items or users set aside (the later rule naming the
    reason), the rest sorted by user id then time, ties in file order."""
    from data.schema import line_locator, make_dataset, normalise_events, normalise_items

    rng = np.random.default_rng(3)
    n = 400
    raw = pd.DataFrame({
        "user_id": rng.choice(["u10", "u2", "u1", "ghost"], n),
        "item_id": rng.choice(["a", "b", "c", "zz"], n),
        "timestamp": rng.choice(1_704_067_200 + np.arange(30) * 60, n).astype(str),  # many ties
        "event": rng.choice(["view", "cart"], n),
    })
    items = normalise_items(pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["A", "B", "C"]}),
                            file="items.csv", locate=line_locator())
    events = normalise_events(raw, file="events.csv", locate=line_locator())
    users = pd.DataFrame({"user_id": ["u1", "u2", "u10"]})
    dataset = make_dataset(items, events, source="test", format="table", users=users)

    reasons = pd.Series(None, index=events.index, dtype=object)
    reasons[events.duplicated(subset=["user_id", "item_id", "timestamp", "event"])] = "duplicate"
    reasons[~events["item_id"].isin(items["item_id"])] = "unknown item"
    reasons[~events["user_id"].isin(users["user_id"])] = "unknown user"
    kept = events[reasons.isna()].sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    assert dataset.source_rows.tolist() == kept["source_row"].tolist()
    pd.testing.assert_frame_equal(dataset.events, kept.drop(columns="source_row"))
    aside = events[reasons.notna()].assign(reason=reasons[reasons.notna()]).reset_index(drop=True)
    pd.testing.assert_frame_equal(dataset.set_aside_events, aside)
    assert set(aside["reason"]) == {"duplicate", "unknown item", "unknown user"}
