"""Running a Qwen2 model over prefix-shared KV: a transformers `Cache` and an `AttentionInterface`
function, so the model's own decoder layers do everything else.

A batch holds groups of rows (the criteria of one answer) whose prompts share a token prefix
(`pollux.engine.plan`). Each group's prefix is encoded once (`prefill_prefix`) and its K/V kept once,
[kv_heads, P, head_dim] per layer; every row's own tokens (prompt suffix, then generated tokens) get
preallocated buffers in `PrefixSharedCache`. The stock `Qwen2DecoderLayer` runs unchanged: its
attention projects q/k/v and applies the rotary embedding, `cache.update` stores the row's new K/V
in its buffer and returns the buffers, and the attention function registered here as
`ATTENTION` ("pollux_prefix_shared") computes one softmax over [group prefix keys ; own keys]
without copying a prefix per row. Norms, projections, MLPs and the rotary embedding are the
model's own, so results match the stock forward within float tolerance.

Two things are pollux's and not transformers': the attention implementation is chosen by the
model's `config._attn_implementation`, so `shared_attention(model)` sets it for the duration of a
batch and restores it (a model is driven by one engine call at a time: `Judge` serialises them);
and the prefix's last layer computes only K/V (`_kv_only`): its queries, attention and MLP
would produce hidden states nobody reads.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, Cache, DynamicCache

ATTENTION = "pollux_prefix_shared"

KV = tuple[torch.Tensor, torch.Tensor]  # one layer's keys and values, [kv_heads, P, head_dim]

# exp(-80) ≈ 2e-35 weighs nothing next to a row's maximum (weight 1); see `_merged_attention`
_EXP_FLOOR = -80.0


class PrefixSharedCache(Cache):
    """The KV of one batch: each group's shared prefix once, plus a preallocated buffer per row
    for its own tokens (prompt suffix + generated). Rows of a group are contiguous.

    Per forward, `begin` says where each row's new tokens go; the decoder layers' attention then
    calls `update`, which writes them and returns the rows' own keys and values so far."""

    def __init__(self, model: Any, prefixes: list[list[KV]], prefix_lens: list[int], row_groups: list[int],
                 capacity: int):
        super().__init__(layers=[])
        cfg = model.config
        p = next(model.parameters())
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.prefixes = prefixes  # per group, per layer
        self.prefix_lens = prefix_lens  # per group
        self.row_groups = row_groups  # per row
        self.capacity = capacity
        shape = (len(row_groups), cfg.num_key_value_heads, capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.num_hidden_layers)]
        self.start = torch.zeros(len(row_groups), dtype=torch.long, device=p.device)
        self.end = 0

    @property
    def rows(self) -> int:
        return len(self.row_groups)

    def kv_tokens(self) -> int:
        """KV positions allocated: each prefix once plus every row's own buffer."""
        return sum(self.prefix_lens) + self.rows * self.capacity

    def begin(self, start: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepare a forward of `length` new tokens per row, row b's first at own index start[b].
        Returns their absolute positions [B, L] (for the rotary embedding) and which own keys each
        query may see, [B, L, T] (own index ≤ the query's own index)."""
        device = self.start.device
        self.start = torch.tensor(start, device=device)
        offsets = torch.arange(length, device=device)
        query_own = self.start[:, None] + offsets[None]  # [B, L]
        self.end = int(query_own.max()) + 1
        prefix_len = torch.tensor([self.prefix_lens[g] for g in self.row_groups], device=device)
        visible = torch.arange(self.end, device=device)[None, None, :] <= query_own[:, :, None]
        return prefix_len[:, None] + query_own, visible

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v [B,KVH,L,D] at each row's own positions start[b]…; return the buffers up to
        the furthest position written."""
        B, _, L, _ = key_states.shape
        if L == 1:
            rows = torch.arange(B, device=key_states.device)
            self.k[layer_idx][rows, :, self.start] = key_states[:, :, 0]
            self.v[layer_idx][rows, :, self.start] = value_states[:, :, 0]
        else:  # the first step: all rows start at own index 0
            self.k[layer_idx][:, :, :L] = key_states
            self.v[layer_idx][:, :, :L] = value_states
        return self.k[layer_idx][:, :, :self.end], self.v[layer_idx][:, :, :self.end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.end

    def prefix_parts(self, layer_idx: int) -> list[tuple[slice, KV]]:
        """(rows, the rows' group prefix K/V at this layer) for each group still in the batch."""
        parts = []
        start = 0
        groups = self.row_groups
        for i in range(1, len(groups) + 1):
            if i == len(groups) or groups[i] != groups[start]:
                parts.append((slice(start, i), self.prefixes[groups[start]][layer_idx]))
                start = i
        return parts

    def keep(self, rows: list[int]) -> None:
        """Drop the rows not in `rows` (finished); the order of the rest is kept."""
        idx = torch.tensor(rows, device=self.start.device)
        self.k = [t.index_select(0, idx) for t in self.k]
        self.v = [t.index_select(0, idx) for t in self.v]
        self.row_groups = [self.row_groups[i] for i in rows]


def prefix_shared_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                            **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The `AttentionInterface` function: with `prefix_cache` (a `PrefixSharedCache`), attention
    over the row's group prefix and its own keys (`key`/`value`: the own buffers `update`
    returned; `attention_mask`: own keys visible, [B, L, T]); without it, plain attention under
    the boolean `attention_mask` (a prefix being encoded). Returns [B, L, H, D], as transformers'
    implementations do."""
    cache: PrefixSharedCache | None = kwargs.get("prefix_cache")
    if cache is None:
        out = nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=True)
    else:
        assert attention_mask is not None
        layer_idx: int = module.layer_idx  # type: ignore[assignment]  # the attention module's own index
        out = _merged_attention(query, key, value, attention_mask, cache.prefix_parts(layer_idx), scaling)
    return out.transpose(1, 2), None


AttentionInterface.register(ATTENTION, prefix_shared_attention)


@contextmanager
def shared_attention(model: Any) -> Iterator[None]:
    """Make the model's attention layers call `prefix_shared_attention` while the block runs."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


def prefill_prefix(model: Any, prefix: list[int], chunk: int) -> list[KV]:
    """Encode a shared prefix once (batch 1, causal, in chunks of `chunk` tokens); return per-layer
    (K, V) of shape [kv_heads, P, head_dim]. Call inside `shared_attention(model)`."""
    m = model.model
    if not prefix:
        cfg = model.config
        p = next(model.parameters())
        empty = torch.zeros(cfg.num_key_value_heads, 0, m.layers[0].self_attn.head_dim, dtype=p.dtype, device=p.device)
        return [(empty, empty) for _ in m.layers]
    device = m.embed_tokens.weight.device
    ids = torch.tensor([prefix], device=device)
    cache = DynamicCache()
    *inner, last = m.layers
    for a in range(0, len(prefix), chunk):
        b = min(a + chunk, len(prefix))
        x = m.embed_tokens(ids[:, a:b])
        cos, sin = m.rotary_emb(x, torch.arange(a, b, device=device)[None])
        mask = torch.ones(b - a, b, dtype=torch.bool, device=device).tril(diagonal=a)
        for layer in inner:
            x = layer(x, attention_mask=mask, position_embeddings=(cos, sin), **{_cache_kwarg(layer): cache})
        k, v = _kv_only(last, x, cos, sin)
        cache.update(k, v, len(inner))
    layers: list[Any] = list(cache.layers)  # DynamicLayer: .keys/.values [1, kv_heads, P, head_dim]
    return [(layer.keys[0], layer.values[0]) for layer in layers]


def forward_rows(model: Any, tokens: torch.Tensor, cache: PrefixSharedCache, start: list[int]) -> torch.Tensor:
    """Run `tokens` [B, L] (each row's next own tokens, row b's first at own index start[b]) through
    the model's layers, attending to the row's group prefix and its own earlier tokens. Returns
    the final (post-norm) hidden states [B, L, hidden]. Call inside `shared_attention(model)`."""
    m = model.model
    positions, visible = cache.begin(start, tokens.shape[1])
    x = m.embed_tokens(tokens)
    cos, sin = m.rotary_emb(x, positions)
    for layer in m.layers:
        x = layer(x, attention_mask=visible, position_embeddings=(cos, sin), prefix_cache=cache,
                  **{_cache_kwarg(layer): cache})
    return m.norm(x)


_CACHE_KWARG: dict[type, str] = {}


def _cache_kwarg(layer: Any) -> str:
    """The name a decoder layer takes its cache by: transformers renamed it (`past_key_value` →
    `past_key_values` → `cache`), and a name the layer does not know is swallowed by its
    `**kwargs` — the cache then silently stays empty. So it is read off the signature, once per class."""
    cls = type(layer)
    if cls not in _CACHE_KWARG:
        params = inspect.signature(cls.forward).parameters
        names = [n for n in ("cache", "past_key_values", "past_key_value") if n in params]
        if not names:
            raise RuntimeError(f"{cls.__name__}.forward takes no cache argument this engine knows")
        _CACHE_KWARG[cls] = names[0]
    return _CACHE_KWARG[cls]


def _kv_only(layer: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> KV:
    """The K/V a decoder layer would cache for `x` [1, L, hidden] (pre-norm, projections, rotary),
    without its queries, attention or MLP: a prefix's last layer needs nothing else."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    attn = layer.self_attn
    B, L, _ = x.shape
    h = layer.input_layernorm(x)
    k = attn.k_proj(h).view(B, L, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(B, L, -1, attn.head_dim).transpose(1, 2)
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    return k, v


def _merged_attention(q: torch.Tensor, own_k: torch.Tensor, own_v: torch.Tensor, visible: torch.Tensor,
                      prefix_parts: list[tuple[slice, KV]], scale: float) -> torch.Tensor:
    """Softmax attention over [group prefix keys ; own keys] for every query, without copying a
    prefix per row: one max / sum across both key sets.

    q [B,H,L,D]; own_k/own_v [B,KVH,T,D]; visible [B,L,T] (own keys each query may see);
    prefix_parts: (rows slice, (K [KVH,P,D], V [KVH,P,D])) per group. Returns [B,H,L,D].

    Large score tensors are exponentiated in place (no temporaries on the hot path), after
    clamping at -80: exp(-80) ≈ 2e-35 weighs nothing next to the row's maximum (weight 1), and
    CPUs' vectorised exp takes a several-times-slower path for inputs far below that (masked
    keys are -inf; random or sharp models give scores thousands apart).
    """
    B, H, L, D = q.shape
    KVH = own_k.shape[1]
    rep = H // KVH
    qg = (q * scale).reshape(B, KVH, rep * L, D)  # head h reads kv head h // rep; scaled once, here
    s_own = torch.matmul(qg, own_k.transpose(-1, -2))  # [B,KVH,rep*L,T]
    s_own.view(B, KVH, rep, L, -1).masked_fill_(~visible[:, None, None], float("-inf"))
    m_own = s_own.amax(dim=-1, keepdim=True)
    out = torch.empty(B, KVH, rep * L, D, dtype=q.dtype, device=q.device)
    for rows, (pk, pv) in prefix_parts:
        n = rows.stop - rows.start
        if pk.shape[1] == 0:  # nothing shared: plain attention over the own keys
            e_own = s_own[rows].sub_(m_own[rows]).clamp_(min=_EXP_FLOOR).exp_()
            out[rows] = torch.matmul(e_own, own_v[rows]) / e_own.sum(dim=-1, keepdim=True)
            continue
        qp = qg[rows].permute(1, 0, 2, 3).reshape(KVH, n * rep * L, D)
        s_pre = torch.matmul(qp, pk.transpose(-1, -2))  # [KVH, n*rep*L, P]
        m = torch.maximum(s_pre.amax(dim=-1, keepdim=True),
                          m_own[rows].permute(1, 0, 2, 3).reshape(KVH, n * rep * L, 1))
        e_pre = s_pre.sub_(m).clamp_(min=_EXP_FLOOR).exp_()
        num = torch.matmul(e_pre, pv)  # [KVH, n*rep*L, D]
        den = e_pre.sum(dim=-1, keepdim=True)
        e_own = s_own[rows].sub_(m.reshape(KVH, n, rep * L, 1).permute(1, 0, 2, 3)).clamp_(min=_EXP_FLOOR).exp_()
        num = num.reshape(KVH, n, rep * L, D).permute(1, 0, 2, 3) + torch.matmul(e_own, own_v[rows])
        den = den.reshape(KVH, n, rep * L, 1).permute(1, 0, 2, 3) + e_own.sum(dim=-1, keepdim=True)
        out[rows] = num / den
    return out.view(B, H, L, D)
