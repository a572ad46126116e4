"""The embedded demo dataset: synthesized songs and weekly chart histories with planted truth.

`generate` writes a raw-data directory in exactly the layout and table schemas of a real crawl
(`data_prep.tables`), so the same `targets` / `build` path serves both::

    RAW/
      charts.csv        weekly charts per region (top `chart_size`), source 'synthetic'
      tracks.csv        one row per track; isrc 'SYN000000042', song_id = isrc
      clips.csv         one clip per track, provider 'synthetic', audio/{track_id}.wav
      labels.csv        key (track_id), name 'tiktok', value 0/1  (read by data_prep.build)
      audio/            16 kHz mono PCM16 WAV, `clip_seconds` long
      truth.json        the planted truth (below), parameters, seed, oracle R², detectability
      truth_series.npz  uncensored weekly curves [songs, regions, weeks]

    python -m data_prep.synthetic --out /tmp/syn_demo [--seed 0] [--songs 240] [--null]

Everything is a deterministic function of the arguments: the same seed gives byte-identical files
(PCM16 WAV, fixed CSV/JSON formatting, zip entries without timestamps); nothing reads the clock.

The planted truth
-----------------
Notation: songs s, regions r, chart weeks t = 0 .. weeks-1 (week t ends on the Thursday
`start_date + 7 t`), k = t - t0_s weeks since the song's release week t0_s.

Artists a: fame f_a ~ N(0, 1); a home region h_a, uniform over the non-'global' regions. Every
artist gets one song, the remaining songs go to artists with probability ∝ exp(0.6 f_a), so famous
artists release more songs; releases t0_s are uniform over weeks 0 .. weeks-horizon (the first
`horizon` weeks of every song lie inside the timeline). An artist's earlier charted songs are
therefore informative about the next one (through f_a), as on real charts.

Extrinsic (not audible): promotion P_s ~ Bernoulli(sigmoid(0.8 f_a - 1)); TikTok flag
K_s: exactly round(tiktok_fraction * n_songs) songs, chosen at random (label known: labels.csv).
Featured artists (about 15% of songs) are decoration: no effect.

Audio attributes (independent, drawn per song, rendered into the audio, see `render_clip`);
u ~ U(0, 1) and the centred value x = 2u - 1 in [-1, 1] enters the formulas:
  tempo          BPM = 70 + 100 u               (note / drum onsets per second ∝ BPM)
  brightness     harmonic amplitudes ∝ n^-(3 - 2.6 u)   (spectral tilt; centroid rises with u)
  percussiveness drum bus (kick, snare, hi-hat noise bursts) gain = u × tonal RMS
  hook           a 1-beat melodic motif (four sixteenth slots); each beat's melody cell is the
                 motif with probability 0.1 + 0.85 u, motif notes 1 + 0.8 u louder than other
                 melody notes. One beat, not two: a 5.12 s crop (what the demo model sees) then
                 holds at least 5.9 motif periods even at 70 BPM, so the repetition that is the
                 hook can be heard in every crop (with 2-beat cells a crop held 3).
  loudness       clip RMS = -32 + 14 u dBFS
  mode           major (x = +1, p = 0.6) or minor (x = -1): triad quality and melody scale
Nuisance per song (not in any formula): key (-3..+3 semitones from C), chord progression of
I/IV/V, the motif's notes; per track: start offset, non-motif melody cells, oscillator phases.

Per (song, region), with region constants mu_r, d0_r, g_r and preference weights w_r (REGIONS):
  debut level    L = mu_r + 0.55 f_a + 0.6 P_s + 0.7 [h_a = r] + 0.35 e_L          (no audio)
                 = log streams in the release week, up to eta_0 and the TikTok wave's tail
  appeal         A = e sum_j w_rj x_sj  over the six attributes; e = audio_effect (the dose,
                 default 1; 0 gives a world whose popularity ignores the audio)
  decay          d = d0_r exp(-A + 0.15 e_d)       (per week, in natural-log streams)
  TikTok wave    V = K_s g_r (0.4 + 1.8 e u_hook): a second audience wave whose peak is V times
                 the debut streams, at k_b ~ U{4..10} weeks after release, width
                 sigma_b ~ U(1, 2) weeks (k_b, sigma_b per song, shared by all regions)
  log streams    y(k) = L + eta_k + log(exp(-d k) + V exp(-(k - k_b)^2 / (2 sigma_b^2)))
                 for k >= 0, i.e. streams = e^L (e^(-d k) + wave); eta AR(1): rho 0.7, stationary
                 sd 0.08 (indexed by k); streams = round(exp(y)), 0 before release.
e_L, e_d ~ N(0, 1). Audio acts only on longevity (d) and on the size of the TikTok second rise
(V), never on the debut level. With `null=True` everything is identical (audio files included)
except that A and V use a phantom attribute vector drawn independently of the audio (same
distribution): popularity is then independent of the audio. With `audio_on='debut'` (the
negative control of H) the audio moves to the debut: L gains e sum_j w_rj x_sj (the appeal
the decay would have had) while A and V use the phantom, so the audio sets the debut and not
the decay.

Album versions: a few songs (`alt_fraction`) have a second track (same ISRC, so same song_id; a
different 8 s excerpt of the same composition) whose streams are share_s × the song's streams,
share_s ~ U(0.1, 0.35), from release + U{0..3} weeks. The song's truth curve is the main track's.

Charts (what the pipeline sees): each region's weekly chart lists the top `chart_size` tracks by
streams among those with streams >= the region floor exp(mu_r - 1.5) (the floor stands in for the
real catalogue that would fill a real chart); positions 1.., movement NEW / RE / = / +N / -N
against the previous week, on_chart = weeks on this chart so far, peak = best position so far.
Tails that fall off the chart are censored; the uncensored curves are in truth_series.npz. A
(song, region) may enter its chart after release (late rise, TikTok wave) or never; truth.json
records each pair's chart_debut_week. Songs released in week 0 are on the very first chart, which
`data_prep.targets` rightly treats as left-censored (a first chart cannot show a debut).

Oracle (truth.json 'oracle'): R² of the planted MP2-like target
log1p(sum of streams over weeks k = 0..mp2_weeks-1), and of a 'late' target log1p(sum over
k = mp2_weeks..horizon-1), explained by the exact conditional expectation (Monte Carlo over what is
not given) given (a) extrinsic truth (f_a, h_a, P_s, K_s), (b) audio truth (the six attributes),
(c) both; over all (song, region) pairs, pooled (region known, so region means count as
explained), per region, and 'within_region' = the mean of the per-region values (the number to
compare a model's per-region R² with). No model can beat (c) in expectation; (b) is the ceiling
of an audio-only model. On the default demo world the MP2 target is mostly explained by the
extrinsic truth and the 'late' target mostly by the audio: debut is extrinsic, longevity is
audio (the figures: docs/results.md).

Detectability (`data_prep.detect`): songs[i]['detect'] holds one plain oracle audio feature per
attribute (onset BPM, harmonic centroid, percussive/harmonic dB, beat-lag self-similarity, RMS
dBFS, third contrast) of the main track's evaluation crop (the centre 512 fbank frames: samples
22880..105040 of an 8 s clip), computed as each clip is rendered; truth['detectability'] holds,
per attribute, how well that feature recovers the planted value across songs (out-of-fold R² of
an isotonic fit; mode also the rule's accuracy), the crop and a definition: the ceiling a probe
of a trained encoder is compared with. `python -m data_prep.detect --raw RAW` recomputes it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import sys
import time
import zipfile

import numpy as np
import pandas as pd
import soundfile as sf

from data_prep import tables
from mpjax import atomic

SAMPLE_RATE = 16000
ATTRIBUTES = ("tempo", "brightness", "percussiveness", "hook", "loudness", "mode")

# Region constants: mu = mean debut log-streams of an average song (weekly, natural log), d0 =
# base weekly decay, tiktok_gain = g_r, prefs = w_r (positive: the region likes more of it, i.e.
# slower decay). Regions not listed get mu 13, d0 0.24, g 1 and weights ~ N(0, 0.6) seeded by name.
REGIONS = {
    "global": {"mu": 15.4, "d0": 0.22, "tiktok_gain": 1.0,
               "prefs": {"tempo": 0.2, "brightness": 0.4, "percussiveness": 0.2, "hook": 1.0,
                         "loudness": 0.2, "mode": 0.3}},
    "us": {"mu": 14.2, "d0": 0.25, "tiktok_gain": 1.1,
           "prefs": {"tempo": 0.4, "brightness": 0.0, "percussiveness": 0.4, "hook": 0.8,
                     "loudness": 0.7, "mode": 0.2}},
    "kr": {"mu": 12.0, "d0": 0.28, "tiktok_gain": 0.7,
           "prefs": {"tempo": 0.2, "brightness": 1.2, "percussiveness": -0.4, "hook": 1.2,
                     "loudness": 0.0, "mode": 0.4}},
    "br": {"mu": 13.6, "d0": 0.21, "tiktok_gain": 1.3,
           "prefs": {"tempo": 1.1, "brightness": -0.2, "percussiveness": 1.2, "hook": 0.4,
                     "loudness": 0.4, "mode": 0.2}},
}
FLOOR_GAP = 1.5  # chart floor = exp(mu_r - FLOOR_GAP) weekly streams

# The popularity model's constants (see the module docstring).
FAME_W, PROMO_W, HOME_W, DEBUT_SD = 0.55, 0.6, 0.7, 0.35
DEBUT_AUDIO_W = 1.0  # audio_on='debut' only: weight of the appeal in the debut level
AUDIO_ON = ("longevity", "debut")
DECAY_SD = 0.15
AR_RHO, AR_SD = 0.7, 0.08
WAVE_BASE, WAVE_HOOK = 0.4, 1.8
WAVE_WEEKS = (4, 10)  # k_b ~ U{4..10}
WAVE_WIDTH = (1.0, 2.0)  # sigma_b ~ U(1, 2) weeks
ARTIST_RATE = 0.6  # songs per artist ∝ exp(ARTIST_RATE * fame)
MAJOR_P = 0.6
TEMPO_BPM = (70.0, 170.0)
LOUDNESS_DB = (-32.0, -18.0)  # clip RMS, dBFS
ORACLE_SAMPLES = 256

START_DATE = "2024-01-04"  # a Thursday: the end of the first chart week (weeks run Fri-Thu)


# ------------------------------------------------------------------------------------------------
# Randomness: one independent stream per purpose, so the null variant and different sizes share
# what they should.
# ------------------------------------------------------------------------------------------------

_STREAMS = {"artists": 1, "songs": 2, "attrs": 3, "curves": 4, "phantom": 5, "audio": 6,
            "oracle": 7, "names": 8, "alt": 9}


def _rng(seed: int, purpose: str, *more: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([int(seed), _STREAMS[purpose], *more]))


def region_params(region: str) -> dict:
  """mu, d0, tiktok_gain, prefs (a dict over ATTRIBUTES) and floor (log streams) of a region."""
  if region in REGIONS:
    p = dict(REGIONS[region])
    p["prefs"] = dict(p["prefs"])
  else:
    h = int.from_bytes(hashlib.sha256(region.encode()).digest()[:8], "little")
    w = np.random.default_rng(h).normal(0.0, 0.6, len(ATTRIBUTES))
    p = {"mu": 13.0, "d0": 0.24, "tiktok_gain": 1.0,
         "prefs": {a: round(float(v), 3) for a, v in zip(ATTRIBUTES, w)}}
  p["floor"] = p["mu"] - FLOOR_GAP
  return p


# ------------------------------------------------------------------------------------------------
# Audio
# ------------------------------------------------------------------------------------------------

_TABLE = 4096
_MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
_MINOR = np.array([0, 2, 3, 5, 7, 8, 10])
_PROGRESSIONS = ((0, 5, 7, 0), (0, 7, 5, 0), (0, 5, 0, 7), (0, 0, 5, 7), (0, 7, 0, 5))


def _lerp(lo_hi, u):
  return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * u


def _midi_hz(m):
  return 440.0 * 2.0 ** ((np.asarray(m, np.float64) - 69.0) / 12.0)


def _wavetable(tilt: float, max_hz: float) -> np.ndarray:
  """One period, harmonics n = 1.. below 7.6 kHz at max_hz, amplitude n^-tilt, RMS 1."""
  n_harm = int(max(1, min(_TABLE // 2 - 1, 7600.0 // max_hz)))
  spec = np.zeros(_TABLE // 2 + 1, np.complex128)
  n = np.arange(1, n_harm + 1)
  spec[1:n_harm + 1] = -1j * n ** (-float(tilt))
  table = np.fft.irfft(spec, _TABLE)
  return table / np.sqrt(np.mean(table ** 2))


def composition(seed: int, song: int) -> dict:
  """The song-level musical material shared by all its tracks: key, progression, motif."""
  rng = _rng(seed, "audio", song)
  key = int(rng.integers(-3, 4))  # semitones from C: a narrow range keeps pitch from masking timbre
  prog = _PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))]
  # Motif: a 1-beat cell of sixteenth-note slots 0..3; a note on slot 0, plus 1-3 more.
  slots = np.sort(np.r_[0, rng.choice([1, 2, 3], size=int(rng.integers(1, 4)), replace=False)])
  steps = rng.choice([-2, -1, 1, 2, 3], size=len(slots) - 1)
  degrees = np.clip(np.cumsum(np.r_[rng.integers(0, 5), steps]), 0, 9)  # scale degrees
  return {"key": key, "progression": [int(c) for c in prog],
          "motif": [(int(s), int(d)) for s, d in zip(slots, degrees)]}


def render_clip(attrs: dict, comp: dict, seconds: float, seed: int, song: int,
                take: int = 0) -> np.ndarray:
  """Renders one clip of a song: float32 mono at 16 kHz in (-1, 1), exactly `seconds` long.

  attrs: the `u` values in [0, 1] of tempo, brightness, percussiveness, hook, loudness and
  mode (0 minor / 1 major) -- see the module docstring for what each controls. comp: the song's
  `composition`. take: which excerpt (0 the main track, 1 the album version): a different start
  offset and different non-motif melody cells; everything else is the same.

  Voices: pads (the bar's triad, one chord per 4-beat bar, roots I/IV/V of the key), bass (chord
  root on every beat), melody (sixteenth-note grid, 1-beat cells: the motif or random scale notes
  or a rest), drums (kick on beats 1 and 3, snare on 2 and 4, hi-hat on every eighth). Wavetable
  oscillators, harmonics up to 7.6 kHz (no aliasing). Mix: tonal bus (pads 0.5, bass 0.45,
  melody 0.6, each at unit RMS, then the bus at unit RMS) + percussiveness × drum bus (unit RMS),
  scaled to the loudness RMS; a soft knee above 0.8 keeps every sample below 0.99 (it touches
  only a few loud, percussive clips and moves their RMS by < 0.1 dB).
  """
  sr = SAMPLE_RATE
  rng = _rng(seed, "audio", song, 1000 + take)
  bpm = _lerp(TEMPO_BPM, attrs["tempo"])
  beat = 60.0 / bpm
  bar = 4 * beat
  eighth = beat / 2
  n_out = int(round(seconds * sr))
  offset = int(rng.integers(int(bar * sr)))
  n = offset + n_out
  n_bars = int(np.ceil(n / (bar * sr)))
  tilt = 3.0 - 2.6 * attrs["brightness"]
  scale = _MAJOR if attrs["mode"] >= 0.5 else _MINOR
  third = 4 if attrs["mode"] >= 0.5 else 3
  key = comp["key"]
  ramp = np.arange(int(bar * sr) + 2, dtype=np.float64)
  fade = np.linspace(1.0, 0.0, int(0.02 * sr))  # 20 ms release at every note's end
  envs = {}

  def add(buf, start_s, dur_s, hzs, table, gain, attack, tau):
    """Adds notes (one per frequency in hzs, random phases) sharing onset and envelope."""
    start = int(round(start_s * sr))
    m = min(int(round(dur_s * sr)), n - start)
    if m <= 0:
      return
    if (attack, tau) not in envs:
      t = ramp / sr
      envs[attack, tau] = (1.0 - np.exp(-t / attack)) * np.exp(-t / tau)
    wave = np.zeros(m)
    for hz in hzs:
      idx = ramp[:m] * (hz * _TABLE / sr) + rng.random() * _TABLE
      wave += table[idx.astype(np.int64) & (_TABLE - 1)]
    wave *= envs[attack, tau][:m]
    r = min(len(fade), m)
    wave[m - r:] *= fade[len(fade) - r:]
    buf[start:start + m] += gain * wave

  # Pads and bass.
  pads = np.zeros(n)
  bass = np.zeros(n)
  pad_table = _wavetable(tilt, _midi_hz(48 + key + 7 + 7))  # highest pad note
  bass_table = _wavetable(max(tilt, 1.2), _midi_hz(36 + key + 7))
  for b in range(n_bars):
    root = comp["progression"][b % 4]
    add(pads, b * bar, bar, _midi_hz(48 + key + root + np.array([0, third, 7])), pad_table, 1.0,
        0.03, 2.5)
    for q in range(4):
      add(bass, b * bar + q * beat, beat, [_midi_hz(36 + key + root)], bass_table, 1.0, 0.005, 0.35)

  # Melody: 1-beat cells of four sixteenth slots (a 5.12 s crop holds >= 5.9 cells at 70 BPM).
  melody = np.zeros(n)
  mel_table = _wavetable(tilt, _midi_hz(60 + key + 12 + 4))  # degree 9: a major tenth
  h = attrs["hook"]
  p_motif = 0.1 + 0.85 * h
  sixteenth = beat / 4
  for c in range(4 * n_bars):
    t0 = c * beat
    if rng.random() < p_motif:
      notes, gain = comp["motif"], 1.0 + 0.8 * h
    elif rng.random() < 0.25:
      continue  # a rest
    else:
      k = int(rng.integers(1, 4))
      slots = np.sort(rng.choice(4, size=k, replace=False))
      degs = np.clip(np.cumsum(np.r_[rng.integers(0, 8), rng.integers(-2, 3, size=k - 1)]), 0, 9)
      notes, gain = list(zip(slots.tolist(), degs.tolist())), 0.7
    for i, (slot, deg) in enumerate(notes):
      end = notes[i + 1][0] if i + 1 < len(notes) else 4
      midi = 60 + key + 12 * (deg // 7) + scale[deg % 7]
      add(melody, t0 + slot * sixteenth, (end - slot) * sixteenth, [_midi_hz(midi)], mel_table, gain,
          0.008, 0.5)

  # Drums: fixed templates placed on the grid.
  drums = np.zeros(n)
  td = ramp[:int(0.3 * sr)] / sr
  kick = np.sin(2 * np.pi * np.cumsum(45.0 + 75.0 * np.exp(-td / 0.03)) / sr) * np.exp(-td / 0.09)
  noise = rng.standard_normal(int(0.3 * sr))
  body = np.convolve(noise, np.ones(4) / 2.0, mode="same")  # low-passed noise (~3 kHz)
  snare = body * np.exp(-td / 0.05) + 0.5 * np.sin(2 * np.pi * 190 * td) * np.exp(-td / 0.05)
  hat = np.diff(noise, prepend=0.0) * np.exp(-td / 0.015) * 0.3
  for b in range(n_bars):
    for q in range(8):
      s = int(round((b * bar + q * eighth) * sr))
      if s >= n:
        break
      for tpl, on in ((kick, q in (0, 4)), (snare, q in (2, 6)), (hat, True)):
        if on:
          m = min(len(tpl), n - s)
          drums[s:s + m] += tpl[:m]

  def rms(x):
    return float(np.sqrt(np.mean(x * x))) + 1e-12

  tonal = 0.5 * pads / rms(pads) + 0.45 * bass / rms(bass) + 0.6 * melody / rms(melody)
  tonal /= rms(tonal)
  mix = tonal + attrs["percussiveness"] * drums / rms(drums)
  x = mix[offset:offset + n_out]
  x = x * (10.0 ** (_lerp(LOUDNESS_DB, attrs["loudness"]) / 20.0) / rms(x))
  # Soft knee above 0.8 so no sample reaches full scale (rare: only loud, percussive clips).
  hot = np.flatnonzero(np.abs(x) > 0.8)
  if len(hot):
    x[hot] = np.sign(x[hot]) * (0.8 + 0.19 * np.tanh((np.abs(x[hot]) - 0.8) / 0.19))
  return x.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# The world: artists, songs, attributes
# ------------------------------------------------------------------------------------------------

_SYL = ("ka", "ri", "mo", "se", "lu", "na", "to", "vi", "da", "el", "jo", "ze", "an", "mi", "ro",
        "sa", "ke", "li", "ba", "yo", "ne", "ta", "io", "ve")
_ADJ = ("Neon", "Golden", "Silent", "Electric", "Velvet", "Midnight", "Broken", "Crystal", "Wild",
        "Lonely", "Burning", "Paper", "Sweet", "Cold", "Endless", "Hidden", "Summer", "Blue",
        "Falling", "Lucky", "Faded", "Runaway", "Secret", "Fragile", "Savage", "Little", "Dizzy",
        "Honey", "Lazy", "Bitter", "Shiny", "Crazy")
_NOUN = ("Hearts", "Lights", "Rain", "Dreams", "Roads", "Fire", "Ocean", "Heaven", "Stars",
         "Mirror", "Shadows", "Waves", "Echo", "Garden", "Thunder", "Summer", "Satellite", "Smoke",
         "Diamonds", "River", "Paradise", "Motion", "Angel", "Signal", "Cherry", "Comet", "Island",
         "Velocity", "Letters", "Memory", "Highway", "Butterfly")


def _names(rng, n_artists, n_songs):
  artists, seen = [], set()
  while len(artists) < n_artists:
    first = "".join(rng.choice(_SYL, size=int(rng.integers(2, 4)))).capitalize()
    name = first if rng.random() < 0.5 else f"{first} {''.join(rng.choice(_SYL, 2)).capitalize()}"
    if tables.normalise(name) not in seen:
      seen.add(tables.normalise(name))
      artists.append(name)
  combos = [f"{a} {b}" for a in _ADJ for b in _NOUN if a != b]
  order = rng.permutation(len(combos))
  titles = [combos[order[i % len(combos)]] + (f" {i // len(combos) + 1}" if i >= len(combos)
                                               else "") for i in range(n_songs)]
  return artists, titles


def sample_world(*, seed, n_songs, n_artists, regions, weeks, horizon, tiktok_fraction,
                 alt_fraction, null, audio_effect=1.0, audio_on="longevity"):
  """Draws everything but the weekly noise and the audio: a dict of numpy arrays and lists."""
  if n_songs < 1 or n_artists < 1:
    raise ValueError("need at least one song and one artist")
  ra = _rng(seed, "artists")
  fame = ra.normal(size=n_artists)
  homes = [r for r in regions if r != "global"] or list(regions)
  home = ra.integers(len(homes), size=n_artists)
  artist_names, titles = _names(_rng(seed, "names"), n_artists, n_songs)

  rs = _rng(seed, "songs")
  first = rs.permutation(n_artists)[:min(n_artists, n_songs)]
  p = np.exp(ARTIST_RATE * fame)
  rest = rs.choice(n_artists, size=n_songs - len(first), p=p / p.sum())
  artist = rs.permutation(np.r_[first, rest]).astype(np.int64)
  last = weeks - horizon if weeks > horizon else weeks - 1
  release = rs.integers(0, max(last, 0) + 1, size=n_songs)
  promo = (rs.random(n_songs) < 1.0 / (1.0 + np.exp(-(0.8 * fame[artist] - 1.0)))).astype(np.int64)
  tiktok = np.zeros(n_songs, np.int64)
  tiktok[rs.permutation(n_songs)[:int(round(tiktok_fraction * n_songs))]] = 1
  feat = np.full(n_songs, -1)
  has_feat = rs.random(n_songs) < 0.15
  if n_artists > 1:
    other = (artist + rs.integers(1, n_artists, size=n_songs)) % n_artists
    feat = np.where(has_feat, other, -1)
  wave_week = rs.integers(WAVE_WEEKS[0], WAVE_WEEKS[1] + 1, size=n_songs)
  wave_width = rs.uniform(*WAVE_WIDTH, size=n_songs)
  duration_ms = rs.integers(140, 241, size=n_songs) * 1000

  rt = _rng(seed, "attrs")
  u = rt.random((n_songs, len(ATTRIBUTES)))
  u[:, ATTRIBUTES.index("mode")] = (rt.random(n_songs) < MAJOR_P).astype(np.float64)
  # The null variant: an independent phantom with the same distribution drives A and V.
  rp = _rng(seed, "phantom")
  u_ph = rp.random((n_songs, len(ATTRIBUTES)))
  u_ph[:, ATTRIBUTES.index("mode")] = (rp.random(n_songs) < MAJOR_P).astype(np.float64)
  # The debut control: the audio sets the level, and a phantom the decay and the wave.
  u_pref = u_ph if null or audio_on == "debut" else u

  ralt = _rng(seed, "alt")
  n_alt = int(round(alt_fraction * n_songs))
  alt_song = np.sort(ralt.permutation(n_songs)[:n_alt])
  alt_share = ralt.uniform(0.1, 0.35, size=n_alt)
  alt_delay = ralt.integers(0, 4, size=n_alt)

  rp_ = [region_params(r) for r in regions]
  return {
      "regions": list(regions), "region_params": rp_, "fame": fame, "home": home,
      "home_regions": homes, "artist_names": artist_names, "titles": titles, "artist": artist,
      "release": release, "promo": promo, "tiktok": tiktok, "feat": feat, "u": u, "u_pref": u_pref,
      "wave_week": wave_week, "wave_width": wave_width, "duration_ms": duration_ms,
      "alt_song": alt_song, "alt_share": alt_share, "alt_delay": alt_delay, "null": bool(null),
      "audio_effect": float(audio_effect), "audio_on": audio_on,
  }


def _centred(u):
  x = 2.0 * u - 1.0
  x[..., ATTRIBUTES.index("mode")] = np.where(u[..., ATTRIBUTES.index("mode")] >= 0.5, 1.0, -1.0)
  return x


def _pref_matrix(world):
  return np.array([[p["prefs"][a] for a in ATTRIBUTES] for p in world["region_params"]])  # [R, J]


def _home_onehot(world, home_idx):
  """[..., R] 1 where the artist's home region is region r."""
  regs = world["regions"]
  codes = np.array([regs.index(h) if h in regs else -1 for h in world["home_regions"]])
  return (codes[np.asarray(home_idx)][..., None] == np.arange(len(regs))).astype(np.float64)


