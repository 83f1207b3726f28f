"""`python -m feelvos_jax.segment`: the command of `feelvos_jax.tools.segment` under its public
name (same flags, same outputs): segment your own videos from the masks of their objects."""
from feelvos_jax.tools.segment import cli
from feelvos_jax.tools.segment import main
from feelvos_jax.tools.segment import parse_flags
from feelvos_jax.tools.segment import run

__all__ = ["cli", "main", "parse_flags", "run"]

if __name__ == "__main__":
  cli()
