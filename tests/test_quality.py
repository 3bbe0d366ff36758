"""Data-quality report: each finding fires on data built to trigger it, names the culprits, and not on clean data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from data.errors import DataError
from data.quality import Finding, QualityReport, quality_report
from data.schema import EVENT_TYPES, make_dataset

T0 = pd.Timestamp("2023-05-01 09:00", tz="UTC")
NOW = pd.Timestamp("2024-01-01", tz="UTC")
TITLES = [
    "Wireless optical mouse",
    "Mechanical keyboard",
    "USB-C charging cable 2m",
    "Noise cancelling headphones",
    "27 inch monitor",
    "Laptop stand",
    "Webcam 1080p",
    "Desk lamp",
]


def catalog(titles=TITLES, prices=None, categories=None) -> pd.DataFrame:
    n = len(titles)
    return pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(n)],
            "title": list(titles),
            "category": list(categories) if categories is not None else ["electronics"] * n,
            "brand": ["Acme"] * n,
            "description": [None] * n,
            "price": list(prices) if prices is not None else [10.0 + 5 * k for k in range(n)],
        }
    )


def clean_events(users: int = 8, items: int = 8, per_user: int = 4) -> list[tuple]:
    """Every user touches `per_user` different items an hour apart, one user a day; every item gets 4 events."""
    return [
        (f"u{u}", f"i{(u + k) % items}", T0 + pd.Timedelta(hours=24 * u + k), "view")
        for u in range(users)
        for k in range(per_user)
    ]


def frame(rows) -> pd.DataFrame:
    users, items, moments, kinds = zip(*rows, strict=True) if rows else ((), (), (), ())
    return pd.DataFrame(
        {
            "user_id": pd.Series(users, dtype=object),
            "item_id": pd.Series(items, dtype=object),
            "timestamp": pd.to_datetime(list(moments), utc=True),
            "event": pd.Categorical(list(kinds), categories=EVENT_TYPES),
            "value": np.nan,
        }
    )


def dataset(items=None, rows=None, **options):
    items = catalog() if items is None else items
    events = frame(clean_events() if rows is None else rows)
    return make_dataset(items, events, source="test", format="test", **options)


def report(data, **options) -> QualityReport:
    return quality_report(data, now=options.pop("now", NOW), **options)


def codes(result: QualityReport) -> set[str]:
    return {f.code for f in result.findings}


def only(result: QualityReport, code: str) -> Finding:
    found = result.finding(code)
    if found is None:
        raise AssertionError(f"no {code} finding; got {sorted(codes(result))}")
    return found


def test_a_clean_dataset_has_no_findings():
    result = quality_report(dataset())  # the wall clock: the clean data is in the past
    assert result.findings == ()
    assert result.blocking() == ()
    result.raise_if_blocking()
    assert result.summary["events"] == 32


def test_duplicate_events():
    rows = clean_events()
    data = dataset(rows=[*rows, rows[5], rows[5]])
    finding = only(report(data), "duplicate_events")
    assert finding.severity == "warning"
    assert finding.count == 2
    assert finding.share == pytest.approx(2 / 34)
    assert finding.examples[0]["user_id"] == rows[5][0] and finding.examples[0]["item_id"] == rows[5][1]


def test_duplicate_items_show_both_titles():
    items = pd.concat([catalog(), catalog().iloc[[2]].assign(title="USB cable (old listing)")], ignore_index=True)
    finding = only(report(dataset(items=items)), "duplicate_items")
    assert finding.count == 1
    assert "different title" in finding.title
    assert finding.examples == (
        {"item_id": "i2", "title": "USB cable (old listing)", "kept_title": "USB-C charging cable 2m", "price": 20.0},
    )


def test_events_on_unknown_items():
    rows = [*clean_events(), ("u0", "ghost", T0, "view"), ("u1", "ghost", T0, "cart"), ("u1", "phantom", T0, "view")]
    finding = only(report(dataset(rows=rows)), "unknown_items")
    assert finding.severity == "warning"
    assert finding.count == 3
    assert finding.examples[0] == {"item_id": "ghost", "events": 2, "users": 2}
    assert finding.examples[1] == {"item_id": "phantom", "events": 1, "users": 1}


def test_events_of_unknown_users():
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(7)]})  # u7 is missing
    finding = only(report(dataset(users=users)), "unknown_users")
    assert finding.count == 4
    assert finding.examples == ({"user_id": "u7", "events": 4, "items": 4},)
    assert "unknown_users" not in codes(report(dataset(users=pd.DataFrame({"user_id": [f"u{u}" for u in range(8)]}))))


@pytest.mark.parametrize(
    ("title", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("Ok", "too short"),
        ("i3", "only an id"),
        ("I3", "only an id"),
        ("Item 3", "only an id"),
        ("product_17", "only an id"),
        ("123456", "only an id"),
        ("#42-7", "only an id"),
        ("n/a", "placeholder"),
        ("Untitled", "placeholder"),
    ],
)
def test_items_without_usable_titles(title, problem):
    titles = list(TITLES)
    titles[3] = title
    finding = only(report(dataset(items=catalog(titles))), "missing_text")
    assert finding.count == 1
    assert finding.share == pytest.approx(1 / 8)
    assert finding.examples[0]["item_id"] == "i3"
    assert finding.examples[0]["problem"] == problem


@pytest.mark.parametrize("title", ["TV stand", "PS5", "Dune", "iPhone 15", "2001: A Space Odyssey", "Item holder"])
def test_short_or_numbered_real_titles_are_fine(title):
    titles = list(TITLES)
    titles[3] = title
    assert "missing_text" not in codes(report(dataset(items=catalog(titles))))


def test_impossible_prices():
    # Items without a category are judged against the catalog: the median of positive finite prices is 12.
    prices = [12.0, 15.0, 9.0, 11.0, 0.0, 1400.0, 1100.0, float("inf")]
    finding = only(report(dataset(items=catalog(prices=prices, categories=[None] * 8))), "impossible_prices")
    assert finding.severity == "warning"
    assert finding.count == 3  # 1100 is under 100x the median
    assert finding.share == pytest.approx(3 / 8)
    flagged = {example["item_id"]: example["problem"] for example in finding.examples}
    assert flagged == {"i5": "over 100× the catalog median", "i4": "zero", "i7": "not a finite number"}


def test_price_outliers_are_judged_within_their_category():
    # Cheap cables and dear monitors, over 100x apart, are each normal for their category; three monitors
    # are too few for a median of their own.
    prices = [5.0, 6.0, 5.5, 6.5, 5.0, 150.0, 900.0, 4.0]
    categories = ["cables"] * 5 + ["monitors"] * 3
    assert "impossible_prices" not in codes(report(dataset(items=catalog(prices=prices, categories=categories))))
    prices[4] = 700.0  # a cable at over 100x the cable median
    finding = only(report(dataset(items=catalog(prices=prices, categories=categories))), "impossible_prices")
    assert [example["item_id"] for example in finding.examples] == ["i4"]
    assert finding.examples[0]["median"] == 6.0


def test_items_without_price():
    prices = [12.0, None, 9.0, 11.0, None, 14.0, 10.0, 8.0]
    finding = only(report(dataset(items=catalog(prices=prices))), "items_without_price")
    assert finding.severity == "info"
    assert [example["item_id"] for example in finding.examples] == ["i1", "i4"]
    everything = only(report(dataset(items=catalog(prices=[None] * 8))), "items_without_price")
    assert everything.title == "No item has a price" and everything.share == 1.0


def test_future_timestamps_are_relative_to_an_injectable_now():
    data = dataset()
    assert "future_timestamps" not in codes(report(data))
    # The last user's third event is at `now` exactly, which is not the future; the fourth is.
    finding = only(report(data, now=T0 + pd.Timedelta(hours=24 * 7 + 2)), "future_timestamps")
    assert finding.count == 1
    assert finding.examples[0] == {
        "user_id": "u7",
        "item_id": "i2",
        "timestamp": "2023-05-08T12:00:00+00:00",
        "event": "view",
    }


def test_timestamps_before_1995():
    rows = clean_events()
    rows[0] = ("u0", "i0", pd.Timestamp(0, tz="UTC"), "view")
    finding = only(report(dataset(rows=rows)), "ancient_timestamps")
    assert finding.count == 1
    assert finding.examples[0]["timestamp"] == "1970-01-01T00:00:00+00:00"


def test_out_of_order_events_when_the_file_order_is_known():
    events = frame(clean_events()).assign(source_row=np.arange(32))
    assert "out_of_order" not in codes(report(make_dataset(catalog(), events, source="test", format="test")))
    events.loc[[0, 1], "source_row"] = [1, 0]  # u0's first two events swapped in the file
    finding = only(report(make_dataset(catalog(), events, source="test", format="test")), "out_of_order")
    assert finding.severity == "info"
    assert finding.count == 1
    assert finding.examples[0]["user_id"] == "u0" and finding.examples[0]["source_row"] == 1


def test_tied_timestamps_on_different_items():
    rows = clean_events()
    rows.append(("u2", "i7", rows[9][2], "view"))  # same instant as u2's second event, another item
    rows.append(("u3", rows[12][1], rows[12][2], "cart"))  # same item at the same instant: not a tie
    finding = only(report(dataset(rows=rows)), "tied_timestamps")
    assert finding.severity == "info"
    assert finding.count == 2
    assert finding.examples == ({"user_id": "u2", "timestamp": rows[9][2].isoformat(), "items": "i3, i7"},)


def test_synthetic_clock_is_info_and_skips_clock_checks():
    rows = clean_events()
    rows[0] = ("u0", "i0", pd.Timestamp(0, tz="UTC"), "view")
    result = report(dataset(rows=rows, synthetic_clock=True), now=T0)
    finding = only(result, "synthetic_clock")
    assert finding.severity == "info"
    assert "user activity" in finding.advice  # names the features that need a clock
    assert not codes(result) & {"future_timestamps", "ancient_timestamps", "bot_like_users"}


def burst(user: str, count: int, every_seconds: float) -> list[tuple]:
    return [(user, f"i{k % 8}", T0 + pd.Timedelta(seconds=k * every_seconds), "view") for k in range(count)]


def test_bot_like_users():
    rows = [*clean_events(), *burst("crawler", 31, 1.9), *burst("fast reader", 30, 2.0), *burst("steady", 31, 2.0)]
    finding = only(report(dataset(rows=rows)), "bot_like_users")
    assert finding.severity == "warning"
    # 31 events 2 s apart span exactly 60 s, so no 60-second window holds more than 30 of them.
    assert finding.count == 1
    assert finding.examples == (
        {"user_id": "crawler", "peak_events_per_minute": 31, "peak_minute_start": T0.isoformat(), "events": 31},
    )
    assert "bot_like_users" not in codes(report(dataset(rows=rows), bot_events_per_minute=31))
    assert only(report(dataset(rows=rows), bot_events_per_minute=29), "bot_like_users").count == 3


def test_bot_peaks_match_a_plain_count():
    rng = np.random.default_rng(5)
    rows = [
        (f"u{rng.integers(20)}", f"i{rng.integers(8)}", T0 + pd.Timedelta(seconds=int(rng.integers(600))), "view")
        for _ in range(2000)
    ]
    data = dataset(rows=rows)
    events = data.events
    peaks = {}
    for user, moments in events.groupby("user_id")["timestamp"]:
        peaks[user] = max(((moments >= t) & (moments < t + pd.Timedelta(seconds=60))).sum() for t in moments)
    threshold = float(np.median(list(peaks.values())))
    finding = only(report(data, bot_events_per_minute=threshold), "bot_like_users")
    assert finding.count == sum(peak > threshold for peak in peaks.values())
    for example in finding.examples:
        assert example["peak_events_per_minute"] == peaks[example["user_id"]]


def test_cold_users_and_items():
    rows = [*clean_events(), ("newcomer", "i1", T0, "view")]
    items = pd.concat([catalog(), catalog(["Dusty old gadget", "Rarely seen gizmo"]).assign(item_id=["i8", "i9"])])
    rows.append(("u0", "i9", T0 + pd.Timedelta(days=30), "view"))
    result = report(dataset(items=items.reset_index(drop=True), rows=rows))
    assert only(result, "cold_users").examples == ({"user_id": "newcomer", "events": 1},)
    assert only(result, "cold_items").examples == ({"item_id": "i9", "title": "Rarely seen gizmo", "events": 1},)
    never = only(result, "items_without_events")
    assert never.examples == ({"item_id": "i8", "title": "Dusty old gadget"},)
    assert never.share == pytest.approx(1 / 10)
    assert {f.severity for f in result.findings} == {"info"}
    assert "cold_users" not in codes(report(dataset(items=items.reset_index(drop=True), rows=rows), cold_threshold=1))


def test_every_event_set_aside_is_blocking():
    rows = [(f"u{k}", "ghost", T0 + pd.Timedelta(minutes=k), "view") for k in range(4)]
    result = report(dataset(rows=rows))
    finding = only(result, "no_usable_events")
    assert finding.severity == "blocking"
    assert finding.count == 4 and finding.share == 1.0
    assert result.findings[0] is finding
    with pytest.raises(DataError, match="all 4 were set aside"):
        result.raise_if_blocking()


def test_no_events_at_all_is_blocking():
    result = report(dataset(rows=[]))
    assert only(result, "no_usable_events").count == 0
    with pytest.raises(DataError, match="no events"):
        result.raise_if_blocking()


def test_no_item_text_is_blocking():
    result = report(dataset(items=catalog(["", "i1", "Item 2", "?", "", "", "n/a", "-"])))
    assert only(result, "no_item_text").severity == "blocking"
    with pytest.raises(DataError, match="usable text"):
        result.raise_if_blocking()
    # One item with a description is enough text to start from.
    items = catalog(["", "i1", "Item 2", "?", "", "", "n/a", "-"])
    items.loc[4, "description"] = "A sturdy desk lamp with a warm light"
    assert "no_item_text" not in codes(report(dataset(items=items)))


def test_no_user_with_enough_history_is_blocking():
    rows = [row for row in clean_events() if row[2] - T0 < pd.Timedelta(hours=24 * int(row[0][1:]) + 2)]
    result = report(dataset(rows=rows))  # every user has two distinct items
    assert only(result, "no_evaluable_users").severity == "blocking"
    with pytest.raises(DataError, match="enough history"):
        result.raise_if_blocking()


def test_findings_are_ordered_by_severity():
    rows = [*clean_events(), *burst("crawler", 40, 1.0), ("u0", "ghost", T0, "view"), ("loner", "i1", T0, "view")]
    result = report(dataset(rows=rows, synthetic_clock=False))
    severities = [f.severity for f in result.findings]
    assert severities == sorted(severities, key=["blocking", "warning", "info"].index)
    assert {"bot_like_users", "unknown_items", "cold_users"} <= codes(result)


def test_report_exports_as_json_and_as_a_table():
    items = catalog(prices=[12.0, 15.0, 9.0, 11.0, 0.0, 1400.0, 1100.0, float("inf")])
    rows = [*clean_events(), *burst("crawler", 40, 1.0), ("u0", "ghost", T0, "view"), clean_events()[0]]
    result = report(dataset(items=items, rows=rows))
    exported = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert exported["summary"]["events"] == len(rows) - 2
    assert [f["code"] for f in exported["findings"]] == [f.code for f in result.findings]
    table = result.to_frame()
    assert len(table) == len(result.findings) >= 4
    assert list(table.columns) == ["severity", "code", "title", "count", "share", "examples", "advice"]
    assert "item_id=ghost" in table.set_index("code").loc["unknown_items", "examples"]


def test_bad_options_are_data_errors():
    with pytest.raises(DataError, match="bot_events_per_minute"):
        quality_report(dataset(), bot_events_per_minute=0)
    with pytest.raises(DataError, match="cold_threshold"):
        quality_report(dataset(), cold_threshold=0)
    with pytest.raises(DataError, match="severity"):
        Finding("x", "x", "fatal", 0, 0.0, (), "")


def test_the_dirt_planted_in_generated_data_is_found():
    from data.synthetic import generate

    data = generate(n_users=150, n_items=120, target_events=3000)
    dirt = data.ground_truth["dirt"]
    result = report(data, now=None)
    assert result.blocking() == ()
    assert {f.code for f in result.warnings()} == {"duplicate_events", "bot_like_users"}
    assert [example["user_id"] for example in only(result, "bot_like_users").examples] == dirt["bot_users"]
    duplicates = only(result, "duplicate_events").examples
    assert [[e["user_id"], e["item_id"], e["timestamp"], e["event"]] for e in duplicates] == dirt["duplicate_events"]
    assert [e["item_id"] for e in only(result, "items_without_price").examples] == dirt["items_without_price"]
