"""Kaldi-compatible log-mel filterbank ("fbank"), the AST front end, in numpy and in JAX.

What it computes
----------------
Exactly what the official AST code feeds its model::

    waveform = waveform - waveform.mean()
    torchaudio.compliance.kaldi.fbank(
        waveform, htk_compat=True, sample_frequency=16000, use_energy=False,
        window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)

i.e. per frame (all other arguments at torchaudio's Kaldi defaults):

1. frames of 25 ms (400 samples at 16 kHz) every 10 ms (160 samples), ``snip_edges=True``:
   only whole frames, ``1 + (n - 400) // 160`` of them (10 s -> 998 frames; none for n < 400);
2. remove the frame's DC offset (subtract its mean)          -- Kaldi ``remove_dc_offset=True``;
3. pre-emphasis ``y[j] = x[j] - 0.97 x[j-1]``, ``y[0] = x[0] - 0.97 x[0]``
   (Kaldi replicates the first sample)                        -- ``preemphasis_coefficient=0.97``;
4. symmetric Hann window of 400 samples ("hanning": 0.5 - 0.5 cos(2 pi i / 399));
5. zero-pad to 512 (``round_to_power_of_two``), real FFT, power spectrum |X|^2 (257 bins);
6. 128 triangular filters, equally spaced on the Kaldi mel scale ``1127 ln(1 + f / 700)``
   between 20 Hz (``low_freq``) and Nyquist (``high_freq=0`` means Nyquist), triangular *in mel
   space*; the Nyquist bin gets weight 0 (torchaudio pads a zero column);
7. ``log(max(energy, eps))`` with eps = float32 machine epsilon 1.1920928955078125e-07, so
   silence gives the finite value log(eps) ~= -15.942385 instead of -inf.

``dither=0`` (deterministic), ``use_energy=False`` (no extra energy column, so ``htk_compat``
changes nothing), output ``[frames, num_mel_bins]``, time first.

Notes that matter in practice
-----------------------------
* Input is float audio in [-1, 1] as ``torchaudio.load`` returns it (not int16 counts; integer
  input is rejected, divide by 32768 first). The features are not scale invariant.
* ``remove_mean`` (official AST's ``waveform - waveform.mean()``) is mathematically a no-op
  here, because step 2 removes every frame's mean anyway; it is kept for fidelity and changes
  results only at rounding level.
* With 128 bins and a 512-point FFT, mel filter 3 (0-based) covers no FFT bin at all, so that
  feature is always log(eps). torchaudio (and HF) keep the empty filter silently; Kaldi's C++
  would refuse ("num-mel-bins too large"). We keep it: the AST weights were trained with it.
* Clips shorter than one window give ``(0, num_mel_bins)``, as Kaldi's C++ does. (torchaudio
  asserts instead; HF returns 0 frames for 240..399 samples and crashes below 240.)
* HF's ``ASTFeatureExtractor`` (numpy path, used when torchaudio is missing) computes the same
  thing in float64 but does NOT subtract the waveform mean (irrelevant, see above) and uses a
  mistyped floor 1.192092955078125e-07 (5e-16 off float32 eps, 5e-8 in the log). Its filters
  equal ours to 1e-12. (HTK's mel formula 2595 log10(1 + f/700) is Kaldi's times 1.00001, and
  filters equally spaced in mel do not change under scaling: both give the same filterbank.)

Two implementations:
* :func:`fbank_np` -- numpy, one 1-D mono clip, for data preparation. Framing, DC removal,
  pre-emphasis, window and FFT run in float64 (that is where cancellation happens); |X|^2, the
  mel projection (non-negative terms, no cancellation) and the log run in float32. Matches HF to
  ~1e-6 (float32 output rounding); ~40-50 ms for a 30 s clip on one core (HF: ~200 ms).
* :func:`fbank` -- ``jax.numpy``, jit-able, ``[samples]`` or ``[batch, samples]`` with static
  shapes. Computes in float32 (float64 if given float64 with x64 enabled; then it matches HF to
  ~1e-6). The mel projection uses ``Precision.HIGHEST`` explicitly, so GPU/TPU matmuls do not
  drop to TF32/bf16. In float32 it matches to < 1e-4 wherever the band is within 40 dB of the
  frame's strongest band; deeper bands (spectral nulls, pre-emphasis-suppressed lows, far
  sidelobes of pure tones) carry float32 rounding of the frame, ~eps * frame energy, i.e. up to
  ~1e-3 in the log. That is inherent to float32, and the official torchaudio pipeline (float32)
  deviates from the float64 result by the same amount.

Then pad or cut to the model's length (:func:`pad_or_cut`, zeros at the end like official/HF
AST) and :func:`normalize` ``(x - mean) / (2 std)``; AudioSet statistics are
:data:`AUDIOSET_MEAN` / :data:`AUDIOSET_STD` (compute our own for our data).
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "SAMPLE_RATE",
    "NUM_MEL_BINS",
    "FRAME_LENGTH_MS",
    "FRAME_SHIFT_MS",
    "PREEMPHASIS",
    "LOW_FREQ",
    "HIGH_FREQ",
    "EPS",
    "AUDIOSET_MEAN",
    "AUDIOSET_STD",
    "frame_params",
    "num_frames",
    "kaldi_mel_banks",
    "hann_window",
    "fbank_np",
    "fbank",
    "pad_or_cut",
    "normalize",
]

SAMPLE_RATE = 16000  # AST was trained on 16 kHz mono.
NUM_MEL_BINS = 128  # AST's input height.
FRAME_LENGTH_MS = 25.0  # Kaldi default window: 25 ms -> 400 samples.
FRAME_SHIFT_MS = 10.0  # Kaldi default hop: 10 ms -> 160 samples (100 frames/s).
PREEMPHASIS = 0.97  # Kaldi default preemphasis_coefficient.
LOW_FREQ = 20.0  # Kaldi default low_freq (Hz).
HIGH_FREQ = 0.0  # Kaldi convention: <= 0 means Nyquist + HIGH_FREQ, i.e. Nyquist.
EPS = float(np.finfo(np.float32).eps)  # 1.1920928955078125e-07, torchaudio's log floor.
AUDIOSET_MEAN = -4.2677393  # official AST / HF normalisation statistics (AudioSet).
AUDIOSET_STD = 4.5689974


# ----------------------------------------------------------------------------- parameters


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def frame_params(sample_rate: int = SAMPLE_RATE) -> tuple[int, int, int]:
    """``(window_size, window_shift, fft_size)`` in samples, as Kaldi derives them.

    Kaldi truncates ``sample_rate * ms / 1000`` to an int and rounds the window up to a power
    of two for the FFT: 16 kHz -> (400, 160, 512).
    """
    sample_rate = _check_int("sample_rate", sample_rate, 1)
    window_size = int(sample_rate * FRAME_LENGTH_MS * 0.001)
    window_shift = int(sample_rate * FRAME_SHIFT_MS * 0.001)
    if window_size < 2 or window_shift < 1:
        raise ValueError(f"sample_rate={sample_rate} is too low for 25 ms / 10 ms frames")
    fft_size = 1 << (window_size - 1).bit_length()
    return window_size, window_shift, fft_size


def num_frames(num_samples: int, *, sample_rate: int = SAMPLE_RATE) -> int:
    """Frames Kaldi emits with ``snip_edges=True``: ``1 + (n - 400) // 160``, 0 when n < 400."""
    num_samples = _check_int("num_samples", num_samples, 0)
    window_size, window_shift, _ = frame_params(sample_rate)
    if num_samples < window_size:
        return 0
    return 1 + (num_samples - window_size) // window_shift


