"""Shared test data: the seed task with its exact answers."""

import numpy as np


def seed_task(n: int = 3000, seed: int = 0) -> np.ndarray:
    """theta ~ U(-1, 1)^3, x = theta + 1 + 0.1 noise; shape (n, 2, 3)."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(-1, 1, size=(n, 3))
    x = theta + 1.0 + 0.1 * rng.standard_normal(theta.shape)
    return np.stack([theta, x], axis=1)


# A test model: small, and scored each epoch on 1,024 validation rows instead of 4,096 (the
# validation pass cost a third of a tiny fit's time; the estimator's default stays 4,096).
TINY = dict(d_model=32, n_layers=2, n_heads=2, batch_size=128, learning_rate=3e-3,
            training_options={"validation_rows": 1024})
