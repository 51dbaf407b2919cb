"""The masked Transformer: one token per scalar column of the joint vector, or per column group.

Each token embeds its (possibly noisy) value, its identity (which column it is) and its condition
state (observed or latent); a Fourier embedding of the diffusion time is added to every token.
With ``groups`` the blocks attend over one token per group of columns (a chunk of a variable)
but the last, which attends over one token per column ("readout", ``group_embedding``): every
column keeps its own value and state (latent, observed or missing) and its own output, so the
rest of skformer still sees columns, a mask may observe part of a group, and the other blocks
cost work for far fewer tokens.
Pre-LayerNorm blocks attend under a per-sample boolean mask built from the edge mask, and a
per-token head reads one output per column (Gloeckler et al., "All-in-one simulation-based
inference", ICML 2024, section 3).

Function-valued data (``position_dim > 0``): a token may also carry where (or when) its value
was observed. Columns then name an *identity* (``identities``: the columns of one function
share one) and each token adds a Fourier embedding of its position, so that one network serves
any number of tokens of that function at any positions (section 3.3 of the paper, "tokens
with metadata").
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import re

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MaskedTransformer", "LATENT", "OBSERVED", "MISSING", "attention", "FourierPosition",
           "PRECISIONS", "bf16_units", "float32"]

LATENT, OBSERVED, MISSING = 0, 1, 2
"""Column states, as ``uint8`` values of the ``observed`` argument (a bool tensor means only
latent or observed). A missing column has no value: no other token attends to it (with several
columns per token, a per-column flag says so), and it carries no loss."""


class FourierTime(nn.Module):
    """Scalar time -> ``dim`` features: fixed log-spaced sinusoids, then a small MLP."""

    def __init__(self, dim: int, n_freqs: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(100.0), n_freqs)))
        self.mlp = nn.Sequential(nn.Linear(2 * n_freqs, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: tensor of shape (batch,) -> (batch, dim)."""
        angles = t[:, None] * self.freqs
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))