def _mel(freq):
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=32)
def _mel_banks_cached(num_bins, fft_size, sample_rate, low_freq, high_freq):
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(
            f"need 0 <= low_freq < high_freq <= Nyquist ({nyquist} Hz); got low_freq={low_freq}, "
            f"high_freq={high_freq}"
        )
    num_fft_bins = fft_size // 2
    fft_bin_width = sample_rate / fft_size
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    k = np.arange(num_bins, dtype=np.float64)[:, None]
    left = mel_low + k * delta
    center = mel_low + (k + 1.0) * delta
    right = mel_low + (k + 2.0) * delta
    mel = _mel(fft_bin_width * np.arange(num_fft_bins, dtype=np.float64))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    # torchaudio pads a zero column for the Nyquist bin: [num_bins, fft_size // 2 + 1].
    banks = np.pad(banks, ((0, 0), (0, 1)))
    banks.setflags(write=False)
    return banks


def kaldi_mel_banks(
    num_bins: int = NUM_MEL_BINS,
    fft_size: int = 512,
    sample_rate: int = SAMPLE_RATE,
    low_freq: float = LOW_FREQ,
    high_freq: float = HIGH_FREQ,
) -> np.ndarray:
    """Kaldi/torchaudio mel filterbank, float64 ``[num_bins, fft_size // 2 + 1]`` (read-only).

    Filter m is a triangle in *mel* space with corners ``mel_low + (m, m+1, m+2) * delta``,
    ``delta = (mel(high) - mel(low)) / (num_bins + 1)``, mel(f) = 1127 ln(1 + f/700), evaluated
    at FFT bin frequencies ``i * sample_rate / fft_size`` for i < fft_size/2; the Nyquist column
    is zero (as torchaudio). ``high_freq <= 0`` means Nyquist + high_freq (Kaldi convention).
    """
    num_bins = _check_int("num_bins", num_bins, 4)  # Kaldi/torchaudio assert num_bins > 3
    fft_size = _check_int("fft_size", fft_size, 2)
    if fft_size % 2:
        raise ValueError(f"fft_size must be even, got {fft_size}")
    sample_rate = _check_int("sample_rate", sample_rate, 1)
    for name, value in (("low_freq", low_freq), ("high_freq", high_freq)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise TypeError(f"{name} must be a finite number, got {value!r}")
    return _mel_banks_cached(num_bins, fft_size, sample_rate, float(low_freq), float(high_freq))


@functools.lru_cache(maxsize=8)
def _hann_cached(window_size):
    i = np.arange(window_size, dtype=np.float64)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * i / (window_size - 1))
    w.setflags(write=False)
    return w


