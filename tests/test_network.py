"""Tests for :class:`skformer.network.MaskedTransformer`."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from skformer.network import MaskedTransformer


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _net(n_tokens=4, d_model=16, n_layers=2, n_heads=2, seed=0) -> MaskedTransformer:
    """A small network with its zero-initialised head perturbed, so outputs are non-trivial."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MaskedTransformer(n_tokens, d_model=d_model, n_layers=n_layers, n_heads=n_heads)
    with torch.no_grad():
        net.head.weight.normal_(generator=_gen(seed + 1000))
        net.head.bias.normal_(generator=_gen(seed + 2000))
    return net


def _inputs(batch: int, tokens: int, seed: int = 0):
    """Values, times and a mixed condition mask, all on the CPU."""
    g = _gen(seed)
    x = torch.randn(batch, tokens, generator=g)
    t = torch.randn(batch, generator=g)
    observed = torch.rand(batch, tokens, generator=g) < 0.5
    return x, t, observed


# ---------------------------------------------------------------------------- shapes / init


@pytest.mark.parametrize(
    ("batch", "tokens", "d_model", "n_layers", "n_heads"),
    [(1, 1, 8, 1, 1), (2, 3, 16, 2, 4), (5, 7, 32, 1, 8), (3, 4, 12, 3, 3), (4, 2, 6, 1, 2)],
)
@pytest.mark.parametrize("edges_kind", ["none", "shared", "per-sample"])
def test_output_shape(batch, tokens, d_model, n_layers, n_heads, edges_kind):
    net = _net(tokens, d_model, n_layers, n_heads)
    x, t, observed = _inputs(batch, tokens)
    edges = {
        "none": None,
        "shared": torch.ones(tokens, tokens, dtype=torch.bool),
        "per-sample": torch.ones(batch, tokens, tokens, dtype=torch.bool),
    }[edges_kind]
    out = net(x, t, observed, edges)
    assert out.shape == (batch, tokens)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert len(net.blocks) == n_layers


def test_head_is_zero_initialised():
    net = MaskedTransformer(3, d_model=8, n_layers=1, n_heads=2)
    x, t, observed = _inputs(4, 3)
    assert torch.equal(net(x, t, observed), torch.zeros(4, 3))


@pytest.mark.parametrize(("d_model", "n_heads"), [(10, 3), (8, 3), (6, 4), (7, 2)])
def test_d_model_not_divisible_by_n_heads(d_model, n_heads):
    with pytest.raises(ValueError, match=rf"d_model \({d_model}\) must be divisible by n_heads"):
        MaskedTransformer(3, d_model=d_model, n_heads=n_heads)


def test_observed_mask_shared_over_batch():
    """A (tokens,) condition mask equals the same mask repeated over the batch."""
    net = _net(4)
    x, t, _ = _inputs(3, 4)
    observed = torch.tensor([True, False, False, True])
    torch.testing.assert_close(net(x, t, observed), net(x, t, observed.expand(3, 4)))


# ---------------------------------------------------------------------------- gradients


def test_zero_head_blocks_gradients_to_the_body():
    """Documents why the other tests perturb the head first."""
    net = MaskedTransformer(3, d_model=8, n_layers=1, n_heads=2)
    x, t, observed = _inputs(4, 3)
    net(x, t, observed).pow(2).sum().backward()
    assert net.value.weight.grad is not None
    assert torch.count_nonzero(net.value.weight.grad) == 0


@pytest.mark.parametrize("edges_kind", ["none", "per-sample"])
def test_gradients_reach_every_parameter(edges_kind):
    net = _net(4, d_model=16, n_layers=2, n_heads=4)
    x, t, observed = _inputs(6, 4)
    observed[0] = torch.tensor([True, False, True, False])  # both condition states present
    edges = None
    if edges_kind == "per-sample":
        edges = torch.rand(6, 4, 4, generator=_gen(1)) < 0.6
        edges |= torch.eye(4, dtype=torch.bool)
    target = torch.randn(6, 4, generator=_gen(2))
    loss = (net(x, t, observed, edges) - target).pow(2).mean()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert torch.count_nonzero(p.grad) > 0, name
    # every row of the two lookup tables takes part
    assert (net.token_id.weight.grad.abs().sum(dim=1) > 0).all()
    assert (net.condition.weight.grad.abs().sum(dim=1) > 0).all()


def test_gradient_wrt_inputs():
    net = _net(3)
    x, t, observed = _inputs(2, 3)
    x.requires_grad_(True)
    t.requires_grad_(True)
    net(x, t, observed).sum().backward()
    assert torch.count_nonzero(x.grad) > 0
    assert torch.count_nonzero(t.grad) > 0


# ---------------------------------------------------------------------------- edge masks


