"""Per-batch routing state shared by all expert layers of one model.

A Linear's forward takes only x, so what the routers need besides x (each row's language or a
language posterior, padding masks) is set on a `RoutingContext` before the forward, and what the
layers produce besides y (aux losses, optional usage statistics) is collected there. The context
is explicit (one object per model, held by `AdapterHandle`), never a global.

Rows: the context holds R0 rows (one per utterance); a layer that sees R = n * R0 rows (beams,
e.g. Hugging Face `generate` expands the decoder batch after the encoder ran) gets every per-row
tensor repeated n times per row (`repeat_interleave`, the order `generate` uses).

The rules, all of them:
1. Before a forward, `set(...)` the batch's inputs (`handle.set_routing` or
   `with handle.routing(...)`). `set` forgets everything of the previous batch (inputs, cached
   decisions, uncollected aux losses), so no order of calls can leak one batch into the next.
2. For incremental decoding, `set(..., decoding=True)`: each layer caches its per-utterance
   decision on its first call (the prompt) and reuses it on the calls that follow; aux losses
   are not collected. `reorder(indices)` moves the cached decisions with the beams, as the KV
   cache moves (row i becomes old row indices[i]; repeat indices to expand to beams).
3. `clear()` when done: back to training mode with nothing set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from babelora.adapters.routing import RouterInputs, Routing
from babelora.errors import ConfigError, LanguageError


def _fit_rows(t: Tensor, rows: int, what: str) -> Tensor:
    """Repeat a per-row tensor to `rows` rows (beam expansion), or explain the mismatch."""
    have = t.shape[0]
    if have == rows:
        return t
    if have and rows % have == 0:
        return t.repeat_interleave(rows // have, dim=0)
    raise ConfigError(
        f"routing context has {have} rows of {what} but the layer sees {rows} rows: "
        "set the routing for this batch (or expand it to the beams)"
    )


class RoutingContext:
    """Routing inputs for the current batch, cached decisions, and collected aux losses.

    Attributes:
        languages: the language codes that own experts, in expert order.
        lang_ids: (R0,) long, -1 = no language; lang_probs: (R0, L) posterior; masks: stream
            name ("encoder", "decoder", "default") -> (R0, T) bool valid positions.
        collect_aux: record routers' aux losses (default True; off while decoding).
        track_usage: record each layer's per-row mean routing weights in `usage` (analysis).
    """

    def __init__(self, languages: Sequence[str] = ()):
        self.languages = tuple(languages)
        self.lang_ids: Tensor | None = None
        self.lang_probs: Tensor | None = None
        self.masks: dict[str, Tensor] = {}
        self.cache_decisions = False
        self.collect_aux = True
        self.track_usage = False
        self.usage: dict[str, list[Tensor]] = {}
        self._decisions: dict[str, Routing] = {}
        self._aux: list[dict[str, Tensor]] = []

    # -- per-batch inputs -------------------------------------------------------------------
    def lang_index(self, lang: str | None) -> int:
        """Expert-group index of a language code; None -> -1 (shared experts only)."""
        if lang is None:
            return -1
        if lang not in self.languages:
            known = ", ".join(self.languages) or "none"
            raise LanguageError(f"no experts for language {lang!r}; experts exist for: {known}")
        return self.languages.index(lang)

    def set(
        self,
        langs: Sequence[str | None] | None = None,
        lang_ids: Tensor | Sequence[int] | None = None,
        lang_probs: Tensor | None = None,
        masks: dict[str, Tensor] | None = None,
        decoding: bool = False,
    ) -> None:
        """Set the batch's routing inputs, replacing everything of the previous batch.

        Args:
            langs: one language code per row (None = no language expert for that row).
            lang_ids: the same as indices into `languages` (-1 = none).
            lang_probs: (R, L) language posterior instead of hard languages.
            masks: stream -> (R, T) bool valid positions (padding False), used by utterance
                pooling and to keep padding out of the aux losses.
            decoding: cache per-utterance decisions over incremental calls, no aux losses.
        """
        if langs is not None and lang_ids is not None:
            raise ConfigError("give either langs or lang_ids, not both")
        if langs is not None:
            lang_ids = [self.lang_index(code) for code in langs]
        self.clear()
        self.cache_decisions = decoding
        self.collect_aux = not decoding
        if lang_ids is not None:
            self.lang_ids = torch.as_tensor(lang_ids, dtype=torch.long).reshape(-1)
        if lang_probs is not None:
            if lang_probs.dim() != 2 or lang_probs.shape[1] != len(self.languages):
                want, got = len(self.languages), tuple(lang_probs.shape)
                raise ConfigError(f"lang_probs must be (rows, {want}), got {got}")
            self.lang_probs = lang_probs
        for name, mask in (masks or {}).items():
            if mask.dim() != 2:
                raise ConfigError(
                    f"mask for stream {name!r} must be (rows, T), got {tuple(mask.shape)}"
                )
            self.masks[name] = mask.bool()

    def clear(self) -> None:
        """Forget the batch's inputs, cached decisions and uncollected aux losses.

        `set` calls it, so aux losses left over (e.g. recorded again by activation-checkpoint
        recomputation during backward) never leak into the next batch.
        """
        self.clear_inputs()
        self._aux = []

    def clear_inputs(self) -> None:
        """Forget the batch's inputs and cached decisions and leave decoding mode; keep
        uncollected aux losses."""
        self.cache_decisions = False
        self.collect_aux = True
        self.lang_ids = None
        self.lang_probs = None
        self.masks = {}
        self._decisions = {}

    def inputs(
        self, rows: int, length: int, stream: str, device: torch.device, strict_mask: bool = True
    ) -> RouterInputs:
        """Router inputs fitted to a layer call with `rows` rows and `length` positions.

        A mask of another length is an error when `strict_mask`; otherwise it is dropped (token
        routing while decoding uses the mask only for aux losses, which are off then).
        """
        ids = probs = mask = None
        if self.lang_ids is not None:
            ids = _fit_rows(self.lang_ids, rows, "languages").to(device)
        if self.lang_probs is not None:
            probs = _fit_rows(self.lang_probs, rows, "language posteriors").to(device)
        if stream in self.masks:
            mask = _fit_rows(self.masks[stream], rows, f"{stream} masks").to(device)
            if mask.shape[1] != length and not strict_mask:
                mask = None
            elif mask.shape[1] != length:
                raise ConfigError(
                    f"the {stream} mask has {mask.shape[1]} positions but the layer input has "
                    f"{length}; for decoder utterance routing give the prompt mask and call "
                    "set(..., decoding=True) before incremental decoding"
                )
        return RouterInputs(ids, probs, mask)

    # -- decoding -------------------------------------------------------------------------
    def cached(self, key: str, rows: int) -> Routing | None:
        """The cached decision of layer `key`, fitted to `rows`, if decoding and present."""
        if not self.cache_decisions or key not in self._decisions:
            return None
        return self._decisions[key].rows(lambda t: _fit_rows(t, rows, "cached decisions"))

    def store(self, key: str, routing: Routing) -> None:
        if self.cache_decisions and routing.level == "utterance":
            self._decisions[key] = Routing(
                routing.weights.detach(),
                None if routing.expert_ids is None else routing.expert_ids.detach(),
                {},
                "utterance",
            )

    def map_rows(self, fn: Callable[[Tensor], Tensor]) -> None:
        """Replace every per-row tensor t (languages, posteriors, masks, cached decisions) by
        fn(t), always in the same order; static decoding moves them into fixed buffers."""
        self._map_rows(fn)

    def _map_rows(self, fn: Callable[[Tensor], Tensor]) -> None:
        if self.lang_ids is not None:
            self.lang_ids = fn(self.lang_ids)
        if self.lang_probs is not None:
            self.lang_probs = fn(self.lang_probs)
        self.masks = {k: fn(v) for k, v in self.masks.items()}
        self._decisions = {k: r.rows(fn) for k, r in self._decisions.items()}

    def reorder(self, indices: Tensor) -> None:
        """Select rows (beam reordering: new row i = old row indices[i]), like the KV cache."""
        self._map_rows(lambda t: t.index_select(0, indices.to(t.device)))

    # -- outputs ----------------------------------------------------------------------------
    def record(self, key: str, routing: Routing, mask: Tensor | None, num_routed: int) -> None:
        """Collect a layer call's aux losses (and usage, if tracked)."""
        if self.collect_aux and routing.aux_losses:
            self._aux.append(routing.aux_losses)
        if self.track_usage and routing.level != "static":
            dense = routing.dense(num_routed).detach().float()
            if dense.dim() == 3:  # token level: mean over valid positions
                m = torch.ones(dense.shape[:2], device=dense.device) if mask is None else mask
                m = m.to(dense.dtype).unsqueeze(-1)
                dense = (dense * m).sum(1) / m.sum(1).clamp(min=1.0)
            self.usage.setdefault(key, []).append(dense.cpu())

    def pop_aux_losses(self) -> dict[str, Tensor]:
        """Mean of each aux loss over the layer calls since the last pop (then forgotten)."""
        sums: dict[str, list[Tensor]] = {}
        for item in self._aux:
            for name, value in item.items():
                sums.setdefault(name, []).append(value)
        self._aux = []
        return {name: torch.stack(values).mean() for name, values in sums.items()}
