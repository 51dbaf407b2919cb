"""The training loop: batches, masks, validation, early stopping, schedule, progress.

Knows a network, a dynamics object (its ``training_sigmas`` and ``loss``) and a mask source;
knows nothing of numpy, scikit-learn or the estimator. All randomness comes from generators
seeded by the fit's seed tree (:class:`~skformer._utils.FitSeeds`): one for the order of rows,
one for training noise, one for the validation set's fixed noise; masks bring their own. The
global torch RNG is never used.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from skformer._utils import FitSeeds, make_generator
from skformer.checkpoint import Checkpoint, fingerprint
from skformer.distributed import Group
from skformer.network import MISSING, OBSERVED, float32

__all__ = ["PartialTrainer", "TrainConfig", "TrainResult", "train"]

Masks = Callable[[int], "tuple[torch.Tensor, torch.Tensor | None]"]
"""``n -> (observed (n, tokens) bool, edges (n, tokens, tokens) bool or None)``."""


@dataclass
class TrainConfig:
    """Settings of one training run (the estimator fills them from its parameters)."""

    max_epochs: int = 400
    batch_size: int = 256
    learning_rate: float = 1e-3
    early_stopping: bool = True
    n_iter_no_change: int = 20
    tol: float = 1e-4
    clip_norm: float = 1.0
    ema_decay: float | str = 0.999
    """Decay of the exponential moving average of the weights that training keeps, or "auto":
    an average over about :data:`EMA_EPOCHS` epochs' steps (see :func:`ema_decay`)."""
    warmup_fraction: float = 0.02
    """Share of the schedule's steps that warm the learning rate up, at most
    :data:`MAX_WARMUP_EPOCHS` epochs' steps; early stopping waits for the warm-up's end."""
    weight_decay: float = 1e-4
    validation_rows: int = 4096
    """The validation set is repeated (each copy with its own masks and noise) to at least this
    many rows: a steadier score to stop on."""
    verbose: int = 0
    marginal_fraction: float = 0.1
    """Share of training rows whose observed columns are left out (the ``MISSING`` state)
    instead: those rows teach the network the marginal of their latent columns alone, e.g. the
    prior of the parameters, which iid-trial sampling composes with (see
    :mod:`skformer.dynamics.compose`)."""
    subset_columns: tuple[int, ...] = ()
    """Columns of which each row keeps a random subset: in a :attr:`subset_fraction` of the
    rows each of them is left out (``MISSING``) with a probability drawn per row from U(0, 1),
    so that the network learns every number of them (the readings of a function: tokens with
    positions)."""
    subset_fraction: float = 0.5
    mixed_fraction: float = 0.25
    """Share of the rows in which each observed column of :attr:`subset_columns` turns latent
    with a probability drawn per row from U(0, 1): the network learns to predict some readings
    of a function from others (a condition mask per column within the variable)."""
    cuda_graphs: bool = True
    """On a CUDA device (single process), record the optimiser step (forward, backward,
    clipping, AdamW) once as a CUDA graph and replay it: at these model sizes the eager step is
    bound by Python and kernel launches, not by the card. Falls back to eager steps, with a
    warning, if recording fails."""
    checkpoint_dir: str | os.PathLike | None = None
    """A directory where :func:`train` saves its state (see :mod:`skformer.checkpoint`), so
    that the same fit started again after being cut off resumes from its last save; None saves
    nothing."""
    checkpoint_interval: float = 60.0
    """Seconds between two saves (at the end of an epoch); 0 saves after every epoch."""

    def check(self) -> None:
        """ValueError naming the first setting out of its range."""
        def number(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        rules = {
            "ema_decay": ('"auto" or a number in [0, 1)',
                          lambda v: v == "auto" or (number(v) and 0 <= v < 1)),
            "warmup_fraction": ("a number in [0, 1)", lambda v: number(v) and 0 <= v < 1),
            "weight_decay": ("a number >= 0", lambda v: number(v) and v >= 0),
            "clip_norm": ("a number > 0", lambda v: number(v) and v > 0),
            "validation_rows": ("an int >= 1",
                                lambda v: isinstance(v, int) and not isinstance(v, bool)
                                and v >= 1),
            "cuda_graphs": ("True or False", lambda v: isinstance(v, bool)),
            "subset_fraction": ("a number in [0, 1]", lambda v: number(v) and 0 <= v <= 1),
            "mixed_fraction": ("a number in [0, 1]", lambda v: number(v) and 0 <= v <= 1),
            "checkpoint_dir": ("None or a directory path (str or os.PathLike)",
                               lambda v: v is None or (isinstance(v, (str, os.PathLike))
                                                       and str(v) != "")),
            "checkpoint_interval": ("a number >= 0", lambda v: number(v) and v >= 0),
        }
        for name, (expected, good) in rules.items():
            if not good(getattr(self, name)):
                raise ValueError(f"{name} must be {expected}; got {getattr(self, name)!r}.")


@dataclass
class TrainResult:
    """What happened: per-epoch losses, the epoch kept, whether and how training ended early."""

    loss_curve: list[float] = field(default_factory=list)
    validation_scores: list[float] = field(default_factory=list)
    best_epoch: int = -1
    n_iter: int = 0
    converged: bool = False
    interrupted: bool = False
    diverged: str | None = None
    """Why training stopped diverging (a sentence), when it did and earlier weights were kept."""
    untrained_score: float = math.nan
    """The starting network's score (validation loss, else its first training batch's loss):
    the untrained network's, or with ``keep_start`` the weights training started from."""
    n_rows: int = 0
    """Training rows this process trained on (its share, under data-parallel)."""
    seconds: float = 0.0
    """Wall time of the training loop, over every process of a resumed fit."""


EXPLOSION = 10.0
"""A loss this many times the untrained network's means training has diverged (the untrained
network predicts zero, the trivial answer; a trained one must not do far worse)."""


EMA_EPOCHS = 2
"""The "auto" moving average spans about this many epochs of steps."""


def ema_decay(setting: float | str, steps_per_epoch: int) -> float:
    """The decay of the weights' moving average: ``setting``, or for "auto" one whose time
    constant is :data:`EMA_EPOCHS` epochs (at most 0.999). A fixed decay lags a fixed number
    of steps behind, which is many epochs when epochs are short (0.999, reached gradually by
    the loop's warm-up ``(1 + step) / (10 + step)``, lags 11 epochs of 17 steps by epoch
    100 and 20 by epoch 200), and early stopping scores that average."""
    if setting == "auto":
        return min(0.999, 1.0 - 1.0 / (EMA_EPOCHS * steps_per_epoch))
    return float(setting)


MAX_WARMUP_EPOCHS = 20
"""The longest warm-up in epochs: 2 % of a schedule of 10**9 epochs kept the learning rate
near zero for every epoch that ran, and early stopping ended it untrained."""


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5 % at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - decay)


