"""data_prep.detect: each oracle feature recovers its planted attribute on clips rendered by
`synthetic.render_clip`, the ceilings are honest (shuffled labels give ~0), the crop is the
pipeline's, and generate / `python -m data_prep.detect --raw` write and recompute them."""
import json
import os

import numpy as np
import pytest

from data_prep import detect, synthetic
from mpjax.audio import fbank
from mpjax.input import pipeline

ATTRS = synthetic.ATTRIBUTES
SEED = 11
MID = {"tempo": 0.5, "brightness": 0.5, "percussiveness": 0.5, "hook": 0.5, "loudness": 0.5,
       "mode": 1.0}


def crop_of(u: dict, song: int = 0, seed: int = SEED) -> np.ndarray:
  """The evaluation crop of an 8 s clip with attribute values u (song: composition and take)."""
  x = synthetic.render_clip(u, synthetic.composition(seed, song), 8.0, seed, song)
  return detect.centre_crop(x)


@pytest.fixture(scope="module")
def random_clips():
  """40 clips, every attribute drawn at random (mode: major with p 0.6), their features."""
  rng = np.random.default_rng(SEED)
  us, feats = [], []
  for i in range(40):
    u = dict(zip(ATTRS, rng.random(len(ATTRS)).tolist()))
    u["mode"] = float(rng.random() < synthetic.MAJOR_P)
    us.append(u)
    feats.append(detect.features(crop_of(u, song=i)))
  return us, feats


def column(rows, name):
  return np.array([r[name] for r in rows])


# ------------------------------------------------------------------------------- the crop


@pytest.mark.parametrize("n_samples", [128000, 96000, 82160, 82159, 81999, 50000, 16000, 400, 399])
@pytest.mark.parametrize("tdim", [512, 1024, 16])
def test_crop_is_the_pipelines_centre_crop(n_samples, tdim):
  frames = fbank.num_frames(n_samples)
  assert (detect.FBANK_WINDOW, detect.FBANK_SHIFT) == fbank.frame_params()[:2]
  start, n = detect.crop_span(n_samples, tdim)
  if frames == 0:
    assert (start, n) == (0, n_samples)
    return
  first = pipeline.crop_starts(frames, tdim, 1)[0]
  used = min(frames, tdim)
  assert start == first * 160
  assert n == (used - 1) * 160 + 400  # the samples the crop's frames read
  assert start + n <= n_samples
  x = np.arange(n_samples, dtype=np.float32)
  crop = detect.centre_crop(x, tdim)
  # fbank of the crop == the crop of the clip's fbank: the same samples, the same frames.
  assert fbank.num_frames(len(crop)) == used
  np.testing.assert_array_equal(crop, x[start:start + n])


def test_crop_fbank_equals_the_frames_the_model_sees():
  x = crop_of(MID)
  full = synthetic.render_clip(MID, synthetic.composition(SEED, 0), 8.0, SEED, 0)
  start = pipeline.crop_starts(fbank.num_frames(len(full)), 512, 1)[0]
  np.testing.assert_allclose(fbank.fbank_np(x), fbank.fbank_np(full)[start:start + 512],
                             atol=1e-4)
  assert detect.crop_span(len(full)) == (22880, 82160)  # the 8 s demo clip: 5.135 s


# ------------------------------------------------------------------------------- each rule


def test_tempo_within_two_percent_from_70_to_170_bpm():
  rng = np.random.default_rng(1)
  for i, ut in enumerate(np.linspace(0.0, 1.0, 11)):
    u = {**dict(zip(ATTRS, rng.random(len(ATTRS)).tolist())), "tempo": float(ut),
         "mode": float(i % 2)}
    bpm = synthetic._lerp(synthetic.TEMPO_BPM, ut)
    est = detect.tempo(crop_of(u, song=i))
    assert abs(est / bpm - 1) < 0.02, (bpm, est, u)


def test_tempo_on_random_clips(random_clips):
  us, feats = random_clips
  bpm = synthetic._lerp(synthetic.TEMPO_BPM, column(us, "tempo"))
  assert np.max(np.abs(column(feats, "tempo") / bpm - 1)) < 0.03