def _levels(world, fame, promo, home_idx, e_L, u):
  """Debut levels [..., R]; u (the audio attributes) counts only in the audio_on='debut' world."""
  mu = np.array([p["mu"] for p in world["region_params"]])
  level = (mu + FAME_W * fame[..., None] + PROMO_W * promo[..., None]
           + HOME_W * _home_onehot(world, home_idx) + DEBUT_SD * e_L)
  if world.get("audio_on") == "debut" and not world["null"]:
    level = level + DEBUT_AUDIO_W * world["audio_effect"] * (_centred(u) @ _pref_matrix(world).T)
  return level


def _decays(world, u_pref, e_d):
  d0 = np.array([p["d0"] for p in world["region_params"]])
  appeal = world["audio_effect"] * (_centred(u_pref) @ _pref_matrix(world).T)
  return d0 * np.exp(-appeal + DECAY_SD * e_d), appeal


def _waves(world, tiktok, u_pref):
  g = np.array([p["tiktok_gain"] for p in world["region_params"]])
  hook = u_pref[..., ATTRIBUTES.index("hook")]
  return (tiktok * (WAVE_BASE + WAVE_HOOK * world["audio_effect"] * hook))[..., None] * g


def _ar_noise(rng, shape, steps):
  """AR(1) with rho AR_RHO and stationary sd AR_SD: [*shape, steps]."""
  z = rng.standard_normal((steps, *shape))
  z[0] *= AR_SD
  inn = AR_SD * np.sqrt(1.0 - AR_RHO ** 2)
  for k in range(1, steps):
    z[k] = AR_RHO * z[k - 1] + inn * z[k]
  return np.moveaxis(z, 0, -1)


