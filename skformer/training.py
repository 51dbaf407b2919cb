"""The training loop: batches, masks, validation, early stopping, schedule, progress.

Knows the network, a dynamics object and mask samplers; knows nothing of numpy, scikit-learn or
the estimator. All randomness comes from the two generators it is handed (one on the CPU for
masks and shuffling, one on the model's device for noise), so two runs with the same seeds give
the same weights on the CPU and the global torch RNG is never used.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field

import torch

from skformer.layout import Layout

__all__ = ["TrainConfig", "TrainResult", "train"]


@dataclass
class TrainConfig:
    max_epochs: int = 400
    batch_size: int = 256
    learning_rate: float = 1e-3
    early_stopping: bool = True
    n_iter_no_change: int = 20
    tol: float = 1e-4
    clip_norm: float = 1.0
    ema_decay: float = 0.999
    warmup_fraction: float = 0.02
    verbose: int = 0


@dataclass
class TrainResult:
    loss_curve: list[float] = field(default_factory=list)
    validation_scores: list[float] = field(default_factory=list)
    best_epoch: int = -1
    n_iter: int = 0
    converged: bool = False
    interrupted: bool = False


class _Batches:
    """Mask and noise draws for one batch of standardised rows."""

    def __init__(self, layout: Layout, cond_sampler, edge_sampler, cpu_gen: torch.Generator):
        self.layout, self.cond, self.edge, self.gen = layout, cond_sampler, edge_sampler, cpu_gen

    def masks(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        drawn = self.cond(self.gen, n)
        observed = self.layout.condition_batch(drawn).to(device)
        edges = None if self.edge is None else self.edge(self.gen, drawn).to(device)
        return observed, edges


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), net.parameters()):
        pe.lerp_(p, 1 - decay)


def train(
    net: torch.nn.Module,
    dynamics,
    x_train: torch.Tensor,
    x_val: torch.Tensor | None,
    layout: Layout,
    cond_sampler,
    edge_sampler,
    config: TrainConfig,
    cpu_gen: torch.Generator,
    dev_gen: torch.Generator,
) -> tuple[torch.nn.Module, TrainResult]:
    """Fit ``net`` by the dynamics' loss; return the best (EMA) network and the history.

    x_train, x_val : tensors of shape (n, tokens), standardised, on the model's device.
    The returned network holds the exponential moving average of the weights at the epoch with
    the lowest validation loss (or the last epoch without a validation set).
    """
    device = x_train.device
    batches = _Batches(layout, cond_sampler, edge_sampler, cpu_gen)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    n = x_train.shape[0]
    bs = min(config.batch_size, n)
    steps_per_epoch = max(1, n // bs)  # drop the ragged tail: equal-size batches
    total = steps_per_epoch * config.max_epochs
    warmup = max(1, int(config.warmup_fraction * total))

    val = None
    if x_val is not None and x_val.shape[0] > 0:
        # several fixed draws of masks and noise per row: a steadier score to stop on
        x_val = x_val.repeat(max(1, -(-4096 // x_val.shape[0])), 1)
        observed, edges = batches.masks(x_val.shape[0], device)
        sigma_gen = torch.Generator(device=device)
        sigma_gen.manual_seed(int(torch.randint(2**62, (1,), generator=cpu_gen)))
        val = (observed, edges, *_validation_noise(dynamics, x_val, sigma_gen))

    result = TrainResult()
    best_score, best_state, since_best = math.inf, None, 0
    step = 0
    bar = None
    if config.verbose:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_epochs, desc="training", unit="epoch")
    try:
        for epoch in range(config.max_epochs):
            net.train()
            perm = torch.randperm(n, generator=cpu_gen).to(device)
            running = 0.0
            for b in range(steps_per_epoch):
                x0 = x_train[perm[b * bs : (b + 1) * bs]]
                observed, edges = batches.masks(x0.shape[0], device)
                loss = dynamics.loss(net, x0, observed, edges, dev_gen).mean()
                for g in opt.param_groups:
                    g["lr"] = config.learning_rate * _lr_factor(step, total, warmup)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip_norm)
                opt.step()
                _ema_update(ema, net, min(config.ema_decay, (1 + step) / (10 + step)))
                step += 1
                running += loss.item()
            result.loss_curve.append(running / steps_per_epoch)
            result.n_iter = epoch + 1

            score = result.loss_curve[-1] if val is None else _validate(dynamics, ema, x_val, val, bs)
            if val is not None:
                result.validation_scores.append(score)
            if score < best_score - config.tol:
                best_score, since_best = score, 0
                best_state = copy.deepcopy(ema.state_dict())
                result.best_epoch = epoch
            else:
                since_best += 1
            if bar is not None:
                bar.set_postfix(loss=f"{result.loss_curve[-1]:.4f}", val=f"{score:.4f}")
                bar.update(1)
            if since_best >= config.n_iter_no_change:
                result.converged = True
                if config.early_stopping:
                    break
    except KeyboardInterrupt:
        if best_state is None:
            raise
        result.interrupted = True
        warnings.warn(
            f"training interrupted after {result.n_iter} epochs; keeping the best weights so far "
            f"(epoch {result.best_epoch + 1}).",
            RuntimeWarning,
            stacklevel=2,
        )
    finally:
        if bar is not None:
            bar.close()
    if val is not None and best_state is not None:
        ema.load_state_dict(best_state)
    ema.eval()
    return ema, result


def _validation_noise(dynamics, x_val: torch.Tensor, gen: torch.Generator):
    """Fixed noise levels and noise for the validation set, so epochs compare fairly."""
    t = dynamics.train_times(x_val.shape[0], gen, x_val.device)
    eps = torch.randn(x_val.shape, generator=gen, device=x_val.device)
    return t, eps


@torch.no_grad()
def _validate(dynamics, net, x_val, val, bs) -> float:
    observed, edges, t, eps = val
    net.eval()
    total = 0.0
    for i in range(0, x_val.shape[0], 4 * bs):
        sl = slice(i, i + 4 * bs)
        e = None if edges is None else edges[sl]
        total += dynamics.loss_at(net, x_val[sl], observed[sl], e, t[sl], eps[sl]).sum().item()
    return total / x_val.shape[0]