def _finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.state_dict().values()
               if p.is_floating_point())


def train(
    network: torch.nn.Module,
    dynamics,
    x_train: torch.Tensor,
    x_val: torch.Tensor | None,
    masks: Masks,
    validation_masks: Masks,
    config: TrainConfig,
    seeds: FitSeeds,
    group: Group | None = None,
    keep_start: bool = False,
    p_train: torch.Tensor | None = None,
    p_val: torch.Tensor | None = None,
    identity: str = "",
) -> tuple[torch.nn.Module, TrainResult]:
    """Fit ``network`` by the dynamics' loss; return the kept (EMA) network and the history.

    x_train, x_val : tensors of shape (n, tokens), standardised, on the network's device; NaN
        marks a missing entry (never observed, no loss, and no other token attends to it).
    The returned network is a copy holding the exponential moving average of the weights at the
    epoch with the lowest validation loss; without a validation set, at the last epoch.

    Divergence: an epoch whose training or validation loss is not finite, or is more than
    :data:`EXPLOSION` times the untrained network's, ends training. The best epoch's weights are
    kept when they beat the untrained network (``result.diverged`` says what happened);
    otherwise a ``ValueError`` says so. The returned weights are always finite.

    Interruption: a ``KeyboardInterrupt`` after the first epoch ends training with the best
    weights so far and ``result.interrupted`` set (the caller decides what to do with it);
    during the first epoch it propagates.

    Data-parallel (``group``, see :mod:`skformer.distributed`): every rank passes the same rows
    and trains on its share of them; gradients are averaged by DistributedDataParallel and
    losses over the ranks, so every decision and every weight is the same on all ranks.
    ``seeds`` should then be the rank's own (the estimator derives them).

    ``keep_start`` (a warm start: ``network`` is already trained): the starting weights compete
    with every epoch, as epoch -1. With a validation set they are kept when no epoch scores
    better (``result.best_epoch`` is then -1); divergence and an interruption in the first
    epoch fall back to them instead of raising.

    ``p_train``, ``p_val`` (a network that embeds positions): each row's token positions,
    tensors of shape (n, tokens, position_dim), NaN for a token without one; they follow their
    rows into every batch and reach the network as its ``positions``.

    Checkpoints (``config.checkpoint_dir``, single process only): the loop saves its whole
    state every ``config.checkpoint_interval`` seconds at the end of an epoch, and a call for
    the same fit (same rows, settings, seeds, starting weights and ``identity``, the caller's
    description of what else makes the fit) resumes from the saved epoch, ending with the
    weights an uninterrupted call would have. A call that ends (by stopping early, at
    ``max_epochs`` or by diverging) removes the file; an interrupted or killed one leaves it.
    """
    started = time.perf_counter()
    device = x_train.device
    checkpoint = None
    if config.checkpoint_dir is not None:
        if group is not None:
            raise ValueError("checkpoint_dir works in one process; data-parallel training "
                             "(torchrun) cannot resume from a checkpoint.")
        settings = {k: v for k, v in dataclasses.asdict(config).items()
                    if k not in ("verbose", "checkpoint_dir", "checkpoint_interval")}
        checkpoint = Checkpoint(config.checkpoint_dir, fingerprint(
            identity, settings, dataclasses.asdict(seeds), keep_start, device.type,
            network.state_dict(), x_train, x_val, p_train, p_val), config.checkpoint_interval)
    if group is not None:
        x_train = group.share(x_train)
        x_val = None if x_val is None else group.share(x_val)
        p_train = None if p_train is None else group.share(p_train)
        p_val = None if p_val is None else group.share(p_val)
    missing = _missing(x_train)
    x_train = x_train.nan_to_num(0.0)
    shuffle_gen = make_generator(seeds.shuffle, device)
    noise_gen = make_generator(seeds.noise, device)
    ema = copy.deepcopy(network).requires_grad_(False)
    graphed = config.cuda_graphs and device.type == "cuda" and group is None
    forward = network if group is None else group.wrap(network, device)
    result = TrainResult(n_rows=x_train.shape[0])
    n = x_train.shape[0]
    bs = min(config.batch_size, n)

    def draw(rows: torch.Tensor):
        return _batch(x_train[rows], None if missing is None else missing[rows], masks,
                      dynamics, config, noise_gen, None if p_train is None else p_train[rows])

    step_fn = _Step(forward, dynamics, config, graphed)
    steps_per_epoch = max(1, n // bs)  # drop the ragged tail: equal-size batches
    total = steps_per_epoch * config.max_epochs
    warmup = max(1, min(int(config.warmup_fraction * total), MAX_WARMUP_EPOCHS * steps_per_epoch))
    decay = ema_decay(config.ema_decay, steps_per_epoch)

    val = None
    if x_val is not None and x_val.shape[0] > 0:
        val = _validation_set(dynamics, x_val, validation_masks, config,
                              make_generator(seeds.validation, device), p_val)
        result.untrained_score = _validate(dynamics, ema, val, bs, group)
    best_score, best_state, since_best = math.inf, None, 0
    if keep_start:
        best_state = copy.deepcopy(ema.state_dict())
        if val is not None:
            best_score = result.untrained_score
    first_loss = None
    step = start_epoch = 0
    earlier_seconds = 0.0
    saved = None if checkpoint is None else checkpoint.load()
    if saved is not None:
        network.load_state_dict(saved["network"])
        ema.load_state_dict(saved["ema"])
        lrs = [g["lr"] for g in step_fn.opt.param_groups]  # a CUDA graph's lr is a tensor
        step_fn.opt.load_state_dict(saved["optimizer"])
        for g, lr in zip(step_fn.opt.param_groups, lrs, strict=True):
            g["lr"] = lr  # (each step sets its value)
        shuffle_gen.set_state(saved["shuffle"])
        noise_gen.set_state(saved["noise"])
        if saved["masks"] is not None:
            masks.set_state(saved["masks"])
        step, start_epoch = saved["step"], saved["epoch"]
        best_score, best_state = saved["best_score"], saved["best_state"]
        since_best = saved["since_best"]
        first_loss = torch.tensor(saved["first_loss"], device=device)
        earlier_seconds = saved["seconds"]
        known = {f.name for f in dataclasses.fields(TrainResult)}
        result = TrainResult(**{k: v for k, v in saved["result"].items() if k in known})

    def snapshot(epoch: int) -> dict:
        """Everything the loop needs to go on at ``epoch`` (saved as it is, no copies)."""
        return {"network": network.state_dict(), "ema": ema.state_dict(),
                "optimizer": step_fn.opt.state_dict(), "shuffle": shuffle_gen.get_state(),
                "noise": noise_gen.get_state(),
                "masks": masks.get_state() if hasattr(masks, "get_state") else None,
                "step": step, "epoch": epoch, "best_score": best_score,
                "best_state": best_state, "since_best": since_best,
                "first_loss": float(first_loss), "result": dataclasses.asdict(result),
                "seconds": earlier_seconds + time.perf_counter() - started}

    bar = None
    if config.verbose and (group is None or group.is_main):
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_epochs, initial=start_epoch, desc="training",
                   unit="epoch")
        if start_epoch:
            bar.write(f"resuming at epoch {start_epoch} from {checkpoint.path}")
    try:
        for epoch in range(start_epoch, config.max_epochs):
            if checkpoint is not None and epoch > start_epoch and checkpoint.due():
                _save(checkpoint, snapshot(epoch))
            network.train()
            perm = torch.randperm(n, generator=shuffle_gen, device=device)
            running = torch.zeros((), device=device)
            for b in range(steps_per_epoch):
                batch = draw(perm[b * bs : (b + 1) * bs])
                loss = step_fn(batch, config.learning_rate * lr_factor(step, total, warmup))
                if first_loss is None:
                    first_loss = loss.clone()
                _ema_update(ema, network, min(decay, (1 + step) / (10 + step)))
                step += 1
                running += loss
            if group is not None:
                running = group.mean(running)
                if epoch == 0:
                    first_loss = group.mean(first_loss)
            result.loss_curve.append(float(running) / steps_per_epoch)
            result.n_iter = epoch + 1
            if val is None and epoch == 0:
                result.untrained_score = float(first_loss)

            score = (result.loss_curve[-1] if val is None
                     else _validate(dynamics, ema, val, bs, group))
            if val is not None:
                result.validation_scores.append(score)
            problem = _divergence(result, score, float(first_loss), val is not None)
            if problem is not None:
                result.diverged = problem
                break
            if score < best_score - config.tol:
                best_score, since_best = score, 0
                best_state = copy.deepcopy(ema.state_dict())
                result.best_epoch = epoch
            elif step >= warmup:  # a rising learning rate is no reason to stop
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
    finally:
        if bar is not None:
            bar.close()
    result.seconds = earlier_seconds + time.perf_counter() - started
    if checkpoint is not None and not result.interrupted:
        checkpoint.remove()  # the fit is over, however it ended
    if (result.diverged is not None and not keep_start
            and not best_score < result.untrained_score):
        raise ValueError(
            f"training diverged: {result.diverged}, and no epoch before it did better than "
            f"the untrained network. Lower learning_rate ({config.learning_rate:g} now)."
        )
    if best_state is not None and (val is not None or result.diverged or result.interrupted):
        ema.load_state_dict(best_state)
    if not _finite(ema):  # pragma: no cover - every path above keeps finite weights
        raise ValueError("training produced non-finite weights.")
    ema.eval()
    return ema, result


