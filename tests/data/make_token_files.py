"""Write the files that tests/test_tokens.py compares with: models of skformer before tokens
could carry per-column states (commit 0f4c486), run once with that code.

    git worktree add /tmp/skf-head 0f4c486
    PYTHONPATH=/tmp/skf-head python tests/data/make_token_files.py

Writes skformer-0.2-variable.skf and .pkl (a model with one token per variable, whose tokens
embedded their columns through one linear map) and skformer-0.2-tokens.npz: that model's joint
log densities of 5 rows, and, for one token per column, the loss curve and posterior draws of
a small seeded fit, which the current code must reproduce (tokens="column" is today's model).
"""

import pickle
import warnings
from pathlib import Path

import numpy as np

from skformer import SimformerEstimator
from skformer import save

here = Path(__file__).resolve().parent
rng = np.random.default_rng(7)
theta = rng.uniform(-1, 1, size=(300, 3))
X = np.stack([theta, theta + 1 + 0.1 * rng.standard_normal(theta.shape)], axis=1)
small = dict(d_model=16, n_layers=1, n_heads=2, max_epochs=3, batch_size=64, sampling_steps=7,
             device="cpu", random_state=0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    grouped = SimformerEstimator(tokens="variable", **small).fit(X)
    column = SimformerEstimator(tokens="column", **small).fit(X)
save(grouped, here / "skformer-0.2-variable.skf")
(here / "skformer-0.2-variable.pkl").write_bytes(pickle.dumps(grouped))
rows = X[:5].reshape(5, -1)
np.savez(here / "skformer-0.2-tokens.npz", rows=rows, log_prob=grouped.score_samples(rows),
         column_loss=np.asarray(column.loss_curve_),
         column_draws=column.posterior().sample(20, observed=np.ones(3), random_state=0))
