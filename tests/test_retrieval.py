"""The one top-k rule: order, ties by catalog order, exclusion, short catalogs; exact and FAISS search agree;
the retrieval config refuses what it cannot mean."""

import numpy as np
import pandas as pd
import pytest

from model.errors import ModelError
from model.retrieval import ItemGroups, RetrievalConfig, VectorIndex, spread_sample, top_k


def test_top_k_returns_the_best_scores_first():
    scores = np.array([0.1, 0.9, -2.0, 0.5, 0.7])
    assert top_k(scores, 3).tolist() == [1, 4, 3]
    assert top_k(scores, 1).tolist() == [1]
    assert top_k(scores, 3).dtype == np.int64


def test_ties_go_to_the_lower_catalog_position_even_across_the_cut():
    scores = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 2.0])
    assert top_k(scores, 6).tolist() == [1, 3, 2, 4, 5, 0]
    # Three items tie for the last two places: the two lowest positions win, whatever argpartition picked.
    assert top_k(scores, 4).tolist() == [1, 3, 2, 4]
    assert top_k(np.zeros(1000), 3).tolist() == [0, 1, 2]


def test_excluded_items_never_appear_and_the_scores_are_left_alone():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    assert top_k(scores, 3, exclude=np.array([0, 2])).tolist() == [1, 3, 4]
    assert scores.tolist() == [5.0, 4.0, 3.0, 2.0, 1.0]
    assert top_k(scores, 2, exclude=np.array([], dtype=np.int64)).tolist() == [0, 1]


def test_k_larger_than_what_is_available_returns_what_there_is():
    scores = np.array([0.3, 0.1, 0.2])
    assert top_k(scores, 10).tolist() == [0, 2, 1]
    assert top_k(scores, 10, exclude=np.array([0])).tolist() == [2, 1]
    assert top_k(scores, 5, exclude=np.array([0, 1, 2])).tolist() == []
    assert top_k(np.array([1.0, -np.inf, 0.0]), 3).tolist() == [0, 2]  # -inf means "not available"


@pytest.mark.parametrize("n_items", [50, 3000])
def test_exact_and_faiss_flat_search_agree_on_a_random_catalog(n_items):
    rng = np.random.default_rng(n_items)
    vectors = rng.normal(size=(n_items, 32)).astype(np.float32)
    exact, flat = VectorIndex(vectors, "exact"), VectorIndex(vectors, "flat")
    for _ in range(5):
        query = rng.normal(size=32).astype(np.float32)
        found = exact.search(query, 10)
        assert found.tolist() == top_k(vectors @ query, 10).tolist()
        assert set(flat.search(query, 10).tolist()) == set(found.tolist())


def test_search_with_k_beyond_the_catalog_returns_every_item_once():
    vectors = np.eye(4, dtype=np.float32)
    query = np.array([0.1, 0.4, 0.3, 0.2], dtype=np.float32)
    for kind in ("exact", "flat"):
        assert VectorIndex(vectors, kind).search(query, 10).tolist() == [1, 2, 3, 0]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_the_exact_top_10_when_searching_everything(kind):
    # Every cell probed / a beam wider than the catalog: the approximate index must then be exact.
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(2000, 16)).astype(np.float32)
    config = RetrievalConfig(index=kind, ivf_lists=8, ivf_probe=8, hnsw_ef_search=2000, candidates=1)
    index = VectorIndex(vectors, kind, config)
    for _ in range(5):
        query = rng.normal(size=16).astype(np.float32)
        assert set(index.search(query, 10).tolist()) == set(top_k(vectors @ query, 10).tolist())


def test_item_groups_give_every_member_of_the_groups_asked_with_its_inner_product():
    rng = np.random.default_rng(11)
    labels = rng.choice(np.array(["a", "b", "c", None], dtype=object), 300)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    groups = ItemGroups(labels, vectors)
    query = rng.normal(size=8).astype(np.float32)
    items = np.array([5, 17, 17, 250])
    wanted = groups.groups_of(items)
    assert sorted(set(labels[items]) - {None}) == sorted({labels[np.flatnonzero(groups.codes == g)[0]] for g in wanted})
    members = groups.members(wanted)
    expected = np.flatnonzero(np.isin(labels, list(set(labels[items]) - {None})))
    assert sorted(members.tolist()) == expected.tolist() and len(members) == len(expected)
    np.testing.assert_allclose(groups.inner_products(wanted, query), vectors[members] @ query, rtol=1e-5, atol=1e-6)
    unlabelled = np.flatnonzero(pd.isna(labels))
    assert len(groups.groups_of(unlabelled)) == 0 and len(groups.members(groups.groups_of(unlabelled))) == 0


def test_slots_say_which_of_the_asked_groups_each_item_is_in():
    labels = np.array(["a", "b", None, "c", "a", "c"], dtype=object)
    groups = ItemGroups(labels, np.zeros((6, 2), dtype=np.float32))
    asked = groups.groups_of(np.array([0, 3]))  # the groups of "a" and "c"
    slots = groups.slots(asked, np.arange(6))
    assert slots.tolist() == [0, 2, 2, 1, 0, 1]  # "b" and no label: not asked, len(asked)


def test_a_spread_sample_has_every_key_at_least_once_and_about_the_size_asked():
    rng = np.random.default_rng(2)
    keys = np.concatenate([rng.integers(0, 3, 5_000), [7], rng.integers(0, 3, 5_000)])  # key 7 once, mid-way
    sample = spread_sample(keys, 10, 100)
    assert np.all(np.diff(sample) > 0) and sample[0] >= 0 and sample[-1] < len(keys)
    assert set(keys[sample].tolist()) == {0, 1, 2, 7}
    assert 100 <= len(sample) <= 100 + 4
    assert np.ptp(sample) > 0.9 * len(keys)  # spread over all of them, not the first 100
    assert spread_sample(np.array([4, 4, 1]), 5, 10).tolist() == [0, 1, 2]


def test_retrieval_config_refuses_unknown_kinds_keys_and_sizes():
    with pytest.raises(ModelError, match=r"retrieval\.index 'annoy'"):
        RetrievalConfig(index="annoy")
    with pytest.raises(ModelError, match=r"retrieval\.candidates 0"):
        RetrievalConfig(candidates=0)
    with pytest.raises(ModelError, match=r"retrieval\.related_samples 0"):
        RetrievalConfig(related_samples=0)
    with pytest.raises(ModelError, match="unknown retrieval config keys: nprobe"):
        RetrievalConfig.from_dict({"nprobe": 3})
    assert RetrievalConfig.from_dict(RetrievalConfig(ivf_probe=5).to_dict()) == RetrievalConfig(ivf_probe=5)