def hann_window(window_size: int = 400) -> np.ndarray:
    """Kaldi "hanning" window (symmetric, = ``torch.hann_window(n, periodic=False)``), float64."""
    return _hann_cached(_check_int("window_size", window_size, 2))


def _check_options(sample_rate, num_mel_bins, remove_mean):
    window_size, window_shift, fft_size = frame_params(sample_rate)
    _check_int("num_mel_bins", num_mel_bins, 4)
    if not isinstance(remove_mean, (bool, np.bool_)):
        raise TypeError(f"remove_mean must be a bool, got {type(remove_mean).__name__}")
    return window_size, window_shift, fft_size


def _check_dtype(dtype, what):
    if not jnp.issubdtype(dtype, np.floating):
        hint = " (integer PCM: divide by 32768 to get [-1, 1] floats first)" if jnp.issubdtype(
            dtype, np.integer) else ""
        raise TypeError(f"{what} must be a real floating-point array, got dtype {dtype}{hint}")


# ----------------------------------------------------------------------------- numpy


def fbank_np(
    waveform,
    *,
    sample_rate: int = SAMPLE_RATE,
    num_mel_bins: int = NUM_MEL_BINS,
    remove_mean: bool = True,
) -> np.ndarray:
    """Log-mel fbank of one mono clip (numpy). Returns float32 ``[num_frames(n), num_mel_bins]``.

    ``waveform``: 1-D float array of samples in [-1, 1] at ``sample_rate``. Stereo or batches are
    rejected (a ``[2, n]`` array is ambiguous): mix down first, or use :func:`fbank` for batches.
    Clips shorter than one window give shape ``(0, num_mel_bins)``.
    """
    window_size, window_shift, fft_size = _check_options(sample_rate, num_mel_bins, remove_mean)
    x = np.asarray(waveform)
    if x.ndim != 1:
        raise ValueError(
            f"fbank_np takes one 1-D mono waveform, got shape {x.shape}; mix stereo down first "
            f"(e.g. w.mean(axis=0)) and use fbank() (jax) for a [batch, samples] array"
        )
    _check_dtype(x.dtype, "waveform")
    if not np.isfinite(x).all():
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"waveform contains {bad} non-finite samples (NaN or inf)")

    frames_n = num_frames(x.shape[0], sample_rate=sample_rate)
    if frames_n == 0:
        return np.zeros((0, num_mel_bins), np.float32)

    x = x.astype(np.float64, copy=False)
    if remove_mean:
        x = x - x.mean()
    # [frames, window] view without copying, snip_edges=True.
    frames = np.lib.stride_tricks.sliding_window_view(x, window_size)[::window_shift]
    # DC removal, pre-emphasis and window fused into few passes. With u = f - mean(f):
    # y[j] = u[j] - c u[j-1] = f[j] - c f[j-1] - (1 - c) mean(f) for j >= 1, y[0] = (1 - c) u[0].
    means = frames.mean(axis=1, keepdims=True)
    buf = np.empty((frames_n, window_size), np.float64)
    np.multiply(frames[:, :-1], -PREEMPHASIS, out=buf[:, 1:])
    buf[:, 1:] += frames[:, 1:]
    buf[:, 1:] -= (1.0 - PREEMPHASIS) * means
    buf[:, :1] = (frames[:, :1] - means) * (1.0 - PREEMPHASIS)
    buf *= hann_window(window_size)
    spec = np.fft.rfft(buf, n=fft_size, axis=1)
    # |X|^2 is a sum of squares (no cancellation): float32 from here on costs no accuracy.
    power = np.square(spec.real, dtype=np.float32)
    power += np.square(spec.imag, dtype=np.float32)
    mel = power @ _banks_f32_t(num_mel_bins, fft_size, sample_rate)
    np.maximum(mel, np.float32(EPS), out=mel)
    return np.log(mel, out=mel)


