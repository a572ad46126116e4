"""The synthetic demo dataset: determinism, table schemas, chart logic, planted truth, audio."""
import datetime as dt
import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy import ndimage, stats

from data_prep import synthetic, tables

SR = 16000
SMALL = dict(n_songs=48, n_artists=12, weeks=30, horizon=12, clip_seconds=6.0, chart_size=20,
             alt_fraction=0.1, tiktok_fraction=0.25)
REGIONS = ("global", "us", "kr", "br")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  out = {}
  for name, kw in (("a", dict(seed=0)), ("a2", dict(seed=0)),
                   ("b", dict(seed=1, fit_chart_oracle=False)),
                   ("null", dict(seed=0, null=True, fit_chart_oracle=False))):
    path = str(tmp_path_factory.mktemp(name))
    out[name] = (path, synthetic.generate(path, **SMALL, **kw))
  return out


def file_hashes(root):
  out = {}
  for dp, _, files in os.walk(root):
    for f in files:
      p = os.path.join(dp, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def truth(path):
  with open(os.path.join(path, "truth.json")) as f:
    return json.load(f)


def series(path):
  with np.load(os.path.join(path, "truth_series.npz")) as z:
    return {k: z[k] for k in z.files}


# ------------------------------------------------------------------------------- determinism


def test_same_seed_byte_identical(dirs):
  a, a2 = file_hashes(dirs["a"][0]), file_hashes(dirs["a2"][0])
  expected = {"charts.csv", "tracks.csv", "clips.csv", "labels.csv", "truth.json",
              "truth_series.npz"}
  assert expected <= set(a)
  n_tracks = dirs["a"][1]["tracks"]
  assert n_tracks == SMALL["n_songs"] + round(SMALL["alt_fraction"] * SMALL["n_songs"])
  assert sum(k.startswith("audio" + os.sep) for k in a) == n_tracks
  assert a == a2


def test_different_seed_differs(dirs):
  a, b = file_hashes(dirs["a"][0]), file_hashes(dirs["b"][0])
  for f in ("charts.csv", "tracks.csv", "truth.json", "truth_series.npz"):
    assert a[f] != b[f], f
  wavs = [k for k in a if k.endswith(".wav") and k in b]
  assert sum(a[k] != b[k] for k in wavs) == len(wavs)


def test_null_variant_changes_only_popularity(dirs):
  a, n = file_hashes(dirs["a"][0]), file_hashes(dirs["null"][0])
  wavs = [k for k in a if k.endswith(".wav")]
  assert all(a[k] == n[k] for k in wavs)  # the same audio
  assert a["charts.csv"] != n["charts.csv"]
  ta, tn = truth(dirs["a"][0]), truth(dirs["null"][0])
  for sa, sn in zip(ta["songs"], tn["songs"]):
    assert sa["attributes_u"] == sn["attributes_u"]
    for r in REGIONS:  # debut levels are extrinsic only: identical
      assert sa["regions"][r]["debut_level"] == sn["regions"][r]["debut_level"]


# ------------------------------------------------------------------------------- tables


def test_tables_follow_schema(dirs):
  path = dirs["a"][0]
  charts = tables.read(os.path.join(path, "charts.csv"), "charts")
  tracks = tables.read(os.path.join(path, "tracks.csv"), "tracks")
  clips = tables.read(os.path.join(path, "clips.csv"), "clips")
  assert list(charts.columns) == list(tables.CHART_COLUMNS)
  assert set(charts["period"]) == {"weekly"} and set(charts["source"]) == {"synthetic"}
  assert set(charts["region"]) == set(REGIONS)
  assert charts["track_id"].str.fullmatch(r"syn\d{5}").all()
  assert set(charts["track_id"]) <= set(tracks["track_id"])
  assert charts[["streams", "on_chart", "peak"]].notna().all().all()
  assert (charts["featured"] != "").any() and (charts["featured"] == "").any()
  dates = sorted(set(charts["date"]))
  d0 = dt.date.fromisoformat(synthetic.START_DATE)
  assert d0.weekday() == 3  # Thursday
  assert dates == [(d0 + dt.timedelta(weeks=w)).isoformat() for w in range(len(dates))]

  assert tracks["track_id"].is_unique
  assert (tracks["song_id"] == tracks["isrc"]).all()
  assert tracks["isrc"].str.fullmatch(r"SYN\d{9}").all()
  assert set(tracks["metadata_status"]) == {"ok"}
  # Album versions: a second track with the same ISRC / song_id.
  per_song = tracks.groupby("song_id")["track_id"].count()
  assert (per_song == 2).sum() == round(SMALL["alt_fraction"] * SMALL["n_songs"])

  assert list(clips["track_id"]) == list(tracks["track_id"])
  assert (clips["clip_id"] == "synthetic:" + clips["track_id"]).all()
  assert set(clips["provider"]) == {"synthetic"} and set(clips["status"]) == {"ok"}
  assert clips["url"].str.startswith("synthetic://").all()
  assert (clips["match_score"] == 1.0).all()
  for row in clips.itertuples():
    with open(os.path.join(path, row.audio_path), "rb") as f:
      assert hashlib.sha256(f.read()).hexdigest() == row.sha256
  labels = pd.read_csv(os.path.join(path, "labels.csv"))
  assert list(labels.columns) == ["key", "name", "value"]
  tt = truth(path)
  song_of = dict(zip(tracks["track_id"], tracks["song_id"]))
  assert all(v == tt["labels"]["tiktok"][song_of[k]] for k, v in zip(labels["key"], labels["value"]))
  assert labels["value"].sum() >= round(SMALL["tiktok_fraction"] * SMALL["n_songs"])


def test_audio_files(dirs):
  path = dirs["a"][0]
  clips = tables.read(os.path.join(path, "clips.csv"), "clips")
  for p in clips["audio_path"]:
    info = sf.info(os.path.join(path, p))
    assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
    assert info.frames == int(SMALL["clip_seconds"] * SR)
    x, _ = sf.read(os.path.join(path, p), dtype="float32")
    assert 0.01 < np.abs(x).max() < 0.999  # not silent, never clipped
    frame_rms = np.sqrt(np.mean(x[: len(x) // 1600 * 1600].reshape(-1, 1600) ** 2, axis=1))
    assert frame_rms.min() > 1e-3  # no silent 100 ms stretch


# ------------------------------------------------------------------------------- charts


def test_chart_positions_and_movement(dirs):
  charts = tables.read(os.path.join(dirs["a"][0], "charts.csv"), "charts")
  for region, ch in charts.groupby("region"):
    prev, seen, weeks_on, peak = {}, set(), {}, {}
    for date in sorted(set(ch["date"])):
      week = ch[ch["date"] == date].sort_values("pos")
      assert list(week["pos"]) == list(range(1, len(week) + 1))
      assert len(week) <= SMALL["chart_size"]
      assert week["track_id"].is_unique
      assert (np.diff(week["streams"].to_numpy()) <= 0).all()
      cur = {}
      for t, p, mv, on, pk in zip(week["track_id"], week["pos"], week["movement"],
                                  week["on_chart"], week["peak"]):
        if t in prev:
          d = prev[t] - p
          want = "=" if d == 0 else f"{d:+d}"
        else:
          want = "RE" if t in seen else "NEW"
        assert mv == want, (region, date, t)
        weeks_on[t] = weeks_on.get(t, 0) + 1
        peak[t] = min(peak.get(t, p), p)
        assert on == weeks_on[t] and pk == peak[t], (region, date, t)
        cur[t] = p
      seen |= set(cur)
      prev = cur
  mv = charts["movement"]
  assert {"NEW", "RE", "="} <= set(mv) and mv.str.startswith("+").any() and mv.str.startswith("-").any()


def test_charts_are_the_censored_truth(dirs):
  """Chart rows = the top tracks of the uncensored truth above the floor; the tails drop off."""
  path = dirs["a"][0]
  charts = tables.read(os.path.join(path, "charts.csv"), "charts")
  ts, tt = series(path), truth(path)
  streams = np.concatenate([np.expm1(ts["log1p_streams"].astype(np.float64)),
                            np.expm1(ts["alt_log1p_streams"].astype(np.float64))])
  track_ids = [s["track_ids"][0] for s in tt["songs"]] + list(ts["alt_track_ids"])
  row = {t: i for i, t in enumerate(track_ids)}
  regions, dates = list(ts["regions"]), list(ts["dates"])
  assert regions == list(REGIONS) and len(dates) == SMALL["weeks"]
  censored = 0
  for (region, date), week in charts.groupby(["region", "date"]):
    r, w = regions.index(region), dates.index(date)
    s = streams[:, r, w]
    listed = np.array([row[t] for t in week["track_id"]])
    np.testing.assert_allclose(week["streams"], s[listed], rtol=1e-5)
    others = np.setdiff1d(np.arange(len(s)), listed)
    floor = np.exp(tt["regions"][region]["floor"])
    assert (s[listed] >= floor * (1 - 1e-5)).all()
    bar = s[listed].min() if len(listed) == SMALL["chart_size"] else floor
    assert (s[others] <= bar * (1 + 1e-5)).all()
    censored += int(((s[others] > 0) & (s[others] < bar)).sum())
  assert censored > 0
  # on_chart in the npz agrees with the chart rows for the main tracks.
  on = ts["on_chart"]
  main = charts[charts["track_id"].isin(set(track_ids[:SMALL["n_songs"]]))]
  assert on.sum() == len(main)


# ------------------------------------------------------------------------------- planted truth


def _decay_vs_audio(tt):
  prefs = np.array([[tt["regions"][r]["prefs"][a] for a in synthetic.ATTRIBUTES] for r in REGIONS])
  x = np.array([[s["attributes_x"][a] for a in synthetic.ATTRIBUTES] for s in tt["songs"]])
  appeal = x @ prefs.T  # from the audio attributes, [S, R]
  log_d = np.log([[s["regions"][r]["decay"] for r in REGIONS] for s in tt["songs"]])
  log_d0 = np.log([tt["regions"][r]["d0"] for r in REGIONS])
  return np.corrcoef((log_d - log_d0).ravel(), -appeal.ravel())[0, 1]


def test_decay_depends_on_audio_only_when_not_null(dirs):
  assert _decay_vs_audio(truth(dirs["a"][0])) > 0.9
  assert abs(_decay_vs_audio(truth(dirs["null"][0]))) < 0.25
  # Per region, log decay regressed on the six attributes (adjusted R², which is ~0 for noise):
  # most of the variance in the normal variant, none in the null variant.
  for name, lo, hi in (("a", 0.6, 1.0), ("null", -1.0, 0.1)):
    tt = truth(dirs[name][0])
    x = np.array([[s["attributes_x"][a] for a in synthetic.ATTRIBUTES] for s in tt["songs"]])
    adj = []
    for r in REGIONS:
      y = np.log([s["regions"][r]["decay"] for s in tt["songs"]])
      X = np.c_[np.ones(len(x)), x]
      beta = np.linalg.lstsq(X, y, rcond=None)[0]
      r2 = 1 - np.sum((y - X @ beta) ** 2) / np.sum((y - y.mean()) ** 2)
      adj.append(1 - (1 - r2) * (len(y) - 1) / (len(y) - X.shape[1]))
    assert lo <= np.mean(adj) <= hi, (name, adj)


def test_oracle(dirs):
  o, on = truth(dirs["a"][0])["oracle"], truth(dirs["null"][0])["oracle"]
  for target in ("mp2", "late"):
    for group in ("extrinsic", "audio", "both"):
      assert set(REGIONS) | {"pooled", "within_region"} <= set(o[target][group])
    assert o[target]["both"]["within_region"] >= max(o[target]["extrinsic"]["within_region"],
                                                     o[target]["audio"]["within_region"]) - 0.02
    assert abs(on[target]["audio"]["within_region"]) < 0.05  # audio explains nothing in null
  assert o["mp2"]["extrinsic"]["within_region"] > o["mp2"]["audio"]["within_region"]  # debut: extrinsic
  assert o["late"]["audio"]["within_region"] > 0.4  # longevity: audio
  assert o["late"]["audio"]["within_region"] > o["late"]["extrinsic"]["within_region"]
  s = dirs["a"][1]
  assert s["oracle_late_r2_within_region"]["audio"] == o["late"]["audio"]["within_region"]


def test_tiktok_songs_show_a_delayed_second_rise(dirs):
  path = dirs["a"][0]
  tt, ts = truth(path), series(path)
  y = ts["log1p_streams"].astype(np.float64)  # [S, R, W]
  rel = ts["release_week"]
  assert list(rel) == [s["release_week"] for s in tt["songs"]]
  h = 15
  idx = np.minimum(rel[:, None] + np.arange(h), y.shape[2] - 1)
  yk = np.take_along_axis(y, np.broadcast_to(idx[:, None, :], (y.shape[0], y.shape[1], h)), axis=2)
  assert (yk[:, :, 0] > 0).all() and (y[np.arange(len(rel)), :, np.maximum(rel - 1, 0)][rel > 0] == 0).all()
  rise = yk[:, :, 4:] - yk[:, :, 2:-2]  # two-week change, k = 4 .. h-1
  big = rise.max(-1) > 0.2
  tik = np.array([s["tiktok"] for s in tt["songs"]]) == 1
  assert tik.sum() == round(SMALL["tiktok_fraction"] * SMALL["n_songs"])
  assert big[tik].mean() > 0.85, big[tik].mean()
  assert big[~tik].mean() < 0.05, big[~tik].mean()
  # The rise is where the wave was planted (k_b), and the planted size grows with the hook.
  k_rise = 4 + rise.argmax(-1)
  k_b = np.array([s["wave_week"] for s in tt["songs"]])
  assert np.median(np.abs(k_rise[tik] - k_b[tik, None])) <= 2
  hook = np.array([s["attributes_u"]["hook"] for s in tt["songs"]])
  wave = np.array([[s["regions"][r]["wave"] for r in REGIONS] for s in tt["songs"]])
  assert (wave[~tik] == 0).all()
  assert stats.spearmanr(hook[tik], wave[tik, 0])[0] > 0.99


def test_album_versions_share_streams(dirs):
  path = dirs["a"][0]
  tt, ts = truth(path), series(path)
  main = np.expm1(ts["log1p_streams"].astype(np.float64))
  alt = np.expm1(ts["alt_log1p_streams"].astype(np.float64))
  song_index = {s["song_id"]: i for i, s in enumerate(tt["songs"])}
  for j, av in enumerate(tt["album_versions"]):
    m = main[song_index[av["song_id"]]]
    live = alt[j] > 0
    assert live.any()
    np.testing.assert_allclose(alt[j][live], np.round(av["share"] * m[live]), rtol=1e-4, atol=1)


# ------------------------------------------------------------------------------- audio truth


def _power(x, n_fft, hop):
  frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), n_fft)[::hop]
  return np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2


def _chroma(x, n_fft, hop, fmin, fmax):
  q = np.sqrt(_power(x, n_fft, hop))
  f = np.fft.rfftfreq(n_fft, 1 / SR)
  sel = (f > fmin) & (f < fmax)
  pc = np.round(69 + 12 * np.log2(f[sel] / 440.0)).astype(int) % 12
  c = np.zeros((len(q), 12))
  np.add.at(c.T, pc, q[:, sel].T)
  return c


def measures(x, bpm):
  from mpjax.audio import fbank

  p = _power(x, 512, 160)
  f = np.fft.rfftfreq(512, 1 / SR)
  out = {"rms_db": 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2))),
         "centroid": np.median((p * f).sum(1) / (p.sum(1) + 1e-20))}
  # Beat period: the peak of the onset envelope's autocorrelation (log-mel spectral flux, the
  # AST front end), lags 0.3-1 s.
  flux = np.maximum(np.diff(fbank.fbank_np(x), axis=0), 0).sum(1)
  flux -= flux.mean()
  ac = np.correlate(flux, flux, "full")[len(flux) - 1:]
  out["beat_s"] = (30 + int(np.argmax(ac[30:101]))) / 100.0
  # Percussive share of the energy (median-filter harmonic/percussive separation).
  harm = ndimage.median_filter(p, size=(17, 1))
  perc = ndimage.median_filter(p, size=(1, 17))
  out["percussive"] = np.sum(perc ** 2 / (harm ** 2 + perc ** 2 + 1e-30) * p) / p.sum()
  # Mode: share of frames whose best-matching triad (24 templates) is major.
  c = _chroma(x, 4096, 1024, 60, 1000)
  maj, mnr = np.zeros(12), np.zeros(12)
  maj[[0, 4, 7]] = mnr[[0, 3, 7]] = 1
  tpl = np.stack([np.roll(maj, r) for r in range(12)] + [np.roll(mnr, r) for r in range(12)])
  out["major"] = np.mean(np.argmax(c @ tpl.T, axis=1) < 12)
  # Hook: melody-range chroma similarity at a lag of one 2-beat cell.
  c = _chroma(x, 2048, 256, 250, 1100)
  c /= np.linalg.norm(c, axis=1, keepdims=True) + 1e-12
  lag = int(round(2 * 60 / bpm * SR / 256))
  out["repetition"] = np.mean(np.sum(c[:-lag] * c[lag:], axis=1))
  return out