def _save(checkpoint: Checkpoint, state: dict) -> None:
    """Save, or warn and train on: a full disk must not end the fit it is meant to keep."""
    try:
        checkpoint.save(state)
    except OSError as err:
        import warnings

        checkpoint.postpone()
        warnings.warn(f"saving the checkpoint {checkpoint.path} failed ({err}); training goes "
                      "on, and tries again after checkpoint_interval seconds.", RuntimeWarning,
                      stacklevel=3)


class PartialTrainer:
    """Training that goes on across calls: each :meth:`pass_over` makes one pass over the rows
    it is given (``partial_fit``), keeping the optimiser's state, the step count, the moving
    average and the random streams from one call to the next.

    Parameters
    ----------
    network : torch.nn.Module
        The network to train, in place (trainable parameters); fresh or already trained.
    dynamics, masks, config
        As for :func:`train`; ``config.batch_size`` rows per step, ``config.learning_rate``
        after a linear warm-up over :attr:`WARMUP_STEPS` steps, then constant (no schedule can
        know how many calls will come). ``ema_decay="auto"`` means 0.999.
    seeds : FitSeeds
        Its ``noise`` stream seeds the training noise.

    ``ema`` holds the moving average of the weights, the network to use. A call whose loss is
    not finite, or that is interrupted, leaves network, average, optimiser, step count and the
    random streams (noise and masks) as they were before it.
    """

    WARMUP_STEPS = 100

    def __init__(self, network: torch.nn.Module, dynamics, masks: Masks, config: TrainConfig,
                 seeds: FitSeeds):
        self.network, self.dynamics, self.masks, self.config = network, dynamics, masks, config
        self.device = next(network.parameters()).device
        self.ema = copy.deepcopy(network).requires_grad_(False).eval()
        self._step = self.step_fn = _Step(network, dynamics, config, graphed=False)
        self.opt = self._step.opt
        self.noise_gen = make_generator(seeds.noise, self.device)
        self.decay = 0.999 if config.ema_decay == "auto" else float(config.ema_decay)
        self.steps = 0

    def reconfigure(self, config: TrainConfig) -> None:
        """Take new settings (changed parameters, the batch size included) for the next
        calls."""
        self.config = config
        self._step.config = self.config
        self.decay = 0.999 if config.ema_decay == "auto" else float(config.ema_decay)
        for g in self.opt.param_groups:
            g["weight_decay"] = config.weight_decay

    def _state(self):
        masks = self.masks.get_state() if hasattr(self.masks, "get_state") else None
        return (copy.deepcopy(self.network.state_dict()), copy.deepcopy(self.ema.state_dict()),
                copy.deepcopy(self.opt.state_dict()), self.steps,
                self.noise_gen.get_state(), masks)

    def _restore(self, state) -> None:
        net, ema, opt, steps, gen, masks = state
        self.network.load_state_dict(net)
        self.ema.load_state_dict(ema)
        self.opt.load_state_dict(opt)
        self.steps = steps
        self.noise_gen.set_state(gen)
        if masks is not None:
            self.masks.set_state(masks)

    def pass_over(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> float:
        """One optimiser step per ``config.batch_size`` rows of ``x`` (standardised, NaN where
        missing, on the network's device), in their order, the last batch possibly smaller;
        ``positions`` as in :func:`train`. Returns the mean training loss; raises ValueError,
        undoing the call, when a loss is not finite."""
        missing = _missing(x)
        x = x.nan_to_num(0.0)
        bs = self.config.batch_size
        before = self._state()
        total, n_steps = 0.0, 0
        try:
            self.network.train()
            for start in range(0, x.shape[0], bs):
                rows = slice(start, start + bs)
                batch = _batch(x[rows], None if missing is None else missing[rows], self.masks,
                               self.dynamics, self.config, self.noise_gen,
                               None if positions is None else positions[rows])
                factor = min(1.0, (self.steps + 1) / self.WARMUP_STEPS)
                loss = float(self.step_fn(batch, self.config.learning_rate * factor))
                if not math.isfinite(loss):
                    raise ValueError(
                        f"the training loss of step {n_steps + 1} of this call is {loss}; the "
                        f"call was undone. Lower learning_rate ({self.config.learning_rate:g} "
                        "now)."
                    )
                _ema_update(self.ema, self.network,
                            min(self.decay, (1 + self.steps) / (10 + self.steps)))
                self.steps += 1
                total, n_steps = total + loss, n_steps + 1
        except BaseException:
            self._restore(before)
            raise
        finally:
            self.network.eval()
        return total / max(1, n_steps)


class _Step:
    """One optimiser step on a batch: loss, backward, gradient clipping, AdamW; returns the
    (detached) mean loss.

    Eager, or (``graphed``, CUDA only) recorded as one CUDA graph after a few eager warm-up
    steps on a side stream and replayed on static copies of each batch: the same arithmetic
    without a Python dispatch and a kernel launch per operation. Learning rates reach the graph
    through a device tensor. Every batch must have the same shapes (the loop's batches do).
    """

    WARMUP = 3

    def __init__(self, forward, dynamics, config: TrainConfig, graphed: bool):
        self.forward, self.dynamics, self.config = forward, dynamics, config
        self.params = [p for p in forward.parameters() if p.requires_grad]
        device = self.params[0].device
        lr = (torch.tensor(float(config.learning_rate), dtype=torch.float32, device=device)
              if graphed else config.learning_rate)
        # one fused kernel for the whole update (CPU and CUDA): on a CPU thread 4-5x cheaper
        # than the per-tensor loop, about 4 ms less per step (benchmarks/cpu_profile.py)
        fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in self.params)
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=config.weight_decay,
                                     fused=fused, **({"capturable": True} if graphed else {}))
        self.graphed, self.graph, self.calls = graphed, None, 0
        self.static: tuple | None = None
        self.static_loss: torch.Tensor | None = None

    def _eager(self, batch, lr: float) -> torch.Tensor:
        loss = _loss(self.dynamics, self.forward, batch).mean()
        for g in self.opt.param_groups:
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_norm)
        self.opt.step()
        return loss.detach()

    def __call__(self, batch, lr: float) -> torch.Tensor:
        self.calls += 1
        if not self.graphed:
            return self._eager(batch, lr)
        if self.graph is None and self.calls <= self.WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self._eager(batch, lr)
            torch.cuda.current_stream().wait_stream(side)
            return loss
        if self.graph is None:
            try:
                self._record(batch)
            except Exception as err:  # noqa: BLE001 - any failure: train on, eagerly
                import warnings

                warnings.warn(f"recording the training step as a CUDA graph failed ({err!r}); "
                              "training continues with eager steps.", RuntimeWarning,
                              stacklevel=3)
                self.graphed, self.graph = False, None
                self.opt.zero_grad(set_to_none=True)
                return self._eager(batch, lr)
        for buf, value in zip(self.static, batch, strict=True):
            if buf is not None:
                buf.copy_(value)
        for g in self.opt.param_groups:
            g["lr"].fill_(lr)
        self.graph.replay()
        return self.static_loss.clone()

    def _record(self, batch) -> None:
        self.static = tuple(None if b is None else b.clone() for b in batch)
        self.opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            loss = _loss(self.dynamics, self.forward, self.static).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_norm)
            self.opt.step()
            self.static_loss = loss.detach()
        self.graph = graph


