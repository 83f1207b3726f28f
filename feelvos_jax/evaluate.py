"""`python -m feelvos_jax.evaluate`: the DAVIS 2017 scorer of `feelvos_jax.tools.evaluate` under
its public command name (same flags, same tables and CSV files)."""
from absl import app
from absl import flags

from feelvos_jax.tools.evaluate import evaluate_predictions
from feelvos_jax.tools.evaluate import main

__all__ = ["evaluate_predictions", "main"]

if __name__ == "__main__":
  flags.mark_flags_as_required(["predictions", "dataset_root"])
  app.run(main)
