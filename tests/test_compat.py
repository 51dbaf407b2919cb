"""The sbi Simformer tutorial, run with only its import lines changed (smaller and shorter)."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from skformer import BoxUniform, FlowMatchingSimformer, Simformer, pairplot

from _data import TINY


@pytest.mark.parametrize("cls", [Simformer, FlowMatchingSimformer])
def test_seed_tutorial(cls, tmp_path, device):
    """The tutorial on the test device (its ``device="gpu"`` is ``--device cuda`` here)."""
    torch.manual_seed(0)
    num_dims, num_sims = 3, 1500
    prior = BoxUniform(low=-torch.ones(num_dims), high=torch.ones(num_dims), device=str(device))

    def simulator(theta):
        return theta + 1.0 + torch.randn_like(theta) * 0.1

    theta = prior.sample((num_sims, 1))
    x = simulator(theta)
    inputs = torch.cat([theta, x], dim=1)
    assert inputs.shape == (num_sims, 2, 3)
    theta_o = torch.zeros(num_dims)
    x_o = simulator(theta_o)

    inference = cls(random_state=0, device=str(device), **TINY)  # 1,024 validation rows
    inference.append_simulations(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # 1500 simulations, 20 epochs, 1024 validation rows, 1000 draws: the largest error of
        # the means checked below (tolerance 0.05) is 0.015-0.022 (30-43 % of it) over torch
        # seeds and random states 0, 1, 2 for both classes; the draws' Monte-Carlo error
        # (0.003) is far inside it
        net = inference.train(max_num_epochs=20)
    assert isinstance(net, torch.nn.Module)

    conditional = inference.build_conditional(condition_mask=[False, True])
    samples = conditional.sample((1000,), x=x_o)
    assert isinstance(samples, torch.Tensor) and samples.shape == (1000, 3)
    assert samples.device == x_o.device  # results come back where the observation lives
    samples = samples.cpu()
    np.testing.assert_allclose(samples.mean(0).numpy(), (x_o - 1).cpu().numpy(), atol=0.05)

    another = inference.build_conditional(condition_mask=[True, False])
    lik = another.sample((1000,), x=theta_o).cpu()
    np.testing.assert_allclose(lik.mean(0).numpy(), np.ones(3), atol=0.05)

    inference.set_condition_indexes(new_posterior_latent_idx=[0], new_posterior_observed_idx=[1])
    post = inference.build_posterior().sample((1000,), x=x_o)
    assert post.shape == (1000, 3)
    like = inference.build_likelihood().sample((1000,), x=theta_o).cpu()
    np.testing.assert_allclose(like.mean(0).numpy(), np.ones(3), atol=0.05)

    fig, ax = pairplot(samples, limits=[[-2, 2], [-2, 2], [-2, 2]], figsize=(5, 5),
                       labels=[r"$\theta_1$", r"$\theta_2$", r"$\theta_3$"], points=theta_o.cpu())
    fig.savefig(tmp_path / "post.png")
    assert ax.shape == (3, 3) and (tmp_path / "post.png").stat().st_size > 0


def test_init_indexes_and_sample_shape():
    inference = Simformer(posterior_latent_idx=[1], posterior_observed_idx=[0], device="cpu",
                          random_state=0, max_epochs=1, d_model=16, n_layers=1, n_heads=2)
    inference.append_simulations(torch.randn(100, 2, 2)).append_simulations(torch.randn(50, 2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        inference.train(max_num_epochs=1)
    assert inference.estimator.n_features_in_ == 4
    post = inference.build_posterior()
    assert post.sample((2, 5), x=torch.zeros(2)).shape == (2, 5, 2)
    assert post.conditional.latent_columns.tolist() == [2, 3]
    # sbi's norm_posterior: the density truncated to bounds, renormalised or not
    inference.estimator.set_params(bounds={2: (-0.5, 0.5)})
    post = inference.build_posterior()
    theta, x = torch.zeros(1, 2), torch.zeros(2)
    raw = post.log_prob(theta, x=x, norm_posterior=False, mass_draws=500)
    assert post.log_prob(theta, x=x, mass_draws=500).item() > raw.item() + 0.1


def test_errors():
    inference = Simformer(device="cpu")
    with pytest.raises(ValueError, match="append_simulations"):
        inference.train()
    inference.append_simulations(torch.randn(10, 2, 3))
    with pytest.raises(ValueError, match="do not match"):
        inference.append_simulations(torch.randn(10, 3, 3))


def test_box_uniform_on_an_absent_gpu_falls_back_to_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="not available"):
        prior = BoxUniform(low=-torch.ones(3), high=torch.ones(3), device="gpu")
    assert prior.sample((2,)).device.type == "cpu"


def test_box_uniform():
    prior = BoxUniform(torch.zeros(2), torch.ones(2) * 2)
    s = prior.sample((1000,))
    assert s.shape == (1000, 2) and (s >= 0).all() and (s <= 2).all()
    torch.testing.assert_close(prior.log_prob(torch.ones(3, 2)), torch.full((3,), -np.log(4.0)))