def _curve(L, d, V, kb, sb, eta, k):
  """Log streams at weeks since release k >= 0 (broadcasting; k < 0 is treated as 0)."""
  k = np.maximum(k, 0)
  with np.errstate(divide="ignore"):  # V = 0 (no wave): log V = -inf, and logaddexp is exact
    log_v = np.log(V)
  # log(exp(-d k) + V exp(...)), without underflow when a large dose makes d k huge.
  return L + eta + np.logaddexp(-d * k, log_v - 0.5 * ((k - kb) / sb) ** 2)


def simulate(world, *, seed, weeks):
  """Uncensored weekly streams: level, decay, appeal, wave [S, R] and streams [S, R, W]."""
  S, R = len(world["artist"]), len(world["regions"])
  rc = _rng(seed, "curves")
  e_L = rc.standard_normal((S, R))
  e_d = rc.standard_normal((S, R))
  eta = _ar_noise(rc, (S, R), weeks)
  fame_s = world["fame"][world["artist"]]
  L = _levels(world, fame_s, world["promo"], world["home"][world["artist"]], e_L, world["u"])
  d, appeal = _decays(world, world["u_pref"], e_d)
  V = _waves(world, world["tiktok"], world["u_pref"])
  k = np.arange(weeks)[None, None, :] - world["release"][:, None, None]
  kb = world["wave_week"][:, None, None]
  sb = world["wave_width"][:, None, None]
  # eta is indexed by weeks since release, so a song's noise does not depend on its release week.
  eta_k = np.take_along_axis(eta, np.clip(k, 0, weeks - 1).astype(np.int64), axis=2)
  y = _curve(L[..., None], d[..., None], V[..., None], kb, sb, eta_k, k)
  streams = np.where(k >= 0, np.round(np.exp(y)), 0.0)
  return {"level": L, "decay": d, "appeal": appeal, "wave": V, "streams": streams,
          "e_L": e_L, "e_d": e_d}


