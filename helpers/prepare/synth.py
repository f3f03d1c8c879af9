"""The synthetic tagged-music dataset: music-like clips generated with NumPy.

Every clip is an excerpt of a synthetic "song". A song has a style (classical,
rock, techno, pop, ambient, indian, metal, weird) that decides its band
(plucked guitar, struck piano, bowed strings and violin, blown flute,
synthesisers, sitar with a drone, bass, sung vowels, a choir, a drum kit or
tabla), its tempo, mode, register and loudness. The tags of a clip are
derived from what is really in it:

* timbre tags (guitar, piano, strings, violin, flute, synth, sitar, bass,
  vocal, female, male, choir) need the spectral envelope of the sounds;
* rhythm tags (fast, slow, beat, drums, dance) need onsets over seconds;
* level tags (loud, quiet) need only the global level;
* style and mood tags (classical, rock, techno, pop, ambient, indian, metal,
  weird, electronic, solo, happy, sad) combine several of these.

Clips of one song share its band and key and never cross splits. Labels can be
weak, as in MagnaTagATune: every true tag is dropped with probability
``weak_label_rate``. Recording conditions vary per clip (equalisation,
reverberation, background noise, mix levels), so that no single statistic of
the spectrum gives the answer away.

Everything is generated from one integer seed: clip ``(song, clip)`` uses its
own generator seeded by ``(seed, song, clip)``, so the same seed gives the same
bytes whatever the number of worker processes or the order of generation. The
dataset records :data:`GENERATOR_VERSION`, so that data made by an older
generator is noticed and made again.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import SAMPLE_RATE, tqdm
from ..data import TaggedAudio
from .writer import ClipInfo, DatasetWriter

#: Version of the generator's output. Bump it with every change of the code
#: that changes a generated clip or label: a dataset made by another version is
#: stale, and :func:`prepare_synthetic` makes it again (a test checks a
#: fingerprint of the output against this number).
GENERATOR_VERSION = 2

TABLE_SIZE = 4096

#: The tags of the synthetic dataset, most frequent first (as MTAT's top 50).
TAGS = ("drums", "beat", "bass", "electronic", "synth", "guitar", "loud", "happy", "fast", "piano",
        "classical", "vocal", "slow", "solo", "quiet", "strings", "rock", "techno", "ambient", "dance",
        "pop", "sad", "male", "female", "flute", "violin", "metal", "indian", "sitar", "weird", "choir")

#: Song styles and their probabilities (imbalanced, as MTAT's genres).
STYLE_PROBS = {"classical": 0.27, "rock": 0.15, "pop": 0.14, "techno": 0.13, "ambient": 0.11,
               "indian": 0.08, "metal": 0.06, "weird": 0.06}

#: Loudness of each style: mean and spread of the clip RMS level in dBFS.
STYLE_LEVEL_DB = {"classical": (-24, 5), "rock": (-16, 4), "pop": (-18, 4), "techno": (-16, 4),
                  "ambient": (-27, 4), "indian": (-21, 5), "metal": (-13, 3), "weird": (-20, 6)}

#: Tempo range of each style in beats per minute.
STYLE_BPM = {"classical": (56, 140), "rock": (95, 160), "pop": (88, 128), "techno": (118, 145),
             "ambient": (50, 80), "indian": (70, 160), "metal": (140, 200), "weird": (60, 160)}

#: Styles an annotator may hear instead (with probability STYLE_CONFUSION).
STYLE_NEIGHBOURS = {"classical": ("ambient", "indian"), "rock": ("metal", "pop"), "pop": ("rock", "techno"),
                    "techno": ("pop", "ambient"), "ambient": ("classical", "techno"), "indian": ("classical",),
                    "metal": ("rock",), "weird": ("ambient", "techno")}
STYLE_CONFUSION = 0.15
LOUD_DB, QUIET_DB = -16.0, -27.0          # clip level thresholds of the loud and quiet tags
FAST_BPM, SLOW_BPM = 132, 80              # tempo thresholds of the fast and slow tags
DISTRACTORS = ("organ", "bells")          # instruments that carry no tag
MELODIC = ("guitar", "piano", "strings", "violin", "flute", "synth", "sitar", "vocal", "choir")

MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)
PROGRESSIONS = {"major": [(0, 4, 5, 3), (0, 3, 4, 4), (0, 5, 3, 4), (0, 3, 0, 4)],
                "minor": [(0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 4), (0, 3, 6, 4)]}


@dataclass
class SongPlan:
    """Everything shared by the clips of one song."""

    style: str
    root: int                  # MIDI note of the key's tonic (bass register + 24)
    mode: str                  # 'major', 'minor' or 'atonal'
    bpm: float
    band: tuple                # instruments of the song (subset of MELODIC + bass/drums/tabla/drone)
    singer: str | None         # 'female', 'male' or None
    level_db: float            # song loudness, dBFS RMS
    progression: tuple


@dataclass
class ClipPlan:
    """One clip: the song, what plays in this excerpt, and its true tags."""

    song: int
    clip: int
    style: str
    instruments: tuple
    level_db: float
    bar_offset: float          # position in the song's bar cycle where the clip starts, in bars
    tags: tuple = field(default_factory=tuple)


def plan_song(seed: int, song: int) -> SongPlan:
    """Draw the style, key, tempo, band and loudness of song ``song``."""
    rng = np.random.default_rng([seed, song, 0xA11])
    styles = list(STYLE_PROBS)
    style = styles[rng.choice(len(styles), p=np.array(list(STYLE_PROBS.values())))]
    lo, hi = STYLE_BPM[style]
    bpm = float(rng.uniform(lo, hi))
    mode = "atonal" if style == "weird" else ("minor" if rng.random() < {
        "classical": 0.45, "rock": 0.5, "pop": 0.3, "techno": 0.6, "ambient": 0.5,
        "indian": 0.5, "metal": 0.9}[style] else "major")
    pick = lambda p: rng.random() < p  # noqa: E731
    band: list[str] = []
    singer = None
    if style == "classical":
        kind = rng.choice(["piano", "guitar", "violin", "flute", "quartet", "duet", "choir"],
                          p=[0.22, 0.1, 0.1, 0.08, 0.25, 0.13, 0.12])
        band = {"piano": ["piano"], "guitar": ["guitar"], "violin": ["violin"], "flute": ["flute"],
                "quartet": ["strings", "violin"] if pick(0.6) else ["strings"],
                "duet": ["piano", "violin" if pick(0.5) else "flute"],
                "choir": ["choir", "strings"] if pick(0.6) else ["choir"]}[str(kind)]
    elif style in ("rock", "metal"):
        band = ["guitar", "drums"] + (["bass"] if pick(0.8) else [])
        if pick(0.65 if style == "rock" else 0.45):
            singer = "male" if pick(0.6 if style == "rock" else 0.85) else "female"
    elif style == "pop":
        band = ["drums"] + (["piano"] if pick(0.5) else ["guitar"]) + (["bass"] if pick(0.7) else [])
        band += ["synth"] if pick(0.35) else []
        singer = "female" if pick(0.6) else "male"
    elif style == "techno":
        band = ["synth", "drums"] + (["bass"] if pick(0.7) else [])
        singer = "female" if pick(0.15) else None
    elif style == "ambient":
        band = ["synth"] + (["piano"] if pick(0.3) else []) + (["flute"] if pick(0.2) else [])
        band += ["strings"] if pick(0.2) else []
    elif style == "indian":
        band = ["sitar", "drone"] + (["tabla"] if pick(0.7) else []) + (["flute"] if pick(0.3) else [])
        singer = ("female" if pick(0.5) else "male") if pick(0.3) else None
    elif style == "weird":
        band = ["synth"] + (["drums"] if pick(0.3) else []) + (["piano"] if pick(0.3) else [])
    if style in ("pop", "rock") and pick(0.2):
        band.append("strings")
    if style in ("rock", "techno", "ambient") and pick(0.12):
        band.append("piano")
    for extra in DISTRACTORS:                  # untagged instruments, in any style
        if pick(0.2):
            band.append(extra)
    if singer:
        band.append("vocal")
    root = int(rng.integers(35, 54)) + 24
    prog = PROGRESSIONS["major" if mode == "major" else "minor"][int(rng.integers(4))]
    mean, spread = STYLE_LEVEL_DB[style]
    level = float(np.clip(rng.normal(mean, spread), -38, -9))
    return SongPlan(style, root, mode, bpm, tuple(band), singer, level, prog)


def clip_tags(song: SongPlan, instruments: tuple, level_db: float, style_tag: str | None = None) -> tuple:
    """The tags of a clip in which ``instruments`` of ``song`` play, at a
    perceived level of ``level_db`` dBFS, with ``style_tag`` as the style the
    annotator heard (the song's style by default)."""
    tags = set(i for i in instruments if i in TAGS)
    if "tabla" in instruments:
        tags.add("drums")
    if "vocal" in instruments:
        tags.add(song.singer)
    if "choir" in instruments:
        tags.add("vocal")
    kit = "drums" in instruments and song.style != "weird"
    if kit:
        tags.add("beat")
    if song.bpm >= FAST_BPM and song.style != "ambient":
        tags.add("fast")
    if song.bpm <= SLOW_BPM or song.style == "ambient":
        tags.add("slow")
    if level_db >= LOUD_DB:
        tags.add("loud")
    if level_db <= QUIET_DB:
        tags.add("quiet")
    tags.add(style_tag or song.style)
    if "synth" in instruments and song.style in ("techno", "ambient", "weird", "pop"):
        tags.add("electronic")
    if kit and song.style in ("techno", "pop") and song.bpm >= 115:
        tags.add("dance")
    if (len([i for i in instruments if i in MELODIC]) == 1 and not {"drums", "tabla", "bass"} & set(instruments)
            and song.style in ("classical", "indian")):
        tags.add("solo")
    if song.mode == "major" and song.bpm >= 100:
        tags.add("happy")
    if song.mode == "minor" and song.bpm <= 95:
        tags.add("sad")
    return tuple(t for t in TAGS if t in tags)


def plan_clip(seed: int, song_plan: SongPlan, song: int, clip: int) -> ClipPlan:
    """Decide what plays in clip ``clip`` of a song: drums and voice drop out
    of some sections, the level moves a little."""
    rng = np.random.default_rng([seed, song, clip, 0xC11])
    instruments = list(song_plan.band)
    if "drums" in instruments and song_plan.style != "weird" and rng.random() < 0.2:
        instruments.remove("drums")                      # a breakdown without the kit
    if "tabla" in instruments and rng.random() < 0.2:
        instruments.remove("tabla")
    if "vocal" in instruments and rng.random() < 0.3:
        instruments.remove("vocal")                      # an instrumental section
    level = float(song_plan.level_db + rng.normal(0, 1.5))
    # Annotators judge loudness loosely and confuse neighbouring styles, as in MTAT.
    perceived_level = level + float(rng.normal(0, 3))
    style_tag = str(rng.choice(STYLE_NEIGHBOURS[song_plan.style])) if rng.random() < STYLE_CONFUSION else None
    return ClipPlan(song, clip, song_plan.style, tuple(instruments), level, float(rng.uniform(0, 4)),
                    clip_tags(song_plan, tuple(instruments), perceived_level, style_tag))


# ----------------------------------------------------------------------------
# Sound sources
# ----------------------------------------------------------------------------

def midi_hz(m: float) -> float:
    return 440.0 * 2.0 ** ((m - 69) / 12)


@lru_cache(maxsize=None)
def _table(kind: str, n_harm: int, vowel: int = 0, f0_bin: int = 0, tilt: float = 0.0) -> np.ndarray:
    """One period of a band-limited waveform with ``n_harm`` harmonics; ``tilt``
    makes it darker (> 0) or brighter (< 0) by ``h ** -tilt``."""
    h = np.arange(1, n_harm + 1, dtype=np.float64)
    if kind == "bright":                     # plucked / sitar: strong upper partials
        amp = np.abs(np.sin(np.pi * h * 0.18)) / h ** 0.9
    elif kind == "dull":
        amp = 1.0 / h ** 2.2
    elif kind == "piano":
        amp = 1.0 / h ** 1.5 * (1 + 0.5 * (h == 2))
    elif kind == "saw":
        amp = 1.0 / h
    elif kind == "bowed":                    # saw with a body resonance around 3 kHz
        f0 = midi_hz(f0_bin)
        amp = 1.0 / h * (1 + 2.0 * np.exp(-((h * f0 - 3000) / 900) ** 2))
    elif kind == "square":
        amp = (h % 2 == 1) / h
    elif kind == "flute":
        amp = np.array([1.0, 0.35, 0.12, 0.05, 0.02, 0.01][:n_harm])
        h = h[:len(amp)]
    elif kind == "sitar":
        amp = 1.0 / h ** 0.6 * (1 + 0.6 * np.sin(h * 1.3) ** 2)
    elif kind == "voice":                    # glottal source shaped by the vowel's formants
        formants = [((800, 80), (1150, 90), (2800, 120)), ((400, 60), (1700, 100), (2600, 120)),
                    ((350, 50), (2000, 100), (2800, 120)), ((450, 70), (800, 80), (2830, 100)),
                    ((325, 50), (700, 60), (2530, 170))][vowel]
        f0 = midi_hz(f0_bin)
        amp = 1.0 / h ** 0.7 * sum(g / (1 + ((h * f0 - fc) / bw) ** 2)
                                   for (fc, bw), g in zip(formants, (1.0, 0.6, 0.25)))
    else:
        raise ValueError(kind)
    amp = amp * h ** -tilt
    k = np.arange(TABLE_SIZE) / TABLE_SIZE
    wave = (amp[:, None] * np.sin(2 * np.pi * h[:, None] * k[None, :])).sum(0)
    return (wave / np.abs(wave).max()).astype(np.float32)


def _osc(kind: str, midi: float, n: int, vibrato: float = 0.0, vib_rate: float = 5.5,
         phase0: float = 0.0, glide: float = 0.0, vowel: int = 0, tilt: float = 0.0) -> np.ndarray:
    """``n`` samples of a wavetable oscillator at MIDI pitch ``midi``.

    ``vibrato`` is the depth as a fraction of the frequency; ``glide`` bends the
    pitch by that many semitones over the note."""
    f0 = midi_hz(midi)
    n_harm = max(1, min(40, int(7600 / f0)))
    table = _table(kind, n_harm, vowel, int(round(midi)) if kind in ("voice", "bowed") else 0, tilt)
    t = np.arange(n) / SAMPLE_RATE
    if vibrato or glide:
        f = f0 * (1 + vibrato * np.sin(2 * np.pi * vib_rate * t)) * 2 ** (glide * t / max(t[-1], 1e-3) / 12)
        phase = phase0 + np.cumsum(f) / SAMPLE_RATE
    else:
        phase = phase0 + f0 * t
    return table[(phase * TABLE_SIZE).astype(np.int64) & (TABLE_SIZE - 1)]


def _env(n: int, attack: float, decay: float | None = None, release: float = 0.02) -> np.ndarray:
    """Amplitude envelope: linear attack (s), exponential decay time constant
    (s, None for sustained) and a linear release (s) at the end."""
    t = np.arange(n) / SAMPLE_RATE
    e = np.minimum(1.0, t / max(attack, 1e-4))
    if decay:
        e = e * np.exp(-t / decay)
    r = min(n, int(release * SAMPLE_RATE))
    if r > 1:
        e[-r:] *= np.linspace(1, 0, r)
    return e.astype(np.float32)


def _add(buf: np.ndarray, start: int, sig: np.ndarray) -> None:
    if start >= len(buf) or start + len(sig) <= 0:
        return
    s0 = max(0, -start)
    end = min(len(buf), start + len(sig))
    buf[start + s0:end] += sig[s0:s0 + end - start - s0]


class _Score:
    """Pitches and timing of one clip: key, chords, beat grid."""

    def __init__(self, song: SongPlan, plan: ClipPlan, n: int, rng: np.random.Generator, tilt: float = 0.0):
        self.song, self.n, self.rng, self.tilt = song, n, rng, tilt
        self.beat = 60.0 / song.bpm
        self.bar = 4 * self.beat
        self.t0 = -plan.bar_offset * self.bar      # song time of the clip start is -t0
        self.scale = MAJOR if song.mode == "major" else MINOR

    def osc(self, kind: str, midi: float, n: int, **kw) -> np.ndarray:
        """:func:`_osc` with this instrument's timbre tilt."""
        return _osc(kind, midi, n, tilt=self.tilt, **kw)

    def sample(self, t: float) -> int:
        return int(round(t * SAMPLE_RATE))

    def bars(self):
        """(start time in the clip in s, chord degree) of every bar touching the clip."""
        first = int(np.floor(-self.t0 / self.bar)) - 1
        k = first
        while True:
            start = self.t0 + k * self.bar
            if start >= self.n / SAMPLE_RATE:
                return
            if start + self.bar > -1.0:
                yield start, self.song.progression[k % 4]
            k += 1

    def chord(self, degree: int, octave: int = 0) -> list[int]:
        s = self.scale
        return [self.song.root + 12 * octave + s[(degree + i) % 7] + 12 * ((degree + i) // 7)
                for i in (0, 2, 4)]

    def scale_note(self, step: int, octave: int = 0) -> int:
        return self.song.root + 12 * (octave + step // 7) + self.scale[step % 7]


def _render_melody(score: _Score, buf: np.ndarray, kind: str, octave: int, note_beats, env, vibrato=0.0,
                   glide_p=0.0, vowel_cycle=False, wide=False) -> None:
    rng, song = score.rng, score.song
    t = score.t0 + int(np.floor(-score.t0 / score.beat)) * score.beat - score.beat
    step = int(rng.integers(0, 7))
    end = score.n / SAMPLE_RATE
    while t < end:
        dur = float(rng.choice(note_beats)) * score.beat
        if song.mode == "atonal":
            midi = float(song.root + 12 * octave + rng.integers(-12, 13))
        else:
            step = int(np.clip(step + rng.choice([-2, -1, -1, 0, 1, 1, 2, 4 if wide else 3]), -5, 12))
            midi = float(score.scale_note(step, octave))
        if rng.random() > 0.12:          # some rests
            n = score.sample(dur * 1.05)
            if n > 8:
                glide = float(rng.choice([-2, 2])) if rng.random() < glide_p else 0.0
                sig = score.osc(kind, midi, n, vibrato=vibrato, glide=glide, phase0=rng.random(),
                           vowel=int(rng.integers(5)) if vowel_cycle else 0)
                _add(buf, score.sample(t), sig * env(n) * float(rng.uniform(0.7, 1.0)))
        t += dur


def _pluck(score: "_Score", kind_bright: str, kind_dull: str, midi: float, n: int, decay: float, phase0: float) -> np.ndarray:
    e = _env(n, 0.003, decay)
    mix = np.exp(-np.arange(n) / SAMPLE_RATE / (decay * 0.35)).astype(np.float32)
    return e * (mix * score.osc(kind_bright, midi, n, phase0=phase0) + (1 - mix) * score.osc(kind_dull, midi, n, phase0=phase0))


def _render_chords(score: _Score, buf: np.ndarray, instrument: str) -> None:
    rng, style = score.rng, score.song.style
    for start, degree in score.bars():
        notes = score.chord(degree, octave=-1 if instrument == "guitar" else 0)
        if instrument == "guitar":
            distorted = style in ("rock", "metal")
            hits = (np.arange(8) * score.beat / 2) if distorted else (np.arange(4) * score.beat)
            for h in hits:
                n = score.sample(score.beat * (0.5 if distorted else 1.2))
                strum = sum(_pluck(score, "bright", "dull", m, n, 0.25 if distorted else 0.6, rng.random()) for m in notes)
                if distorted:
                    strum = np.tanh(3.5 * strum) * 0.5
                _add(buf, score.sample(start + h), strum * 0.5)
        elif instrument == "piano":
            for h in np.arange(0, 4, 1 if score.song.bpm > 90 else 2) * score.beat:
                n = score.sample(min(2.5, score.beat * 2.2))
                for m in notes:
                    click = rng.standard_normal(min(n, 80)).astype(np.float32) * 0.15
                    sig = score.osc("piano", m, n, phase0=rng.random()) * _env(n, 0.002, 0.7)
                    sig[:len(click)] += click
                    _add(buf, score.sample(start + h + rng.uniform(0, 0.01)), sig * 0.4)
        elif instrument in ("strings", "synth_pad", "choir"):
            n = score.sample(score.bar + 0.15)
            for m in notes:
                for det in (-0.07, 0.0, 0.06):
                    if instrument == "choir":
                        sig = score.osc("voice", m + det, n, vibrato=0.012, vib_rate=float(rng.uniform(4.5, 6)),
                                   phase0=rng.random(), vowel=int(rng.choice([0, 3])))
                    elif instrument == "strings":
                        sig = score.osc("bowed", m + det, n, vibrato=0.004, vib_rate=float(rng.uniform(5, 6.5)),
                                   phase0=rng.random())
                    else:
                        sig = score.osc("saw", m + det + 12, n, phase0=rng.random())
                    _add(buf, score.sample(start), sig * _env(n, 0.25 if instrument != "synth_pad" else 0.6,
                                                              None, 0.2) * 0.22)


def _render_synth(score: _Score, buf: np.ndarray) -> None:
    style, rng = score.song.style, score.rng
    if style == "ambient":
        _render_chords(score, buf, "synth_pad")
    elif style == "weird":
        t = 0.0
        while t < score.n / SAMPLE_RATE:
            n = score.sample(float(rng.uniform(0.05, 0.6)))
            sig = score.osc(str(rng.choice(["square", "saw"])), float(rng.uniform(40, 96)), n,
                       glide=float(rng.uniform(-12, 12)), phase0=rng.random())
            _add(buf, score.sample(t), sig * _env(n, 0.005, 0.2) * 0.5)
            t += float(rng.exponential(0.25))
    else:                                   # arpeggio in 16ths (techno, pop)
        for start, degree in score.bars():
            notes = score.chord(degree, octave=1)
            kind = "square" if rng.random() < 0.5 else "saw"
            for k in range(16):
                n = score.sample(score.beat / 4 * 0.9)
                sig = score.osc(kind, notes[k % 3] + (12 if k % 8 >= 6 else 0), n, phase0=rng.random())
                _add(buf, score.sample(start + k * score.beat / 4), sig * _env(n, 0.003, 0.08) * 0.35)


def _render_bass(score: _Score, buf: np.ndarray) -> None:
    rng = score.rng
    kind = "saw" if score.song.style == "techno" else "dull"
    for start, degree in score.bars():
        m = score.chord(degree, octave=-2)[0]
        for k in range(8):
            if score.song.style != "techno" and k % 2 and rng.random() < 0.5:
                continue
            n = score.sample(score.beat / 2 * 0.95)
            sig = score.osc(kind, m + (12 if k == 6 and rng.random() < 0.3 else 0), n, phase0=rng.random())
            _add(buf, score.sample(start + k * score.beat / 2), sig * _env(n, 0.005, 0.3) * 0.6)


def _drum_sounds(rng: np.random.Generator) -> dict[str, np.ndarray]:
    t = np.arange(int(0.35 * SAMPLE_RATE)) / SAMPLE_RATE
    f_k = float(rng.uniform(45, 60))
    kick = np.sin(2 * np.pi * (f_k * t + (110 - f_k) * 0.03 * (1 - np.exp(-t / 0.03)))) * np.exp(-t / 0.12)
    noise = rng.standard_normal(len(t))
    snare = (0.6 * noise + 0.5 * np.sin(2 * np.pi * float(rng.uniform(170, 220)) * t)) * np.exp(-t / 0.07)
    hat = np.diff(noise, prepend=0.0)[:int(0.08 * SAMPLE_RATE)] * np.exp(-t[:int(0.08 * SAMPLE_RATE)] / 0.015) * 0.4
    return {"kick": kick.astype(np.float32), "snare": (snare * 0.7).astype(np.float32), "hat": hat.astype(np.float32)}


PATTERNS = {  # 16th-note steps of one bar
    "rock": {"kick": (0, 8, 10), "snare": (4, 12), "hat": (0, 2, 4, 6, 8, 10, 12, 14)},
    "pop": {"kick": (0, 6, 8), "snare": (4, 12), "hat": (0, 2, 4, 6, 8, 10, 12, 14)},
    "techno": {"kick": (0, 4, 8, 12), "snare": (4, 12), "hat": (2, 6, 10, 14)},
    "metal": {"kick": tuple(range(0, 16, 2)), "snare": (4, 12), "hat": (0, 4, 8, 12)},
}


def _render_drums(score: _Score, buf: np.ndarray) -> None:
    rng, style = score.rng, score.song.style
    sounds = _drum_sounds(rng)
    if style == "weird":                                     # irregular hits, no steady beat
        t = 0.0
        while t < score.n / SAMPLE_RATE:
            _add(buf, score.sample(t), sounds[str(rng.choice(list(sounds)))] * float(rng.uniform(0.3, 1)))
            t += float(rng.exponential(0.35))
        return
    pattern = PATTERNS[style if style in PATTERNS else "rock"]
    for start, _ in score.bars():
        for name, steps in pattern.items():
            for s in steps:
                _add(buf, score.sample(start + s * score.beat / 4), sounds[name] * float(rng.uniform(0.8, 1.0)))


def _render_tabla(score: _Score, buf: np.ndarray) -> None:
    rng = score.rng
    t = np.arange(int(0.4 * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = float(rng.uniform(300, 450))
    steps = sorted(rng.choice(16, size=9, replace=False))
    for start, _ in score.bars():
        for s in steps:
            bayan = rng.random() < 0.35
            f = 90 * (1 + 0.6 * np.exp(-t / 0.05)) if bayan else pitch
            phase = 2 * np.pi * np.cumsum(np.broadcast_to(f, t.shape)) / SAMPLE_RATE
            hit = np.sin(phase) * np.exp(-t / (0.18 if bayan else 0.09)) * float(rng.uniform(0.5, 0.9))
            _add(buf, score.sample(start + s * score.beat / 4), hit.astype(np.float32) * 0.6)


def _render_drone(score: _Score, buf: np.ndarray) -> None:
    n = score.n
    for m in (score.song.root - 12, score.song.root - 5):
        _add(buf, 0, score.osc("sitar", m, n, vibrato=0.002, vib_rate=0.3, phase0=score.rng.random())
             * _env(n, 0.05, None, 0.1) * 0.15)


def _render_instrument(name: str, score: _Score) -> np.ndarray:
    buf = np.zeros(score.n, dtype=np.float32)
    fast = score.song.bpm >= FAST_BPM
    if name in ("guitar", "piano", "strings", "choir"):
        solo_like = score.song.style == "classical" and name in ("guitar", "piano")
        if solo_like:       # a solo instrument plays a melody over its chords
            quiet = np.zeros_like(buf)
            _render_chords(score, quiet, name)
            buf += 0.5 * quiet
            if name == "piano":
                _render_melody(score, buf, "piano", 1, (0.5, 1, 1) if not fast else (0.25, 0.5),
                               lambda n: _env(n, 0.002, 0.6))
            else:
                _render_melody(score, buf, "bright", 0, (0.5, 1), lambda n: _env(n, 0.003, 0.5))
        else:
            _render_chords(score, buf, name)
    elif name == "violin":
        _render_melody(score, buf, "bowed", 1, (0.5, 1, 2), lambda n: _env(n, 0.08, None, 0.08),
                       vibrato=0.006, wide=True)
    elif name == "flute":
        def flute_env(n):
            return _env(n, 0.06, None, 0.06)
        _render_melody(score, buf, "flute", 1, (0.5, 1, 2), flute_env, vibrato=0.004)
        breath = score.rng.standard_normal(score.n).astype(np.float32)
        breath = np.convolve(breath, np.ones(3, dtype=np.float32) / 3, mode="same")
        buf += 0.04 * breath * (np.abs(buf) > 0.05)
    elif name == "sitar":
        _render_melody(score, buf, "sitar", 0, (0.25, 0.5, 1) if fast else (0.5, 1, 1),
                       lambda n: _env(n, 0.003, 0.5), glide_p=0.3)
        buf = np.tanh(1.8 * buf) / 1.2
    elif name == "synth":
        _render_synth(score, buf)
    elif name == "bass":
        _render_bass(score, buf)
    elif name == "drums":
        _render_drums(score, buf)
    elif name == "tabla":
        _render_tabla(score, buf)
    elif name == "organ":
        for start, degree in score.bars():
            n = score.sample(score.bar)
            for m in score.chord(degree, octave=0):
                _add(buf, score.sample(start), score.osc("square", m, n, phase0=score.rng.random())
                     * _env(n, 0.02, None, 0.05) * 0.25)
    elif name == "bells":
        t = np.arange(int(1.5 * SAMPLE_RATE)) / SAMPLE_RATE
        for start, degree in score.bars():
            for k in range(0, 4, 2):
                f = midi_hz(score.chord(degree, octave=1)[k % 3])
                hit = sum(np.sin(2 * np.pi * f * r * t) * a for r, a in ((1, 1), (2.76, 0.5), (5.4, 0.25)))
                _add(buf, score.sample(start + k * score.beat), (hit * np.exp(-t / 0.4)).astype(np.float32) * 0.3)
    elif name == "drone":
        _render_drone(score, buf)
    elif name == "vocal":
        octave = 0 if score.song.singer == "female" else -1
        _render_melody(score, buf, "voice", octave, (0.5, 1, 1, 2), lambda n: _env(n, 0.04, None, 0.05),
                       vibrato=0.015, vowel_cycle=True)
    else:
        raise ValueError(f"unknown instrument {name!r}")
    return buf


MIX_DB = {"drums": -2, "tabla": -3, "bass": -4, "drone": -8, "vocal": 0, "choir": -2}


def _room(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Random recording conditions: equalisation tilt, reverberation, noise."""
    n = len(x)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    spec = np.fft.rfft(x, size)
    freqs = np.fft.rfftfreq(size, 1 / SAMPLE_RATE)
    octaves = np.log2(np.maximum(freqs, 50) / 1000)
    eq_db = rng.uniform(-6, 6) * octaves
    for _ in range(2):                                                    # two random resonances or notches
        eq_db = eq_db + rng.uniform(-9, 9) * np.exp(-((octaves - rng.uniform(-2.5, 2.5)) / rng.uniform(0.3, 1)) ** 2)
    rt = rng.uniform(0.1, 0.9)                                            # reverberation time, s
    ir_t = np.arange(int(rt * SAMPLE_RATE)) / SAMPLE_RATE
    ir = rng.standard_normal(len(ir_t)) * np.exp(-6.9 * ir_t / rt) * rng.uniform(0.02, 0.12)
    ir[0] = 1.0
    y = np.fft.irfft(spec * 10 ** (eq_db / 20) * np.fft.rfft(ir, size), size)[:n]
    noise = np.cumsum(rng.standard_normal(n)) * 0.02
    noise = noise - np.convolve(noise, np.ones(200) / 200, mode="same")    # brownish, no DC
    noise += rng.standard_normal(n) * 0.3
    snr_db = rng.uniform(10, 35)
    noise *= np.sqrt(np.mean(y ** 2) / max(np.mean(noise ** 2), 1e-12)) * 10 ** (-snr_db / 20)
    return (y + noise).astype(np.float32)


def render_clip(seed: int, song_plan: SongPlan, plan: ClipPlan, clip_seconds: float) -> np.ndarray:
    """Render one clip as float32 mono at 16 kHz, peak below 1, RMS level
    ``plan.level_db`` dBFS."""
    rng = np.random.default_rng([seed, plan.song, plan.clip, 0x5A4D])
    n = int(round(clip_seconds * SAMPLE_RATE))
    mix = np.zeros(n, dtype=np.float32)
    for name in plan.instruments:
        tilt = float(np.random.default_rng([seed, plan.song, hash_name(name)]).choice([-0.4, -0.2, 0, 0.2, 0.4, 0.6]))
        score = _Score(song_plan, plan, n, np.random.default_rng([seed, plan.song, plan.clip, hash_name(name)]), tilt)
        part = _render_instrument(name, score)
        rms = np.sqrt(np.mean(part ** 2)) + 1e-9
        gain_db = MIX_DB.get(name, -3) + rng.uniform(-6, 6) - (6 if name in DISTRACTORS else 0)
        mix += part / rms * 10 ** (gain_db / 20)
    y = _room(rng, mix)
    y *= 10 ** (plan.level_db / 20) / (np.sqrt(np.mean(y ** 2)) + 1e-9)
    peak = np.abs(y).max()
    if peak > 0.9:                                        # soft limiter for the loudest clips
        y = 0.9 * np.tanh(y / 0.9)
    return y.astype(np.float32)


def hash_name(name: str) -> int:
    """A stable integer for an instrument name (Python's hash() is salted)."""
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little")


# ----------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthConfig:
    """Size and randomness of a synthetic dataset (defaults: the course's)."""

    n_songs: int = 500
    clips_per_song: int = 4
    clip_seconds: float = 6.0
    seed: int = 0
    weak_label_rate: float = 0.15
    split_fractions: tuple = (0.7, 0.15, 0.15)

    @property
    def n_clips(self) -> int:
        return self.n_songs * self.clips_per_song


def plan_dataset(cfg: SynthConfig) -> tuple[list[SongPlan], list[ClipPlan], list[str], np.ndarray]:
    """Plan every song and clip: returns (songs, clips, split per clip, labels).

    Labels are ``(n_clips, n_tags)`` uint8 after weak-label dropout. Songs are
    assigned to splits as a whole (a seeded permutation)."""
    songs = [plan_song(cfg.seed, s) for s in range(cfg.n_songs)]
    clips = [plan_clip(cfg.seed, songs[s], s, c) for s in range(cfg.n_songs) for c in range(cfg.clips_per_song)]
    order = np.random.default_rng([cfg.seed, 0x5B17]).permutation(cfg.n_songs)
    n_train = int(round(cfg.split_fractions[0] * cfg.n_songs))
    n_valid = int(round(cfg.split_fractions[1] * cfg.n_songs))
    song_split = np.empty(cfg.n_songs, dtype=object)
    song_split[order[:n_train]] = "train"
    song_split[order[n_train:n_train + n_valid]] = "valid"
    song_split[order[n_train + n_valid:]] = "test"
    labels = np.zeros((len(clips), len(TAGS)), dtype=np.uint8)
    for i, c in enumerate(clips):
        labels[i, [TAGS.index(t) for t in c.tags]] = 1
    if cfg.weak_label_rate > 0:
        for j, tag in enumerate(TAGS):          # seeded by tag name: independent of the tag order
            drop = np.random.default_rng([cfg.seed, 0x3EA4, hash_name(tag)]).random(len(clips)) < cfg.weak_label_rate
            labels[drop, j] = 0
    return songs, clips, [str(song_split[c.song]) for c in clips], labels


def _render_batch(args: tuple) -> list[np.ndarray]:
    cfg, items = args
    return [render_clip(cfg.seed, song, clip, cfg.clip_seconds) for song, clip in items]


def prepare_synthetic(root: str | os.PathLike, cfg: SynthConfig = SynthConfig(), workers: int | None = None,
                      overwrite: bool = False, progress: bool = True,
                      on_batch: Callable[[int], None] | None = None) -> Path:
    """Generate the synthetic dataset into ``root`` in the on-disk format.

    Resumable: an interrupted run continues with the clips not yet written.
    A finished dataset with the same configuration and generator version is
    left as it is; one made by another :data:`GENERATOR_VERSION` is stale and
    made again (with a one-line note); one with another configuration is an
    error unless ``overwrite``. ``on_batch(clips_written)`` is called after
    each batch of clips is durable (a progress hook). Returns ``root``.
    """
    root = Path(root)
    config = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    config["split_fractions"] = list(cfg.split_fractions)
    if (root / "meta.json").exists() and not overwrite:
        meta = TaggedAudio(root).meta
        if meta.get("config") != config:
            raise FileExistsError(f"{root} holds a synthetic dataset with another configuration "
                                  f"({meta.get('config')}); delete it or pass overwrite=True")
        if meta.get("generator_version") == GENERATOR_VERSION:
            return root
        print(f"{root.name}: made by generator version {meta.get('generator_version', 1)}, this code is version "
              f"{GENERATOR_VERSION}: generating it again")
        overwrite = True
    start = time.perf_counter()
    songs, clips, splits, labels = plan_dataset(cfg)
    infos = [ClipInfo(f"song{c.song:04d}_clip{c.clip}", s, f"song{c.song:04d} ({c.style})")
             for c, s in zip(clips, splits)]
    writer = DatasetWriter(root, "synthetic", TAGS, int(round(cfg.clip_seconds * SAMPLE_RATE)), infos, labels,
                           SAMPLE_RATE, overwrite=overwrite, source={"generator_version": GENERATOR_VERSION})
    pending = writer.pending()
    batches = [pending[i:i + 16] for i in range(0, len(pending), 16)]
    workers = workers or min(2, os.cpu_count() or 1)
    bar = tqdm(total=len(clips), initial=len(clips) - len(pending), desc="synthesising clips", unit="clip",
               disable=not progress)
    jobs = ((cfg, [(songs[clips[i].song], clips[i]) for i in b]) for b in batches)
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(batches) > 1 else None
    written = len(clips) - len(pending)
    try:
        rendered = pool.map(_render_batch, jobs) if pool else map(_render_batch, jobs)
        for batch, audio in zip(batches, rendered):
            for i, y in zip(batch, audio):
                writer.write(i, y)
            writer.checkpoint()
            written += len(batch)
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(written)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    bar.close()
    writer.finalize(extra={"config": config, "generator_version": GENERATOR_VERSION,
                           "generation_seconds": round(time.perf_counter() - start, 1),
                           "styles": [c.style for c in clips]})
    return root