@functools.lru_cache(maxsize=8)
def _banks_f32_t(num_mel_bins, fft_size, sample_rate):
    banks = np.ascontiguousarray(
        kaldi_mel_banks(num_mel_bins, fft_size, sample_rate, LOW_FREQ, HIGH_FREQ).T, np.float32)
    banks.setflags(write=False)
    return banks


# ----------------------------------------------------------------------------- jax


def fbank(
    waveform,
    *,
    sample_rate: int = SAMPLE_RATE,
    num_mel_bins: int = NUM_MEL_BINS,
    remove_mean: bool = True,
) -> jax.Array:
    """Log-mel fbank in ``jax.numpy``: ``[samples] -> [frames, mel]``, ``[B, samples] -> [B, frames, mel]``.

    Same definition as :func:`fbank_np`. Jit-able (shapes static; options are Python values).
    A 2-D input is always a batch of mono clips, never ``[channels, samples]``. Non-finite
    samples are rejected when the input is concrete; under an outer ``jax.jit`` they cannot be
    checked and propagate as NaN. Clips shorter than one window give ``(..., 0, num_mel_bins)``.
    """
    window_size, window_shift, fft_size = _check_options(sample_rate, num_mel_bins, remove_mean)
    if not isinstance(waveform, (jax.Array, np.ndarray)):
        waveform = np.asarray(waveform)
        if waveform.dtype == np.float64:
            waveform = waveform.astype(np.float32)
    if waveform.ndim not in (1, 2):
        raise ValueError(
            f"fbank takes a waveform [samples] or a batch [batch, samples], got shape "
            f"{tuple(waveform.shape)}"
        )
    _check_dtype(waveform.dtype, "waveform")
    if not isinstance(waveform, jax.core.Tracer):  # concrete: check (one scalar sync on device)
        xp = jnp if isinstance(waveform, jax.Array) else np
        if not bool(xp.isfinite(waveform).all()):
            bad = int(waveform.size - xp.count_nonzero(xp.isfinite(waveform)))
            raise ValueError(f"waveform contains {bad} non-finite samples (NaN or inf)")
    return _fbank_jax(waveform, sample_rate=int(sample_rate), num_mel_bins=int(num_mel_bins),
                      remove_mean=bool(remove_mean))


