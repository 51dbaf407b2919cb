"""Classifier two-sample test (C2ST) as the sbibm benchmark defines it.

Both sample sets are z-scored by the reference's mean and std; a classifier learns to tell them
apart; the 5-fold cross-validated accuracy is the score: 0.5 = indistinguishable, 1.0 = disjoint.
``c2st`` uses sbibm's MLP (two hidden layers of 10 x dim, relu); ``c2st_rf`` the random forest
variant the Simformer paper reported.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neural_network import MLPClassifier

__all__ = ["c2st", "c2st_rf"]


def _prepare(samples, reference, seed):
    X = np.asarray(samples, dtype=np.float64)
    Y = np.asarray(reference, dtype=np.float64)
    if X.ndim == 1:
        X, Y = X[:, None], Y[:, None]
    mean, std = Y.mean(0), Y.std(0)
    std[std == 0] = 1.0
    data = np.concatenate([(X - mean) / std, (Y - mean) / std])
    labels = np.concatenate([np.zeros(len(X)), np.ones(len(Y))])
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    return data, labels, folds


def c2st(samples, reference, seed: int = 1) -> float:
    """sbibm's C2ST: MLP classifier, 5-fold cross-validated accuracy."""
    data, labels, folds = _prepare(samples, reference, seed)
    dim = data.shape[1]
    clf = MLPClassifier(
        activation="relu", hidden_layer_sizes=(10 * dim, 10 * dim), max_iter=1000,
        solver="adam", random_state=seed,
    )
    return float(np.mean(cross_val_score(clf, data, labels, cv=folds, scoring="accuracy")))


def c2st_rf(samples, reference, seed: int = 1) -> float:
    """C2ST with a random forest (100 trees), as in the Simformer paper."""
    data, labels, folds = _prepare(samples, reference, seed)
    clf = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=-1)
    return float(np.mean(cross_val_score(clf, data, labels, cv=folds, scoring="accuracy")))
