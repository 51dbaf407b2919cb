"""bf16 arithmetic: chosen only where the device has bf16 units, float32 outputs, log densities
in float32, the exact Gaussian posterior kept, and the choice persisted."""

from __future__ import annotations

import io
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch

import skformer.network as network_module
from skformer import SimformerEstimator, load, save
from skformer.network import MaskedTransformer, bf16_units, float32

AMX = frozenset({"fpu", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
NO_AMX = frozenset({"fpu", "avx2", "avx512f", "avx512_bf16"})  # e.g. an AMD EPYC (Zen 4)
NOISE = 0.5


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU has the given flags (``cpu_flags(AMX)``); the cached answers are
    forgotten before and after."""

    def pretend(flags: frozenset) -> None:
        monkeypatch.setattr(network_module, "_cpu_flags", lambda: flags)
        bf16_units.cache_clear()

    yield pretend
    bf16_units.cache_clear()


def _pairs(n: int, seed: int = 0) -> np.ndarray:
    """theta ~ N(0, I_2), x = theta + 0.5 eps."""
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((n, 2))
    return np.hstack([theta, theta + NOISE * rng.standard_normal((n, 2))])


def _fit(n: int = 300, **params) -> SimformerEstimator:
    small = dict(variables=[2, 2], d_model=16, n_layers=2, n_heads=2, max_epochs=2,
                 batch_size=64, device="cpu", random_state=0, precision="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SimformerEstimator(**{**small, **params}).fit(_pairs(n))


# ------------------------------------------------------------------ which precision
@pytest.mark.parametrize("flags, expected", [(AMX, True), (NO_AMX, False)])
def test_bf16_units_on_a_cpu_need_amx(cpu_flags, flags, expected):
    cpu_flags(flags)
    assert bf16_units("cpu") is expected
    assert bf16_units(torch.device("cpu")) is expected


@pytest.mark.parametrize("tiles", [True, False])
def test_without_cpu_flags_torch_is_asked(cpu_flags, monkeypatch, tiles):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: tiles, raising=False)
    cpu_flags(frozenset())  # no /proc/cpuinfo (not Linux)
    assert bf16_units("cpu") is tiles


def test_auto_never_chooses_bf16_on_a_cpu_without_bf16_units(cpu_flags):
    cpu_flags(NO_AMX)
    est = _fit()
    assert est.precision_ == "float32"
    assert est.model_.network.precision == "float32"


def test_auto_chooses_bf16_on_a_cpu_with_amx(cpu_flags):
    cpu_flags(AMX)
    assert _fit().precision_ == "bfloat16"
    assert _fit(precision="float32").precision_ == "float32"


def test_the_default_is_float32_even_with_amx(cpu_flags):
    """bf16 cost gaussian_mixture 0.007-0.020 in C2ST (docs/speed.md): an opt-in."""
    cpu_flags(AMX)
    assert SimformerEstimator().precision == "float32"
    assert _fit(precision=SimformerEstimator().precision).precision_ == "float32"


def test_asking_for_bf16_without_bf16_units_is_a_clear_error(cpu_flags):
    cpu_flags(NO_AMX)
    with pytest.raises(ValueError, match="precision='bfloat16' needs a device with bf16 units"):
        _fit(precision="bfloat16")


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        _fit(precision="float16")


# ------------------------------------------------------------------ the arithmetic
def _network() -> MaskedTransformer:
    torch.manual_seed(0)
    net = MaskedTransformer(6, 32, 2, 2, groups=[[0, 1, 2], [3, 4], [5]],
                            group_embedding="readout")
    for p in net.parameters():  # the head starts at zero: give every weight a size
        torch.nn.init.normal_(p, std=0.2)
    return net


def test_bf16_runs_under_autocast_and_answers_in_float32(cpu_flags):
    cpu_flags(AMX)
    net = _network()
    x, t, observed = torch.randn(16, 6), torch.rand(16), torch.rand(16, 6) < 0.5
    exact = net(x, t, observed)
    net.precision = "bfloat16"
    seen = []
    hook = net.blocks[0].qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = net(x, t, observed)
    hook.remove()
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: outputs of size ~0.5 agree to about 1e-2, not exactly
    err = (out - exact).abs().max().item()
    assert 0 < err < 0.05 * exact.abs().max().item()
    with float32():
        assert torch.equal(net(x, t, observed), exact)


def test_bf16_does_nothing_on_a_device_without_bf16_units(cpu_flags):
    cpu_flags(NO_AMX)  # a model saved in bf16, loaded on such a CPU, runs in float32
    net = _network()
    x, t, observed = torch.randn(4, 6), torch.rand(4), torch.rand(4, 6) < 0.5
    exact = net(x, t, observed)
    net.precision = "bfloat16"
    assert torch.equal(net(x, t, observed), exact)


def test_the_validation_loss_is_float32_and_the_training_loss_bf16(cpu_flags):
    """The validation loss picks the best epoch and stops training: its late improvements are
    below bf16's rounding, so it is taken in float32."""
    from skformer.dynamics import ScoreDynamics
    from skformer.training import _loss, _validate

    cpu_flags(AMX)
    net = _network()
    net.precision = "bfloat16"
    seen = []
    net.blocks[0].qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(32, 6, generator=gen), torch.rand(32, 6, generator=gen) < 0.5, None,
             ScoreDynamics().training_sigmas(32, gen), torch.randn(32, 6, generator=gen), None)
    _validate(ScoreDynamics(), net, batch, 8)
    assert seen == [torch.float32]
    seen.clear()
    _loss(ScoreDynamics(), net, batch)
    assert seen == [torch.bfloat16]


def test_log_densities_are_float32_whatever_the_precision(cpu_flags):
    cpu_flags(AMX)
    est = _fit(max_epochs=3)
    assert est.precision_ == "bfloat16"
    theta = np.array([[0.3, -0.2], [1.0, 0.5]])
    x_o = np.array([0.4, 0.1])
    in_bf16 = est.posterior().log_prob(theta, x_o)
    est.model_.precision = "float32"
    assert np.array_equal(est.posterior().log_prob(theta, x_o), in_bf16)


def test_bf16_training_gives_the_exact_gaussian_posterior(cpu_flags):
    """theta ~ N(0, I), x = theta + 0.5 eps: theta | x ~ N(x / 1.25, 0.2 I). Over seeds 0-2 the
    fits in bf16 and in float32 agree to 0.003 in the posterior's means and 0.002 in its
    spreads, both within 0.032 of the exact means and at 0.89-1.12 of the exact spread."""
    cpu_flags(AMX)
    x_o = np.array([0.8, -0.6])
    draws = {}
    for precision in ("bfloat16", "float32"):
        est = _fit(1000, d_model=32, n_layers=3, max_epochs=30, batch_size=128,
                   precision=precision)
        assert est.precision_ == precision
        draws[precision] = est.posterior().sample(4000, x_o, random_state=1)
    bf16, f32 = draws["bfloat16"], draws["float32"]
    np.testing.assert_allclose(bf16.mean(0), x_o / 1.25, atol=0.06)
    np.testing.assert_allclose(bf16.std(0), np.sqrt(0.2), rtol=0.2)
    np.testing.assert_allclose(bf16.mean(0), f32.mean(0), atol=0.02)
    np.testing.assert_allclose(bf16.std(0), f32.std(0), rtol=0.03)


# ------------------------------------------------------------------ persistence
def test_the_precision_persists_in_every_format(cpu_flags, tmp_path):
    cpu_flags(AMX)
    est = _fit()
    save(est, tmp_path / "m.skf")
    buf = io.BytesIO()
    joblib.dump(est, buf)
    buf.seek(0)
    for twin in (load(tmp_path / "m.skf"), pickle.loads(pickle.dumps(est)), joblib.load(buf)):
        assert twin.precision_ == "bfloat16"
    assert est.model_.describe()["training"]["precision"] == "bfloat16"


def test_a_float32_model_is_described_as_before(cpu_flags):
    cpu_flags(NO_AMX)
    assert "precision" not in _fit().model_.describe()["training"]


def test_load_refuses_an_unknown_precision(cpu_flags):
    from skformer.model import SimformerModel

    cpu_flags(AMX)
    model = _fit().model_
    description = model.describe()
    description["training"]["precision"] = "float8"
    with pytest.raises(ValueError, match="training precision must be one of"):
        SimformerModel.from_description(description, model.state_dict(), torch.device("cpu"))