def test_audio_attributes_are_recoverable(dirs):
  path = dirs["a"][0]
  tt = truth(path)
  rows = []
  for s in tt["songs"]:
    x, _ = sf.read(os.path.join(path, "audio", s["track_ids"][0] + ".wav"), dtype="float32")
    rows.append({**s["attributes"], **measures(x, s["attributes"]["tempo_bpm"])})
  d = pd.DataFrame(rows)
  sp = lambda a, b: stats.spearmanr(d[a], d[b])[0]  # noqa: E731
  assert np.abs(d["rms_db"] - d["loudness_dbfs"]).max() < 0.2  # loudness is the clip RMS
  assert sp("brightness", "centroid") > 0.55
  assert sp("percussiveness", "percussive") > 0.8
  assert sp("hook", "repetition") > 0.35

  def octave_match(bpm):  # beat period = 60/BPM up to a factor 2 (tempo octave), within 5%
    ratio = np.log2(d["beat_s"] * bpm / 60.0)
    return np.mean(np.abs(ratio - np.round(ratio)) < np.log2(1.05))

  assert octave_match(d["tempo_bpm"]) > 0.8
  assert octave_match(np.roll(d["tempo_bpm"].to_numpy(), 1)) < 0.4  # another song's tempo: no
  major = d["mode"] == "major"
  assert 0 < major.sum() < len(d)
  auc = np.mean(d["major"][major].to_numpy()[:, None] > d["major"][~major].to_numpy()[None, :])
  assert auc > 0.9


