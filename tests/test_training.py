"""The training loop on a toy problem whose answer is known: early stopping and best weights.

A one-parameter "network" w is pulled towards 5 by the training rows while the validation rows
(all 1) score it by (w - 1)^2: the validation loss falls while the averaged w approaches 1 and
rises after, so the loop must stop early and hand back the weights of the best epoch.
"""

from __future__ import annotations

import math

import pytest
import torch

from skformer._utils import fit_seeds
from skformer.training import EMA_EPOCHS, TrainConfig, ema_decay, lr_factor, train


class Scalar(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))


class ToyDynamics:
    """The loss of a row is (w - mean of its values)^2; noise levels are drawn, unused."""

    name = "toy"

    def training_sigmas(self, n, gen):
        return torch.rand(n, generator=gen, device=gen.device)

    def loss(self, net, x0, observed, edges, sigma, eps):
        return (net.w - x0.mean(1)) ** 2


def masks(n):
    return torch.zeros(n, 2, dtype=torch.bool), None


def run(max_epochs=300, x_val=True, **config):
    x_train = torch.full((64, 2), 5.0)
    val = torch.full((16, 2), 1.0) if x_val else None
    cfg = TrainConfig(max_epochs=max_epochs, batch_size=64, learning_rate=0.05,
                      n_iter_no_change=5, tol=0.0, weight_decay=0.0, **config)
    return train(Scalar(), ToyDynamics(), x_train, val, masks, masks, cfg, fit_seeds(0))


def test_early_stopping_keeps_the_best_epoch():
    net, result = run()
    scores = result.validation_scores
    assert result.converged and result.n_iter < 300
    assert result.best_epoch == int(min(range(len(scores)), key=scores.__getitem__))
    assert result.n_iter == result.best_epoch + 1 + 5  # n_iter_no_change epochs without gain
    # the returned weights are the averaged weights of that epoch: their validation loss is
    # the best score, and the scores after it were worse
    assert (net.w.item() - 1.0) ** 2 == pytest.approx(scores[result.best_epoch], rel=1e-5)
    assert all(s > scores[result.best_epoch] for s in scores[result.best_epoch + 1 :])
    assert len(result.loss_curve) == len(scores) == result.n_iter
    assert not net.training and not net.w.requires_grad


def test_without_early_stopping_it_runs_on_and_still_restores():
    net, result = run(max_epochs=60, early_stopping=False)
    assert result.n_iter == 60 and result.converged  # settled, but ran on as asked
    assert (net.w.item() - 1.0) ** 2 == pytest.approx(
        result.validation_scores[result.best_epoch], rel=1e-5)


def test_without_validation_the_last_average_is_kept():
    net, result = run(max_epochs=40, x_val=False)
    assert result.validation_scores == [] and result.n_iter == 40
    assert net.w.item() > 1.0  # pulled on towards the training rows' 5


def test_same_seeds_same_run():
    a, ra = run(max_epochs=20)
    b, rb = run(max_epochs=20)
    assert a.w.item() == b.w.item() and ra.loss_curve == rb.loss_curve


def test_learning_rate_schedule():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_factor(100, 100, 10) == pytest.approx(0.05)


def test_auto_moving_average_spans_a_fixed_number_of_epochs(monkeypatch):
    """"auto": a time constant of EMA_EPOCHS epochs of steps, whatever the epoch's length,
    at most 0.999; a number is used as given; the loop averages with it once warmed up."""
    assert 1 / (1 - ema_decay("auto", 4)) == pytest.approx(EMA_EPOCHS * 4)
    assert 1 / (1 - ema_decay("auto", 17)) == pytest.approx(EMA_EPOCHS * 17)
    assert 1 / (1 - ema_decay("auto", 70)) == pytest.approx(EMA_EPOCHS * 70)
    assert ema_decay("auto", 10_000) == 0.999
    assert ema_decay(0.9, 17) == 0.9
    import skformer.training as training

    seen = []
    real = training._ema_update
    monkeypatch.setattr(training, "_ema_update",
                        lambda ema, net, decay: seen.append(decay) or real(ema, net, decay))
    cfg = TrainConfig(max_epochs=40, batch_size=4, learning_rate=0.05, ema_decay="auto",
                      early_stopping=False)
    train(Scalar(), ToyDynamics(), torch.ones(64, 2), None, masks, masks, cfg, fit_seeds(0))
    assert len(seen) == 40 * 16 and seen[0] == pytest.approx(0.1)  # warm-up: (1 + s)/(10 + s)
    assert seen[-1] == pytest.approx(ema_decay("auto", 16))


def test_masks_are_asked_for_each_batch():
    sizes = []

    def counting(n):
        sizes.append(n)
        return masks(n)

    cfg = TrainConfig(max_epochs=2, batch_size=16, learning_rate=0.01)
    train(Scalar(), ToyDynamics(), torch.ones(64, 2), None, counting, masks, cfg, fit_seeds(1))
    assert sizes == [16] * 8  # 4 batches per epoch, 2 epochs


def test_fit_seeds_are_independent_streams():
    a, b = fit_seeds(0), fit_seeds(0)
    assert a == b
    values = list(vars(a).values())
    assert len(set(values)) == len(values)  # one seed per stream
    assert fit_seeds(1) != a
    assert all(0 <= v < 2**63 for v in values)
