"""sbi's Simformer tutorial, verbatim but for its import lines, on skformer
========================================================================

Saves the tutorial's four pairplots to examples/output/seed_tutorial_*.png. About two minutes
on 2 CPU cores.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

# --- the tutorial's imports, changed to skformer -------------------------------------------
import torch

from skformer import BoxUniform, Simformer, pairplot

# sphinx-gallery runs the examples from this folder, without __file__
OUT = (Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()) / "output"
OUT.mkdir(exist_ok=True)

# --- the tutorial, unchanged -----------------------------------------------------------------
torch.manual_seed(0)  # For reproductibility

# Example toy simulator
# Define the prior
num_dims = 3
num_sims = 10000
prior = BoxUniform(low=-torch.ones(num_dims), high=torch.ones(num_dims), device='gpu')


def simulator(theta):
    """Linear gaussian simulator."""
    return theta + 1.0 + torch.randn_like(theta) * 0.1


# Produce simulations
theta = prior.sample((num_sims, 1))            # shape: (10000, 1, 3)
x = simulator(theta)                           # shape: (10000, 1, 3)
inputs = torch.cat([theta, x], dim=1)          # shape: (10000, 2, 3)

theta_o = torch.zeros(num_dims)
x_o = simulator(theta_o)

# Instantiate Simformer and append simulations
inference = Simformer()
inference.append_simulations(inputs)

# Train the score estimator
score_estimator = inference.train(max_num_epochs=100)

# Build the conditional using the trained score estimator, and sample
conditional = inference.build_conditional(condition_mask=[False, True])
conditional_samples = conditional.sample((10000,), x=x_o)

# plot posterior samples
fig, ax = pairplot(
    conditional_samples, limits=[[-2, 2], [-2, 2], [-2, 2]], figsize=(5, 5),
    labels=[r"$\theta_1$", r"$\theta_2$", r"$\theta_3$"],
    points=theta_o # add ground truth thetas
)
fig.savefig(OUT / "seed_tutorial_conditional.png")

# Build the posterior using the trained score estimator, and sample
another_conditional = inference.build_conditional(condition_mask=[True, False])
another_conditional_samples = another_conditional.sample((10000,), x=theta_o)

# plot likelihood samples
fig, ax = pairplot(
    another_conditional_samples, limits=[[-2, 2], [-2, 2], [-2, 2]], figsize=(5, 5),
    labels=[r"$x_1$", r"$x_2$", r"$x_3$"],
    points=x_o # add ground truth x
)
fig.savefig(OUT / "seed_tutorial_another_conditional.png")

inference.set_condition_indexes(new_posterior_latent_idx=[0], new_posterior_observed_idx=[1])

posterior = inference.build_posterior()
posterior_samples = posterior.sample((10000,), x=x_o)

# plot posterior samples
fig, ax = pairplot(
    posterior_samples, limits=[[-2, 2], [-2, 2], [-2, 2]], figsize=(5, 5),
    labels=[r"$\theta_1$", r"$\theta_2$", r"$\theta_3$"],
    points=theta_o # add ground truth thetas
)
fig.savefig(OUT / "seed_tutorial_posterior.png")

likelihood = inference.build_likelihood()
likelihood_samples = likelihood.sample((10000,), x=theta_o)

# plot posterior samples
fig, ax = pairplot(
    likelihood_samples, limits=[[-2, 2], [-2, 2], [-2, 2]], figsize=(5, 5),
    labels=[r"$x_1$", r"$x_2$", r"$x_3$"],
    points=x_o # add ground truth thetas
)
fig.savefig(OUT / "seed_tutorial_likelihood.png")
print(f"posterior mean {posterior_samples.mean(0)}, std {posterior_samples.std(0)}")
print(f"pairplots saved in {OUT}")