# ------------------------------------------------------------------------------- CLI and errors


def test_cli(tmp_path, capsys):
  out = str(tmp_path / "raw")
  synthetic.main(["--out", out, "--songs", "6", "--artists", "3", "--weeks", "12", "--horizon",
                  "6", "--clip-seconds", "2", "--regions", "global,jp", "--seed", "3", "--quiet"])
  summary = json.loads(capsys.readouterr().out)
  assert summary["songs"] == 6 and summary["regions"] == ["global", "jp"]
  assert summary["tracks"] == len(os.listdir(os.path.join(out, "audio")))
  tt = truth(out)
  assert tt["seed"] == 3 and set(tt["regions"]) == {"global", "jp"}
  assert set(tt["regions"]["jp"]["prefs"]) == set(synthetic.ATTRIBUTES)  # unknown region: seeded
  with pytest.raises(SystemExit) as e:
    synthetic.main(["--help"])
  assert e.value.code == 0


def test_rerun_removes_stale_clips(tmp_path):
  out = str(tmp_path)
  small = dict(n_artists=2, weeks=10, horizon=6, clip_seconds=1.0)
  synthetic.generate(out, n_songs=5, **small)
  synthetic.generate(out, n_songs=3, **small)
  assert sorted(os.listdir(os.path.join(out, "audio"))) == [f"syn{i:05d}.wav" for i in range(3)]