def _self_only_row0(tokens: int) -> torch.Tensor:
    """Full attention, except that token 0 attends only to itself."""
    edges = torch.ones(tokens, tokens, dtype=torch.bool)
    edges[0] = False
    edges[0, 0] = True
    return edges


@pytest.mark.parametrize("n_layers", [1, 3])
@pytest.mark.parametrize("per_sample", [False, True])
def test_edge_mask_blocks_information(n_layers, per_sample):
    tokens, batch = 3, 4
    net = _net(tokens, n_layers=n_layers)
    x, t, observed = _inputs(batch, tokens)
    edges = _self_only_row0(tokens)
    if per_sample:
        edges = edges.expand(batch, -1, -1)
    base = net(x, t, observed, edges)
    for j in (1, 2):
        x2 = x.clone()
        x2[:, j] += 3.0
        out = net(x2, t, observed, edges)
        torch.testing.assert_close(out[:, 0], base[:, 0], rtol=0, atol=1e-6)
        assert (out[:, j] - base[:, j]).abs().min() > 1e-4
    # sanity: without the mask, token 0 does see token 1
    x2 = x.clone()
    x2[:, 1] += 3.0
    assert (net(x2, t, observed)[:, 0] - net(x, t, observed)[:, 0]).abs().min() > 1e-4


def test_edge_mask_blocks_observed_state_of_other_tokens():
    net = _net(3)
    x, t, observed = _inputs(2, 3)
    edges = _self_only_row0(3)
    flipped = observed.clone()
    flipped[:, 1:] = ~flipped[:, 1:]
    a, b = net(x, t, observed, edges), net(x, t, flipped, edges)
    torch.testing.assert_close(a[:, 0], b[:, 0], rtol=0, atol=1e-6)
    assert (a[:, 1:] - b[:, 1:]).abs().max() > 1e-4


