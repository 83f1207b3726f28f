"""FEELVOS pixel-embedding distances and the checks shared by the matching functions.

d(p, q) = 1 - 2 / (1 + exp(||e_p - e_q||^2)) = tanh(||e_p - e_q||^2 / 2), from squared distances
||x||^2 + ||y||^2 - 2 x.y computed on embeddings rescaled by an exact power of two (so squared
norms never overflow float32), clamped at 0. Why this form and its measured error:
docs/matching.md.
"""
import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from feelvos_jax import IGNORE_LABEL

_MAX_EXPONENT = 126
"""Largest |e| of the power-of-two rescaling 2**e (both 2**e and 2**-e are normal floats)."""

DTypeLike = Any


def check_labels(labels: jax.typing.ArrayLike, num_objects: int, name: str) -> None:
  """Raises ValueError if concrete `labels` hold ids outside 0..num_objects-1 and IGNORE_LABEL.

  A no-op for traced values (inside jit/vmap), where such ids are data: the matching functions
  then treat them like IGNORE_LABEL.
  """
  if isinstance(labels, jax.core.Tracer):
    return
  values = np.asarray(labels)
  invalid = ((values < 0) | (values >= num_objects)) & (values != IGNORE_LABEL)
  if invalid.any():
    bad = np.unique(values[invalid])
    raise ValueError(
        f"{name} contains label id {int(bad[0])} (bad ids: {bad.tolist()[:10]}), but "
        f"num_objects={num_objects} allows only 0..{num_objects - 1} and {IGNORE_LABEL} (ignore).")


def check_int(name: str, value: Any, low: int, optional: bool = False) -> None:
  """ValueError naming the argument `name` unless `value` is an int (not bool) >= low, or None
  when `optional` (static arguments of the matching functions; config values:
  `feelvos_jax.config_checks`)."""
  if optional and value is None:
    return
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{name} must be {'None or ' if optional else ''}a Python int >= {low}, "
                     f"got {value!r}.")


def check_embedding(name: str, x: jax.Array) -> None:
  """ValueError naming `name` unless `x` is a non-empty floating-point [H, W, C] array."""
  if x.ndim != 3 or 0 in x.shape:
    raise ValueError(f"{name} must be a non-empty [H, W, C] embedding, got shape {x.shape}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} must be floating point, got dtype {x.dtype}.")


def check_label_map(name: str, labels: jax.Array, spatial: tuple[int, ...], other: str) -> None:
  """ValueError naming `name` unless `labels` is an integer map of shape `spatial` (that of
  the array called `other`)."""
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{name} must be an integer label map, got dtype {labels.dtype}.")
  if labels.shape != spatial:
    raise ValueError(f"{name} has shape {labels.shape}, but {other} is {spatial}: they must match.")


def check_channels(name_x: str, x: jax.Array, name_y: str, y: jax.Array) -> None:
  """ValueError naming both arrays unless their last (embedding) dimensions agree."""
  if x.shape[-1] != y.shape[-1]:
    raise ValueError(f"{name_x} {x.shape} and {name_y} {y.shape} have different embedding "
                     f"dimensions ({x.shape[-1]} vs {y.shape[-1]}).")


def matmul_dtype(dtype: DTypeLike) -> jnp.dtype:
  """`dtype` as a jnp.dtype if float32 or bfloat16 (the matmul dtypes); ValueError otherwise."""
  dtype = jnp.dtype(dtype)
  if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
    raise ValueError(f"dtype must be float32 or bfloat16, got {dtype}.")
  return dtype


def _exp2(exponent: jax.Array) -> jax.Array:
  """2**exponent as an exact float32, for integer |exponent| <= _MAX_EXPONENT."""
  return lax.bitcast_convert_type((exponent + 127) << 23, jnp.float32)


