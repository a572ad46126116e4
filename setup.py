"""mpjax: music popularity prediction from audio, in JAX/Flax.

Install for development and tests:  pip install -e .[test]
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    # Model, training, checkpoints, input pipeline.
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "grain>=0.2.18",
    "ml-collections>=1.1.0",
    "absl-py>=2.1",
    "numpy>=2.0",
    "google-crc32c>=1.5",
    # Record format: tf.train.Example proto / parser without TensorFlow.
    "tensorflow-datasets>=4.9.10",
    # Data preparation.
    "librosa>=0.11",
    "soundfile>=0.12",
    "audioread>=3.0",  # m4a/aac via ffmpeg (apt package ffmpeg)
    "soxr>=0.3",  # resampling to 16 kHz
    "pandas>=2.0",
    "scikit-learn>=1.6",  # baselines (ridge), probes (GroupKFold with shuffle: 1.6+)
    "lifelines>=0.27",  # T: Kaplan-Meier, log-rank, Cox with cluster-robust SEs (pure Python)
    "spotipy>=2.24",
    "requests>=2.31",
    "urllib3>=2.0",  # Retry(backoff_jitter=...)
    "lxml>=5.0",  # kworb.net pages (data_prep/kworb.py)
    "safetensors>=0.4",
    "flatbuffers>=24.3",  # jax.export serialization (mpjax.export)
    "matplotlib>=3.8",
    "tqdm>=4.66",
]

# Forecasting peers (mpjax.peers): statistical local models, a global gradient-boosted model
# and holiday calendars. Optional: only mpjax.peers imports them, inside its functions.
FORECAST_REQUIRES = [
    "statsforecast>=2.0",
    "lightgbm>=4.3",
    "holidays>=0.50",
]

TEST_REQUIRES = [
    "pytest>=8",
    # Pinned exactly: the 2.13.0 CPU wheel is local; anything looser pulls a multi-GB CUDA build.
    "torch==2.13.0",
    "transformers>=5.0",
    "responses>=0.25",
    # An independent TFRecord reader/writer (own example.proto, crc32c package) for the format
    # compatibility tests in tests/test_tfrecord.py; needs only numpy, protobuf, crc32c.
    "tfrecord>=1.14.6",
    # tests/test_peers.py exercises the [forecast] extra: CI installs only .[test].
    *FORECAST_REQUIRES,
]

setup(
    name="mpjax",
    version="0.1.0",
    description="Music popularity prediction from audio with an Audio Spectrogram Transformer in JAX/Flax",
    python_requires=">=3.11",
    # configs too: the demo chains configs (mp3 -> mp2 -> ssl), importable from any directory.
    packages=find_packages(include=["mpjax", "mpjax.*", "data_prep", "data_prep.*", "configs"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "forecast": FORECAST_REQUIRES},
)