# ------------------------------------------------------------------------------------------------
# Charts
# ------------------------------------------------------------------------------------------------


def _movement(prev_pos, pos, ever):
  if prev_pos > 0:
    delta = prev_pos - pos
    return "=" if delta == 0 else f"{delta:+d}"
  return "RE" if ever else "NEW"


def chart_rows(track_streams, track_ids, regions, floors, dates, chart_size):
  """Weekly charts from track streams [T, R, W] (see the module docstring).

  Returns the chart rows (dicts; 'ti' = track index, no artist/title columns yet) and the chart
  positions [T, R, W] (0 = not listed).
  """
  T, R, W = track_streams.shape
  rows = []
  pos_all = np.zeros((T, R, W), np.int64)
  order_id = np.argsort(np.asarray(track_ids), kind="stable")
  rank_of_id = np.empty(T, np.int64)
  rank_of_id[order_id] = np.arange(T)
  for r in range(R):
    prev = np.zeros(T, np.int64)
    weeks_on = np.zeros(T, np.int64)
    peak = np.zeros(T, np.int64)
    for w in range(W):
      s = track_streams[:, r, w]
      ok = np.flatnonzero(s >= np.exp(floors[r]))
      top = ok[np.lexsort((rank_of_id[ok], -s[ok]))][:chart_size]
      cur = np.zeros(T, np.int64)
      cur[top] = np.arange(1, len(top) + 1)
      for t in top:
        p = int(cur[t])
        mv = _movement(int(prev[t]), p, weeks_on[t] > 0)
        weeks_on[t] += 1
        peak[t] = p if peak[t] == 0 else min(int(peak[t]), p)
        rows.append({"region": regions[r], "date": dates[w], "pos": p, "ti": int(t),
                     "streams": float(s[t]), "movement": mv, "on_chart": float(weeks_on[t]),
                     "peak": float(peak[t])})
      pos_all[:, r, w] = cur
      prev = cur
  return rows, pos_all


# ------------------------------------------------------------------------------------------------
# Oracle
# ------------------------------------------------------------------------------------------------


def _r2(y, yhat):
  """Coefficient of determination, None when y is constant."""
  ss = float(np.sum((y - y.mean()) ** 2))
  return round(float(1.0 - np.sum((y - yhat) ** 2) / ss), 4) if ss > 0 else None


