"""A Whisper step decoder over a static (preallocated) KV cache, ready for CUDA graphs.

`StaticWhisperDecoder` is a `StepDecoder` (babelora.decode.search) like `WhisperStepDecoder`,
but its self- and cross-attention keys/values live in buffers allocated once per batch shape
and are only ever written in place: a step writes the new token's keys at its position
(`index_copy_`) and attends over the whole buffer with a position mask, so one captured step
(a CUDA graph, or `torch.compile(mode="reduce-overhead")`) replays for every token. Rows that
leave the batch (finished greedy rows) are compacted into the first rows of the same buffers;
the decoder runs a *bucket* of rows (>= the live rows), so a graph captured for a bucket size
is reused by every batch and every compaction to that size.

Why not transformers' `StaticCache`: its `reorder_cache` (beam search) reallocates the buffers,
which a captured graph cannot follow, its cross-attention state is a Python flag per layer, and
Whisper's decoder forward computes cache lengths and masks on the host. The decoder here calls
the model's own submodules (so LoRA / expert layers wrapping them, and their per-row routing,
run as they do in the dynamic path) and keeps everything else on the device.

Eagerly (CPU, or graphs off) a step attends only over the filled positions, as the dynamic
cache does, and the bucket is the live row count: results equal the dynamic path token for
token, without its per-step cache concatenation.

Shapes: Lyr decoder layers, C bucket capacity (rows allocated), b rows run, k live rows,
H heads, L = prompt + new tokens (positions), T' encoder frames, Dh head dim, V vocabulary.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from babelora.decode.graphs import GraphRunner, RowStatePins, expert_flags, routing_contexts

log = logging.getLogger(__name__)

GRAPH_MODES = ("off", "auto", "cuda", "compile")
BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512)
"""Row counts graphs are captured for when rows are compacted (a batch starts at its own size)."""


def bucket_for(rows: int, buckets: Sequence[int] | None) -> int:
    """The smallest bucket holding `rows` rows (`rows` itself without buckets or beyond them)."""
    for size in buckets or ():
        if size >= rows:
            return size
    return rows


def resolve_graphs(mode: str, device: torch.device) -> str:
    """ "auto" -> "cuda" on a CUDA device, else "off"; "cuda" off a CUDA device is an error."""
    from babelora.errors import ConfigError

    if mode not in GRAPH_MODES:
        raise ConfigError(f"graphs must be one of {', '.join(GRAPH_MODES)}, got {mode!r}")
    if mode == "auto":
        return "cuda" if device.type == "cuda" else "off"
    if mode == "cuda" and device.type != "cuda":
        raise ConfigError(
            f"graphs='cuda' needs the model on a CUDA device, it is on {device.type}; use "
            "graphs='auto' (eager static decoding off a GPU) or 'compile'"
        )
    return mode


class StaticKV:
    """Preallocated keys/values: self-attention (Lyr, C, H, L, Dh), cross-attention
    (Lyr, C, H, T', Dh). Row views `[:, :b]` share storage, so every bucket reads the same
    buffers."""

    def __init__(
        self,
        layers: int,
        capacity: int,
        heads: int,
        length: int,
        frames: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.capacity, self.length, self.frames = capacity, length, frames
        shape = (layers, capacity, heads)
        self.self_k = torch.zeros(*shape, length, head_dim, dtype=dtype, device=device)
        self.self_v = torch.zeros_like(self.self_k)
        self.cross_k = torch.zeros(*shape, frames, head_dim, dtype=dtype, device=device)
        self.cross_v = torch.zeros_like(self.cross_k)

    def select(self, rows: Tensor, filled: int, cross: bool) -> None:
        """Row i becomes old row rows[i] (in place, positions < `filled`; cross-attention too
        unless every row keeps its utterance)."""
        n = rows.shape[0]
        for buf, span in ((self.self_k, filled), (self.self_v, filled)):
            buf[:, :n, :, :span] = buf[:, :, :, :span].index_select(1, rows)
        if cross:
            for buf in (self.cross_k, self.cross_v):
                buf[:, :n] = buf.index_select(1, rows)


class _Engine:
    """What a batch shape keeps between batches: KV buffers, routing pins, captured steps, and
    every other tensor a captured step reads or writes (`buffer`).

    A captured step replays on the addresses it was captured with, so whatever it touches must
    outlive the batch that captured it: the next batch of this shape refills the same buffers
    (never new tensors) and replays.
    """

    def __init__(self, kv: StaticKV, model, device: torch.device, graphs: bool):
        self.kv = kv
        self.device = device
        self.pins = RowStatePins(routing_contexts(model), device, kv.capacity)
        self.runner = GraphRunner() if graphs else None
        self.buffers: dict[str, Tensor] = {}
        self.generation = 0  # bumped when a buffer is (re)allocated: keys captured steps

    def buffer(self, name: str, shape: tuple, dtype: torch.dtype, fill=0) -> Tensor:
        """The persistent buffer `name`, filled with `fill` (reallocated, and captured steps
        invalidated, only when its shape or dtype changes)."""
        buf = self.buffers.get(name)
        if buf is None or tuple(buf.shape) != tuple(shape) or buf.dtype != dtype:
            buf = self.buffers[name] = torch.empty(shape, dtype=dtype, device=self.device)
            self.generation += 1
        return buf.fill_(fill)


_POOLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
POOL_SIZE = 4  # batch shapes kept per model for graph reuse


def _engine(model: nn.Module, key: tuple, make) -> _Engine:
    """The engine of one batch shape, kept per model (least recently used out), so graphs
    captured for a shape replay for the next batch of that shape."""
    pool: dict = _POOLS.setdefault(model, {})
    if key in pool:
        pool[key] = pool.pop(key)  # most recent last
        return pool[key]
    while len(pool) >= POOL_SIZE:
        pool.pop(next(iter(pool)))
    pool[key] = make()
    return pool[key]


class StaticWhisperDecoder:
    """StepDecoder for a Whisper encoder-decoder over encoder states (B, T', D), with a static
    KV cache of `max_len` positions (prompt + new tokens).

    Args:
        graphs: "off" (eager), "cuda" (CUDA graphs), "compile" (torch.compile
            reduce-overhead), "auto" (cuda on a CUDA device, else off).
        buckets: row counts compacted batches run at (None: the live row count; with graphs
            `BUCKETS`). A batch starts at its own row count, the buffers' capacity.
    """

    def __init__(
        self,
        model,
        encoder_states: Tensor,
        max_len: int,
        graphs: str = "off",
        buckets: Sequence[int] | None = None,
    ):
        self.model = model
        self.decoder = model.get_decoder()
        self.enc = encoder_states
        self.device = encoder_states.device
        self.max_len = max_len
        self.graphs = resolve_graphs(graphs, self.device)
        self.buckets = buckets if buckets is not None or self.graphs == "off" else BUCKETS
        self.rows = encoder_states.shape[0]  # live rows k
        self.bucket = self.rows  # rows run b
        self.filled = 0  # positions written (a host count: no sync needed)
        self.engine: _Engine | None = None
        self.last: Tensor | None = None  # (C, 1) the token each row feeds next
        self.pos: Tensor | None = None  # (1,) its position, for captured steps

    @property
    def kv(self) -> StaticKV | None:
        return None if self.engine is None else self.engine.kv

    @property
    def captured(self) -> bool:
        return self.engine is not None and self.engine.runner is not None

    # -- the StepDecoder protocol ------------------------------------------------------------
    def step(self, input_ids: Tensor) -> Tensor:
        """Feed (k, n) tokens; return (k, V) next-token log-probs."""
        if self.engine is None:
            return self.prefill(input_ids)[: self.rows]
        if input_ids.shape[1] != 1:
            raise ValueError("after the prompt, a static decoder takes one token per row")
        self.last[: self.rows].copy_(input_ids)
        return self.step_one()[: self.rows]

    def select(self, rows: Tensor, same_source: bool = False, live: int | None = None) -> None:
        """Keep/reorder rows: row i becomes old row rows[i]. Before the prompt: the encoder
        states (beam expansion). After: the caches, in place; the decoder then runs the bucket
        of the live rows. `live`: only the first `live` of `rows` are live (the rest pad a
        bucket; default all)."""
        if self.engine is None:
            self.enc = self.enc.index_select(0, rows)
            self.rows = self.bucket = rows.shape[0]
            return
        self.kv.select(rows, self.filled, cross=not same_source)
        self.last[: rows.shape[0]] = self.last.index_select(0, rows)
        self.rows = rows.shape[0] if live is None else live
        self.bucket = max(rows.shape[0], min(self.kv.capacity, bucket_for(self.rows, self.buckets)))

    # -- static API (device-side search loops) ----------------------------------------------
    def prefill(self, input_ids: Tensor) -> Tensor:
        """Run the prompt (k, n) eagerly: cross-attention keys/values and the prompt's self-
        attention keys/values into the buffers; return (k, V) log-probs."""
        rows, n = input_ids.shape
        dec = self.decoder
        attn = dec.layers[0].self_attn
        dtype = dec.embed_tokens.weight.dtype
        frames = self.enc.shape[1]
        shape = (len(dec.layers), rows, attn.num_heads, self.max_len, frames, attn.head_dim)
        graphs = self.graphs != "off"

        def make() -> _Engine:
            return _Engine(StaticKV(*shape, dtype, self.device), self.model, self.device, graphs)

        key = (*shape, dtype, self.device)
        self.engine = _engine(self.model, key, make) if graphs else make()
        self.last = self.engine.buffer("last", (rows, 1), torch.long)
        self.pos = self.engine.buffer("pos", (1,), torch.long)
        self.rows = self.bucket = rows
        self._flags = expert_flags(self.model)
        self.engine.pins.sync(rows, rows, fixed=graphs)
        enc = self.enc.to(dtype)
        for i, layer in enumerate(dec.layers):
            cross = layer.encoder_attn
            self.kv.cross_k[i, :rows] = _heads(cross.k_proj(enc), cross)
            self.kv.cross_v[i, :rows] = _heads(cross.v_proj(enc), cross)
        self.enc = None  # the cross-attention cache holds all of it now
        positions = torch.arange(n, device=self.device)
        logprobs = self._forward(input_ids, positions, rows, filled=n)
        self.filled = n
        self.last[:rows].copy_(input_ids[:, -1:])
        return logprobs

    def step_one(self) -> Tensor:
        """One token per row from `self.last` at position `self.filled`; (b, V) log-probs."""
        return self.run_captured("step", self._step_fn)

    def run_captured(
        self, kind: str, make_fn, restore: Sequence[Tensor] = (), signature: tuple = ()
    ):
        """Run `make_fn(b)()` for the current bucket b at the next position: eagerly, or as a
        step captured once per (kind, signature, b, routing layout, buffers) and replayed.

        A replay runs the step captured by an earlier batch of this shape: everything `make_fn`
        reads must be an engine buffer (`self.engine.buffer`), a model weight, or Python values
        named in `signature`."""
        if self.filled >= self.max_len:
            raise ValueError(f"static cache full ({self.max_len} positions)")
        b, engine = self.bucket, self.engine
        engine.pins.sync(self.rows, b, fixed=engine.runner is not None)
        if engine.runner is None:
            out = make_fn(b, self.filled)()
        else:
            self.pos.fill_(self.filled)
            key = (kind, signature, b, engine.pins.generation, engine.generation, self._flags)
            out = engine.runner.run(key, make_fn(b, None), self.graphs, restore)
        self.filled += 1
        return out

    def _step_fn(self, b: int, filled: int | None):
        """The one-token step for bucket b: eager at host position `filled`, or (None) at the
        device position `self.pos` over all positions (capturable)."""

        def fn() -> Tensor:
            if filled is None:
                return self._forward(self.last[:b], self.pos, b, filled=None)
            positions = torch.arange(filled, filled + 1, device=self.device)
            return self._forward(self.last[:b], positions, b, filled=filled + 1)

        return fn

    # -- the decoder, functionally ----------------------------------------------------------
    def _forward(self, ids: Tensor, positions: Tensor, b: int, filled: int | None) -> Tensor:
        """Decoder over `ids` (b, n) at `positions` (n,) writing their keys/values in place.
        `filled` (eager): attend over the first `filled` positions; None (graphs): over all
        positions with a mask from `positions`, shapes independent of the step."""
        dec, kv = self.decoder, self.kv
        h = dec.embed_tokens(ids) + dec.embed_positions.weight[positions].to(
            dec.embed_tokens.weight.dtype
        )
        n = ids.shape[1]
        mask = None
        if filled is None:  # (n, L): key j visible to the query at position p iff j <= p
            span = torch.arange(kv.length, device=ids.device)
            mask = span[None, :] <= positions[:, None]
        for i, layer in enumerate(dec.layers):
            attn = layer.self_attn
            x = layer.self_attn_layer_norm(h)
            q = _heads(attn.q_proj(x) * attn.scaling, attn)
            keys, values = kv.self_k[i, :b], kv.self_v[i, :b]
            keys.index_copy_(2, positions, _heads(attn.k_proj(x), attn))
            values.index_copy_(2, positions, _heads(attn.v_proj(x), attn))
            if filled is None:
                o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=1.0)
            else:
                o = F.scaled_dot_product_attention(
                    q, keys[:, :, :filled], values[:, :, :filled], is_causal=n > 1, scale=1.0
                )
            h = h + attn.out_proj(_merge(o))
            cross = layer.encoder_attn
            x = layer.encoder_attn_layer_norm(h)
            q = _heads(cross.q_proj(x) * cross.scaling, cross)
            o = F.scaled_dot_product_attention(q, kv.cross_k[i, :b], kv.cross_v[i, :b], scale=1.0)
            h = h + cross.out_proj(_merge(o))
            x = layer.final_layer_norm(h)
            h = h + layer.fc2(layer.activation_fn(layer.fc1(x)))
        hidden = dec.layer_norm(h[:, -1])
        return torch.log_softmax(self.model.proj_out(hidden).float(), dim=-1)  # (b, V)


def _heads(x: Tensor, attn) -> Tensor:
    """(b, n, H*Dh) -> (b, H, n, Dh)."""
    return x.unflatten(-1, (attn.num_heads, attn.head_dim)).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """(b, H, n, Dh) -> (b, n, H*Dh)."""
    return x.transpose(1, 2).flatten(-2)
