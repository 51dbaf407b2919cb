"""Classifier two-sample test (C2ST) as the sbibm benchmark defines it.

Both sample sets are z-scored by the reference's mean and std; a classifier learns to tell them
apart; the 5-fold cross-validated accuracy is the score: 0.5 = indistinguishable, 1.0 = disjoint.
``c2st`` uses sbibm's MLP (two hidden layers of 10 x dim, relu); ``c2st_rf`` the random forest
variant the Simformer paper reported.

sbibm runs the MLP through scikit-learn, which takes about 3 minutes per score at 10
dimensions on 2 idle cores (5 folds x ~500 epochs of 80 steps). ``c2st`` (``backend="torch"``,
the default) trains the same classifier in PyTorch with the five folds stacked into one batched
network: same architecture, Glorot-uniform initialisation, Adam (lr 1e-3), batches of 200,
L2 penalty 1e-4, per-epoch reshuffling and scikit-learn's stopping rule (training loss not
improved by 1e-4 for more than 10 epochs, at most 1000). It needs about 100 s on one core at
10 dimensions (the work is compute-bound, so no backend makes it cheap) and agrees with
scikit-learn within the fold noise (``python metrics.py`` compares them);
``backend="sklearn"`` is sbibm's code path exactly.
"""

from __future__ import annotations

import numpy as np
import torch
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


def c2st(samples, reference, seed: int = 1, backend: str = "torch") -> float:
    """sbibm's C2ST: MLP classifier, 5-fold cross-validated accuracy.

    ``backend="torch"`` trains the five folds at once (see the module docstring);
    ``"sklearn"`` runs scikit-learn's MLPClassifier as sbibm does.
    """
    data, labels, folds = _prepare(samples, reference, seed)
    if backend == "torch":
        return _c2st_mlp_torch(data, labels, folds, seed)
    if backend != "sklearn":
        raise ValueError(f"backend must be 'torch' or 'sklearn', got {backend!r}.")
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


def _c2st_mlp_torch(data, labels, folds, seed, batch_size=200, lr=1e-3, alpha=1e-4,
                    tol=1e-4, n_iter_no_change=10, max_iter=1000) -> float:
    """scikit-learn's MLPClassifier recipe, the folds trained side by side as one network."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.as_tensor(data, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.float32)
    splits = list(folds.split(data, labels))
    n_folds, dim = len(splits), X.shape[1]
    # folds may differ by a row in size: each epoch uses a random n_train of each fold's rows
    n_train = min(len(tr) for tr, _ in splits)
    train_idx = [torch.as_tensor(tr) for tr, _ in splits]

    sizes = [dim, 10 * dim, 10 * dim, 1]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = np.sqrt(6.0 / (fan_in + fan_out))  # scikit-learn's init for relu
        W = (torch.rand(n_folds, fan_in, fan_out, generator=gen) * 2 - 1) * bound
        b = (torch.rand(n_folds, 1, fan_out, generator=gen) * 2 - 1) * bound
        params += [W.requires_grad_(), b.requires_grad_()]
    weights = params[0::2]
    layers = list(zip(params[0::2], params[1::2]))
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)

    def forward(h, fold=None):
        """Logits: all folds at once, (folds, batch, dim) -> (folds, batch), or one fold's
        network on (batch, dim) -> (batch,)."""
        for i, (W, b) in enumerate(layers):
            h = torch.baddbmm(b, h, W) if fold is None else h @ W[fold] + b[fold]
            if i < len(layers) - 1:
                h = torch.relu(h)
        return h.squeeze(-1)

    best = torch.full((n_folds,), float("inf"))
    stale = torch.zeros(n_folds, dtype=torch.long)
    active = torch.ones(n_folds, dtype=torch.bool)
    scores = torch.zeros(n_folds)

    def score(which):  # held-out accuracy of the folds flagged in ``which``, now
        with torch.no_grad():
            for f in torch.nonzero(which).flatten().tolist():
                te = splits[f][1]
                pred = (forward(X[te], f) > 0).float()
                scores[f] = (pred == y[te]).float().mean()

    for _ in range(max_iter):
        order = torch.stack([idx[torch.randperm(len(idx), generator=gen)[:n_train]]
                             for idx in train_idx])  # (folds, n_train)
        epoch_loss = torch.zeros(n_folds)
        for start in range(0, n_train, batch_size):
            rows = order[:, start:start + batch_size]
            xb, yb = X[rows], y[rows]
            logits = forward(xb)
            bce = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, yb, reduction="none").mean(1)
            l2 = sum((W ** 2).sum((1, 2)) for W in weights) * (0.5 * alpha / rows.shape[1])
            loss_f = bce + l2  # per fold; folds share no parameters, so summing is exact
            opt.zero_grad(set_to_none=True)
            loss_f.sum().backward()
            opt.step()
            epoch_loss += loss_f.detach() * rows.shape[1]
        epoch_loss /= n_train
        worse = epoch_loss > best - tol
        stale = torch.where(worse, stale + 1, torch.zeros_like(stale))
        best = torch.minimum(best, epoch_loss)
        stop = active & (stale > n_iter_no_change)
        score(stop)
        active &= ~stop
        if not active.any():
            break
    score(active)  # folds still training at max_iter
    return float(scores.mean())


if __name__ == "__main__":  # agreement check of the two backends, with timings
    import time

    rng = np.random.default_rng(0)
    for dim, shift in [(2, 0.0), (2, 0.3), (5, 0.2), (10, 0.0), (10, 0.15)]:
        a = rng.normal(size=(10_000, dim))
        b = rng.normal(size=(10_000, dim)) + shift
        line = f"dim {dim:2d} shift {shift:.2f}:"
        for backend in ("torch", "sklearn"):
            t0 = time.perf_counter()
            score = c2st(a, b, backend=backend)
            line += f"  {backend} {score:.4f} ({time.perf_counter() - t0:.1f} s)"
        print(line, flush=True)