@pytest.mark.parametrize("name", ["brightness", "percussiveness", "loudness"])
def test_feature_is_monotone_in_its_attribute(name):
  levels = np.linspace(0.0, 1.0, 6)
  fn = getattr(detect, name)
  for song in (0, 1):
    vals = [fn(crop_of({**MID, name: float(v)}, song=song)) for v in levels]
    assert np.all(np.diff(vals) > 0), (name, song, vals)


def test_percussiveness_and_brightness_rank_random_clips(random_clips):
  us, feats = random_clips
  assert detect.spearman(column(feats, "brightness"), column(us, "brightness")) > 0.9
  assert detect.spearman(column(feats, "percussiveness"), column(us, "percussiveness")) > 0.9


def test_rms_is_the_planted_loudness(random_clips):
  rng = np.random.default_rng(2)
  for i in range(6):
    u = dict(zip(ATTRS, rng.random(len(ATTRS)).tolist()))
    x = synthetic.render_clip(u, synthetic.composition(SEED, i), 8.0, SEED, i)
    planted = synthetic._lerp(synthetic.LOUDNESS_DB, u["loudness"])
    assert abs(detect.loudness(x) - planted) < 0.2  # the whole clip: its definition
  us, feats = random_clips  # the crop: within 0.5 dB of the clip's RMS on average
  err = column(feats, "loudness") - synthetic._lerp(synthetic.LOUDNESS_DB, column(us, "loudness"))
  assert np.mean(np.abs(err)) < 0.5 and np.max(np.abs(err)) < 1.0


def test_mode_rule_is_at_least_90_percent_accurate(random_clips):
  us, feats = random_clips
  major = column(us, "mode") >= 0.5
  assert 0 < major.sum() < len(major)
  assert np.mean((column(feats, "mode") > 0) == major) >= 0.9


def test_hook_similarity_tracks_u_hook(random_clips):
  us, feats = random_clips
  assert detect.spearman(column(feats, "hook"), column(us, "hook")) > 0.6


def test_hook_rises_with_repetition_at_fixed_everything_else():
  lo = np.mean([detect.hook(crop_of({**MID, "hook": 0.0}, song=s)) for s in range(3)])
  hi = np.mean([detect.hook(crop_of({**MID, "hook": 1.0}, song=s)) for s in range(3)])
  assert hi > lo + 0.1


def test_features_share_one_analysis_and_match_the_single_functions():
  x = crop_of(MID, song=3)
  f = detect.features(x)
  assert list(f) == list(ATTRS)
  assert set(detect.FEATURES) == set(ATTRS)
  for name in ATTRS:
    assert f[name] == getattr(detect, name)(x), name
  assert detect.hook(x, bpm=f["tempo"]) == f["hook"]  # the hook's beat is the tempo estimate
  with pytest.raises(ValueError):
    detect.features(x, sr=22050)


def test_median5_is_ndimage_median_filter():
  from scipy import ndimage
  rng = np.random.default_rng(0)
  power = detect._Analysis(crop_of(MID), 16000).hpss[0]
  for a in (rng.random((37, 23)).astype(np.float32), rng.integers(0, 4, (9, 6)).astype(float),
            power, rng.random((3, 2))):
    np.testing.assert_array_equal(detect.median5(a, 0),
                                  ndimage.median_filter(a, size=(5, 1), mode="nearest"))
    np.testing.assert_array_equal(detect.median5(a, 1),
                                  ndimage.median_filter(a, size=(1, 5), mode="nearest"))
  x = rng.random(200)
  np.testing.assert_allclose(detect._moving_mean(x, 15),
                             ndimage.uniform_filter1d(x, 15, mode="nearest"), atol=1e-12)


# ------------------------------------------------------------------------------- ceilings


