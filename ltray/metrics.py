"""Metrics of members and ensembles, on predicted class probabilities (numpy; no torch, no Ray).

Definitions (see ../shared/paper/ensemble-baselines.md for the literature):
- an ensemble predicts the mean of its members' softmax probabilities;
- accuracy: % of points whose argmax is the label;
- NLL: mean over points of -log p(label);
- ECE (Guo et al. 2017): points split into 15 equal-width bins by confidence (max probability),
  sum over bins of (n_bin / n) * |accuracy_bin - mean confidence_bin|, reported in %;
- disagreement (Fort et al. 2019): for two members, the % of points whose argmax predictions differ;
  an ensemble's is the mean over its pairs of members;
- gain: ensemble accuracy minus the mean of its members' accuracies;
- temperature scaling (Guo et al. 2017): the ensemble's log-probabilities divided by one temperature, fitted to
  minimise the NLL on the validation split, then applied to the test split (test_nll_ts, test_ece_ts);
- deep-ensemble equivalent (Ashukha et al. 2020): the size of a full ensemble (independently trained members)
  whose test NLL equals an ensemble's, on the running minimum of the full ensembles' NLL by size, linearly
  interpolated between whole sizes; 0 when worse than one member, inf when better than the largest measured.

NLL of the mean softmax is never above the members' mean NLL (-log is convex); accuracy has no such
guarantee: on points where members split their votes, the ensemble can be wrong where some members are right.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

ECE_BINS = 15
_TINY = 1e-12  # floor of p(label) in the NLL, so a member certain of a wrong class gives a finite value


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """% of rows of `probs` (n, classes) whose argmax equals `labels` (n,)."""
    return 100.0 * float(np.mean(np.argmax(probs, 1) == labels))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean of -log p(label) (natural log)."""
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(p, _TINY))))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error in %, over `bins` equal-width confidence bins (i/bins, (i+1)/bins]."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(1)
    correct = np.argmax(probs, 1) == labels
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += inside.sum() * abs(correct[inside].mean() - conf[inside].mean())
    return 100.0 * total / len(labels)


def disagreement(member_probs: Sequence[np.ndarray]) -> float:
    """Mean over pairs of members of the % of points whose argmax predictions differ (NaN for one member)."""
    preds = [np.argmax(p, 1) for p in member_probs]
    pairs = [100.0 * float(np.mean(a != b)) for a, b in combinations(preds, 2)]
    return float(np.mean(pairs)) if pairs else float("nan")


def mean_probs(member_probs: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's prediction: the mean of its members' probabilities (float64)."""
    return np.mean(np.asarray(member_probs, dtype=np.float64), axis=0)


def member_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """test_acc, test_nll and test_ece of one model's probabilities."""
    return {"test_acc": accuracy(probs, labels), "test_nll": nll(probs, labels), "test_ece": ece(probs, labels)}


def _tempered(probs: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.maximum(np.asarray(probs, dtype=np.float64), _TINY)) / temperature
    logits -= logits.max(1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(1, keepdims=True)


def temperature_scaled(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray,
                       test_labels: np.ndarray) -> dict[str, float]:
    """The temperature minimising the validation NLL (searched over 1/20..20), and the test NLL and ECE at it."""
    from scipy.optimize import minimize_scalar

    fit = minimize_scalar(lambda log_t: nll(_tempered(val_probs, float(np.exp(log_t))), val_labels),
                          bounds=(-np.log(20.0), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    temperature = float(np.exp(fit.x))
    scaled = _tempered(test_probs, temperature)
    return {"temperature": temperature, "test_nll_ts": nll(scaled, test_labels), "test_ece_ts": ece(scaled, test_labels)}


def deep_ensemble_equivalent(value: float, full_nll: Sequence[float]) -> float:
    """The full-ensemble size whose NLL equals `value`, `full_nll[m - 1]` being the NLL of m independent members
    (m = 1..M). The curve is taken as its running minimum (the best NLL reachable with at most m members: on a
    small test split an added member can raise the NLL), and read linearly between whole sizes; 0 if `value` is
    above a single member's, inf if below every full ensemble's."""
    full = np.minimum.accumulate(np.asarray(full_nll, dtype=np.float64))
    for m in range(1, len(full) + 1):
        if value >= full[m - 1]:
            if m == 1:
                return 1.0 if value == full[0] else 0.0
            lo, hi = full[m - 2], full[m - 1]   # value lies in [hi, lo): lo > hi
            return float(m - 1 + (lo - value) / (lo - hi))
    return float("inf")


def ensemble_metrics(member_probs: Sequence[np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """The ensemble's accuracy, NLL and ECE, its members' disagreement, mean (and std) accuracy and NLL, and
    the gain (ensemble accuracy - mean member accuracy), all in the units of the functions above."""
    labels = np.asarray(labels)
    accs = [accuracy(p, labels) for p in member_probs]
    out = member_metrics(mean_probs(member_probs), labels)
    out.update(disagreement=disagreement(member_probs), member_acc_mean=float(np.mean(accs)),
               member_acc_std=float(np.std(accs, ddof=1)) if len(accs) > 1 else float("nan"),
               member_nll_mean=float(np.mean([nll(p, labels) for p in member_probs])))
    out["gain"] = out["test_acc"] - out["member_acc_mean"]
    return out
