"""Speed and parity of mpjax.audio.fbank on a 30 s clip. Prints one JSON line per measurement.

    python benchmarks/fbank.py [--runs 20] [--clip_s 30]

* ``fbank_np`` on one core (BLAS/OpenMP threads pinned to 1 before numpy is imported, and
  threadpoolctl when available); target < 150 ms for 30 s.
* the jitted JAX version, single clip and a batch of 8 (device-resident input, warm-up and
  compilation excluded, ``block_until_ready``); XLA uses the machine's threads (``cpu_threads``).
* HF ``ASTFeatureExtractor`` numpy path, for comparison.
* parity (max abs error, log-mel units) vs HF on a 30 s gaussian clip: over all entries, and over
  entries within 40 dB of the frame's strongest band (where float32 can resolve 1e-4). A float32
  transcription of torchaudio's kaldi.fbank (what official AST runs) is included to show the
  float32 rounding floor is shared by the official pipeline, not specific to JAX.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
             "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import contextlib
import json
import statistics
import time
import warnings

import numpy as np

import jax
import jax.numpy as jnp

from mpjax.audio import fbank as F

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # env vars above already pin the pools
    threadpool_limits = None


def _median_ms(fn, runs, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _emit(**record):
    print(json.dumps(record), flush=True)


def _hf_extractor():
    try:
        from transformers import ASTFeatureExtractor
        from transformers.models.audio_spectrogram_transformer import (
            feature_extraction_audio_spectrogram_transformer as hf_mod,
        )
    except ImportError:
        return None
    hf_mod.is_speech_available = lambda: False  # pin HF to its numpy (float64) path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ASTFeatureExtractor()


def _torch_kaldi_f32(w):
    """float32 transcription of torchaudio.compliance.kaldi.fbank with the AST options."""
    import torch

    x = torch.from_numpy(w)
    x = x - x.mean()
    m = F.num_frames(len(w))
    frames = x.as_strided((m, 400), (160, 1))
    frames = frames - frames.mean(dim=1, keepdim=True)
    prev = torch.nn.functional.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)
    frames = frames - 0.97 * prev[:, :-1]
    frames = frames * torch.hann_window(400, periodic=False, dtype=torch.float32)
    frames = torch.nn.functional.pad(frames, (0, 112))
    power = torch.fft.rfft(frames).abs().pow(2.0)
    banks = torch.from_numpy(np.array(F.kaldi_mel_banks())).float()
    mel = torch.mm(power, banks.T)
    return torch.clamp_min(mel, F.EPS).log().numpy()


def _errors(got, ref):
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    err = np.abs(got - ref)
    well = ref - ref.max(axis=-1, keepdims=True) >= np.log(1e-4)
    return {
        "max_abs_err": float(err.max()),
        "max_abs_err_within_40db": float(err[well].max()),
        "frac_entries_over_1e-4": float((err > 1e-4).mean()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--clip_s", type=float, default=30.0)
    args = parser.parse_args()
    runs = max(args.runs, 10)
    n = int(args.clip_s * F.SAMPLE_RATE)
    w = (0.3 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    limit = threadpool_limits(limits=1) if threadpool_limits else contextlib.nullcontext()

    with limit:
        ms = _median_ms(lambda: F.fbank_np(w), runs)
    _emit(impl="fbank_np", clip_s=args.clip_s, batch=1, median_ms=round(ms, 2), target_ms=150,
          ok=ms < 150, cpu_threads=1, runs=runs)

    fe = _hf_extractor()
    if fe is not None:
        with limit:
            ms = _median_ms(lambda: fe._extract_fbank_features(w, max_length=1024), max(runs // 2, 10),
                            warmup=1)
        _emit(impl="hf_ast_feature_extractor_numpy", clip_s=args.clip_s, batch=1,
              median_ms=round(ms, 2), cpu_threads=1, runs=max(runs // 2, 10))

    fn = jax.jit(F.fbank)
    device = jax.devices()[0]
    for batch in (1, 8):
        x = jnp.asarray(w if batch == 1 else np.stack([np.roll(w, 997 * i) for i in range(batch)]))
        x = jax.device_put(x, device).block_until_ready()
        ms = _median_ms(lambda: fn(x).block_until_ready(), runs)
        _emit(impl="fbank_jax_jit", clip_s=args.clip_s, batch=batch, median_ms=round(ms, 2),
              per_clip_ms=round(ms / batch, 2), device=device.platform,
              cpu_threads=os.cpu_count() if device.platform == "cpu" else None, runs=runs)

    if fe is None:
        _emit(parity="skipped", reason="transformers not installed")
        return
    ref = fe._extract_fbank_features(w.astype(np.float64) - w.astype(np.float64).mean(),
                                     max_length=F.num_frames(n))
    got_np = F.fbank_np(w)
    got_jax = np.asarray(F.fbank(w))
    _emit(parity="fbank_np_vs_hf", clip_s=args.clip_s, **_errors(got_np, ref))
    _emit(parity="fbank_jax_f32_vs_hf", clip_s=args.clip_s, **_errors(got_jax, ref))
    with jax.enable_x64(True):
        got_jax64 = np.asarray(F.fbank(w.astype(np.float64)))
    _emit(parity="fbank_jax_f64_vs_hf", clip_s=args.clip_s, **_errors(got_jax64, ref))
    _emit(parity="fbank_np_vs_jax_f32", clip_s=args.clip_s, **_errors(got_jax, got_np))
    try:
        got_torch = _torch_kaldi_f32(w)
    except ImportError:
        pass
    else:
        _emit(parity="torch_f32_kaldi_transcription_vs_hf", clip_s=args.clip_s,
              **_errors(got_torch, ref))


if __name__ == "__main__":
    main()
