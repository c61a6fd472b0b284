"""Log-mel feature cache for recipes that train the encoder (whose states cannot be cached).

`data.feature_cache` names a folder (or `auto`: `<cache_dir>/features`); each utterance's log-mel
features (float32, exactly what `log_mel` returns) are stored once, keyed by the audio file's
content hash and the number of mel bins, through `cache_store` (atomic, checksummed: a damaged
entry is recomputed, never used). Entries are computed lazily where the item is loaded, so
DataLoader workers fill the cache in parallel during the first epoch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from babelora.data.audio import N_FRAMES, load_audio, log_mel
from babelora.data.collate import FRAMES_PER_SECOND, SpeechDataset
from babelora.data.manifest import Utterance
from babelora.errors import AudioError
from babelora.train.cache_store import read_entry, write_entry

VERSION = "1"  # bump when the front end changes


class FeatureStore:
    """log-mel features by audio content hash, for one number of mel bins."""

    def __init__(self, root: Path, n_mels: int) -> None:
        self.folder = Path(root) / "features" / f"v{VERSION}-mel{n_mels}"
        self.n_mels = n_mels

    def path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def meta(self, digest: str) -> dict[str, str]:
        return {"audio": digest, "n_mels": str(self.n_mels), "frontend": VERSION}

    def load(self, digest: str) -> torch.Tensor | None:
        entry = read_entry(self.path(digest), self.meta(digest))
        return None if entry is None else entry["features"]

    def save(self, digest: str, feats: torch.Tensor) -> None:
        write_entry(self.path(digest), {"features": feats}, self.meta(digest))


class CachedSpeechDataset(SpeechDataset):
    """`SpeechDataset` whose features come from a `FeatureStore` (computed on a miss)."""

    def __init__(self, utts: list[Utterance], digests: list[str], store: FeatureStore) -> None:
        super().__init__(utts, store.n_mels)
        self.digest_of = {u.audio_filepath: d for u, d in zip(utts, digests)}
        self.store = store

    def features(self, utt: Utterance) -> torch.Tensor:
        digest = self.digest_of[utt.audio_filepath]
        feats = self.store.load(digest)
        if feats is not None:
            return feats
        feats = log_mel(load_audio(utt.audio_filepath), n_mels=self.n_mels)
        if feats.shape[-1] > N_FRAMES:
            raise AudioError(
                f"{utt.audio_filepath}: audio is {feats.shape[-1] / FRAMES_PER_SECOND:.1f} s, "
                f"longer than Whisper's 30 s window (utterance {utt.id!r})"
            )
        self.store.save(digest, feats.contiguous())
        return feats