@pytest.mark.parametrize("kw", [dict(regions=("us", "us")), dict(mp2_weeks=30), dict(chart_size=0),
                                dict(tiktok_fraction=1.5), dict(clip_seconds=0.5), dict(n_songs=0)])
def test_bad_arguments(tmp_path, kw):
  with pytest.raises(ValueError):
    synthetic.generate(str(tmp_path), **{"n_songs": 4, "n_artists": 2, **kw})


def _oracle_at(dose, **kw):
  world = synthetic.sample_world(seed=3, n_songs=160, n_artists=40, regions=REGIONS, weeks=40,
                                 horizon=20, tiktok_fraction=0.2, alt_fraction=0.0, null=False,
                                 audio_effect=dose)
  sim = synthetic.simulate(world, seed=3, weeks=40)
  return world, sim, synthetic.oracle(world, sim, seed=3, mp2_weeks=6, horizon=20, samples=64)


def test_audio_effect_dose_scales_the_planted_effect():
  w0, s0, o0 = _oracle_at(0.0)
  w1, s1, o1 = _oracle_at(1.0)
  _, _, o2 = _oracle_at(2.0)
  # Dose 0: the appeal is 0 and the wave ignores the hook, so no target depends on the audio.
  assert np.all(s0["appeal"] == 0)
  for target in ("mp2", "late"):
    assert abs(o0[target]["audio"]["within_region"]) < 0.05, o0[target]["audio"]
  # The same world otherwise: debut levels are identical, and so are the TikTok songs.
  np.testing.assert_array_equal(s0["level"], s1["level"])
  np.testing.assert_array_equal(w0["u"], w1["u"])
  # The audio's share of the late (longevity) target rises with the dose.
  late = [o["late"]["audio"]["within_region"] for o in (o0, o1, o2)]
  assert late[0] < 0.05 < late[1] < late[2], late


