"""`python -m feelvos_jax.evaluate`: the DAVIS 2017 scorer of `feelvos_jax.tools.evaluate` under
its public command name (same flags, same tables and CSV files)."""
from feelvos_jax.tools.evaluate import cli
from feelvos_jax.tools.evaluate import evaluate_predictions
from feelvos_jax.tools.evaluate import main

__all__ = ["cli", "evaluate_predictions", "main"]

if __name__ == "__main__":
  cli()
