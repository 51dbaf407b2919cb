"""Write the skformer 0.1 files that tests/test_persistence.py loads (run once, with 0.1).

    git worktree add /tmp/skformer-0.1 8b043db
    PYTHONPATH=/tmp/skformer-0.1 python tests/data/make_legacy_files.py

Writes skformer-0.1.skf (file format 1), skformer-0.1.pkl (a pickle) and skformer-0.1.npz
(draws of the posterior that 0.1 gave, and the joint log densities of 5 rows, to compare with:
log densities are a deterministic function of the weights).
"""

import pickle
import warnings
from pathlib import Path

import numpy as np

import skformer
from skformer import SimformerEstimator
from skformer.persistence import save

assert skformer.__version__ == "0.1.0", skformer.__version__
here = Path(__file__).resolve().parent
rng = np.random.default_rng(5)
theta = rng.uniform(-1, 1, size=(300, 3))
X = np.stack([theta, theta + 1 + 0.1 * rng.standard_normal(theta.shape)], axis=1)
est = SimformerEstimator(d_model=16, n_layers=1, n_heads=2, max_epochs=3, batch_size=64,
                         sampler="heun", sampling_steps=7, device="cpu", random_state=0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    est.fit(X)
save(est, here / "skformer-0.1.skf")
(here / "skformer-0.1.pkl").write_bytes(pickle.dumps(est))
draws = est.condition([False, True]).sample(20, observed=np.ones(3), random_state=0)
rows = X[:5].reshape(5, -1)
np.savez(here / "skformer-0.1.npz", draws=draws, mean=est.mean_, scale=est.scale_, rows=rows,
         log_prob=est.score_samples(rows))
