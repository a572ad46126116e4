"""Test doubles and small configs shared by several test files."""


class FakeTime:
  """Injected sleep/clock: records every wait, advances a fake clock instead of sleeping."""

  def __init__(self):
    self.now = 1000.0
    self.sleeps = []

  def sleep(self, s):
    self.sleeps.append(s)
    self.now += s

  def clock(self):
    return self.now


def tiny_dataset(tmp_path_factory, n_songs=40, n_artists=10):
  """A small synthetic dataset (3 regions, 5.5 s clips, shards of 8 records); its directory."""
  from data_prep import build, synthetic
  raw = str(tmp_path_factory.mktemp("raw"))
  out = str(tmp_path_factory.mktemp("ds"))
  synthetic.generate(raw, seed=2, n_songs=n_songs, n_artists=n_artists,
                     regions=("global", "us", "kr"), clip_seconds=5.5, weeks=36)
  build.build(build.BuildConfig(raw=raw, out=out, progress=False, records_per_shard=8))
  return out


def tiny_train(c, data):
  """A demo config (configs/mp2.py or mp3.py) shrunk to seconds on CPU over dataset `data`."""
  c.data_dir = data
  c.model.depth = 1
  c.model.input_tdim = 64
  c.input.batch_size = 8
  c.input.eval_batch_size = 8
  c.total_steps = 6
  c.optim.warmup_steps = 2
  c.log_every = 1
  c.eval_every = 1000
  c.checkpoint.every = 3
  c.checkpoint.use_async = False
  c.tensorboard = False
  c.augment.specaug.freq_width = 8
  c.augment.specaug.time_width = 8
  return c