def test_debut_world_moves_the_audio_from_the_decay_to_the_debut():
  """audio_on='debut', the negative control of H: the audio sets the debut level, not the decay."""
  def world(audio_on):
    w = synthetic.sample_world(seed=3, n_songs=600, n_artists=150, regions=REGIONS, weeks=40,
                               horizon=20, tiktok_fraction=0.2, alt_fraction=0.0, null=False,
                               audio_on=audio_on)
    sim = synthetic.simulate(w, seed=3, weeks=40)
    appeal = synthetic._centred(w["u"]) @ synthetic._pref_matrix(w).T  # the real audio's [S, R]
    r = lambda v: np.mean([stats.pearsonr(appeal[:, j], v[:, j])[0] for j in range(len(REGIONS))])
    return w, sim, r(sim["level"]), r(-np.log(sim["decay"]))

  w_l, s_l, level_l, decay_l = world("longevity")
  w_d, s_d, level_d, decay_d = world("debut")
  assert abs(level_l) < 0.1 and decay_l > 0.9        # H's world: audio -> decay only
  assert level_d > 0.4 and abs(decay_d) < 0.1        # the control: audio -> debut only
  np.testing.assert_array_equal(w_l["u"], w_d["u"])  # the same songs and audio
  o = synthetic.oracle(w_d, s_d, seed=3, mp2_weeks=6, horizon=20, samples=64)
  assert o["mp2"]["audio"]["within_region"] > 0.1


