"""Parity of mpjax.audio.fbank (numpy and JAX) with HF's ASTFeatureExtractor, plus edge cases.

Reference: ``transformers.ASTFeatureExtractor`` on its numpy path (``audio_utils.spectrogram``
with Kaldi mel filters, float64 internally), which is what it runs when torchaudio is absent.
The fixture forces that path even if torchaudio is installed, so the reference is deterministic.
HF does not remove the waveform mean, so it is fed ``w - w.mean()`` (computed in float64; doing it
in float32 alone moves deep spectral nulls by > 1e-4, see ``test_float32_rounding_of_input``).

Tolerance is 1e-4 max abs (log-mel units) throughout. The JAX float32 path cannot meet that at
entries far below the frame's strongest band: any float32 pipeline (the official torchaudio one
included) carries rounding noise of ~eps * frame energy into every bin, so a band 60 dB below
the peak has ~1e-3 relative error. So:
* the JAX *code* is checked at 1e-4 on every entry by running it in float64 (``enable_x64``);
* the float32 result is checked at 1e-4 on entries within 40 dB of the frame's strongest band,
  and everywhere against the float32 conditioning bound 1e-4 + 8 eps sqrt(E_max / E).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpjax.audio import fbank as F

SR = 16000
TOL = 1e-4


# ----------------------------------------------------------------------------- reference


@pytest.fixture(scope="module")
def hf():
    """HF AST feature extractor pinned to its numpy (non-torchaudio) code path."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.audio_spectrogram_transformer import (
        feature_extraction_audio_spectrogram_transformer as hf_mod,
    )

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hf_mod, "is_speech_available", lambda: False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "mel filter has all zero values" (filter 3, see below)
            fe = transformers.ASTFeatureExtractor()
        yield fe


def hf_fbank(fe, w, remove_mean=True):
    """HF's log-mel of one clip, unpadded (max_length = real frame count), float32."""
    w = np.asarray(w, np.float64)
    if remove_mean:
        w = w - w.mean()
    return fe._extract_fbank_features(w, max_length=F.num_frames(len(w)))


def max_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max()) if a.size else 0.0