@pytest.mark.parametrize(("n_layers", "reaches"), [(1, False), (2, True), (3, True)])
def test_edge_mask_information_travels_one_hop_per_layer(n_layers, reaches):
    """Chain 0 <- 1 <- 2: token 2 reaches token 0 only with at least two layers."""
    net = _net(3, n_layers=n_layers)
    x, t, observed = _inputs(2, 3)
    edges = torch.tensor([[1, 1, 0], [0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    x2 = x.clone()
    x2[:, 2] -= 2.0
    delta = (net(x2, t, observed, edges)[:, 0] - net(x, t, observed, edges)[:, 0]).abs()
    if reaches:
        assert delta.min() > 1e-5
    else:
        assert delta.max() <= 1e-6


@pytest.mark.parametrize("seed", [0, 1])
def test_per_sample_mask_equal_rows_matches_shared(seed):
    batch, tokens = 5, 4
    net = _net(tokens, n_heads=4, seed=seed)
    x, t, observed = _inputs(batch, tokens, seed)
    shared = (torch.rand(tokens, tokens, generator=_gen(seed + 7)) < 0.5) | torch.eye(
        tokens, dtype=torch.bool
    )
    per_sample = shared.expand(batch, tokens, tokens).clone()
    a = net(x, t, observed, shared)
    b = net(x, t, observed, per_sample)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (a - net(x, t, observed)).abs().max() > 1e-4  # the mask does something


def test_per_sample_masks_apply_to_their_own_sample():
    batch, tokens = 3, 4
    net = _net(tokens)
    x, t, observed = _inputs(batch, tokens)
    masks = torch.rand(batch, tokens, tokens, generator=_gen(3)) < 0.5
    masks |= torch.eye(tokens, dtype=torch.bool)
    out = net(x, t, observed, masks)
    for b in range(batch):
        alone = net(x[b : b + 1], t[b : b + 1], observed[b : b + 1], masks[b])
        torch.testing.assert_close(out[b : b + 1], alone, rtol=1e-5, atol=1e-6)


def test_full_edge_mask_equals_no_mask():
    net = _net(4)
    x, t, observed = _inputs(3, 4)
    full = torch.ones(4, 4, dtype=torch.bool)
    torch.testing.assert_close(net(x, t, observed, full), net(x, t, observed), rtol=1e-5,
                               atol=1e-6)


# ---------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("token", [0, 2])
def test_condition_state_changes_outputs(token):
    net = _net(3)
    x, t, _ = _inputs(4, 3)
    latent = torch.zeros(4, 3, dtype=torch.bool)
    observed = latent.clone()
    observed[:, token] = True
    delta = (net(x, t, observed) - net(x, t, latent)).abs()
    assert (delta[:, token] > 1e-4).all()
    assert (delta.sum(dim=1) > 1e-4).all()


def test_condition_embedding_is_what_changes_outputs():
    net = _net(3)
    x, t, _ = _inputs(4, 3)
    with torch.no_grad():
        net.condition.weight[1] = net.condition.weight[0]
    a = net(x, t, torch.zeros(4, 3, dtype=torch.bool))
    b = net(x, t, torch.ones(4, 3, dtype=torch.bool))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_time_and_token_identity_change_outputs():
    net = _net(3)
    x, t, observed = _inputs(4, 3)
    base = net(x, t, observed)
    assert (net(x, t + 1.0, observed) - base).abs().min() > 1e-5
    same = torch.zeros(4, 3)
    out = net(same, t, torch.zeros(4, 3, dtype=torch.bool))
    assert (out[:, 0] - out[:, 1]).abs().min() > 1e-5  # equal inputs, different token ids


# ---------------------------------------------------------------------------- determinism


def _seeded_output(seed: int) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MaskedTransformer(4, d_model=16, n_layers=2, n_heads=2)
        torch.nn.init.normal_(net.head.weight)
        x = torch.randn(3, 4)
        t = torch.randn(3)
        observed = torch.rand(3, 4) < 0.5
        return net(x, t, observed).detach()


def test_determinism_under_fork_rng():
    before = torch.get_rng_state()
    a = _seeded_output(123)
    b = _seeded_output(123)
    c = _seeded_output(124)
    assert torch.equal(torch.get_rng_state(), before)  # fork_rng restored the global RNG
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_parameters_depend_only_on_seed():
    def params(seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return [p.detach().clone() for p in MaskedTransformer(3, 8, 1, 2).parameters()]

    for p, q in zip(params(5), params(5), strict=True):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(params(5), params(6), strict=True))


# ---------------------------------------------------------------------------- device


@pytest.mark.parametrize("edges_kind", ["none", "shared", "per-sample"])
def test_runs_on_device(device, edges_kind):
    batch, tokens = 3, 4
    net = _net(tokens)
    x, t, observed = _inputs(batch, tokens)
    edges = {
        "none": None,
        "shared": _self_only_row0(tokens),
        "per-sample": _self_only_row0(tokens).expand(batch, -1, -1),
    }[edges_kind]
    reference = net(x, t, observed, edges)

    moved = copy.deepcopy(net).to(device)
    assert all(p.device.type == device.type for p in moved.parameters())
    assert all(b.device.type == device.type for b in moved.buffers())
    out = moved(
        x.to(device),
        t.to(device),
        observed.to(device),
        None if edges is None else edges.to(device),
    )
    assert out.device.type == device.type
    assert out.shape == (batch, tokens)
    torch.testing.assert_close(out.cpu(), reference, rtol=1e-3, atol=1e-4)

    out.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.device.type == device.type
               for p in moved.parameters())


# ---------------------------------------------------------------------------- one token per group
GROUPS = [[0, 2], [1], [3, 4, 5]]  # unequal, non-contiguous


def _grouped(n_layers=2, seed=0):
    torch.manual_seed(seed)
    net = MaskedTransformer(6, d_model=16, n_layers=n_layers, n_heads=2, groups=GROUPS)
    for p in (net.head_weight, net.head_bias):  # zero-initialised heads say nothing
        torch.nn.init.normal_(p)
    return net


def test_grouped_tokens_read_and_write_columns_in_place():
    net = _grouped()
    assert net.n_token_slots == 3
    x, obs = torch.randn(5, 6), torch.zeros(5, 6, dtype=torch.bool)
    t = torch.zeros(5)
    out = net(x, t, obs)
    assert out.shape == (5, 6)
    # a column's output comes from its own group's head: permuting the columns of another group
    # changes nothing for a network that cannot see that group
    blind = torch.eye(6, dtype=torch.bool)
    for g in GROUPS:
        blind[np.ix_(g, g)] = True
    x2 = x.clone()
    x2[:, [3, 4, 5]] = torch.randn(5, 3)
    a, b = net(x, t, obs, blind), net(x2, t, obs, blind)
    torch.testing.assert_close(a[:, [0, 1, 2]], b[:, [0, 1, 2]])
    assert not torch.allclose(a[:, [3, 4, 5]], b[:, [3, 4, 5]])
    # with full attention, group {3, 4, 5} informs the others
    assert not torch.allclose(net(x, t, obs)[:, [0, 2]], net(x2, t, obs)[:, [0, 2]])


def test_grouped_tokens_see_observed_flags_per_column():
    net = _grouped()
    x, t = torch.randn(4, 6), torch.zeros(4)
    none = torch.zeros(4, 6, dtype=torch.bool)
    one = none.clone()
    one[:, 2] = True  # the second column of group 0 only
    assert not torch.allclose(net(x, t, none), net(x, t, one))


def test_grouped_heads_start_at_zero_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = MaskedTransformer(6, d_model=16, n_layers=2, n_heads=2, groups=GROUPS)
    x, t, obs = torch.randn(4, 6), torch.randn(4), torch.rand(4, 6) < 0.5
    assert torch.equal(net(x, t, obs), torch.zeros(4, 6))
    torch.nn.init.normal_(net.head_weight)
    (net(x, t, obs) ** 2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_grouped_config_round_trip_and_bad_groups():
    net = _grouped()
    twin = MaskedTransformer(**net.config())
    assert twin.config() == net.config() and twin.groups == GROUPS
    assert {k: v.shape for k, v in twin.state_dict().items()} == {
        k: v.shape for k, v in net.state_dict().items()}
    for bad in ([[0, 1], [1, 2, 3, 4, 5]], [[0, 1, 2], [], [3, 4, 5]], [[0, 1], [2, 3]]):
        with pytest.raises(ValueError, match="partition"):
            MaskedTransformer(6, 16, 1, 2, groups=bad)


def test_grouped_runs_on_device(device):
    net = _grouped().to(device)
    out = net(torch.randn(3, 6, device=device), torch.zeros(3, device=device),
              torch.zeros(6, dtype=torch.bool, device=device))
    assert out.device == device and out.shape == (3, 6)


def test_math_attention_equals_sdpa_under_a_mask():
    """Both attention implementations (``network.ATTENTION``) give the same outputs, and
    a fully masked-out key is ignored by both."""
    import skformer.network as network
    from skformer.network import attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 5, 8, generator=gen) for _ in range(3))
    mask = (torch.rand(3, 1, 5, 5, generator=gen) < 0.6) | torch.eye(5, dtype=torch.bool)
    before = network.ATTENTION
    try:
        outs = {}
        for kind in ("sdpa", "math"):
            network.ATTENTION = kind
            outs[kind] = attention(q, k, v, mask)
        torch.testing.assert_close(outs["math"], outs["sdpa"], atol=1e-5, rtol=1e-5)
        network.ATTENTION = "math"
        v2 = v.clone()
        v2[..., 4, :] += 100.0  # token 4 hidden from everyone but itself
        hide = mask.clone()
        hide[..., :4, 4] = False
        torch.testing.assert_close(attention(q, k, v, hide)[..., :4, :],
                                   attention(q, k, v2, hide)[..., :4, :])
    finally:
        network.ATTENTION = before


@pytest.mark.parametrize("per_sample", [False, True])
def test_edge_heads_restrict_only_their_heads(per_sample):
    """With ``edge_heads=k`` an edge mask binds the first k heads: with k = n_heads it blocks
    information as before, with k = 0 it changes nothing, in between the other heads still
    carry it; missing tokens stay hidden from every head; the setting persists in config."""
    tokens, batch = 3, 4
    x, t, observed = _inputs(batch, tokens)
    edges = _self_only_row0(tokens)
    if per_sample:
        edges = edges.expand(batch, -1, -1)
    x2 = x.clone()
    x2[:, 1] += 3.0
    outs = {}
    for k in (0, 1, 2):
        net = _net(tokens, n_heads=2)
        net.edge_heads = None if k == 2 else k
        outs[k] = net(x2, t, observed, edges)[:, 0] - net(x, t, observed, edges)[:, 0]
        if k == 0:
            torch.testing.assert_close(net(x, t, observed, edges), net(x, t, observed))
    torch.testing.assert_close(outs[2], torch.zeros_like(outs[2]), rtol=0, atol=1e-6)
    assert outs[0].abs().min() > 1e-4 and outs[1].abs().min() > 1e-4
    # a missing token is hidden from the free heads too (every head's mask: only itself
    # attends to it), and the edge mask binds the first head alone
    net = _net(tokens, n_heads=2)
    net.edge_heads = 1
    missing = torch.zeros(batch, tokens, dtype=torch.bool)
    missing[:, 1] = True
    mask = net._mask(edges, missing, batch, tokens, x.device)
    assert mask.shape == (batch, 2, tokens, tokens)
    assert not mask[:, :, [0, 2], 1].any() and mask[:, :, 1, 1].all()
    assert not mask[:, 0, 0, 2].any() and mask[:, 1, 0, 2].all()
    made = MaskedTransformer(tokens, d_model=16, n_layers=2, n_heads=2, edge_heads=1)
    assert made.config()["edge_heads"] == 1
    assert MaskedTransformer(**made.config()).edge_heads == 1
    assert "edge_heads" not in MaskedTransformer(tokens, 16, 2, 2, edge_heads=2).config()
    with pytest.raises(ValueError, match="edge_heads"):
        MaskedTransformer(tokens, 16, 2, 2, edge_heads=3)