@pytest.mark.parametrize("kw", [dict(audio_on="chorus"), dict(audio_on="debut", null=True)])
def test_audio_on_is_checked(tmp_path, kw):
  with pytest.raises(ValueError, match="audio_on"):
    synthetic.generate(str(tmp_path), **{**SMALL, **kw})


def test_audio_effect_must_be_a_non_negative_number(tmp_path):
  with pytest.raises(ValueError, match="audio_effect"):
    synthetic.generate(str(tmp_path), audio_effect=-1.0, **SMALL)


def test_truth_carries_the_chart_oracle_unless_skipped(dirs):
  fitted = truth(dirs["a"][0])["oracle_chart"]
  for target in ("mp2", "longevity"):
    for group in ("audio", "extrinsic", "both"):
      res = fitted[target][group]
      assert set(REGIONS) <= set(res) and res["pairs"] > 0
      assert -1.0 < res["within_region"] <= 1.0
  assert dirs["a"][1]["oracle_chart_longevity_r2_within_region"]["audio"] == \
      fitted["longevity"]["audio"]["within_region"]
  assert truth(dirs["b"][0])["oracle_chart"] is None
  assert not any(k.startswith("oracle_chart") for k in dirs["b"][1])


def test_chart_oracle_longevity_is_audio_and_mp2_extrinsic():
  """On the pipeline's own chart-derived targets: the audio truth explains longevity within a
  region, the extrinsic truth the MP2 sum; in the dose-0 world the audio explains nothing."""
  import datetime as dt
  out = {}
  for dose in (1.0, 0.0):
    world = synthetic.sample_world(seed=0, n_songs=240, n_artists=60, regions=REGIONS, weeks=60,
                                   horizon=26, tiktok_fraction=0.15, alt_fraction=0.0,
                                   null=False, audio_effect=dose)
    sim = synthetic.simulate(world, seed=0, weeks=60)
    ids = synthetic._ids(240, 0, 60)
    start = dt.date.fromisoformat(synthetic.START_DATE)
    dates = [(start + dt.timedelta(weeks=w)).isoformat() for w in range(60)]
    rows, _ = synthetic.chart_rows(sim["streams"], ids["track"], list(REGIONS),
                                   [p["floor"] for p in world["region_params"]], dates, 50)
    charts = synthetic._charts_table(world, rows, ids, np.arange(240))
    out[dose] = synthetic.chart_oracle(world, charts, ids["track"], horizon=26, mp2_weeks=6)
  o = out[1.0]
  assert o["longevity"]["audio"]["within_region"] > 0.4
  assert o["longevity"]["extrinsic"]["within_region"] < 0.1
  assert o["mp2"]["extrinsic"]["within_region"] > 0.4 > o["mp2"]["audio"]["within_region"]
  assert o["longevity"]["audio"]["pairs"] > 500
  assert out[0.0]["longevity"]["audio"]["within_region"] < 0.05
