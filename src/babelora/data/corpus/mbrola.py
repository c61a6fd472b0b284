"""Speech from MBROLA diphone voices, driven by espeak-ng (`espeak-ng -v mb-de2`).

espeak-ng turns text into phonemes, durations and pitch; the `mbrola` program concatenates
diphones recorded from one real speaker per voice database, so each database is one speaker. The
output (16 or 22.05 kHz) is resampled to 16 kHz mono float32; it is deterministic.

Every database has its own licence (Debian's `/usr/share/doc/mbrola-<name>/copyright`, read for
the table below). All allow use and free redistribution only with the MBROLA program and forbid
selling them or building them into a product that is sold without the owner's permission
(`mbrola-nc`); de4 also forbids military and pornographic use (`mbrola-nc-nomil`); en1 (the
Edinburgh ROGER database) allows any purpose with its notice, plus the MBROLA terms
(`mbrola-roger`). That is why MBROLA is not among the default engines.

`missing` is the share of diphones the database lacks for espeak-ng's phonemes (replaced by
silence: mbrola warns `X-Y unknown`), measured on 40 Django sentences per language. Voices
missing more than a fifth are left out of the defaults (es1, es2, mx1, mx2, nl1); name one with
`mbrola:<name>` to use it anyway. Brazilian voices (br1-br4) are not defaults for `pt`, whose
texts are European Portuguese; de8 (Bavarian) is left out too.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from babelora.data.corpus.debian import apt_hint, copyright_file
from babelora.errors import DependencyError

VOICE_ROOT = Path("/usr/share/mbrola")
LICENCES = {
    "mbrola-nc": "MBROLA database licence: use only with the MBROLA program; free copies only; "
    "not to be sold or built into a sold product without the owner's permission",
    "mbrola-nc-nomil": "as mbrola-nc, and no military or pornographic use",
    "mbrola-roger": "Edinburgh ROGER database: any purpose without fee, keeping its notice; "
    "plus the MBROLA program's terms",
}


@dataclass(frozen=True)
class MbrolaVoice:
    """One MBROLA database: who it speaks for, its licence and how well espeak-ng covers it."""

    name: str  # database name: de2 (package mbrola-de2, espeak-ng voice mb-de2)
    lang: str  # babelora language code
    gender: str  # m / f
    accent: str
    owner: str
    licence: str = "mbrola-nc"
    missing: float = 0.0  # share of diphones missing for espeak-ng's phonemes
    default: bool = True

    @property
    def package(self) -> str:
        return f"mbrola-{self.name}"

    @property
    def espeak_voice(self) -> str:
        return f"mb-{self.name}"


def _v(name: str, lang: str, gender: str, accent: str, owner: str, **kw: object) -> MbrolaVoice:
    return MbrolaVoice(name, lang, gender, accent, owner, **kw)  # type: ignore[arg-type]


VOICES: tuple[MbrolaVoice, ...] = (
    _v("de1", "de", "f", "de-DE", "Institut für Phonetik (Fred Englert)"),
    _v("de2", "de", "m", "de-DE", "ATIP GmbH"),
    _v("de3", "de", "f", "de-DE", "ATIP GmbH"),
    _v("de4", "de", "m", "de-DE", "IMS, University of Stuttgart", licence="mbrola-nc-nomil"),
    _v("de5", "de", "f", "de-DE", "ATIP GmbH"),
    _v("de6", "de", "m", "de-DE", "Institute of Phonetics, Saarland University"),
    _v("de7", "de", "f", "de-DE", "DFKI Saarbrücken"),
    _v("de8", "de", "m", "de-Bavarian", "Markus Binsteiner", missing=0.084, default=False),
    _v("fr1", "fr", "m", "fr-FR", "Faculté Polytechnique de Mons (Thierry Dutoit)"),
    _v("fr2", "fr", "f", "fr-FR", "Céline Egea"),
    _v("fr3", "fr", "m", "fr-FR", "Babel Technologies (Vincent Pagel)"),
    _v("fr4", "fr", "f", "fr-FR", "Babel Technologies"),
    _v("fr5", "fr", "m", "fr-BE", "Fabrice Malfrère"),
    _v("fr6", "fr", "m", "fr-FR", "Xavier Ricco"),
    _v("fr7", "fr", "m", "fr-BE", "Faculté Polytechnique de Mons (Alain Ruelle)"),
    _v("es1", "es", "m", "es-ES", "L. Aguilar, D. Casacuberta et al.", missing=0.30, default=False),
    _v("es2", "es", "m", "es-ES", "TCC Communication Corp", missing=0.31, default=False),
    _v("es3", "es", "m", "es-ES", "Javi F. Gorostiza", missing=0.12),
    _v("es4", "es", "m", "es-ES", "Universidad de Valladolid", missing=0.09),
    _v("mx1", "es", "m", "es-MX", "Oregon Graduate Institute", missing=0.30, default=False),
    _v("mx2", "es", "m", "es-MX", "Humberto Pérez Espinosa", missing=0.30, default=False),
    _v("it1", "it", "m", "it-IT", "C. Citta", missing=0.115),
    _v("it2", "it", "f", "it-IT", "C. Citta", missing=0.105),
    _v("it3", "it", "m", "it-IT", "IFD-CNR Padova (Piero Cosi)", missing=0.105),
    _v("it4", "it", "f", "it-IT", "ITC-irst Trento", missing=0.105),
    _v("nl1", "nl", "m", "nl-NL", "A. Dirksen and L. Menert", missing=0.61, default=False),
    _v("nl2", "nl", "m", "nl-NL", "A. Dirksen and L. Menert"),
    _v("nl3", "nl", "f", "nl-NL", "IPO Eindhoven", missing=0.027),
    _v("pt1", "pt", "f", "pt-PT", "Babel Technology", missing=0.017),
    _v("br1", "pt", "m", "pt-BR", "Denis Costa", missing=0.007, default=False),
    _v("br2", "pt", "f", "pt-BR", "Denis Costa", missing=0.006, default=False),
    _v("br3", "pt", "m", "pt-BR", "Denis Costa", missing=0.006, default=False),
    _v("br4", "pt", "f", "pt-BR", "Serpro", missing=0.016, default=False),
    _v("en1", "en", "m", "en-GB", "University of Edinburgh (ROGER)", licence="mbrola-roger"),
    _v("us1", "en", "f", "en-US", "Babel Technology"),
    _v("us2", "en", "m", "en-US", "Babel Technology"),
    _v("us3", "en", "m", "en-US", "Oregon Graduate Institute", missing=0.005),
)
BY_NAME = {v.name: v for v in VOICES}


def mbrola_binary() -> str | None:
    return shutil.which("mbrola")


def installed(voice: MbrolaVoice, root: Path | None = None) -> bool:
    """The database file is where espeak-ng looks for it (`root`: default VOICE_ROOT)."""
    root = root or VOICE_ROOT
    return (root / voice.name / voice.name).is_file()


def check_installed(voices: list[MbrolaVoice] | tuple[MbrolaVoice, ...]) -> None:
    """DependencyError naming the exact install step when the mbrola program or any of `voices`
    is missing."""
    missing = [v.package for v in voices if not installed(v)]
    if mbrola_binary() is None:
        missing.insert(0, "mbrola")
    if missing:
        raise DependencyError(
            f"MBROLA voices are not installed ({', '.join(missing)} missing); "
            + apt_hint(missing, non_free=True)
        )


def licence_of(voice: MbrolaVoice) -> str:
    return f"{voice.licence} ({copyright_file(voice.package)})"


def synthesize(text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
    """Speak `text` with espeak-ng's MBROLA voice `voice` (`mb-de2`); 16 kHz mono float32."""
    from babelora.data.corpus import espeak

    return espeak.speak(text, ["-v", voice, "-s", str(rate), "-p", str(pitch)], voice)
