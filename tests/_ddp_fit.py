"""Run by tests/test_distributed.py under torchrun: every rank fits on the same X and writes
what it ended with to the folder given as the first argument."""

import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from skformer import SimformerEstimator  # noqa: E402

from _data import TINY, seed_task  # noqa: E402

torch.set_num_threads(1)
out = Path(sys.argv[1])
# plumbing, not accuracy: a small validation set (what is checked is that the ranks agree)
est = SimformerEstimator(**dict(TINY, max_epochs=3, random_state=0, device="cpu",
                              training_options={"validation_rows": 128}))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    est.fit(seed_task(1000))
rank = dist.get_rank()
torch.save({k: v.cpu() for k, v in est.model_.state_dict().items()}, out / f"rank{rank}.pt")
(out / f"rank{rank}.json").write_text(json.dumps({
    "world": dist.get_world_size(), "n_training_rows": est.n_training_rows_,
    "batch_size": est.batch_size_, "n_iter": est.n_iter_, "loss_curve": est.loss_curve_,
    "validation_scores": est.validation_scores_, "best_epoch": est.best_epoch_,
}))
dist.destroy_process_group()
