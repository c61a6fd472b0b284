"""Which routed experts each language uses: a language x expert table and its heatmap.

The model runs teacher-forced over a manifest (the references as decoder input, the batch
routed exactly as in training: `babelora.methods.molora.model.route_batch`) with the routing
context's
`track_usage` on. Every expert layer then records, per utterance, its mean routing weight on
each routed expert (token routing: averaged over the valid frames / tokens). A cell of the table
is the mean over the language's utterances and over the layers of a group (`all`, `encoder`,
`decoder`): the share of the routed gate mass that expert gets. Shared experts are always on
(weight 1) and are not shown. Teacher forcing needs no decoding, is deterministic, and routes
the decoder on the same inputs as training did.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from babelora.data.manifest import Utterance
from babelora.errors import ConfigError

GROUPS = ("all", "encoder", "decoder")
_ENCODER = re.compile(r"(^|\.)encoder\.layers\.")


def layer_group(name: str) -> str:
    """`encoder` for the encoder's layers, `decoder` for everything else (incl. cross-attn)."""
    return "encoder" if _ENCODER.search(name) else "decoder"


@dataclass
class RoutingUsage:
    """Summed routing weights per layer, language and routed expert, and utterance counts."""

    languages: list[str]
    experts: list[str]
    sums: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> (L, E)
    counts: np.ndarray | None = None  # (L,) utterances per language

    def __post_init__(self) -> None:
        if self.counts is None:
            self.counts = np.zeros(len(self.languages), dtype=np.int64)

    def add_rows(self, layer: str, weights: torch.Tensor, lang_index: Sequence[int]) -> None:
        """Add a layer call's per-row weights (R, E) for rows of the given languages."""
        table = self.sums.setdefault(layer, np.zeros((len(self.languages), len(self.experts))))
        w = weights.detach().double().cpu().numpy()
        np.add.at(table, np.asarray(lang_index), w)

    def groups(self) -> list[str]:
        present = {layer_group(name) for name in self.sums}
        return ["all", *[g for g in GROUPS[1:] if g in present]] if present else []

    def layers(self, group: str = "all") -> list[str]:
        return [n for n in self.sums if group == "all" or layer_group(n) == group]

    def table(self, group: str = "all") -> np.ndarray:
        """(L, E) mean routing weight per utterance, averaged over the group's layers."""
        names = self.layers(group)
        if not names:
            raise ConfigError(f"no routed layers in group {group!r}")
        total = sum(self.sums[n] for n in names) / len(names)
        return total / np.maximum(self.counts, 1)[:, None]

    def to_json(self) -> dict[str, Any]:
        return {
            "languages": self.languages,
            "experts": self.experts,
            "utterances": {lang: int(n) for lang, n in zip(self.languages, self.counts)},
            "groups": {g: self.table(g).round(6).tolist() for g in self.groups()},
            "layers": {
                name: (self.sums[name] / np.maximum(self.counts, 1)[:, None]).round(6).tolist()
                for name in self.sums
            },
            "note": "mean routing weight per utterance (routed experts only; shared always on)",
        }

    def write_csv(self, path: str | Path) -> Path:
        """Long format: group, language, expert, weight, utterances."""
        path = Path(path)
        with open(path, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["group", "language", "expert", "weight", "utterances"])
            for group in self.groups():
                table = self.table(group)
                for i, lang in enumerate(self.languages):
                    for j, expert in enumerate(self.experts):
                        out.writerow([group, lang, expert, f"{table[i, j]:.6f}", self.counts[i]])
        return path

    def to_markdown(self, group: str = "all") -> str:
        table = self.table(group)
        head = f"| language (n) | {' | '.join(self.experts)} |"
        rule = "| --- |" + " ---: |" * len(self.experts)
        lines = [head, rule]
        for i, lang in enumerate(self.languages):
            cells = " | ".join(f"{v:.3f}" for v in table[i])
            lines.append(f"| {lang} ({self.counts[i]}) | {cells} |")
        return "\n".join(lines)