def oracle(world, sim, *, seed, mp2_weeks, horizon, samples=ORACLE_SAMPLES):
  """R² of E[target | given] for given = extrinsic / audio / both (see the module docstring).

  The conditional expectation is exact up to Monte Carlo error: what is not given is redrawn
  `samples` times from its true distribution -- the audio attributes from their prior (they are
  independent of everything extrinsic), the extrinsic tuple (fame, home, promotion, TikTok) from
  the songs' empirical joint distribution, and all noise (e_L, e_d, eta, k_b, sigma_b) always.
  In the null variant, and in the audio_on='debut' world, the attributes that drive decay and
  wave are a phantom, never given (in the latter the given audio sets the debut level).
  """
  S, R = sim["level"].shape
  rng = _rng(seed, "oracle")
  W = sim["streams"].shape[2]
  idx = world["release"][:, None, None] + np.arange(horizon)[None, None, :]
  inside = idx < W  # [S, 1, H]: weeks past the end of the timeline count as 0 streams
  s_true = np.take_along_axis(sim["streams"], np.minimum(idx, W - 1), axis=2) * inside
  windows = {"mp2": (0, mp2_weeks)}
  if horizon > mp2_weeks:
    windows["late"] = (mp2_weeks, horizon)
  y_true = {n: np.log1p(s_true[..., a:b].sum(-1)) for n, (a, b) in windows.items()}
  artist = world["artist"]
  ext = {"fame": world["fame"][artist], "home": world["home"][artist], "promo": world["promo"],
         "tiktok": world["tiktok"]}
  k = np.arange(horizon, dtype=np.float64)
  chunk = max(1, int(2_000_000 // (samples * R * horizon)))

  def expectation(songs, given):
    n = len(songs)
    if "extrinsic" in given:
      e = {name: np.broadcast_to(v[songs], (samples, n)) for name, v in ext.items()}
    else:
      j = rng.integers(S, size=(samples, n))
      e = {name: v[j] for name, v in ext.items()}
    def prior():
      u = rng.random((samples, n, len(ATTRIBUTES)))
      u[..., ATTRIBUTES.index("mode")] = rng.random((samples, n)) < MAJOR_P
      return u

    audio = (np.broadcast_to(world["u"][songs], (samples, n, len(ATTRIBUTES)))
             if "audio" in given and not world["null"] else prior())
    # Decay and wave: the audio, else (debut world) a phantom; the null world's audio counts nowhere.
    u = audio if world["u_pref"] is world["u"] or world["null"] else prior()
    L = _levels(world, e["fame"], e["promo"], e["home"], rng.standard_normal((samples, n, R)),
                audio)
    d, _ = _decays(world, u, rng.standard_normal((samples, n, R)))
    V = _waves(world, e["tiktok"], u)
    kb = rng.integers(WAVE_WEEKS[0], WAVE_WEEKS[1] + 1, size=(samples, n))[..., None, None]
    sb = rng.uniform(*WAVE_WIDTH, size=(samples, n))[..., None, None]
    eta = _ar_noise(rng, (samples, n, R), horizon)
    streams = np.round(np.exp(_curve(L[..., None], d[..., None], V[..., None], kb, sb, eta, k)))
    streams *= inside[songs]
    return {name: np.log1p(streams[..., a:b].sum(-1)).mean(0) for name, (a, b) in windows.items()}

  out = {}
  for label, given in (("extrinsic", ("extrinsic",)), ("audio", ("audio",)),
                       ("both", ("extrinsic", "audio"))):
    parts = [expectation(np.arange(i, min(i + chunk, S)), given) for i in range(0, S, chunk)]
    for name in windows:
      pred = np.concatenate([p[name] for p in parts])
      res = {"pooled": _r2(y_true[name].ravel(), pred.ravel())}
      for r, reg in enumerate(world["regions"]):
        res[reg] = _r2(y_true[name][:, r], pred[:, r])
      per = [res[reg] for reg in world["regions"] if res[reg] is not None]
      res["within_region"] = round(float(np.mean(per)), 4) if per else None
      out.setdefault(name, {})[label] = res
  out["definition"] = (
      f"R² of E[target | given] (Monte Carlo over {samples} draws of what is not given) against "
      f"the planted target, over all (song, region) pairs: 'pooled' over regions (the region is "
      f"known, so region means count as explained), per region, and 'within_region' = their mean. "
      f"mp2 = log1p(sum of uncensored streams in weeks 0..{mp2_weeks - 1} after release); late = "
      f"log1p(sum over weeks {mp2_weeks}..{horizon - 1}; absent when empty). extrinsic = artist "
      f"fame and home region, promotion, TikTok flag; audio = the six audio attributes. Targets "
      f"built from the censored charts (debut = first chart week) differ from these; models "
      f"trained on them fall below the 'both' ceiling.")
  return out


def chart_oracle(world, charts, main_track_ids, *, horizon, mp2_weeks, folds=5):
  """R² an oracle reaches on the targets the pipeline builds from these charts.

  The targets are `data_prep.targets.build_targets`' own (weekly, this horizon and MP2 window):
  'mp2' (log summed streams over the first weeks after the chart debut) and 'longevity' (the
  censoring-aware decay slope), per (main track, region) pair. The predictors are the planted
  truth: 'audio' (the six attributes), 'extrinsic' (artist fame, promotion, TikTok flag, home
  region) and 'both'; the fit is gradient boosting, out of fold over `folds` folds grouped by song:
  per region ('within_region' = the mean over regions) and 'pooled' (the region one-hot added).
  A fitted estimate of E[target | truth], so a lower bound of the exact ceiling.
  """
  from sklearn.ensemble import HistGradientBoostingRegressor
  from sklearn.model_selection import GroupKFold
  from threadpoolctl import threadpool_limits

  from data_prep import targets as targets_lib

  tg = targets_lib.build_targets(charts, period="weekly", horizon=horizon, mp2_weeks=mp2_weeks)
  tab = tg.table
  index = {t: i for i, t in enumerate(main_track_ids)}  # song s's main track is track s
  song = np.array([index.get(t, -1) for t in tab["track_id"]])
  regions = world["regions"]
  region = np.array([regions.index(r) for r in tab["region"]])
  main = song >= 0
  artist = world["artist"][np.maximum(song, 0)]
  home = np.array([regions.index(h) if h in regions else -1
                   for h in world["home_regions"]])[world["home"][artist]]
  feats = {"audio": world["u"][np.maximum(song, 0)],
           "extrinsic": np.c_[world["fame"][artist], world["promo"][np.maximum(song, 0)],
                              world["tiktok"][np.maximum(song, 0)], home == region]}
  feats["both"] = np.c_[feats["audio"], feats["extrinsic"]]
  onehot = (region[:, None] == np.arange(len(regions))).astype(np.float64)

  def oof(X, y, groups):
    pred = np.full(len(y), np.nan)
    k = min(folds, len(np.unique(groups)))
    if k < 2:
      return pred
    # One thread: OpenMP on a busy 2-core machine made these small fits 30x slower.
    with threadpool_limits(1):
      for tr, te in GroupKFold(k).split(X, y, groups):
        fit = HistGradientBoostingRegressor(max_iter=100, learning_rate=0.1, max_depth=3,
                                            random_state=0).fit(X[tr], y[tr])
        pred[te] = fit.predict(X[te])
    return pred

  out = {}
  for name, col in (("mp2", "mp2_target"), ("longevity", "longevity_target")):
    y = tab[col].to_numpy(np.float64)
    ok = main & np.isfinite(y)
    for label, X in feats.items():
      res = {"pooled": _r2(y[ok], oof(np.c_[X, onehot][ok], y[ok], song[ok]))
             if ok.sum() > folds else None}
      per = []
      for r, reg in enumerate(regions):
        sel = ok & (region == r)
        res[reg] = _r2(y[sel], oof(X[sel], y[sel], song[sel])) if sel.sum() > folds else None
        if res[reg] is not None:
          per.append(res[reg])
      res["within_region"] = round(float(np.mean(per)), 4) if per else None
      res["pairs"] = int(ok.sum())
      out.setdefault(name, {})[label] = res
  out["definition"] = (
      "R² of out-of-fold gradient-boosting predictions (5 folds grouped by song) of the targets "
      "data_prep.targets builds from charts.csv (mp2_target, longevity_target; weekly, "
      f"horizon {horizon}, MP2 window {mp2_weeks}), from the planted truth: audio = the six "
      "attributes, extrinsic = artist fame, promotion, TikTok flag, home region; per region, "
      "their mean 'within_region', and 'pooled' (region one-hot added). A lower bound of the "
      "exact ceiling on these censored, chart-derived targets.")
  return out


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def _write_wav(path, x):
  buf = io.BytesIO()
  sf.write(buf, x, SAMPLE_RATE, subtype="PCM_16", format="WAV")
  data = buf.getvalue()
  atomic.write_bytes(path, data)
  return hashlib.sha256(data).hexdigest()


def _write_npz(path, arrays: dict):
  """Like np.savez_compressed, but zip entries carry a fixed timestamp (byte-identical reruns)."""
  with atomic.replacing(path, "wb") as f, \
      zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
    for name in sorted(arrays):
      buf = io.BytesIO()
      np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
      info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      z.writestr(info, buf.getvalue())


def _round(x, nd=6):
  if isinstance(x, dict):
    return {k: _round(v, nd) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_round(v, nd) for v in x]
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return round(float(x), nd)
  return x


def _write_json(path, obj):
  atomic.write_json(path, _round(obj), sort_keys=True, indent=1, ensure_ascii=False,
                    allow_nan=False)


FORMULAS = {
    "artists": "fame f_a ~ N(0,1); home region h_a uniform over the non-global regions; each "
               "artist one song, the rest assigned with probability ∝ exp(0.6 f_a)",
    "release": "release week t0_s uniform over 0..weeks-horizon (whole weeks; week t ends on "
               "start_date + 7t); k = t - t0_s",
    "extrinsic": "promotion P_s ~ Bernoulli(sigmoid(0.8 f_a - 1)); tiktok K_s: exactly "
                 "round(tiktok_fraction * n_songs) songs at random; featured artists have no "
                 "effect",
    "attributes": "u ~ U(0,1) per attribute (mode: 1 major with p 0.6, else 0); x = 2u-1 "
                  "(mode: +1/-1). tempo BPM = 70+100u; brightness harmonic amplitude n^-(3-2.6u); "
                  "percussiveness drum gain u x tonal RMS; hook: a beat is the 1-beat motif with p "
                  "0.1+0.85u, motif notes (1+0.8u) louder; loudness RMS = -32+14u dBFS",
    "debut_level": "L = mu_r + 0.55 f_a + 0.6 P_s + 0.7 [h_a = r] + 0.35 e_L  (natural-log weekly "
                   "streams at release; no audio term; params.audio_on = 'debut': + e sum_j "
                   "w_rj x_sj, the audio's appeal, while A and V use a phantom)",
    "appeal": "A = e sum_j w_rj x_sj (e = params.audio_effect, the dose) over the six attributes (w_r = region prefs); null variant: x "
              "from an independent phantom draw instead of the audio",
    "decay": "d = d0_r exp(-A + 0.15 e_d) per week",
    "wave": "TikTok wave V = K_s g_r (0.4 + 1.8 e u_hook) (null: phantom hook): peak of the second "
            "wave as a multiple of the debut streams, at k_b ~ U{4..10} weeks, width sigma_b ~ "
            "U(1, 2) weeks",
    "curve": "y(k) = L + eta_k + log(exp(-d k) + V exp(-(k-k_b)^2 / (2 sigma_b^2))), eta AR(1) rho "
             "0.7 sd 0.08; streams = round(exp(y)) for k >= 0, else 0; e_L, e_d ~ N(0,1)",
    "album_versions": "alt track of a song: streams = share_s x the song's streams from release + "
                      "delay weeks, share_s ~ U(0.1, 0.35), delay ~ U{0..3}; same ISRC/song_id",
    "charts": "per region and week: top chart_size tracks by streams among those with streams >= "
              "exp(floor_r), floor_r = mu_r - 1.5; ties by track_id",
}


def _ids(n_songs, n_alt, n_artists):
  digits = max(5, len(str(n_songs + n_alt - 1)))
  return {"track": [f"syn{i:0{digits}d}" for i in range(n_songs + n_alt)],
          "isrc": [f"SYN{i:09d}" for i in range(n_songs)],
          "artist": [f"synartist{a:04d}" for a in range(n_artists)]}


def _release_date(world, start, s, delay=0):
  """Friday that starts the release week (chart weeks run Friday to Thursday)."""
  return (start + dt.timedelta(weeks=int(world["release"][s]) + int(delay), days=-6)).isoformat()


def _charts_table(world, rows, ids, track_song):
  names = world["artist_names"]
  if not rows:
    return tables.empty("charts")
  charts = pd.DataFrame(rows)
  ti = charts.pop("ti").to_numpy()
  song = track_song[ti]
  artist = world["artist"][song]
  feat = world["feat"][song]
  charts["track_id"] = [ids["track"][t] for t in ti]
  charts["artist"] = [names[a] for a in artist]
  charts["title"] = [world["titles"][s] for s in song]
  charts["featured"] = [names[f] if f >= 0 else "" for f in feat]
  charts["artist_id"] = [ids["artist"][a] for a in artist]
  charts["period"] = "weekly"
  charts["source"] = "synthetic"
  return charts[list(tables.CHART_COLUMNS)]


def _tracks_table(world, ids, track_song, start):
  names, S = world["artist_names"], len(world["artist"])
  rows = []
  for t, tid in enumerate(ids["track"]):
    s = int(track_song[t])
    a, f = world["artist"][s], world["feat"][s]
    alt = t >= S
    rows.append({
        "track_id": tid, "isrc": ids["isrc"][s], "song_id": ids["isrc"][s],
        "name": world["titles"][s], "artists": names[a] + (f"; {names[f]}" if f >= 0 else ""),
        "album": f"{names[a]} Collection" if alt else f"{world['titles'][s]} - Single",
        "release_date": _release_date(world, start, s, world["alt_delay"][t - S] if alt else 0),
        "duration_ms": float(world["duration_ms"][s]), "metadata_status": "ok"})
  return pd.DataFrame(rows)


def _write_audio(raw_dir, world, ids, track_song, *, seed, clip_seconds, log):
  """Renders and writes every track's clip; returns (clips table rows, compositions, detect).

  detect: per song, `detect.features` of the main track's evaluation crop, computed on the
  rendered samples in memory (`python -m data_prep.detect --raw` recomputes them from the PCM16
  files: the same values up to the 16-bit rounding).
  """
  from data_prep import detect  # imported here: detect imports this module at its top
  S = len(world["artist"])
  audio_dir = os.path.join(raw_dir, "audio")
  os.makedirs(audio_dir, exist_ok=True)
  if os.path.exists(os.path.join(raw_dir, "truth.json")):  # an earlier synthetic run here:
    # drop its clips that this run does not write (fewer songs), so clips.csv and audio/ agree.
    keep = {f"{t}.wav" for t in ids["track"]}
    for f in sorted(os.listdir(audio_dir)):
      if f.startswith("syn") and f.endswith(".wav") and f not in keep:
        os.remove(os.path.join(audio_dir, f))
  comps = [composition(seed, s) for s in range(S)]
  rows, det = [], []
  t0 = time.perf_counter()
  n = len(ids["track"])
  for t, tid in enumerate(ids["track"]):
    s = int(track_song[t])
    attrs = dict(zip(ATTRIBUTES, world["u"][s].tolist()))
    x = render_clip(attrs, comps[s], clip_seconds, seed, s, take=int(t >= S))
    rel = f"audio/{tid}.wav"
    rows.append({"clip_id": f"synthetic:{tid}", "track_id": tid, "song_id": ids["isrc"][s],
                 "provider": "synthetic", "url": f"synthetic://{tid}?seed={seed}",
                 "match_score": 1.0, "audio_path": rel,
                 "sha256": _write_wav(os.path.join(raw_dir, rel), x), "status": "ok"})
    if t < S:  # a main track (track t is song t's): the oracle features of the model's crop
      det.append(detect.features(detect.centre_crop(x)))
    if (t + 1) % 50 == 0 or t + 1 == n:
      rate = (t + 1) / (time.perf_counter() - t0)
      log(f"[synthetic] audio {t + 1}/{n} clips ({rate:.0f} clips/s)")
  return rows, comps, det


def _truth(world, sim, ids, pos, comps, orc, det, *, seed, params, start, dates):
  S = sim["level"].shape[0]
  regions = world["regions"]
  charted = pos[:S] > 0
  first_chart = np.where(charted.any(-1), charted.argmax(-1), -1)
  best = np.where(charted, pos[:S], np.iinfo(np.int64).max).min(-1)
  x = _centred(world["u"])
  n_alt = len(world["alt_song"])
  songs = []
  for s in range(S):
    u = world["u"][s]
    per_region = {reg: {
        "debut_level": sim["level"][s, r], "decay": sim["decay"][s, r],
        "appeal": sim["appeal"][s, r], "wave": sim["wave"][s, r],
        "chart_debut_week": int(first_chart[s, r]), "weeks_on_chart": int(charted[s, r].sum()),
        "peak": int(best[s, r]) if first_chart[s, r] >= 0 else None}
        for r, reg in enumerate(regions)}
    f = world["feat"][s]
    songs.append({
        "song_id": ids["isrc"][s],
        "track_ids": [ids["track"][s]] + [ids["track"][S + j] for j in range(n_alt)
                                          if world["alt_song"][j] == s],
        "title": world["titles"][s], "artist_id": ids["artist"][world["artist"][s]],
        "featured_artist_id": ids["artist"][f] if f >= 0 else None,
        "release_week": int(world["release"][s]), "release_date": _release_date(world, start, s),
        "promotion": int(world["promo"][s]), "tiktok": int(world["tiktok"][s]),
        "wave_week": int(world["wave_week"][s]), "wave_width": world["wave_width"][s],
        "attributes": {"tempo_bpm": _lerp(TEMPO_BPM, u[0]), "brightness": u[1],
                       "percussiveness": u[2], "hook": u[3],
                       "loudness_dbfs": _lerp(LOUDNESS_DB, u[4]),
                       "mode": "major" if u[5] >= 0.5 else "minor"},
        "attributes_u": dict(zip(ATTRIBUTES, u.tolist())),
        "attributes_x": dict(zip(ATTRIBUTES, x[s].tolist())),
        "phantom_u": (dict(zip(ATTRIBUTES, world["u_pref"][s].tolist()))
                      if world["u_pref"] is not world["u"] else None),
        "composition": comps[s], "regions": per_region,
        "detect": {a: v if np.isfinite(v) else None for a, v in det["songs"][s].items()}})
  names = world["artist_names"]
  return {
      "format_version": 1, "generator": "data_prep.synthetic", "seed": int(seed),
      "null": world["null"], "audio_on": world["audio_on"], "params": params,
      "constants": {"fame_w": FAME_W, "promo_w": PROMO_W, "home_w": HOME_W, "debut_sd": DEBUT_SD,
                    "decay_sd": DECAY_SD, "ar_rho": AR_RHO, "ar_sd": AR_SD, "wave_base": WAVE_BASE,
                    "wave_hook": WAVE_HOOK, "wave_weeks": list(WAVE_WEEKS),
                    "wave_width": list(WAVE_WIDTH), "artist_rate": ARTIST_RATE,
                    "major_p": MAJOR_P, "tempo_bpm": list(TEMPO_BPM),
                    "loudness_dbfs": list(LOUDNESS_DB), "floor_gap": FLOOR_GAP},
      "formulas": FORMULAS, "attributes": list(ATTRIBUTES), "dates": dates,
      "regions": {reg: world["region_params"][r] for r, reg in enumerate(regions)},
      "artists": [{"artist_id": ids["artist"][a], "name": names[a], "fame": world["fame"][a],
                   "home_region": world["home_regions"][world["home"][a]],
                   "n_songs": int((world["artist"] == a).sum())} for a in range(len(names))],
      "songs": songs,
      "album_versions": [{"track_id": ids["track"][S + j], "song_id": ids["isrc"][int(s)],
                          "share": world["alt_share"][j], "delay_weeks": int(world["alt_delay"][j])}
                         for j, s in enumerate(world["alt_song"])],
      "labels": {"tiktok": {ids["isrc"][s]: int(world["tiktok"][s]) for s in range(S)}},
      "oracle": orc,
      "detectability": det["detectability"],
      "files": {"truth_series.npz": "log1p_streams float32 [songs, regions, weeks] (uncensored; 0 "
                                    "before release), on_chart bool [songs, regions, weeks] (the "
                                    "main track is listed), alt_log1p_streams [album versions, "
                                    "regions, weeks]; song_ids, alt_track_ids, regions, dates, "
                                    "release_week"},
  }


def generate(raw_dir: str, *, seed: int = 0, n_songs: int = 240, n_artists: int = 60,
             regions=("global", "us", "kr", "br"), clip_seconds: float = 8.0, weeks: int = 60,
             horizon: int = 26, null: bool = False, tiktok_fraction: float = 0.15,
             chart_size: int = 50, alt_fraction: float = 0.05, mp2_weeks: int = 6,
             start_date: str = START_DATE, audio_effect: float = 1.0,
             audio_on: str = "longevity", fit_chart_oracle: bool = True,
             progress: bool = False) -> dict:
  """Writes the synthetic raw-data directory (see the module docstring); returns a summary dict.

  seed: everything is a deterministic function of the arguments. n_songs songs by n_artists
  artists; one 16 kHz mono clip of clip_seconds per track. weeks: chart weeks per region (dates
  start_date + 7 w; the default start is a Thursday). horizon: releases fall in weeks
  0..weeks-horizon, and the oracle's 'late' window ends there. null: audio has no effect on
  popularity. chart_size: entries per weekly chart (at most: fewer while few tracks are above
  the region floor). alt_fraction: share of songs with a second (album version) track.
  mp2_weeks: the oracle's MP2 window. audio_effect: the dose of the planted audio effect, a
  factor on the appeal A and on the hook's part of the TikTok wave (0: the audio has no effect
  on popularity, the same world otherwise; 1: the default world; 2: twice the effect).
  audio_on: 'longevity' (the default world: audio sets decay and wave, hypothesis H) or 'debut'
  (the negative control of H: audio sets the debut level, a phantom the decay and wave).
  fit_chart_oracle: fit truth.json's 'oracle_chart' (`chart_oracle`, the largest share of the
  time for big worlds); False writes it as null. progress: log to stderr.
  """
  t_start = time.perf_counter()
  regions = [str(r) for r in regions]
  if not regions or len(set(regions)) != len(regions):
    raise ValueError(f"regions must be distinct and non-empty, got {regions}")
  if weeks < 1 or horizon < 1 or not 1 <= mp2_weeks <= horizon:
    raise ValueError(f"need weeks >= 1 and 1 <= mp2_weeks <= horizon; got weeks={weeks}, "
                     f"horizon={horizon}, mp2_weeks={mp2_weeks}")
  if not (0.0 <= tiktok_fraction <= 1.0 and 0.0 <= alt_fraction <= 1.0):
    raise ValueError("tiktok_fraction and alt_fraction must lie in [0, 1]")
  if clip_seconds < 1.0:
    raise ValueError(f"clip_seconds must be >= 1, got {clip_seconds}")
  if chart_size < 1:
    raise ValueError(f"chart_size must be >= 1, got {chart_size}")
  if not (np.isfinite(audio_effect) and audio_effect >= 0):
    raise ValueError(f"audio_effect must be a finite number >= 0, got {audio_effect}")
  if audio_on not in AUDIO_ON:
    raise ValueError(f"audio_on must be one of {AUDIO_ON}, got {audio_on!r}")
  if null and audio_on != "longevity":
    raise ValueError("null=True (audio has no effect) contradicts audio_on='debut'")
  start = dt.date.fromisoformat(start_date)
  log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
  params = {"n_songs": n_songs, "n_artists": n_artists, "regions": regions,
            "clip_seconds": clip_seconds, "weeks": weeks, "horizon": horizon,
            "tiktok_fraction": tiktok_fraction, "chart_size": chart_size,
            "alt_fraction": alt_fraction, "mp2_weeks": mp2_weeks, "start_date": start_date,
            "sample_rate": SAMPLE_RATE, "audio_effect": float(audio_effect),
            "audio_on": audio_on}

  world = sample_world(seed=seed, n_songs=n_songs, n_artists=n_artists, regions=regions,
                       weeks=weeks, horizon=horizon, tiktok_fraction=tiktok_fraction,
                       alt_fraction=alt_fraction, null=null, audio_effect=audio_effect,
                       audio_on=audio_on)
  sim = simulate(world, seed=seed, weeks=weeks)
  S, R = n_songs, len(regions)
  n_alt = len(world["alt_song"])
  ids = _ids(S, n_alt, n_artists)
  dates = [(start + dt.timedelta(weeks=w)).isoformat() for w in range(weeks)]

  # Tracks: the songs' main tracks, then the album versions.
  alt_streams = np.zeros((n_alt, R, weeks))
  for j, (s, share, delay) in enumerate(zip(world["alt_song"], world["alt_share"],
                                            world["alt_delay"])):
    live = np.arange(weeks) >= world["release"][s] + delay
    alt_streams[j] = np.round(share * sim["streams"][s]) * live
  track_song = np.r_[np.arange(S), world["alt_song"]].astype(np.int64)
  track_streams = np.concatenate([sim["streams"], alt_streams], axis=0)

  os.makedirs(raw_dir, exist_ok=True)
  floors = [p["floor"] for p in world["region_params"]]
  rows, pos = chart_rows(track_streams, ids["track"], regions, floors, dates, chart_size)
  charts = _charts_table(world, rows, ids, track_song)
  tables.write(charts, os.path.join(raw_dir, "charts.csv"), "charts")
  log(f"[synthetic] {len(charts):,} chart rows: {R} regions x {weeks} weeks, top {chart_size}")
  tables.write(_tracks_table(world, ids, track_song, start), os.path.join(raw_dir, "tracks.csv"),
               "tracks")
  clip_rows, comps, det = _write_audio(raw_dir, world, ids, track_song, seed=seed,
                                       clip_seconds=clip_seconds, log=log)
  tables.write(pd.DataFrame(clip_rows), os.path.join(raw_dir, "clips.csv"), "clips")
  pd.DataFrame({"key": ids["track"], "name": "tiktok",
                "value": world["tiktok"][track_song].astype(np.int64)}).to_csv(
                    os.path.join(raw_dir, "labels.csv"), index=False)

  log("[synthetic] oracle R² (Monte Carlo)")
  orc = oracle(world, sim, seed=seed, mp2_weeks=mp2_weeks, horizon=horizon)
  from data_prep import detect  # imported here: detect imports this module at its top
  detectability = detect.detectability(
      det, [dict(zip(ATTRIBUTES, u)) for u in world["u"].tolist()],
      int(round(clip_seconds * SAMPLE_RATE)))
  truth = _truth(world, sim, ids, pos, comps, orc,
                 {"songs": det, "detectability": detectability}, seed=seed, params=params,
                 start=start, dates=dates)
  truth["oracle_chart"] = None
  if fit_chart_oracle:
    log("[synthetic] oracle R² of the chart-derived targets (fitted)")
    truth["oracle_chart"] = chart_oracle(world, charts, ids["track"][:S], horizon=horizon,
                                         mp2_weeks=mp2_weeks)
  _write_json(os.path.join(raw_dir, "truth.json"), truth)
  charted = pos[:S] > 0
  _write_npz(os.path.join(raw_dir, "truth_series.npz"), {
      "log1p_streams": np.log1p(sim["streams"]).astype(np.float32), "on_chart": charted,
      "alt_log1p_streams": np.log1p(alt_streams).astype(np.float32),
      "song_ids": np.array(ids["isrc"]), "alt_track_ids": np.array(ids["track"][S:], dtype=str),
      "regions": np.array(regions), "dates": np.array(dates),
      "release_week": world["release"].astype(np.int64)})

  k = np.arange(weeks)[None, :] - world["release"][:, None]
  in_mp2 = np.broadcast_to(((k >= 0) & (k < mp2_weeks))[:, None, :], charted.shape)
  size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(raw_dir) for f in fs)
  summary = {
      "raw_dir": raw_dir, "seed": int(seed), "null": bool(null), "songs": S,
      "tracks": len(ids["track"]), "artists": n_artists, "regions": regions,
      "chart_rows": int(len(charts)),
      "mean_chart_fill": round(len(charts) / (R * weeks * chart_size), 4),
      "charted_pairs": round(float(charted.any(-1).mean()), 4),
      "mp2_weeks_on_chart": round(float(charted[in_mp2].mean()), 4),
      "tiktok_songs": int(world["tiktok"].sum()),
      **{f"oracle_{n}_r2_within_region": {g: orc[n][g]["within_region"] for g in orc[n]}
         for n in ("mp2", "late") if n in orc},
      "detect_r2": {a: detectability[a]["r2"] for a in ATTRIBUTES},
      **{f"oracle_chart_{n}_r2_within_region": {g: truth["oracle_chart"][n][g]["within_region"]
                                                for g in ("extrinsic", "audio", "both")}
         for n in ("mp2", "longevity") if truth["oracle_chart"]},
      "bytes": int(size), "seconds": round(time.perf_counter() - t_start, 2),
  }
  log(f"[synthetic] done in {summary['seconds']:.1f} s: {len(ids['track'])} clips, "
      f"{size / 2 ** 20:.1f} MiB in {raw_dir}")
  return summary


def main(argv=None):
  ap = argparse.ArgumentParser(
      prog="python -m data_prep.synthetic",
      description="Write the synthetic demo raw-data directory (charts.csv, tracks.csv, clips.csv, "
                  "labels.csv, audio/, truth.json, truth_series.npz) with planted, known truth.")
  ap.add_argument("--out", required=True, help="raw-data directory to write")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--songs", type=int, default=240, help="number of songs (default 240)")
  ap.add_argument("--artists", type=int, default=60, help="number of artists (default 60)")
  ap.add_argument("--regions", default="global,us,kr,br", help="comma-separated region codes")
  ap.add_argument("--clip-seconds", type=float, default=8.0, help="clip length (default 8)")
  ap.add_argument("--weeks", type=int, default=60, help="chart weeks per region (default 60)")
  ap.add_argument("--horizon", type=int, default=26,
                  help="releases fall in weeks 0..weeks-horizon (default 26)")
  ap.add_argument("--chart-size", type=int, default=50,
                  help="entries per weekly chart (default 50)")
  ap.add_argument("--tiktok-fraction", type=float, default=0.15)
  ap.add_argument("--alt-fraction", type=float, default=0.05,
                  help="share of songs with a second (album version) track")
  ap.add_argument("--mp2-weeks", type=int, default=6)
  ap.add_argument("--null", action="store_true", help="audio has no effect on popularity")
  ap.add_argument("--audio-on", choices=AUDIO_ON, default="longevity",
                  help="what the audio drives: 'longevity' (decay and TikTok wave; H) or "
                       "'debut' (the debut level: the control world where H must be rejected)")
  ap.add_argument("--audio-effect", type=float, default=1.0,
                  help="dose of the planted audio effect (0 none, 1 default, 2 twice)")
  ap.add_argument("--build", metavar="DATASET", default=None,
                  help="then build TFRecords into DATASET through data_prep.build (one command "
                       "for the whole demo dataset)")
  ap.add_argument("--no-chart-oracle", action="store_true",
                  help="skip fitting truth.json's oracle_chart (faster; written as null)")
  ap.add_argument("--quiet", action="store_true", help="no progress output")
  args = ap.parse_args(argv)
  summary = generate(
      args.out, seed=args.seed, n_songs=args.songs, n_artists=args.artists,
      regions=tuple(r.strip() for r in args.regions.split(",") if r.strip()),
      clip_seconds=args.clip_seconds, weeks=args.weeks, horizon=args.horizon, null=args.null,
      tiktok_fraction=args.tiktok_fraction, chart_size=args.chart_size,
      alt_fraction=args.alt_fraction, mp2_weeks=args.mp2_weeks,
      audio_effect=args.audio_effect, audio_on=args.audio_on,
      fit_chart_oracle=not args.no_chart_oracle,
      progress=not args.quiet)
  print(json.dumps(summary, indent=1))
  if args.build:
    from data_prep import build as build_lib
    manifest = build_lib.build(build_lib.BuildConfig(
        raw=args.out, out=args.build, horizon=args.horizon, mp2_weeks=args.mp2_weeks,
        progress=not args.quiet))
    print(json.dumps({"dataset": args.build, **manifest["_timing"],
                      "records": {k: v["records"] for k, v in manifest["counts"].items()}}))


def make_demo(raw_dir: str, dataset_dir: str, *, seed: int = 0, null: bool = False,
              progress: bool = True, audio_only: bool = False, **generate_kw) -> dict:
  """The demo dataset in one call: synthesize into raw_dir (unless there), then build.

  audio_only: build every clip without targets (the SSL demo's unlabelled audio).
  Returns the dataset manifest. An existing complete dataset (manifest.json present) is reused.
  """
  from data_prep import build as build_lib
  manifest_path = os.path.join(dataset_dir, "manifest.json")
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      return json.load(f)
  if not os.path.exists(os.path.join(raw_dir, "clips.csv")):
    generate(raw_dir, seed=seed, null=null, progress=progress, **generate_kw)
  kw = {k: generate_kw[k] for k in ("horizon", "mp2_weeks") if k in generate_kw}
  return build_lib.build(build_lib.BuildConfig(raw=raw_dir, out=dataset_dir, progress=progress,
                                               audio_only=audio_only, **kw))


if __name__ == "__main__":
  main()
