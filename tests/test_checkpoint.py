"""Resumable fits: ``training_options={"checkpoint_dir": ...}``."""

import copy
import os
import pickle

import numpy as np
import pytest
import torch

import skformer.training as training
from skformer import SimformerEstimator, load, save
from skformer.checkpoint import Checkpoint, fingerprint

from _data import seed_task

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# trains for real in 16 epochs of 14 steps, and early stopping (tol) ends it at epoch 11
SMALL = dict(d_model=16, n_layers=1, n_heads=2, batch_size=64, max_epochs=16, device="cpu",
             learning_rate=1e-2, tol=0.02, n_iter_no_change=3, random_state=0)
STEPS_PER_EPOCH = 900 // 64


def small(directory=None, **kw) -> SimformerEstimator:
    options = {"ema_decay": "auto"}
    if directory is not None:
        options.update(checkpoint_dir=str(directory), checkpoint_interval=0)
    return SimformerEstimator(**{**SMALL, "training_options": options, **kw})


def weights(est) -> dict:
    return {k: v.clone() for k, v in est.network_.state_dict().items()}


def assert_same_fit(a, b) -> None:
    """Bit for bit on a CPU; on a GPU, where replaying a recorded CUDA graph and eager steps
    may round differently, to float32 rounding."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    exact = a.device_.type == "cpu"
    for k in wa:
        assert torch.equal(wa[k], wb[k]) if exact else torch.allclose(
            wa[k], wb[k], rtol=1e-4, atol=1e-5), k
    for curve in ("loss_curve_", "validation_scores_"):
        if exact:
            assert getattr(a, curve) == getattr(b, curve)
        else:
            np.testing.assert_allclose(getattr(a, curve), getattr(b, curve), rtol=1e-4)
    assert (a.n_iter_, a.best_epoch_, a.converged_) == (b.n_iter_, b.best_epoch_, b.converged_)


class Killed(BaseException):
    """Stands for the process being killed: nothing in skformer catches it."""


def kill_after_saves(monkeypatch, n: int) -> list:
    """Make the n-th checkpoint save the last thing the fit does."""
    saves = []
    original = Checkpoint.save

    def save_then_die(self, state):
        original(self, state)
        saves.append(state["epoch"])
        if len(saves) == n:
            raise Killed

    monkeypatch.setattr(Checkpoint, "save", save_then_die)
    return saves


@pytest.fixture(scope="module")
def data():
    return seed_task(1000).reshape(1000, -1)


@pytest.fixture(scope="module")
def reference(data, device):
    """The same fit without a checkpoint, start to end, on the test device (``--device
    cuda``: the training step is a CUDA graph, its learning rate a tensor)."""
    est = small(device=device).fit(data)
    assert est.converged_ and 8 <= est.n_iter_ < SMALL["max_epochs"]  # stopped early
    assert est.best_epoch_ > 4  # and kept an epoch after the saves the tests resume from
    return est


def test_a_killed_fit_resumes_to_the_weights_of_an_uninterrupted_one(data, reference, tmp_path,
                                                                     monkeypatch, device):
    saves = kill_after_saves(monkeypatch, 3)
    est = small(tmp_path, device=device)
    with pytest.raises(Killed):
        est.fit(data)
    assert saves == [1, 2, 3]
    assert "model_" not in est.__dict__  # the estimator is left as it was
    (saved,) = tmp_path.glob("fit-*.pt")
    earlier = torch.load(saved, weights_only=True)["seconds"]
    monkeypatch.undo()
    est.fit(data)  # the same fit, started again: goes on at epoch 3
    assert_same_fit(est, reference)
    assert est.training_time_ > earlier > 0  # the killed process's training counts
    assert list(tmp_path.iterdir()) == []  # a finished fit removes its file


def test_an_interrupted_fit_resumes_from_its_last_save(data, reference, tmp_path, monkeypatch,
                                                       device):
    """Ctrl-C keeps the best weights so far and the last save; the next fit goes on."""
    calls = {"n": 0}
    original = training.lr_factor

    def interrupt_in_epoch_five(step, total, warmup):
        calls["n"] += 1
        if calls["n"] == 4 * STEPS_PER_EPOCH + 3:
            raise KeyboardInterrupt
        return original(step, total, warmup)

    monkeypatch.setattr(training, "lr_factor", interrupt_in_epoch_five)
    est = small(tmp_path, device=device)
    with pytest.warns(RuntimeWarning, match="interrupted"), pytest.raises(KeyboardInterrupt):
        est.fit(data)
    assert est.n_iter_ == 4
    monkeypatch.undo()
    est.fit(data)
    assert_same_fit(est, reference)


def test_saving_changes_nothing_and_every_fit_has_its_own_file(data, reference, tmp_path,
                                                                 monkeypatch, device):
    kill_after_saves(monkeypatch, 2)
    with pytest.raises(Killed):
        small(tmp_path, device=device).fit(data)
    first = sorted(tmp_path.glob("fit-*.pt"))
    monkeypatch.undo()
    # other data, another setting, another seed: each a fit of its own, started afresh
    other_data = small(tmp_path, max_epochs=3).fit(data[:500])
    assert_same_fit(other_data, small(max_epochs=3).fit(data[:500]))
    other_rate = small(tmp_path, max_epochs=3, learning_rate=1e-3).fit(data)
    assert_same_fit(other_rate, small(max_epochs=3, learning_rate=1e-3).fit(data))
    assert sorted(tmp_path.glob("fit-*.pt")) == first  # the killed fit's file is untouched
    # masks that differ beyond what their repr shows (numpy elides long arrays)
    a = np.zeros((400, 6), dtype=bool)
    b = a.copy()
    b[200, 3] = True
    assert repr(a) == repr(b)
    assert small(condition_masks=a)._identity() != small(condition_masks=b)._identity()
    # a design constant that no parameter sets (here: attention heads that keep the edges)
    other = copy.deepcopy(reference.model_)
    for block in other.network.modules():
        if hasattr(block, "edge_heads"):
            block.edge_heads = 1
    assert other.describe() != reference.model_.describe()
    assert small()._identity(other) != small()._identity(reference.model_)
    # how to run it (verbosity, threads, the interval) is not what makes the fit
    est = small(tmp_path, verbose=1, n_threads=1, device=device)
    est.set_params(training_options={"ema_decay": "auto", "checkpoint_dir": str(tmp_path),
                                     "checkpoint_interval": 3600})
    est.fit(data)
    assert_same_fit(est, reference)
    assert list(tmp_path.glob("fit-*.pt")) == []


def test_a_save_that_fails_warns_and_the_fit_goes_on(data, reference, tmp_path,
                                                     monkeypatch, device):
    def disk_full(obj, fh):
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    est = small(tmp_path, device=device)
    with pytest.warns(RuntimeWarning, match="No space left.*training goes on"):
        est.fit(data)
    assert_same_fit(est, reference)
    assert list(tmp_path.iterdir()) == []


def test_the_checkpoint_needs_an_int_random_state(data, tmp_path):
    est = small(tmp_path, random_state=None)
    with pytest.raises(ValueError, match="int random_state"):
        est.fit(data)
    assert "model_" not in est.__dict__
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options, match", [
    ({"checkpoint_dir": ""}, "checkpoint_dir must be"),
    ({"checkpoint_dir": 3}, "checkpoint_dir must be"),
    ({"checkpoint_dir": "x", "checkpoint_interval": -1}, "checkpoint_interval must be"),
    ({"checkpoint_dir": "x", "checkpoint_interval": float("nan")}, "checkpoint_interval"),
])
def test_bad_checkpoint_options_are_refused(data, options, match, tmp_path):
    est = SimformerEstimator(**{**SMALL, "training_options": options})
    with pytest.raises(ValueError, match=match):
        est.fit(data)
    assert "model_" not in est.__dict__


def test_a_directory_that_is_a_file_is_refused(data, tmp_path):
    (tmp_path / "taken").write_text("")
    est = small(tmp_path / "taken")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        est.fit(data)
    assert "model_" not in est.__dict__


def test_an_unreadable_or_foreign_file_is_a_clear_error_and_is_kept(data, tmp_path,
                                                                     monkeypatch):
    kill_after_saves(monkeypatch, 1)
    with pytest.raises(Killed):
        small(tmp_path).fit(data)
    monkeypatch.undo()
    (path,) = tmp_path.glob("fit-*.pt")
    path.write_bytes(b"not a checkpoint")
    est = small(tmp_path)
    with pytest.raises(ValueError, match="cannot be read.*remove it"):
        est.fit(data)
    assert "model_" not in est.__dict__
    assert path.read_bytes() == b"not a checkpoint"
    torch.save({"fingerprint": "another fit", "format": 1}, path)
    with pytest.raises(ValueError, match="another fit's state"):
        small(tmp_path).fit(data)
    assert path.exists()


def test_the_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    ckpt = Checkpoint(tmp_path, fingerprint("a fit"), interval=0)
    ckpt.save({"epoch": 1})

    def broken(obj, fh):
        fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save({"epoch": 2})
    monkeypatch.undo()
    assert ckpt.load()["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.path.name]  # no temporary left


def test_fingerprints_tell_data_and_settings_apart():
    x = torch.arange(6.0)
    assert fingerprint(x, {"a": 1}) == fingerprint(x.clone(), {"a": 1})
    assert fingerprint(x, {"a": 1}) != fingerprint(x, {"a": 2})
    assert fingerprint(x) != fingerprint(x.reshape(2, 3))
    assert fingerprint(x) != fingerprint(x.double())
    assert fingerprint(x) != fingerprint(x + 1e-7)
    assert fingerprint(None) != fingerprint(x)


def test_the_option_persists_with_the_estimator(data, tmp_path):
    est = small(tmp_path, max_epochs=1).fit(data)
    save(est, tmp_path / "model.skf")
    loaded = load(tmp_path / "model.skf")
    assert loaded.get_params()["training_options"] == est.get_params()["training_options"]
    again = pickle.loads(pickle.dumps(est))
    assert again.training_options == est.training_options
    assert np.array_equal(again.sample(3, random_state=0), est.sample(3, random_state=0))
    assert sorted(os.listdir(tmp_path)) == ["model.skf"]
