"""python -m mpjax.analysis --workdir=RUN [--data=DATASET] ...: the research report
(`mpjax.analysis.research`)."""
from absl import app, flags, logging

from mpjax.analysis import research

flags.DEFINE_string("workdir", None, "training run directory (config.json, checkpoints/); "
                    "without it, --data alone gets the data analyses")
flags.DEFINE_string("data", None, "dataset directory (default: the run's data_dir)")
flags.DEFINE_string("raw", None, "raw directory with truth.json (default DATASET/../raw, else the "
                    "manifest's build source; real data has none)")
flags.DEFINE_string("out", None, "output directory (default RUN/analysis)")
flags.DEFINE_string("fit", "train", "splits the H regressions are fitted on")
flags.DEFINE_string("score", "test", "splits they are scored on (never overlapping --fit; "
                    "test: songs no model or checkpoint choice saw)")
flags.DEFINE_float("margin", 0.02, "H's equivalence margin at the debut, in R² (pre-registered)")
flags.DEFINE_string("tiktok_labels", None, "CSV track,label (the key column may also be song, "
                    "song_id, isrc or key) for T; default: the dataset's tiktok label")
flags.DEFINE_alias("labels", "tiktok_labels")
flags.DEFINE_integer("bootstrap", 1000, "refit bootstrap resamples of songs for H's intervals")
flags.DEFINE_integer("permutations", 2000, "label permutations for T's p-values")
flags.DEFINE_integer("seed", 0, "seed of the resampling, permutations and folds")
flags.DEFINE_string("step", "latest", "checkpoint: latest, best or a step number")


def main(argv):
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file operation at INFO
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if not (f.workdir or f.data):
    raise app.UsageError("--workdir (a run) or --data (a dataset) is required")
  try:
    research.run(f.workdir, data_dir=f.data, raw=f.raw, out=f.out, fit=f.fit, score=f.score,
                 margin=f.margin,
                 tiktok_labels=f.tiktok_labels, bootstrap=f.bootstrap,
                 permutations=f.permutations, seed=f.seed, step=f.step,
                 log=lambda s: print(s, flush=True))
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"mpjax.analysis: {e}") from None


if __name__ == "__main__":
  app.run(main)