def _loss(dynamics, net, batch) -> torch.Tensor:
    """The dynamics' per-row loss on a batch; its positions (if any) go to the network."""
    x0, observed, edges, sigma, eps, positions = batch
    if positions is not None:
        net = functools.partial(net, positions=positions)
    return dynamics.loss(net, x0, observed, edges, sigma, eps)


def _batch(x0: torch.Tensor, missing: torch.Tensor | None, masks: Masks, dynamics,
           config: TrainConfig, gen: torch.Generator, positions: torch.Tensor | None = None):
    """One training batch of the (NaN-free) rows ``x0``: the rows, their column states and
    edges, noise levels, noise and positions."""
    observed, edges = masks(x0.shape[0])
    observed = _mixed(observed, config, gen)
    missing = _subsets(missing, x0.shape, config, gen)
    left_out = _left_out(observed, missing, config.marginal_fraction, gen)
    if left_out is not None:
        observed = _states(observed, left_out)
    sigma = dynamics.training_sigmas(x0.shape[0], gen)
    eps = torch.randn(x0.shape, generator=gen, device=x0.device)
    return x0, observed, edges, sigma, eps, positions


def _mixed(observed: torch.Tensor, config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """``observed`` with, in a ``config.mixed_fraction`` of the rows, each observed column of
    ``config.subset_columns`` turned latent with a per-row probability p ~ U(0, 1)."""
    if not config.subset_columns or config.mixed_fraction <= 0:
        return observed
    columns, flip = _random_subset(observed.shape[0], config, config.mixed_fraction, gen)
    out = observed.clone()
    out[:, columns] &= ~flip
    return out


def _random_subset(n: int, config: TrainConfig, fraction: float, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``config.subset_columns`` as an index, and for each of ``n`` rows which of them are
    picked: none outside a ``fraction`` of the rows, each with a per-row p ~ U(0, 1) inside."""
    device = gen.device
    columns = torch.as_tensor(config.subset_columns, device=device)
    rows = torch.rand(n, 1, generator=gen, device=device) < fraction
    p = torch.rand(n, 1, generator=gen, device=device)
    return columns, rows & (torch.rand(n, len(columns), generator=gen, device=device) < p)


def _subsets(missing: torch.Tensor | None, shape, config: TrainConfig,
             gen: torch.Generator) -> torch.Tensor | None:
    """``missing`` with, in a ``config.subset_fraction`` of the rows, each of
    ``config.subset_columns`` also left out with a per-row probability p ~ U(0, 1)."""
    if not config.subset_columns or config.subset_fraction <= 0:
        return missing
    columns, drop = _random_subset(shape[0], config, config.subset_fraction, gen)
    out = torch.zeros(shape, dtype=torch.bool, device=gen.device)
    out[:, columns] = drop
    return out if missing is None else missing | out


def _divergence(result: TrainResult, score: float, first_loss: float,
                validated: bool) -> str | None:
    """Why the epoch just scored means training diverged, or None."""
    epoch, loss = result.n_iter, result.loss_curve[-1]
    if not math.isfinite(loss):
        return f"the training loss of epoch {epoch} is {loss}"
    if loss > EXPLOSION * first_loss:
        return (f"the training loss of epoch {epoch} is {loss:.3g}, over {EXPLOSION:g} times "
                f"the untrained network's {first_loss:.3g}")
    if validated and not math.isfinite(score):
        return f"the validation loss of epoch {epoch} is {score}"
    if validated and score > EXPLOSION * result.untrained_score:
        return (f"the validation loss of epoch {epoch} is {score:.3g}, over {EXPLOSION:g} times "
                f"the untrained network's {result.untrained_score:.3g}")
    return None


def _missing(x: torch.Tensor) -> torch.Tensor | None:
    """Where ``x`` is NaN, or None when nothing is missing."""
    missing = torch.isnan(x)
    return missing if bool(missing.any()) else None


def _states(observed: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """bool observed masks and missing entries -> the network's uint8 column states."""
    return torch.where(missing, MISSING, observed.to(torch.uint8) * OBSERVED).to(torch.uint8)


def _left_out(observed: torch.Tensor, missing: torch.Tensor | None, fraction: float,
              gen: torch.Generator) -> torch.Tensor | None:
    """Entries the network must leave out: missing data, and in a ``fraction`` of the rows
    (marginal rows) every observed entry; None when there are none."""
    if fraction <= 0:
        return missing
    rows = torch.rand(observed.shape[0], generator=gen, device=observed.device) < fraction
    marginal = observed & rows[:, None]
    return marginal if missing is None else missing | marginal


def _validation_set(dynamics, x_val, masks: Masks, config: TrainConfig,
                    gen: torch.Generator, positions: torch.Tensor | None = None):
    """The validation rows, repeated to at least ``config.validation_rows``, with fixed masks,
    marginal rows, subsets, noise levels and noise, so that every epoch is scored on the same
    draws."""
    copies = max(1, -(-config.validation_rows // x_val.shape[0]))
    x_val = x_val.repeat(copies, 1)
    if positions is not None:
        positions = positions.repeat(copies, 1, 1)
    missing = _missing(x_val)
    return _batch(x_val.nan_to_num(0.0), missing, masks, dynamics, config, gen, positions)


@torch.no_grad()
def _validate(dynamics, net, val, bs, group: Group | None = None) -> float:
    """Mean loss over the validation rows (over every rank's, under data-parallel), in float32
    whatever the network's precision: it chooses the best epoch and when to stop, so the same
    weights are scored alike in either."""
    x_val = val[0]
    net.eval()
    total = torch.zeros(2, device=x_val.device)
    with float32():
        for i in range(0, x_val.shape[0], 4 * bs):
            sl = slice(i, i + 4 * bs)
            total[0] += _loss(dynamics, net, [None if v is None else v[sl] for v in val]).sum()
    total[1] = x_val.shape[0]
    if group is not None:
        total = group.sum(total)
    return float(total[0] / total[1])