@functools.partial(jax.jit, static_argnames=("sample_rate", "num_mel_bins", "remove_mean"))
def _fbank_jax(waveform, *, sample_rate, num_mel_bins, remove_mean):
    window_size, window_shift, fft_size = frame_params(sample_rate)
    dtype = jnp.result_type(waveform.dtype, jnp.float32)  # f16/bf16 -> f32; f64 stays with x64
    x = waveform.astype(dtype)
    n = x.shape[-1]
    frames_n = num_frames(n, sample_rate=sample_rate)
    batch_shape = x.shape[:-1]
    if frames_n == 0:
        return jnp.zeros((*batch_shape, 0, num_mel_bins), dtype)
    if remove_mean:
        x = x - jnp.mean(x, axis=-1, keepdims=True)

    # Framing without a gather: cut the signal into hops of window_shift samples; frame i is
    # hops i, i+1, ..., i+k-1 laid end to end, truncated to window_size samples.
    k = -(-window_size // window_shift)  # hops spanned by one window (3 at 16 kHz)
    num_hops = frames_n + k - 1
    pad = num_hops * window_shift - n
    if pad > 0:  # only the unused tail of the last hop is padding
        x = jnp.pad(x, [(0, 0)] * len(batch_shape) + [(0, pad)])
    hops = x[..., : num_hops * window_shift].reshape(*batch_shape, num_hops, window_shift)
    frames = jnp.concatenate([hops[..., j : j + frames_n, :] for j in range(k)], axis=-1)
    frames = frames[..., :window_size]

    frames = frames - jnp.mean(frames, axis=-1, keepdims=True)
    prev = jnp.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
    frames = frames - PREEMPHASIS * prev
    frames = frames * jnp.asarray(hann_window(window_size), dtype)
    spec = jnp.fft.rfft(frames, n=fft_size, axis=-1)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    banks = jnp.asarray(kaldi_mel_banks(num_mel_bins, fft_size, sample_rate, LOW_FREQ, HIGH_FREQ).T,
                        dtype)
    mel = jnp.matmul(power, banks, precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, jnp.asarray(EPS, dtype)))


# ----------------------------------------------------------------------------- shared


def pad_or_cut(fbank, target_frames: int):
    """Zero-pad at the end or cut to ``target_frames`` along the time axis (axis -2).

    As official/HF AST (padding is with 0 in log-mel units, before normalisation). Works on
    numpy and jax arrays ``[..., frames, mel]`` and returns the same kind.
    """
    target_frames = _check_int("target_frames", target_frames, 0)
    if getattr(fbank, "ndim", 0) < 2:
        raise ValueError(f"fbank must be [..., frames, mel], got shape {getattr(fbank, 'shape', None)}")
    xp = jnp if isinstance(fbank, jax.Array) else np
    frames_n = fbank.shape[-2]
    if frames_n >= target_frames:
        return fbank[..., :target_frames, :]
    widths = [(0, 0)] * (fbank.ndim - 2) + [(0, target_frames - frames_n), (0, 0)]
    return xp.pad(fbank, widths)


def normalize(fbank, mean: float = AUDIOSET_MEAN, std: float = AUDIOSET_STD):
    """``(fbank - mean) / (2 * std)``, the official AST normalisation (numpy or jax arrays)."""
    if isinstance(std, numbers.Real) and not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    return (fbank - mean) / (2.0 * std)
