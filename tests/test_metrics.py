"""Member and ensemble metrics against values computed by hand."""
import numpy as np
import pytest

from ltray.metrics import accuracy, disagreement, ece, ensemble_metrics, mean_probs, nll


def test_accuracy_and_nll_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.4, 0.35, 0.25]])
    labels = np.array([0, 2, 2, 1])
    assert accuracy(probs, labels) == 50.0
    assert nll(probs, labels) == pytest.approx(-(np.log(0.7) + np.log(0.3) + np.log(0.8) + np.log(0.35)) / 4)
    assert nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-np.log(1e-12))  # finite when certain and wrong


def test_ece_by_hand_with_two_points_sharing_a_bin():
    # confidences 0.62 and 0.64 share bin (9/15, 10/15]; 0.95 is alone in the last bin, 0.7 in (10/15, 11/15]
    probs = np.array([[0.62, 0.38], [0.64, 0.36], [0.95, 0.05], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])             # correct, wrong, correct, correct
    expected = (2 * abs(0.5 - 0.63) + abs(1 - 0.95) + abs(1 - 0.7)) / 4
    assert ece(probs, labels) == pytest.approx(100 * expected)
    assert ece(np.eye(3)[[0, 1, 2]], np.array([0, 1, 2])) == 0.0      # certain and right: calibrated
    assert ece(probs, labels, bins=1) == pytest.approx(100 * abs(0.75 - np.mean([0.62, 0.64, 0.95, 0.7])))


def test_disagreement_is_the_mean_over_pairs():
    a, b, c = (np.eye(3)[p] for p in ([0, 1, 2, 0], [0, 1, 1, 0], [1, 1, 2, 2]))
    assert disagreement([a, b]) == 25.0
    assert disagreement([a, b, c]) == pytest.approx((25 + 50 + 75) / 3)
    assert np.isnan(disagreement([a]))


def test_ensemble_gain_when_members_err_on_different_points():
    labels = np.array([0, 1, 2, 0])
    right = np.eye(3)[labels] * 0.8 + 0.2 / 3
    members = []
    for k in range(3):                          # member k is wrong (confidently) on point k only
        p = right.copy()
        p[k] = np.roll(p[k], 1)
        members.append(p)
    m = ensemble_metrics(members, labels)
    assert m["member_acc_mean"] == 75.0 and m["test_acc"] == 100.0 and m["gain"] == 25.0
    assert m["disagreement"] == 50.0             # each pair differs on its two members' wrong points
    assert m["member_acc_std"] == 0.0


def test_the_mean_softmax_never_has_a_higher_nll_than_its_members_on_average():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    members = [rng.dirichlet(np.ones(5) * 0.5, 200) for _ in range(4)]
    m = ensemble_metrics(members, labels)
    assert m["test_nll"] <= m["member_nll_mean"]
    assert m["test_nll"] == pytest.approx(nll(mean_probs(members), labels))
    one = ensemble_metrics(members[:1], labels)   # an ensemble of one is its member
    assert one["gain"] == 0.0 and one["test_acc"] == accuracy(members[0], labels) and np.isnan(one["disagreement"])


def test_temperature_scaling_never_raises_the_nll_of_the_split_it_is_fitted_on():
    from ltray.metrics import temperature_scaled

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    logits = rng.normal(size=(500, 10)) + 2.0 * np.eye(10)[labels]     # right two times in three, and sharpened:
    probs = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)   # overconfident
    fit = temperature_scaled(probs, labels, probs, labels)
    assert fit["temperature"] > 1.2                                   # it cools an overconfident model down
    assert fit["test_nll_ts"] < nll(probs, labels)
    assert temperature_scaled(probs, labels, probs, labels)["test_ece_ts"] < ece(probs, labels)


def test_the_deep_ensemble_equivalent_reads_the_full_ensembles_nll_curve():
    from ltray.metrics import deep_ensemble_equivalent as dee

    curve = [0.30, 0.20, 0.16, 0.15]                # NLL of full ensembles of 1..4 members
    assert [dee(v, curve) for v in curve] == [1.0, 2.0, 3.0, 4.0]
    assert dee(0.25, curve) == pytest.approx(1.5) and dee(0.18, curve) == pytest.approx(2.5)
    assert dee(0.4, curve) == 0.0 and dee(0.1, curve) == float("inf")
    # a second member that raised the NLL (small test splits): the curve is its running minimum
    assert [dee(v, [0.30, 0.32, 0.25]) for v in (0.30, 0.32, 0.275, 0.25)] == pytest.approx([1.0, 0.0, 2.5, 3.0])
