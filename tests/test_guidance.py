"""Guided, constrained sampling: constraints in data units, the guided denoiser, rejection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skformer.guidance import LinearConstraints, parse_constraints, sample_satisfying

from _gaussian import diagonal_denoiser

NAMES = ["a", "b", "c"]
MEAN = torch.tensor([10.0, -3.0, 0.5], dtype=torch.float64)
SCALE = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)


def test_constraints_move_to_standard_units():
    """x_data inside the data-unit region <=> (x_data - mean) / scale satisfies the result."""
    cons = parse_constraints({"a": (9.0, 12.0), 2: (-np.inf, 0.0)}, NAMES, [1], MEAN, SCALE)
    lin = parse_constraints([([1.0, 0.0, 2.0], -1.0, 11.0)], NAMES, [1], MEAN, SCALE)
    x = MEAN + SCALE * 2 * torch.randn(2000, 3, generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64)
    z = ((x - MEAN) / SCALE).float()
    inside = (x[:, 0] >= 9) & (x[:, 0] <= 12) & (x[:, 2] <= 0)
    assert torch.equal(cons.satisfied(z), inside)
    y = x[:, 0] + 2 * x[:, 2]
    near_edge = ((y - -1.0).abs() < 1e-4) | ((y - 11.0).abs() < 1e-4)  # float32 rounding
    agree = lin.satisfied(z) == ((y >= -1) & (y <= 11))
    assert (agree | near_edge).all()


def test_guided_denoiser_pushes_into_the_region_and_leaves_observed_entries():
    denoise = diagonal_denoiser(torch.zeros(3), torch.ones(3))
    cons = LinearConstraints(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([1.0]),
                             torch.tensor([np.inf]))
    observed = torch.tensor([False, True, False])
    guided = cons.guide(denoise, observed)
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor(0.8)
    plain, pushed = denoise(x, sigma), guided(x, sigma)
    assert (pushed[:, 0] > plain[:, 0]).all()  # towards x0 >= 1
    torch.testing.assert_close(pushed[:, 1], x[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(pushed[:, 2], plain[:, 2])  # no pull where no constraint acts


def test_rejection_returns_exactly_n_rows_inside():
    cons = LinearConstraints(torch.tensor([[1.0, 0.0]]), torch.tensor([1.0]),
                             torch.tensor([np.inf]))
    g = torch.Generator().manual_seed(2)
    out = sample_satisfying(lambda k: torch.randn(k, 2, generator=g), cons, 300)
    assert out.shape == (300, 2) and (out[:, 0] >= 1).all()
    # above the cut a standard normal has mean phi(1) / (1 - Phi(1)) = 1.525
    assert out[:, 0].mean().item() == pytest.approx(1.525, abs=0.06)


def test_rejection_gives_up_clearly():
    """A region with no mass: refused after the first two rounds (1.2 n + 8 and 20 n draws),
    not after max_rounds of them. A region with little mass: refused after max_rounds."""
    cons = LinearConstraints(torch.tensor([[1.0]]), torch.tensor([50.0]),
                             torch.tensor([np.inf]))
    drawn = []

    def draw(k):
        drawn.append(k)
        return torch.randn(k, 1)

    with pytest.raises(ValueError, match="none of 220 samples satisfied"):
        sample_satisfying(draw, cons, 10, max_rounds=20)
    assert drawn == [20, 200]
    rare = LinearConstraints(torch.tensor([[1.0]]), torch.tensor([2.5]), torch.tensor([np.inf]))
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="almost no mass"):
        sample_satisfying(lambda k: torch.randn(k, 1), rare, 1000, max_rounds=1)
