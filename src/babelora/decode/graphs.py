"""Capture a decoding step once, replay it for every token: CUDA graphs or torch.compile.

`GraphRunner` keeps one captured step per key (bucket size, routing layout). A CUDA graph
replays fixed kernels on fixed addresses, so everything a step reads must stay where it was at
capture: the static KV cache (babelora.decode.static_cache) and the per-row routing state of
expert layers, which `RowStatePins` copies into fixed buffers (the search reorders that state by
`index_select`, which makes new tensors). Routing then stays inside the graph: each expert
layer gathers its rows' experts by index tensors, as it does eagerly.

A step that cannot be captured (a host sync inside it, e.g. token-level top-k dispatch whose
capacity is read on the host, or usage tracking) falls back to eager execution with a warning:
same results, just slower.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

_GENERATION = itertools.count(1)


def routing_contexts(model: nn.Module) -> list:
    """The routing contexts of the model's expert layers (usually one), in a stable order."""
    from babelora.adapters.expert_linear import ExpertLoRALinear

    seen: dict[int, object] = {}
    for module in model.modules():
        if isinstance(module, ExpertLoRALinear):
            seen.setdefault(id(module.context), module.context)
    return list(seen.values())


def expert_flags(model: nn.Module) -> tuple:
    """Python-side switches of the expert layers a captured step bakes in (merged, disabled)."""
    from babelora.adapters.expert_linear import ExpertLoRALinear

    return tuple((m.merged, m.disabled) for m in model.modules() if isinstance(m, ExpertLoRALinear))


class RowStatePins:
    """Fixed buffers for the per-row routing state of `contexts` (per-row languages,
    posteriors, masks, cached per-utterance decisions).

    `sync(live, rows, fixed)` makes every per-row tensor of the contexts `rows` rows long: the
    `live` rows first, then copies of row 0 as padding (rows the decoder runs but nobody reads).
    With `fixed` (graphs) the tensors are views of buffers that never move; `generation`
    changes whenever a buffer is (re)allocated, so a graph keyed by it never reads a stale one.
    """

    def __init__(self, contexts: Sequence, device: torch.device, capacity: int = 0):
        self.contexts = list(contexts)
        self.device = device
        self.capacity = capacity
        self.buffers: list[Tensor | None] = []
        self.generation = 0

    def sync(self, live: int, rows: int, fixed: bool) -> None:
        counter = itertools.count()

        def pin(t: Tensor) -> Tensor:
            i = next(counter)
            have = t.shape[0]
            if have not in (live, rows) and have and live % have == 0:
                t = t.repeat_interleave(live // have, dim=0)  # given per utterance
                have = live
            if not fixed and have == rows:
                return t
            buf = self.buffers[i] if i < len(self.buffers) else None
            if (
                buf is None
                or buf.shape[1:] != t.shape[1:]
                or buf.dtype != t.dtype
                or buf.shape[0] < rows
            ):
                shape = (max(rows, self.capacity), *t.shape[1:])
                buf = torch.zeros(shape, dtype=t.dtype, device=self.device)
                self.buffers.extend([None] * (i + 1 - len(self.buffers)))
                self.buffers[i] = buf
                self.generation = next(_GENERATION)
            view = buf[:rows]
            if t.data_ptr() == view.data_ptr() and t.shape == view.shape:
                return view
            src = t.to(self.device)
            buf[:have].copy_(src)
            if have < rows:
                buf[have:rows].copy_(src[:1].expand(rows - have, *src.shape[1:]))
            return view

        for ctx in self.contexts:
            ctx.map_rows(pin)


class GraphRunner:
    """Captured steps by key: `run(key, fn, mode)` returns fn()'s output, computed by
    replaying a CUDA graph ("cuda") or a torch.compile'd fn ("compile", reduce-overhead).

    `restore` are state tensors fn mutates that the warm-up run (before capture) must leave
    as they were.
    """

    def __init__(self):
        self.steps: dict[tuple, Callable[[], Tensor]] = {}
        self.pool = None
        self.failed = False
        self.captures = 0  # how many steps were captured (tests, benchmarks)

    def run(
        self, key: tuple, fn: Callable[[], Tensor], mode: str, restore: Sequence[Tensor] = ()
    ) -> Tensor:
        if self.failed:
            return fn()
        step = self.steps.get(key)
        if step is None:
            try:
                step = self._capture(fn, mode, restore)
            except Exception as err:  # noqa: BLE001 - any capture failure: run eagerly
                log.warning("decoding step not captured (%s); running it eagerly", err)
                self.failed = True
                return fn()
            self.steps[key] = step
            self.captures += 1
        return step()

    def _capture(self, fn: Callable[[], Tensor], mode: str, restore: Sequence[Tensor]):
        if mode == "compile":
            return torch.compile(fn, mode="reduce-overhead", dynamic=False)
        saved = [t.clone() for t in restore]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy inits (cuBLAS handles) off the capture
            fn()
        torch.cuda.current_stream().wait_stream(side)
        for t, s in zip(restore, saved):
            t.copy_(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = fn()
        self.pool = graph.pool()

        def replay() -> Tensor:
            graph.replay()
            return out

        return replay