class FourierPosition(nn.Module):
    """Positions of ``dim`` coordinates -> ``d_model`` features: the coordinates and fixed
    log-spaced sinusoids of each (angular frequencies 0.5 to 64, for positions in standard
    units of about [-1, 1]), then a learnt linear projection. A token without a position (NaN)
    gets zero features."""

    def __init__(self, dim: int, d_model: int, n_freqs: int = 16):
        super().__init__()
        self.dim = dim
        self.register_buffer("freqs", torch.exp(torch.linspace(math.log(0.5), math.log(64.0),
                                                               n_freqs)))
        self.proj = nn.Linear(dim * (2 * n_freqs + 1), d_model)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions: (batch, tokens, dim), NaN for none -> (batch, tokens, d_model)."""
        has = ~torch.isnan(positions).any(-1, keepdim=True)
        u = positions.nan_to_num(0.0)
        angles = u[..., None] * self.freqs  # (batch, tokens, dim, n_freqs)
        feats = torch.cat([u[..., None], angles.sin(), angles.cos()], -1).flatten(-2)
        return torch.where(has, self.proj(feats), 0.0)


GROUP_EMBEDDINGS = ("linear", "mlp", "hourglass", "readout")

GROUP_EMBEDDING = "readout"
"""The design of new networks with tokens of several columns (see ``group_embedding``)."""

EDGE_HEADS = None
"""How many attention heads of each block an edge mask (a declared DAG) restricts in new
networks: None for all of them, an int k, or "half" (``n_heads // 2``); the other heads attend
to every token (missing tokens excepted), so a declared structure guides attention without
cutting the direct routes between variables."""


def edge_heads(n_heads: int, heads=None) -> int | None:
    """``heads`` (None, an int or "half"; None reads :data:`EDGE_HEADS`) resolved for a network
    of ``n_heads`` heads: None for every head."""
    heads = EDGE_HEADS if heads is None else heads
    if heads == "half":
        return n_heads // 2
    if heads is None:
        return None
    return min(int(heads), n_heads)

ATTENTION = "auto"
"""How attention is computed: "sdpa" (``F.scaled_dot_product_attention``), "math" (two matrix
products and a softmax), or "auto": "math" on a GPU for at most :data:`SMALL_T` tokens, where
the fused kernels pad every head's tiny attention matrix to their tile size
(``benchmarks/gpu.py`` measures both), on a CPU for at most :data:`SMALL_T_CPU` tokens
(where the fused kernel's fixed cost outweighs the work; ``benchmarks/cpu_profile.py
--attention``) and on a CPU in bf16 (where the fused kernel is about 4x slower), "sdpa"
otherwise (faster on CPUs in float32 from a few tokens on)."""

SMALL_T = 32
SMALL_T_CPU = 2


PRECISIONS = ("float32", "bfloat16")
"""The arithmetic a network may run in (its ``precision`` attribute): "bfloat16" runs its
matrix products under bf16 autocast (weights, inputs and outputs stay float32)."""


@functools.cache
def _cpu_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return frozenset()
    flags = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return frozenset(flags.group(1).split()) if flags else frozenset()


@functools.cache
def bf16_units(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware of its own: on a CPU, AMX tiles
    (``amx_bf16``, Intel Sapphire Rapids and later); on a GPU, bf16 support (compute
    capability 8.0 and later). CPUs with only AVX512-BF16 say False: unmeasured here. Asked
    once per device."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = _cpu_flags()
    if flags:
        return {"amx_tile", "amx_bf16"} <= flags
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)  # no /proc/cpuinfo
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


_FLOAT32 = contextvars.ContextVar("skformer_float32", default=False)


@contextlib.contextmanager
def float32():
    """Within this context every network runs in float32, whatever its ``precision`` (log
    densities: their divergence is taken through the network)."""
    token = _FLOAT32.set(True)
    try:
        yield
    finally:
        _FLOAT32.reset(token)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None) -> torch.Tensor:
    """Multi-head attention of (batch, heads, tokens, dim) tensors under a bool mask
    (True = may attend) broadcastable to (batch, heads, tokens, tokens)."""
    kind = ATTENTION
    if kind == "auto":
        small = q.shape[-2] <= (SMALL_T if q.is_cuda else SMALL_T_CPU)
        kind = "math" if small or (q.dtype == torch.bfloat16 and not q.is_cuda) else "sdpa"
    if kind == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


class Block(nn.Module):
    """Pre-LayerNorm Transformer block with masked multi-head self-attention."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            nn.SiLU(),
            nn.Linear(mlp_ratio * d_model, d_model),
        )

    def forward(self, h: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """h: (batch, tokens, d_model); attn_mask: (batch, 1, tokens, tokens) bool or None."""
        B, T, D = h.shape
        q, k, v = (
            self.qkv(self.norm1(h)).view(B, T, 3, self.n_heads, D // self.n_heads).unbind(dim=2)
        )
        a = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask)
        h = h + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return h + self.mlp(self.norm2(h))


class MaskedTransformer(nn.Module):
    """Maps (values, time, condition mask, edge mask) to one output per column.

    Parameters
    ----------
    n_tokens : int
        Number of scalar columns of the joint vector (the name is historical: with ``groups``
        there are fewer tokens than columns).
    d_model, n_layers, n_heads : int
        Width, depth and number of attention heads (``d_model % n_heads == 0``).
    groups : list of lists of int, optional
        One token per group of columns (e.g. a chunk of a variable): a token embeds each of its
        columns' value and state (latent, observed, missing) through weights of its own, and
        its head reads one output per column, so a mask may observe part of a token. None: one
        token per column, embedding value, column identity and condition state (the Simformer
        paper's tokens).
    group_embedding : {"readout", "hourglass", "mlp", "linear"}, default="linear"
        The design with ``groups`` (new models: :data:`GROUP_EMBEDDING`). "readout": the "mlp"
        design in every block but the last, which attends over one token per column (value,
        identity, state) plus its group's output and reads each column's output from its own
        token. "hourglass": every column is a token (value, identity, state) through the
        first and the last block, and one token per group (the mean of its columns and the
        group's identity) through the blocks between, added back to each of its columns.
        "mlp": one token per group throughout, embedding each column's value as latent and as
        observed and its observed and missing flags through the group's own linear layer plus
        a shared SiLU and linear layer; its head reads one output per column. "linear": as
        "mlp" with only the group's linear layer over value, observed and missing flags
        (models saved before the others existed).
    identities : list of int, optional
        One token per column: the identity embedding of each column (columns that sample one
        function share one). None: every column its own, ``0 .. n_tokens - 1``.
    position_dim : int, default=0
        Coordinates of a token's position (0: tokens carry none). Positions come with each
        call (:meth:`forward`); tokens without one pass NaN.
    edge_heads : int, optional
        How many heads of each block an edge mask restricts (the first ones); the others attend
        to every token. None: all heads.

    Attributes
    ----------
    precision : {"float32", "bfloat16"}
        The arithmetic of :meth:`forward` (not a constructor argument: the same weights run in
        either). "bfloat16" takes effect only on a device with bf16 units.
    """

    def __init__(self, n_tokens: int, d_model: int = 64, n_layers: int = 4, n_heads: int = 4,
                 groups: list[list[int]] | None = None, identities: list[int] | None = None,
                 position_dim: int = 0, group_embedding: str = "linear",
                 edge_heads: int | None = None):
        super().__init__()
        if group_embedding not in GROUP_EMBEDDINGS:
            raise ValueError(f"group_embedding must be one of {GROUP_EMBEDDINGS}; got "
                             f"{group_embedding!r}.")
        self.group_embedding = group_embedding
        self.precision = "float32"
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}).")
        self.n_tokens, self.d_model = n_tokens, d_model
        self.n_layers, self.n_heads = n_layers, n_heads
        if edge_heads is not None and not (isinstance(edge_heads, int)
                                           and 0 <= edge_heads <= n_heads):
            raise ValueError(f"edge_heads must be None or an int in [0, n_heads={n_heads}]; got "
                             f"{edge_heads!r}.")
        self.edge_heads = None if edge_heads == n_heads else edge_heads
        self.groups = None if groups is None else [[int(c) for c in g] for g in groups]
        self.identities = None if identities is None else [int(i) for i in identities]
        self.position_dim = int(position_dim)
        if self.groups is not None and (self.identities is not None or self.position_dim):
            raise ValueError("tokens with positions or shared identities need one token per "
                             "column (no groups).")
        if self.identities is not None and (
                len(self.identities) != n_tokens or min(self.identities) < 0):
            raise ValueError(f"identities must give one index >= 0 per column ({n_tokens}); got "
                             f"{identities}.")
        self.position = (FourierPosition(self.position_dim, d_model)
                         if self.position_dim > 0 else None)
        self._default_ids: dict[torch.device, torch.Tensor] = {}
        self._indexes: dict = {}
        if self.groups is not None:
            flat = sorted(c for g in self.groups for c in g)
            if flat != list(range(n_tokens)) or not all(self.groups):
                raise ValueError(f"groups must partition the {n_tokens} columns; got {groups}.")
        hourglass = groups is not None and group_embedding == "hourglass"
        readout = groups is not None and group_embedding == "readout"
        if self.groups is None or hourglass or readout:
            self.value = nn.Linear(1, d_model)
            n_ids = n_tokens if self.identities is None else max(self.identities) + 1
            self.token_id = nn.Embedding(n_ids, d_model)
            self.condition = nn.Embedding(2, d_model)
            self.head = nn.Linear(d_model, 1)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        if hourglass:  # per-column blocks first and last, one token per group between
            self.column_in = Block(d_model, n_heads)
            self.column_out = Block(d_model, n_heads)
            self.group_id = nn.Embedding(len(self.groups), d_model)
            self.up = nn.Linear(d_model, d_model)
        if readout:  # the last block per column, reading its group's token
            self.column_out = Block(d_model, n_heads)
            self.up = nn.Linear(d_model, d_model)
        if self.groups is not None and not hourglass:
            V, width = len(self.groups), max(len(g) for g in self.groups)
            # inputs per column: value, observed flag, missing flag ("linear"); value if latent,
            # value if observed, observed flag, missing flag (the others)
            n_in = (3 if group_embedding == "linear" else 4) * width
            bound = 1 / math.sqrt(n_in)  # nn.Linear's initialisation for n_in inputs
            self.embed_weight = nn.Parameter(torch.empty(V, n_in, d_model).uniform_(
                -bound, bound))
            self.embed_bias = nn.Parameter(torch.empty(V, d_model).uniform_(-bound, bound))
            if group_embedding in ("mlp", "readout"):
                self.embed_out = nn.Sequential(nn.SiLU(), nn.Linear(d_model, d_model))
            if not readout:
                self.head_weight = nn.Parameter(torch.zeros(V, d_model, width))
                self.head_bias = nn.Parameter(torch.zeros(V, width))
        self.time = FourierTime(d_model)
        middle = max(n_layers - 2, 0) if hourglass else max(n_layers - 1, 0) if readout \
            else n_layers
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(middle))
        self.norm = nn.LayerNorm(d_model)

    def _index(self, device: torch.device) -> torch.Tensor:
        """(tokens, width) column indexes of each token; column ``n_tokens`` is a zero column
        that pads short groups. Made once per device (not a buffer: it follows from groups)."""
        if device not in self._indexes:
            width = max(len(g) for g in self.groups)
            index = torch.full((len(self.groups), width), self.n_tokens, dtype=torch.long)
            for v, g in enumerate(self.groups):
                index[v, : len(g)] = torch.as_tensor(g)
            self._indexes[device] = index.to(device)
        return self._indexes[device]

    @property
    def n_token_slots(self) -> int:
        """Tokens the Transformer attends over: columns, or groups."""
        return self.n_tokens if self.groups is None else len(self.groups)

    def config(self) -> dict:
        """Constructor arguments: ``MaskedTransformer(**net.config())`` builds its twin."""
        out = {"n_tokens": self.n_tokens, "d_model": self.d_model, "n_layers": self.n_layers,
               "n_heads": self.n_heads}
        if self.groups is not None:
            out["groups"] = [list(g) for g in self.groups]
        if self.identities is not None:
            out["identities"] = list(self.identities)
        if self.position_dim:
            out["position_dim"] = self.position_dim
        if self.groups is not None and self._group_embedding != "linear":
            out["group_embedding"] = self._group_embedding
        if self._edge_heads is not None:
            out["edge_heads"] = self._edge_heads
        return out

    @property
    def _edge_heads(self) -> int | None:
        # pickles of networks made before edge_heads existed lack the attribute
        return getattr(self, "edge_heads", None)

    def _mask(self, edges, missing, batch: int, slots: int, device) -> torch.Tensor | None:
        """The blocks' attention mask: the edge mask on the first :attr:`edge_heads` heads, the
        others free of it (missing tokens stay hidden from every head)."""
        restricted = _attention_mask(edges, missing, batch, slots, device)
        k = self._edge_heads
        if k is None or edges is None:
            return restricted
        free = _attention_mask(None, missing, batch, slots, device)
        if free is None:
            free = torch.ones(1, 1, slots, slots, dtype=torch.bool, device=device)
        if restricted.ndim == 2:
            restricted = restricted[None, None]
        shape = (max(restricted.shape[0], free.shape[0]), 1, slots, slots)
        return torch.cat([restricted.expand(shape).expand(-1, k, -1, -1),
                          free.expand(shape).expand(-1, self.n_heads - k, -1, -1)], 1)

    @property
    def _group_embedding(self) -> str:
        # pickles of networks made before group_embedding existed lack the attribute
        if self.groups is None:
            return "linear"
        return getattr(self, "group_embedding", "linear")

    def _ids(self, device: torch.device) -> torch.Tensor:
        """The training columns' identities as a tensor on ``device`` (made once per device)."""
        if device not in self._default_ids:
            ids = range(self.n_tokens) if self.identities is None else self.identities
            self._default_ids[device] = torch.as_tensor(list(ids), device=device)
        return self._default_ids[device]

    def _embed(self, x, observed, missing, positions=None, identities=None):
        B, T = x.shape
        if self.groups is None:
            ids = self._ids(x.device) if identities is None else identities
            h = (self.value(x[..., None]) + self.token_id(ids)
                 + self.condition(observed.long().expand(B, T)))
            if positions is not None:
                h = h + self.position(positions.to(h.dtype))
            return h
        pad, index = x.new_zeros(B, 1), self._index(x.device)
        if missing is not None:  # a missing column has no value to embed
            x = torch.where(missing, 0.0, x)

        def per_token(columns):
            return torch.cat([columns.expand(B, T).to(x.dtype), pad], 1)[:, index]

        flags = [per_token(observed),
                 per_token(missing if missing is not None else x.new_zeros(1, T))]
        if self._group_embedding == "linear":
            inputs = torch.cat([per_token(x), *flags], -1)  # (B, V, 3 * width)
            return torch.einsum("bvi,vid->bvd", inputs, self.embed_weight) + self.embed_bias
        seen = observed.expand(B, T)
        values = [per_token(torch.where(seen, 0.0, x)), per_token(torch.where(seen, x, 0.0))]
        inputs = torch.cat([*values, *flags], -1)  # (B, V, 4 * width)
        h = torch.einsum("bvi,vid->bvd", inputs, self.embed_weight) + self.embed_bias
        return h + self.embed_out(h)

    def _read(self, h):
        if self.groups is None:
            return self.head(h).squeeze(-1)
        out = torch.einsum("bvd,vdw->bvw", h, self.head_weight) + self.head_bias
        y = out.new_zeros(out.shape[0], self.n_tokens + 1)
        y[:, self._index(h.device).flatten()] = out.flatten(1)  # padding: the extra column
        return y[:, : self.n_tokens]

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        observed: torch.Tensor,
        edges: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        identities: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Network output for every column (float32: with ``precision`` "bfloat16" the matrix
        products run under bf16 autocast where the device has bf16 units, see
        :func:`bf16_units`, outside a :func:`float32` context).

        Parameters
        ----------
        x : tensor of shape (batch, columns)
            Column values (already scaled by the dynamics' preconditioning).
        t : tensor of shape (batch,)
            Noise feature (the dynamics' ``c_noise``, e.g. a scaled log noise level).
        observed : tensor of shape (batch, columns) or (columns,)
            Condition state of each column: bool (True = observed), or ``uint8`` states
            (:data:`LATENT`, :data:`OBSERVED`, :data:`MISSING`).
        edges : bool tensor of shape (batch, columns, columns) or (columns, columns), optional
            ``edges[..., i, j]`` True lets column i attend to column j (with ``groups``, the
            first column of each group speaks for its group). None = full attention.
        positions : tensor of shape (batch, tokens, position_dim) or (1, tokens, position_dim)
            Each token's position (NaN: it has none); only with ``position_dim > 0``, and then
            required.
        identities : long tensor of shape (tokens,), optional
            Each token's identity, for a set of tokens other than the training columns (its
            length then sets the number of tokens). None: the training columns'.

        Returns
        -------
        tensor of shape (batch, columns)
        """
        if (getattr(self, "precision", "float32") == "bfloat16" and not _FLOAT32.get()
                and bf16_units(x.device)):
            with torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False):
                out = self._forward(x, t, observed, edges, positions, identities)
            return out.float()
        return self._forward(x, t, observed, edges, positions, identities)

    def _forward(self, x, t, observed, edges, positions, identities):
        missing = None
        if observed.dtype != torch.bool:  # states: missing columns possible
            missing, observed = observed == MISSING, observed == OBSERVED
        if (positions is None) != (self.position is None):
            raise ValueError("this network embeds positions: pass positions=" if positions is None
                             else "this network has no position embedding (position_dim=0).")
        if self.groups is not None and self._group_embedding == "hourglass":
            return self._hourglass(x, t, observed, missing, edges)
        when = self.time(t)[:, None, :]
        h = self._embed(x, observed, missing, positions, identities) + when
        if self._group_embedding == "readout":
            columns = self._column_tokens(x, observed, missing) + when
            column_mask = self._mask(edges, missing, x.shape[0], x.shape[1], h.device)
        if self.groups is not None:
            attn_mask = self._group_mask(edges, missing, x.shape[0], h.device)
        else:
            attn_mask = self._mask(edges, missing, h.shape[0], h.shape[1], h.device)
        for block in self.blocks:
            h = block(h, attn_mask)
        if self._group_embedding == "readout":
            h = columns + self.up(h)[:, self._column_token(h.device)]
            h = self.column_out(h, column_mask)
            return self.head(self.norm(h)).squeeze(-1)
        return self._read(self.norm(h))

    def _column_tokens(self, x, observed, missing):
        """One token per column: value, identity and condition state (no time)."""
        B, T = x.shape
        if missing is not None:
            x = torch.where(missing, 0.0, x)
        return (self.value(x[..., None]) + self.token_id(self._ids(x.device))
                + self.condition(observed.long().expand(B, T)))

    def _hourglass(self, x, t, observed, missing, edges):
        """Per-column tokens through the first and the last block, one token per group (the
        mean of its columns and the group's identity) through the blocks between, added back
        to each of its columns."""
        B, T = x.shape
        h = self._column_tokens(x, observed, missing) + self.time(t)[:, None, :]
        column_mask = self._mask(edges, missing, B, T, h.device)
        h = self.column_in(h, column_mask)
        index = self._index(h.device)
        padded = torch.cat([h, h.new_zeros(B, 1, h.shape[-1])], 1)[:, index]  # (B, V, w, d)
        sizes = (index < T).sum(-1, keepdim=True).to(h.dtype)
        g = padded.sum(2) / sizes + self.group_id.weight
        group_mask = self._group_mask(edges, missing, B, h.device)
        for block in self.blocks:
            g = block(g, group_mask)
        h = h + self.up(g)[:, self._column_token(h.device)]
        h = self.column_out(h, column_mask)
        return self.head(self.norm(h)).squeeze(-1)

    def _group_mask(self, edges, missing, batch: int, device) -> torch.Tensor | None:
        """The attention mask over group tokens: the first column of each group speaks for its
        group's edges; a group is missing when all its columns are."""
        index = self._index(device)
        first = index[:, 0]
        if edges is not None:
            edges = edges[..., first[:, None], first[None, :]]
        if missing is not None:
            missing = torch.cat([missing.expand(batch, -1), missing.new_ones(batch, 1)], 1)[
                :, index].all(-1)
        return self._mask(edges, missing, batch, len(self.groups), device)

    def _column_token(self, device: torch.device) -> torch.Tensor:
        """(columns,) the token (group) of each column, made once per device."""
        key = ("column_token", device)
        if key not in self._indexes:
            token = torch.empty(self.n_tokens, dtype=torch.long)
            for v, g in enumerate(self.groups):
                token[g] = v
            self._indexes[key] = token.to(device)
        return self._indexes[key]


def _attention_mask(edges, missing, batch: int, slots: int, device) -> torch.Tensor | None:
    """The blocks' boolean attention mask from an edge mask (or None) and the missing tokens
    (or None): no token attends to a missing one (each still to itself)."""
    if missing is not None:
        eye = torch.eye(slots, dtype=torch.bool, device=device)
        seen = (~missing.expand(batch, slots))[:, None, :] | eye
        edges = seen if edges is None else (edges & seen) | eye
    if edges is None:
        return None
    return edges[:, None] if edges.ndim == 3 else edges