def scale_exponent(*arrays: jax.Array) -> jax.Array:
  """Integer e with max|a| < 2**e over all arrays (clipped), constant for differentiation."""
  largest = jnp.max(jnp.stack([jnp.max(jnp.abs(a)).astype(jnp.float32) for a in arrays]))
  _, exponent = jnp.frexp(largest)
  return lax.stop_gradient(jnp.clip(exponent, -_MAX_EXPONENT, _MAX_EXPONENT))


def rescale(x: jax.Array, exponent: jax.Array, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
  """x * 2**-exponent rounded to `dtype`, and the float32 squared norms of the rounded rows.

  The rounding is a `reduce_precision` in float32: where XLA may keep excess precision (on GPU
  it may drop a float32 -> bfloat16 -> float32 round trip), a cast alone could leave the norms
  those of the unrounded rows, so that d(x, x) != 0 (the GPU error this fixed: BENCHMARKS.md).
  """
  scaled = x.astype(jnp.float32) * _exp2(-exponent)
  if dtype == jnp.bfloat16:
    scaled = lax.reduce_precision(scaled, exponent_bits=8, mantissa_bits=7)
  return scaled.astype(dtype), jnp.sum(jnp.square(scaled), axis=-1)


def dot(x: jax.Array, y: jax.Array, subscripts: str) -> jax.Array:
  """Float32-accumulated einsum; full float32 precision for float32 inputs (no TF32)."""
  precision = lax.Precision.HIGHEST if x.dtype == jnp.float32 else lax.Precision.DEFAULT
  return jnp.einsum(subscripts, x, y, precision=precision, preferred_element_type=jnp.float32)


def unscale(squared: jax.Array, exponent: jax.Array) -> jax.Array:
  """Squared distances of rescaled embeddings back to the original units (inf on overflow)."""
  scale = _exp2(exponent)
  return squared * scale * scale


def distance_from_squared(squared_distance: jax.Array) -> jax.Array:
  """1 - 2 / (1 + exp(d2)) = tanh(d2 / 2): in [0, 1], 1.0 for d2 = inf, never nan for d2 >= 0."""
  return jnp.tanh(0.5 * squared_distance)


def pairwise_distance(x: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *,
                      dtype: DTypeLike = jnp.float32) -> jax.Array:
  """FEELVOS distance between all rows of x [N, C] and y [M, C] -> [N, M] float32 in [0, 1]."""
  return distance_from_squared(pairwise_squared_distance(x, y, dtype=dtype))


def pairwise_squared_distance(x: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *,
                              dtype: DTypeLike = jnp.float32) -> jax.Array:
  """||x_n - y_m||^2 for all rows of x [N, C] and y [M, C] -> [N, M] float32 (>= 0, inf only on
  float32 overflow), with the rescaling and rounding of every matching function."""
  x, y = jnp.asarray(x), jnp.asarray(y)
  if x.ndim != 2 or y.ndim != 2:
    raise ValueError(f"x and y must be [N, C] and [M, C], got shapes {x.shape} and {y.shape}.")
  check_channels("x", x, "y", y)
  return _pairwise_squared_distance(x, y, dtype=matmul_dtype(dtype))


@functools.partial(jax.jit, static_argnames=("dtype",))
def _pairwise_squared_distance(x: jax.Array, y: jax.Array, *, dtype: jnp.dtype) -> jax.Array:
  exponent = scale_exponent(x, y)
  x_scaled, x_sq = rescale(x, exponent, dtype)
  y_scaled, y_sq = rescale(y, exponent, dtype)
  squared = x_sq[:, None] + y_sq[None, :] - 2.0 * dot(x_scaled, y_scaled, "nc,mc->nm")
  return unscale(jnp.maximum(squared, 0.0), exponent)


def valid_labels(labels: jax.Array, num_objects: int) -> jax.Array:
  """Labels as int32 with -1 wherever they must never match (ignore or out of range)."""
  labels = labels.astype(jnp.int32)
  return jnp.where((labels >= 0) & (labels < num_objects), labels, -1)