def assert_close_where_float32_resolves(got, ref, tol=TOL):
    """1e-4 where float32 can resolve it (within 40 dB of the frame's strongest band), and the
    float32 conditioning bound tol + 8 eps sqrt(E_max / E) everywhere."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    if not ref.size:
        return
    err = np.abs(got - ref)
    rel = ref - ref.max(axis=-1, keepdims=True)  # ln(E / E_max) per frame
    well = rel >= np.log(1e-4)
    assert err[well].max() <= tol, f"well-conditioned max err {err[well].max():.3g}"
    bound = tol + 8 * F.EPS * np.exp(-rel / 2)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), f"err {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


# ----------------------------------------------------------------------------- signals


def _signals(n, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    tone = lambda f, a: a * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    sig = {
        "gaussian": 0.3 * rng.standard_normal(n),
        "sine": tone(440.0, 0.5),
        "chord": tone(261.63, 0.3) + tone(329.63, 0.3) + tone(392.0, 0.3),
        "quiet_noise": rng.uniform(-1e-3, 1e-3, n),
        "tone_dc_offset": tone(1234.5, 0.6) + 0.25,
        "silence": np.zeros(n),
    }
    return {k: v.astype(np.float32) for k, v in sig.items()}  # audio arrives as float32


SIGNALS = _signals(3 * SR)


@pytest.mark.parametrize("name", list(SIGNALS))
def test_parity_with_hf(hf, name):
    w = SIGNALS[name]
    ref = hf_fbank(hf, w)
    assert ref.shape == (F.num_frames(len(w)), 128) == (298, 128)

    got_np = F.fbank_np(w)
    assert got_np.dtype == np.float32 and got_np.shape == ref.shape
    assert max_err(got_np, ref) <= TOL

    with jax.enable_x64(True):  # same JAX code, float64: checks the algorithm at 1e-4 everywhere
        got64 = F.fbank(w.astype(np.float64))
        assert got64.dtype == jnp.float64
        assert max_err(got64, ref) <= TOL

    got32 = F.fbank(w)  # the production path
    assert got32.dtype == jnp.float32 and got32.shape == ref.shape
    assert_close_where_float32_resolves(got32, ref)
    assert_close_where_float32_resolves(got32, got_np)


def test_silence_is_finite_log_eps(hf):
    w = np.zeros(SR, np.float32)
    for out in (F.fbank_np(w), np.asarray(F.fbank(w))):
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, np.log(F.EPS), rtol=0, atol=1e-6)
    # HF's floor constant is mistyped (1.192092955078125e-07 vs eps), 5e-8 apart in the log.
    assert max_err(F.fbank_np(w), hf_fbank(hf, w)) <= TOL


def test_float32_rounding_of_input_matters_only_below_floor_of_resolution(hf):
    """Why the reference gets the mean removed in float64: doing it in float32 alone shifts
    deep nulls (entries far below the frame peak) by > 1e-4; well-conditioned entries agree."""
    w = SIGNALS["chord"]
    ref = hf_fbank(hf, w)
    w32 = (w - w.mean()).astype(np.float32)
    alt = hf_fbank(hf, w32, remove_mean=False)
    assert_close_where_float32_resolves(alt, ref)


# ----------------------------------------------------------------------------- lengths


@pytest.mark.parametrize("n", [0, 1, 100, 239, 240, 399])
def test_shorter_than_one_window_gives_zero_frames(n):
    w = np.ones(n, np.float32)
    assert F.num_frames(n) == 0
    out = F.fbank_np(w)
    assert out.shape == (0, 128) and out.dtype == np.float32
    assert F.fbank(w).shape == (0, 128)
    assert F.fbank(np.ones((3, n), np.float32)).shape == (3, 0, 128)
    assert F.fbank_np(w, num_mel_bins=64).shape == (0, 64)


def test_short_clip_padding_matches_hf(hf):
    # HF gives 0 frames for 240 <= n < 400 and zero-pads to max_length (it crashes below 240).
    w = np.random.default_rng(1).standard_normal(300).astype(np.float32)
    ref = hf._extract_fbank_features(w.astype(np.float64), max_length=4)
    np.testing.assert_array_equal(F.pad_or_cut(F.fbank_np(w), 4), ref)


@pytest.mark.parametrize("n,frames", [(400, 1), (401, 1), (559, 1), (560, 2), (10 * SR, 998)])
def test_frame_counts_and_parity(hf, n, frames):
    w = (0.3 * np.random.default_rng(n).standard_normal(n)).astype(np.float32)
    assert F.num_frames(n) == frames
    ref = hf_fbank(hf, w)
    got_np = F.fbank_np(w)
    assert got_np.shape == ref.shape == (frames, 128)
    assert max_err(got_np, ref) <= TOL
    got32 = F.fbank(w)
    assert got32.shape == (frames, 128)
    assert_close_where_float32_resolves(got32, ref)


def test_frame_params():
    assert F.frame_params() == (400, 160, 512)
    assert F.frame_params(8000) == (200, 80, 256)
    assert F.num_frames(30 * SR) == 2998


# ----------------------------------------------------------------------------- jax batching


def test_jax_batch_jit_vmap(hf):
    names = ["gaussian", "sine", "chord", "silence"]
    batch = np.stack([SIGNALS[k][:SR] for k in names])  # [4, 16000]
    out = F.fbank(batch)
    assert out.shape == (4, 98, 128) and out.dtype == jnp.float32
    jitted = jax.jit(F.fbank)(jnp.asarray(batch))
    vmapped = jax.vmap(F.fbank)(jnp.asarray(batch))
    for i, k in enumerate(names):
        ref = hf_fbank(hf, batch[i])
        assert_close_where_float32_resolves(out[i], ref)
        assert_close_where_float32_resolves(jitted[i], ref)
        assert_close_where_float32_resolves(vmapped[i], ref)
        # A batch row is the same computation as the single clip.
        assert max_err(out[i], F.fbank(batch[i])) <= 1e-5
    with jax.enable_x64(True):
        out64 = F.fbank(batch.astype(np.float64))
        for i in range(len(names)):
            assert max_err(out64[i], hf_fbank(hf, batch[i])) <= TOL


def test_jax_low_precision_inputs_compute_in_float32():
    w = SIGNALS["gaussian"][:SR]
    ref = np.asarray(F.fbank(w.astype(jnp.bfloat16).astype(np.float32)))
    out = F.fbank(jnp.asarray(w, jnp.bfloat16))
    assert out.dtype == jnp.float32
    assert max_err(out, ref) <= 1e-6


def test_nan_under_jit_propagates_instead_of_raising():
    w = np.zeros(SR, np.float32)
    w[1000] = np.nan
    out = jax.jit(F.fbank)(w)
    assert np.isnan(np.asarray(out)).any()


# ----------------------------------------------------------------------------- the mean


def test_remove_mean_false_matches_hf_and_mean_is_a_noop(hf):
    w = SIGNALS["tone_dc_offset"]  # carries a 0.25 DC offset
    ref_raw = hf_fbank(hf, w, remove_mean=False)
    assert max_err(F.fbank_np(w, remove_mean=False), ref_raw) <= TOL
    # Per-frame DC removal already cancels any global offset: remove_mean changes nothing.
    assert max_err(F.fbank_np(w, remove_mean=False), F.fbank_np(w)) <= 1e-5
    assert_close_where_float32_resolves(F.fbank(w, remove_mean=False), ref_raw)


# ----------------------------------------------------------------------------- shared helpers


def test_mel_banks_match_hf_and_torchaudio_layout(hf):
    banks = F.kaldi_mel_banks(128, 512, 16000, 20.0, 0.0)
    assert banks.shape == (128, 257)
    assert not banks.flags.writeable
    np.testing.assert_allclose(banks, hf.mel_filters.T, rtol=0, atol=1e-12)
    assert np.all(banks[:, -1] == 0)  # Nyquist column, padded by torchaudio
    # With 128 bins at FFT 512, filter 3 covers no FFT bin: that feature is always log(eps).
    assert np.flatnonzero(~banks.any(axis=1)).tolist() == [3]
    assert np.all(banks >= 0) and banks.max() <= 1.0
    # Triangles in Kaldi mel space 1127 ln(1 + f/700): peaks ascend, every weight is a slope.
    assert F.kaldi_mel_banks(23, 512, 16000, 20.0, 0.0).shape == (23, 257)
    np.testing.assert_allclose(F.kaldi_mel_banks(high_freq=-500.0),
                               F.kaldi_mel_banks(high_freq=7500.0), atol=1e-12)


def test_hann_window_is_kaldi_hanning():
    w = F.hann_window(400)
    np.testing.assert_allclose(w, np.hanning(400), atol=1e-15)  # symmetric, zero at both ends
    assert w[0] == 0.0 and abs(w[-1]) < 1e-15


def test_hf_full_pipeline_pad_cut_normalize(hf):
    rng = np.random.default_rng(3)
    for seconds, frames in [(10, 998), (12, 1198)]:  # padded to 1024 / cut to 1024
        w = (0.3 * rng.standard_normal(seconds * SR)).astype(np.float32)
        ref = hf(w, sampling_rate=SR, return_tensors="np")["input_values"][0]
        assert ref.shape == (1024, 128)
        feats = F.fbank_np(w, remove_mean=False)
        assert feats.shape[0] == frames
        ours = F.normalize(F.pad_or_cut(feats, 1024))
        assert max_err(ours, ref) <= TOL
        ours_jax = F.normalize(F.pad_or_cut(F.fbank(w, remove_mean=False), 1024))
        assert isinstance(ours_jax, jax.Array)
        assert_close_where_float32_resolves(ours_jax * (2 * F.AUDIOSET_STD),
                                            ref * (2 * F.AUDIOSET_STD))


def test_pad_or_cut_and_normalize():
    x = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    padded = F.pad_or_cut(x, 5)
    assert padded.shape == (5, 4) and np.all(padded[3:] == 0) and np.all(padded[:3] == x)
    assert F.pad_or_cut(x, 2).shape == (2, 4) and np.all(F.pad_or_cut(x, 2) == x[:2])
    assert np.array_equal(F.pad_or_cut(x, 3), x)
    xb = jnp.asarray(np.stack([x, x]))
    out = F.pad_or_cut(xb, 6)
    assert isinstance(out, jax.Array) and out.shape == (2, 6, 4)
    assert F.pad_or_cut(np.zeros((0, 128), np.float32), 4).shape == (4, 128)
    assert F.AUDIOSET_MEAN == -4.2677393 and F.AUDIOSET_STD == 4.5689974
    np.testing.assert_allclose(F.normalize(np.float32(F.AUDIOSET_MEAN + 2 * F.AUDIOSET_STD)), 1.0,
                               rtol=1e-6)
    np.testing.assert_allclose(F.normalize(x, mean=1.0, std=0.5), x - 1.0)


# ----------------------------------------------------------------------------- tests have teeth


def test_wrong_preemphasis_breaks_parity(hf, monkeypatch):
    w = SIGNALS["gaussian"][:SR]
    ref = hf_fbank(hf, w)
    monkeypatch.setattr(F, "PREEMPHASIS", 0.96)
    assert max_err(F.fbank_np(w), ref) > 1e-2
    with jax.disable_jit(), jax.enable_x64(True):  # eager: re-reads the patched constant
        assert max_err(F.fbank(w.astype(np.float64)), ref) > 1e-2


def test_wrong_window_or_mel_scale_breaks_parity(hf, monkeypatch):
    w = SIGNALS["chord"][:SR]
    ref = hf_fbank(hf, w)
    periodic = np.hanning(401)[:-1]
    monkeypatch.setattr(F, "hann_window", lambda n=400: periodic)
    assert max_err(F.fbank_np(w), ref) > 1e-2
    monkeypatch.undo()

    # HTK's 2595 log10(1 + f/700) is Kaldi's scale times 1.00001: filters equally spaced in mel
    # do not change under scaling, so that is no error. A different corner frequency is.
    htk = lambda f: 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)
    wrong = lambda f: 1127.0 * np.log1p(np.asarray(f, np.float64) / 1000.0)
    try:
        for mel, breaks in [(htk, False), (wrong, True)]:
            monkeypatch.setattr(F, "_mel", mel)
            F._mel_banks_cached.cache_clear()
            F._banks_f32_t.cache_clear()
            assert (max_err(F.fbank_np(w), ref) > 1e-2) == breaks
    finally:
        monkeypatch.undo()
        F._mel_banks_cached.cache_clear()
        F._banks_f32_t.cache_clear()
    assert max_err(F.fbank_np(w), ref) <= TOL


def test_float32_checker_rejects_real_errors():
    ref = F.fbank_np(SIGNALS["gaussian"][:SR])
    bad = ref + 3e-4  # e.g. a bf16 mel projection or a wrong constant
    with pytest.raises(AssertionError):
        assert_close_where_float32_resolves(bad, ref)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "waveform,exc,match",
    [
        (np.zeros((2, 16000), np.float32), ValueError, "1-D mono"),
        (np.zeros((1, 2, 400), np.float32), ValueError, "1-D mono"),
        (np.float32(0.5), ValueError, "1-D mono"),
        (np.array([0.0, np.nan] * 300, np.float32), ValueError, "300 non-finite"),
        (np.array([0.0, np.inf, -np.inf] * 200), ValueError, "400 non-finite"),
        (np.zeros(800, np.int16), TypeError, "floating-point.*32768"),
        (np.zeros(800, np.complex64), TypeError, "floating-point"),
        (np.zeros(800, bool), TypeError, "floating-point"),
    ],
)
def test_fbank_np_rejects_bad_waveforms(waveform, exc, match):
    with pytest.raises(exc, match=match):
        F.fbank_np(waveform)


@pytest.mark.parametrize(
    "waveform,exc,match",
    [
        (np.zeros((2, 2, 800), np.float32), ValueError, r"\[batch, samples\]"),
        (np.float32(0.0), ValueError, r"\[batch, samples\]"),
        (jnp.asarray([0.0, jnp.nan] * 300), ValueError, "300 non-finite"),
        (np.full((2, 800), np.inf, np.float32), ValueError, "1600 non-finite"),
        (jnp.zeros(800, jnp.int32), TypeError, "floating-point"),
    ],
)
def test_fbank_jax_rejects_bad_waveforms(waveform, exc, match):
    with pytest.raises(exc, match=match):
        F.fbank(waveform)


@pytest.mark.parametrize("fn", [F.fbank_np, F.fbank])
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"sample_rate": 16000.0}, TypeError, "sample_rate must be an int"),
        ({"sample_rate": "16000"}, TypeError, "sample_rate must be an int"),
        ({"sample_rate": True}, TypeError, "sample_rate must be an int"),
        ({"sample_rate": 0}, ValueError, "sample_rate must be >= 1"),
        ({"sample_rate": 50}, ValueError, "too low"),
        ({"num_mel_bins": 3}, ValueError, "num_mel_bins must be >= 4"),
        ({"num_mel_bins": 128.0}, TypeError, "num_mel_bins must be an int"),
        ({"remove_mean": "yes"}, TypeError, "remove_mean must be a bool"),
    ],
)
def test_bad_options(fn, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fn(np.zeros(800, np.float32), **kwargs)


def test_bad_helper_arguments():
    with pytest.raises(ValueError, match="low_freq < high_freq"):
        F.kaldi_mel_banks(128, 512, 16000, low_freq=9000.0)
    with pytest.raises(ValueError, match="fft_size must be even"):
        F.kaldi_mel_banks(128, 511, 16000)
    with pytest.raises(TypeError, match="high_freq must be a finite number"):
        F.kaldi_mel_banks(128, 512, 16000, high_freq=float("nan"))
    with pytest.raises(ValueError, match="num_samples must be >= 0"):
        F.num_frames(-1)
    with pytest.raises(ValueError, match="target_frames must be >= 0"):
        F.pad_or_cut(np.zeros((3, 4)), -1)
    with pytest.raises(ValueError, match=r"\[\.\.\., frames, mel\]"):
        F.pad_or_cut(np.zeros(3), 4)
    with pytest.raises(ValueError, match="std must be > 0"):
        F.normalize(np.zeros(3), std=0.0)


def test_fbank_np_leaves_input_alone_and_accepts_lists():
    w = SIGNALS["tone_dc_offset"][:SR].copy()
    before = w.copy()
    out = F.fbank_np(w)
    np.testing.assert_array_equal(w, before)
    assert out.flags.c_contiguous
    assert max_err(F.fbank_np(w.tolist()), out) <= 1e-5