def _batches(utts: list[Utterance], batch_size: int) -> Iterable[list[int]]:
    order = sorted(range(len(utts)), key=lambda i: utts[i].duration)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def collect_routing_usage(
    handle: Any,
    adapter: Any,
    utts: list[Utterance],
    batch_size: int = 16,
    min_input_seconds: float = 0.0,
    progress: bool = False,
) -> RoutingUsage:
    """Run `handle.model` (with `adapter`'s experts) teacher-forced over `utts`; record usage."""
    from tqdm import tqdm

    from babelora.data.collate import SpeechDataset, WhisperCollator
    from babelora.methods.molora.model import route_batch

    if not utts:
        raise ConfigError("no utterances to analyse")
    ctx = adapter.context
    cfg = adapter.config
    if cfg.router in ("none", "weights"):
        raise ConfigError(
            f"router {cfg.router!r} does not route per input: there is no per-language usage "
            "to show (the expert weights are in babelora_experts.safetensors)"
        )
    languages = sorted({u.lang for u in utts})
    experts = adapter.expert_names()[cfg.num_shared :]
    usage = RoutingUsage(languages, experts)
    model = handle.model.eval()
    device = next(model.parameters()).device
    dataset = SpeechDataset(utts, handle.n_mels)
    collator = WhisperCollator(
        handle.tokenizer,
        languages,
        handle.prompt_style,
        min_input_seconds=min_input_seconds,
        max_target_tokens=int(model.config.max_target_positions),
    )
    ctx.track_usage = True
    try:
        chunks = list(_batches(utts, batch_size))
        for idx in tqdm(chunks, desc="routing", disable=not progress):
            batch = collator([dataset[i] for i in idx])
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            route_batch(adapter, batch, unknown="shared")
            ctx.usage = {}
            model(
                input_features=batch["input_features"].to(next(model.parameters()).dtype),
                decoder_input_ids=batch["decoder_input_ids"],
                use_cache=False,
            )
            lang_index = [languages.index(x) for x in batch["langs"]]
            for layer, records in ctx.usage.items():
                for weights in records:
                    usage.add_rows(layer, weights, lang_index)
            np.add.at(usage.counts, np.asarray(lang_index), 1)
            ctx.clear()
    finally:
        ctx.track_usage = False
        ctx.usage = {}
    return usage


def plot_usage(usage: RoutingUsage, path: str | Path, title: str = "") -> Path:
    """Heatmap PNG: one panel per layer group (all, encoder, decoder), languages x experts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = usage.groups()
    n_l, n_e = len(usage.languages), len(usage.experts)
    width = max(3.0, 0.55 * n_e + 1.6)
    fig, axes = plt.subplots(
        1,
        len(groups),
        figsize=(width * len(groups) + 1.0, 0.45 * n_l + 2.0),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    image = None
    for ax, group in zip(axes[0], groups):
        table = usage.table(group)
        image = ax.imshow(table, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_xticks(range(n_e), usage.experts, rotation=45, ha="right")
        ax.set_yticks(range(n_l), [f"{x} ({n})" for x, n in zip(usage.languages, usage.counts)])
        ax.tick_params(axis="y", labelleft=ax is axes[0][0])
        ax.set_xlabel("routed expert")
        ax.set_title(f"{group} ({len(usage.layers(group))} layers)")
        if n_l * n_e <= 150:
            for i in range(n_l):
                for j in range(n_e):
                    v = table[i, j]
                    color = "black" if v > 0.6 else "white"
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=color)
    axes[0][0].set_ylabel("language (utterances)")
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="mean routing weight")
    fig.suptitle(title or "Expert usage per language (shared experts always on, not shown)")
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_usage(usage: RoutingUsage, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """routing_usage.{png,csv,json,md} in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "png": plot_usage(usage, out / "routing_usage.png", title),
        "csv": usage.write_csv(out / "routing_usage.csv"),
        "json": out / "routing_usage.json",
        "md": out / "routing_usage.md",
    }
    paths["json"].write_text(json.dumps(usage.to_json(), indent=2), encoding="utf-8")
    sections = [f"## {g}\n\n{usage.to_markdown(g)}\n" for g in usage.groups()]
    head = f"# {title or 'Expert usage per language'}\n\n"
    note = "Mean routing weight per utterance; shared experts are always on and not shown.\n\n"
    paths["md"].write_text(head + note + "\n".join(sections), encoding="utf-8")
    return paths