def test_ceilings_recover_and_the_shuffled_control_gives_zero(random_clips):
  us, feats = random_clips
  c = detect.ceilings(feats, us)
  assert list(c) == list(ATTRS)
  for name in ATTRS:
    assert c[name]["n"] == 40 and c[name]["feature"] == detect.FEATURES[name]
    assert c[name]["r2"] > 0.5, (name, c[name])
  assert c["mode"]["accuracy"] >= 0.9 and c["mode"]["rule_r2"] > 0.5
  # The control that can fail: labels of other clips give no ceiling.
  rng = np.random.default_rng(0)
  worst = {name: -np.inf for name in ATTRS}
  for _ in range(5):
    perm = rng.permutation(len(us))
    shuffled = detect.ceilings(feats, [us[i] for i in perm])
    for name in ATTRS:
      worst[name] = max(worst[name], shuffled[name]["r2"])
  assert all(v < 0.2 for v in worst.values()), worst


def test_ceiling_arithmetic():
  rng = np.random.default_rng(0)
  u = rng.random(200)
  c = detect.ceilings({"tempo": np.exp(3 * u), "hook": -u ** 3, "loudness": rng.random(200)},
                      {"tempo": u, "hook": u, "loudness": u})
  assert c["tempo"]["r2"] > 0.99 and c["hook"]["r2"] > 0.99  # any monotone map, either direction
  assert c["loudness"]["r2"] < 0.05
  assert c["tempo"]["spearman"] == 1.0 and c["hook"]["spearman"] == -1.0
  mode_u = (rng.random(200) < 0.6).astype(float)
  call = np.where(mode_u > 0, 0.3, -0.2)
  call[:20] *= -1  # 10 % wrong
  m = detect.ceilings({"mode": call}, {"mode": mode_u})["mode"]
  assert m["accuracy"] == 0.9
  x = np.where(mode_u > 0, 1.0, -1.0)
  assert m["rule_r2"] == pytest.approx(1 - 0.1 * 4 / np.var(x), abs=1e-4)
  # Rows of dicts, too; non-finite values are left out; too few clips: no R².
  rows = [{"tempo": float(v)} for v in u[:8]] + [{"tempo": float("nan")}]
  small = detect.ceilings(rows, [{"tempo": float(v)} for v in u[:9]])
  assert small["tempo"]["n"] == 8 and small["tempo"]["r2"] is None


# ------------------------------------------------------------------------------- generate


def test_generate_writes_detect_and_the_raw_cli_recomputes_it(tmp_path, capsys):
  raw = str(tmp_path / "raw")
  summary = synthetic.generate(raw, n_songs=30, n_artists=8, weeks=16, horizon=8,
                               chart_size=10, alt_fraction=0.1)
  with open(os.path.join(raw, "truth.json")) as f:
    truth = json.load(f)
  det = truth["detectability"]
  assert det["crop"] == {"start_sample": 22880, "samples": 82160, "input_tdim": 512,
                         "sample_rate": 16000}
  assert "centre crop" in det["definition"]
  for name in ATTRS:
    assert det[name]["n"] == 30 and det[name]["feature"] == detect.FEATURES[name]
    assert summary["detect_r2"][name] == det[name]["r2"]
  assert "accuracy" in det["mode"] and "accuracy" not in det["tempo"]
  # Per song: the main track's features (album versions are not scored).
  song = truth["songs"][0]
  assert set(song["detect"]) == set(ATTRS)
  x, _ = synthetic.sf.read(os.path.join(raw, "audio", song["track_ids"][0] + ".wav"),
                           dtype="float32")
  again = detect.features(detect.centre_crop(x))
  assert again["tempo"] == song["detect"]["tempo"]
  for name in ATTRS:  # from the PCM16 file: the same up to 16-bit rounding
    assert again[name] == pytest.approx(song["detect"][name], rel=0.02, abs=1e-3), name
  # The CLI prints the same ceilings from the files.
  detect.main(["--raw", raw])
  printed = json.loads(capsys.readouterr().out)
  assert printed["crop"] == det["crop"]
  for name in ATTRS:
    assert printed[name]["r2"] == pytest.approx(det[name]["r2"], abs=0.02), name
