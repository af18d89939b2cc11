"""Downstream metrics against hand-checked cases and independent computations."""
import numpy as np
import pytest
import scipy.stats

from ankh3.downstream import metrics
from ankh3.downstream.tasks import contact_map, load_task, task_spec


# ---- Q3 / Q8 ------------------------------------------------------------------------------------
def test_accuracy_on_known_prediction():
    true = np.array([0, 1, 2, 2, 0, 1])
    pred = np.array([0, 1, 1, 2, 2, 1])
    assert metrics.accuracy(pred, true) == pytest.approx(4 / 6)


def test_accuracy_ignores_masked_residues():
    true = np.array([0, -1, 2, -1])
    assert metrics.accuracy(np.array([0, 1, 2, 1]), true) == 1.0
    assert metrics.accuracy(np.array([0, 0, 2, 0]), true) == 1.0  # wrong guesses at ignored positions cost nothing
    assert metrics.accuracy(np.array([1, 1, 2, 1]), true) == 0.5
    assert np.isnan(metrics.accuracy(np.array([0, 1]), np.array([-1, -1])))


def test_accuracy_pools_residues_over_proteins():
    # Q3 is per residue over the whole set, not a mean of per-protein accuracies.
    true = [np.array([0, 0, 0, 0]), np.array([1])]
    pred = [np.array([0, 0, 0, 0]), np.array([2])]
    assert metrics.accuracy(pred, true) == pytest.approx(4 / 5)


def test_accuracy_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        metrics.accuracy(np.zeros(3, int), np.zeros(4, int))


# ---- contacts ------------------------------------------------------------------------------------
def planted_case(length=50, seed=0):
    """Ten long-range contacts scored 1.0 (five) and 0.5 (five); five non-contacts scored 0.9."""
    rng = np.random.default_rng(seed)
    contacts = np.zeros((length, length), bool)
    pairs = [(i, i + 24) for i in range(0, 20, 2)]
    for i, j in pairs:
        contacts[i, j] = contacts[j, i] = True
    scores = rng.uniform(0, 0.1, (length, length)).astype(np.float32)
    for k, (i, j) in enumerate(pairs):
        scores[i, j] = scores[j, i] = 1.0 if k < 5 else 0.5
    for i, j in [(1, 30), (3, 40), (5, 45), (7, 49), (9, 35)]:
        scores[i, j] = scores[j, i] = 0.9
    return scores, contacts


def test_precision_at_l5_on_planted_map():
    scores, contacts = planted_case()
    assert metrics.contact_precision(scores, contacts, min_sep=24, top_fraction=5) == pytest.approx(0.5)
    # Top L/2 = 25 pairs: all ten contacts among them.
    assert metrics.contact_precision(scores, contacts, min_sep=24, top_fraction=2) == pytest.approx(10 / 25)


def test_precision_uses_only_upper_triangle_and_range():
    scores, contacts = planted_case()
    # A huge score on a short-range pair (separation 3) must not enter the long-range ranking.
    scores[10, 13] = scores[13, 10] = 5.0
    assert metrics.contact_precision(scores, contacts, min_sep=24, top_fraction=5) == pytest.approx(0.5)
    # A true medium-range contact counts in the medium range only.
    contacts[0, 15] = contacts[15, 0] = True
    scores[0, 15] = scores[15, 0] = 5.0
    p = metrics.contact_precisions(scores, contacts)
    assert p["p_l5_long"] == pytest.approx(0.5)
    assert p["p_l5_medium"] == pytest.approx(1 / 10)
    assert p["p_l5_short"] == 0.0


def test_unresolved_residues_are_invalid_pairs():
    scores, contacts = planted_case()
    valid = np.ones(50, bool)
    valid[[1, 3, 5, 7, 9]] = False  # the residues of the five false positives
    p = metrics.contact_precision(scores, contacts, valid, min_sep=24, top_fraction=5)
    assert p == 1.0  # the false positives are no longer ranked
    p2 = metrics.contact_precision(scores, contacts, valid[:, None] & valid[None, :], min_sep=24, top_fraction=5)
    assert p == p2  # a per-residue and a pairwise mask mean the same


def test_tied_scores_rank_in_position_order():
    # Every score equal: the ranking is row-major position order, so the top L/5 = 10 long-range pairs
    # are (0, 24) .. (0, 33), and the hits among them are exactly the contacts planted there.
    scores, contacts = np.zeros((50, 50), np.float32), np.zeros((50, 50), bool)
    contacts[0, [24, 26, 33, 34]] = True  # (0, 34) is the 11th pair: outside the top 10
    assert metrics.contact_precision(scores, contacts, min_sep=24, top_fraction=5) == pytest.approx(3 / 10)
    assert metrics.contact_precisions(scores, contacts)["p_l5_long"] == pytest.approx(3 / 10)


def test_top_order_is_a_stable_sort_cut_short():
    keys = np.random.default_rng(0).integers(0, 20, 500).astype(np.float32)  # many ties
    for top in (1, 7, 100, 499, 500, 600):
        np.testing.assert_array_equal(metrics.top_order(keys, top), np.argsort(keys, kind="stable")[:top])


def test_perfect_scores_on_a_real_chain():
    coords = load_task("contact", max_per_split=1).splits["test"][0].label
    target = contact_map(coords)
    p = metrics.mean_contact_precisions([target.astype(np.float32)], [target])
    assert p["p_l5_long"] == 1.0
    assert set(p) == set(task_spec("contact", "contact").metrics)


# ---- regression ----------------------------------------------------------------------------------
def test_spearman_hand_checked():
    # rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    assert metrics.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_spearman_pearson_on_real_targets():
    y = np.array([ex.label for ex in load_task("gb1").splits["test"]])
    pred = y + np.random.default_rng(0).normal(0, 1.0, len(y))
    ranks = lambda a: scipy.stats.rankdata(a)  # noqa: E731
    assert metrics.spearman(pred, y) == pytest.approx(np.corrcoef(ranks(pred), ranks(y))[0, 1], abs=1e-9)
    assert metrics.pearson(pred, y) == pytest.approx(np.corrcoef(pred, y)[0, 1], abs=1e-9)
    assert metrics.mse(pred, y) == pytest.approx(np.mean((pred - y) ** 2))


def test_mse_hand_checked():
    assert metrics.mse([1.0, 2.0], [1.0, 4.0]) == 2.0


def test_correlation_of_constant_prediction_is_nan(recwarn):
    # An untrained regression head predicts one value; the metric is undefined, not an exception.
    assert np.isnan(metrics.spearman([0.5, 0.5, 0.5], [1.0, 2.0, 3.0]))
    assert np.isnan(metrics.pearson([0.5, 0.5, 0.5], [1.0, 2.0, 3.0]))
    assert not recwarn.list
    with pytest.raises(ValueError, match="2 predictions for 3 targets"):
        metrics.mse([1.0, 2.0], [1.0, 2.0, 3.0])


# ---- per-split summaries -------------------------------------------------------------------------
def test_score_split_and_flatten():
    spec = task_spec("ssp3", "residue_classification", 3)
    labels = [np.array([0, 1, -1]), np.array([2])]
    by_split = {"test": metrics.score_split(spec, labels, [np.array([0, 0, 0]), np.array([2])])}
    by_split["valid"] = metrics.score_split(task_spec("f", "regression"), [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    flat = metrics.flatten_metrics(by_split)
    assert flat["test/q3"] == pytest.approx(2 / 3)
    assert flat["valid/spearman"] == pytest.approx(1.0) and flat["valid/mse"] == 0.0
    assert all(type(v) is float for v in flat.values())
