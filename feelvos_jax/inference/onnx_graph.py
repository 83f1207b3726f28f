"""JAX functions as ONNX models: the jaxpr rewrite that jax2onnx needs, and the conversion.

`to_onnx(fn, example_args)` traces `fn` (weights closed over become constants of the model),
rewrites its jaxpr into the primitives jax2onnx converts, and returns the `onnx.ModelProto`.
The rewrite (`resolved`):

- `lax.platform_dependent` picks its branch when a computation is lowered; ONNX has no such
  choice, so the `default` branch (XLA's convolutions and the wide matmul of global matching,
  which are ONNX `Conv` with groups and `MatMul`) is inlined.
- `jit`, `custom_jvp_call`, `custom_vjp_call` and `checkpoint` are inlined (inference only:
  no derivative is taken), and every `scan` is unrolled (its body rewritten per iteration).
- A scatter or gather with a batching dimension of size 1 (from a `vmap` over a batch of one
  video) runs as the same scatter or gather without it: jax2onnx converts them without
  batching dimensions only.
- Shifts of signed integers by constants (`jnp.frexp`, `ldexp`-style exponent arithmetic) are
  products and floor divisions (ONNX shifts unsigned integers only), and equations of
  constants are folded.
- A sort's later keys that hold one constant value are dropped (ties stay ties).
- `lt_to` (the total order of `jnp.searchsorted`) on integers is `lt`, and a `dynamic_slice`
  of the whole operand is the operand (jax2onnx fails on both; `vmap` turns such a slice into
  a gather of the whole operand, which is the operand too); at constant start indices (the
  rows of the unrolled local-matching scan) both are static slices, as jax2onnx's gather
  emitted a graph that onnxruntime failed to run.

jax2onnx is imported only by `to_onnx`. Why jax2onnx and not jax2tf + tf2onnx, and what each
failed on: docs/inference.md ("ONNX").
"""
import logging as std_logging
from typing import Any, Callable, Sequence

import jax
from jax import lax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np

OPSET = 26
"""ONNX opset of the exported models: 26 for `BitCast` (the power-of-two rescaling of matching;
onnxruntime 1.32 runs it)."""


def _is_constant(value: Any) -> bool:
  """Whether `value` is known now (an array), not a value of the graph being traced."""
  return not isinstance(value, jax.core.Tracer)


def _default_branch(platforms: Sequence[Any]) -> int:
  """Index of the branch `resolved` keeps: the default one (None), else the one for "cpu"."""
  for index, names in enumerate(platforms):
    if names is None:
      return index
  for index, names in enumerate(platforms):
    if "cpu" in names:
      return index
  raise NotImplementedError(f"lax.platform_dependent without a default or cpu branch: "
                            f"{platforms}")


def _check_leading_batch(eqn: Any, operand: Any, operand_batching_dims: Sequence[int],
                         indices_batching_dims: Sequence[int], window_dims: Sequence[int]) -> None:
  """NotImplementedError unless the batching dimensions are a leading batch of one."""
  if (tuple(operand_batching_dims) != (0,) or tuple(indices_batching_dims) != (0,)
      or operand.shape[0] != 1 or 0 in window_dims):
    raise NotImplementedError(f"{eqn.primitive.name} with batching dimensions "
                              f"{tuple(operand_batching_dims)} of operand shape "
                              f"{operand.shape}: only a leading batch of one is rewritten")


def _unbatched_scatter(eqn: Any, operand: Any, indices: Any, updates: Any) -> Any:
  """`eqn`'s scatter of one batch element: batching dimension 0 of size 1 removed."""
  numbers = eqn.params["dimension_numbers"]
  _check_leading_batch(eqn, operand, numbers.operand_batching_dims,
                       numbers.scatter_indices_batching_dims, numbers.update_window_dims)
  unbatched = lax.ScatterDimensionNumbers(
      update_window_dims=tuple(d - 1 for d in numbers.update_window_dims),
      inserted_window_dims=tuple(d - 1 for d in numbers.inserted_window_dims),
      scatter_dims_to_operand_dims=tuple(d - 1 for d in numbers.scatter_dims_to_operand_dims))
  params = dict(eqn.params, dimension_numbers=unbatched)
  return eqn.primitive.bind(operand[0], indices[0], updates[0], **params)[None]


def _unbatched_gather(eqn: Any, operand: Any, indices: Any) -> Any:
  """`eqn`'s gather of one batch element: batching dimension 0 of size 1 removed."""
  numbers = eqn.params["dimension_numbers"]
  _check_leading_batch(eqn, operand, numbers.operand_batching_dims,
                       numbers.start_indices_batching_dims, numbers.offset_dims)
  unbatched = lax.GatherDimensionNumbers(
      offset_dims=tuple(d - 1 for d in numbers.offset_dims),
      collapsed_slice_dims=tuple(d - 1 for d in numbers.collapsed_slice_dims),
      start_index_map=tuple(d - 1 for d in numbers.start_index_map))
  params = dict(eqn.params, dimension_numbers=unbatched,
                slice_sizes=tuple(eqn.params["slice_sizes"][1:]))
  return eqn.primitive.bind(operand[0], indices[0], **params)[None]


def _whole_slice(eqn: Any, operand: Any) -> bool:
  """Whether `eqn` (a dynamic_slice or gather) slices out its whole operand at clamped start
  indices, i.e. returns the operand (`vmap` turns a `dynamic_slice` into such a gather)."""
  if tuple(eqn.params["slice_sizes"]) != tuple(operand.shape):
    return False
  if eqn.primitive.name == "dynamic_slice":
    return True
  numbers = eqn.params["dimension_numbers"]
  return (tuple(numbers.offset_dims) == tuple(range(len(operand.shape)))
          and eqn.params["mode"] == lax.GatherScatterMode.CLIP)


def _constant_slice(eqn: Any, operand: Any, indices: Any) -> Any:
  """`eqn`, a `dynamic_slice` or a gather of one window (what `vmap` makes of a dynamic_slice),
  at constant start indices: the static slice, its starts clamped into the operand as both
  clamp them. None when `eqn` is not such a slice."""
  sizes = tuple(eqn.params["slice_sizes"])
  if eqn.primitive.name == "dynamic_slice":
    dims, starts = range(operand.ndim), [int(np.asarray(i)) for i in indices]
  else:
    numbers = eqn.params["dimension_numbers"]
    if (tuple(numbers.offset_dims) != tuple(range(operand.ndim)) or numbers.collapsed_slice_dims
        or numbers.operand_batching_dims or np.ndim(indices) != 1
        or eqn.params["mode"] == lax.GatherScatterMode.FILL_OR_DROP):
      return None
    dims, starts = numbers.start_index_map, np.asarray(indices).tolist()
  begin = [0] * operand.ndim
  for dim, start in zip(dims, starts):
    begin[dim] = min(max(start, 0), operand.shape[dim] - sizes[dim])
  return lax.slice(operand, begin, [b + n for b, n in zip(begin, sizes)])


def _row(array: Any, index: int) -> Any:
  """array[index], computed now when `array` is a constant (it stays one)."""
  if _is_constant(array):
    with jax.ensure_compile_time_eval():
      return array[index]
  return array[index]


def _scan(eqn: Any, values: list[Any]) -> list[Any]:
  """`eqn`'s scan unrolled: its rewritten body once per iteration, the per-iteration outputs
  stacked. onnxruntime failed running jax2onnx's `Loop` of the local-matching rows (a reshape
  inside it), and the loops here are short (rows of 8 stride-4 pixels, query chunks)."""
  params = eqn.params
  num_consts, num_carry = params["num_consts"], params["num_carry"]
  consts, carry = values[:num_consts], values[num_consts:num_consts + num_carry]
  xs = values[num_consts + num_carry:]
  steps = range(params["length"])
  outputs = {}
  for index in reversed(steps) if params["reverse"] else steps:
    out = resolved_call(params["jaxpr"], *consts, *carry, *[_row(x, index) for x in xs])
    carry, outputs[index] = out[:num_carry], out[num_carry:]
  ys = [jnp.stack([outputs[index][k] for index in steps])
        for k in range(len(eqn.outvars) - num_carry)]
  return list(carry) + ys


def _shift(name: str, value: Any, amount: Any) -> Any:
  """An integer shift by a constant amount as arithmetic (ONNX `BitShift` takes unsigned
  integers only): `shift_left` a wrapping product, `shift_right_arithmetic` a floor division."""
  factor = np.left_shift(np.ones((), value.dtype), np.asarray(amount, value.dtype))
  if name == "shift_left":
    return lax.mul(value, jnp.broadcast_to(factor, value.shape))
  return jnp.floor_divide(value, factor)


def _sort(eqn: Any, values: list[Any]) -> list[Any]:
  """`eqn`'s sort, made stable, without its later keys that are one constant value (ties there
  are ties in the key before; a stable order is one an unstable sort may give): jax2onnx
  sorts on several keys through a TopK that onnxruntime lacks for unsigned keys."""
  params = eqn.params
  num_keys = params["num_keys"]
  dropped = [index for index in range(1, num_keys)
             if _is_constant(values[index]) and np.unique(np.asarray(values[index])).size <= 1]
  kept = [index for index in range(len(values)) if index not in dropped]
  sorted_values = lax.sort_p.bind(*[values[index] for index in kept],
                                  **dict(params, num_keys=num_keys - len(dropped), is_stable=True))
  out = dict(zip(kept, sorted_values))
  return [out[index] if index in out else values[index] for index in range(len(values))]


def _equation(eqn: Any, values: list[Any]) -> list[Any]:
  """The outputs of one equation under the rewrite of the module docstring."""
  name = eqn.primitive.name
  params = eqn.params
  if name == "platform_index":
    return [np.int32(_default_branch(params["platforms"]))]
  if (all(_is_constant(value) for value in values)
      and not list(jax_core.jaxprs_in_params(params)) and not eqn.effects):
    with jax.ensure_compile_time_eval():  # Constants fold: no node for them in the graph.
      out = eqn.primitive.bind(*values, **params)
    return list(out) if eqn.primitive.multiple_results else [out]
  if name == "cond" and _is_constant(values[0]):
    return resolved_call(params["branches"][int(values[0])], *values[1:])
  if name in ("jit", "pjit"):
    return resolved_call(params["jaxpr"], *values)
  if name in ("custom_jvp_call", "custom_vjp_call"):
    return resolved_call(params["call_jaxpr"], *values)
  if name in ("checkpoint", "remat2"):
    return _evaluate(params["jaxpr"], [], values)
  if name == "scan":
    return _scan(eqn, values)
  if name in ("dynamic_slice", "gather") and _whole_slice(eqn, values[0]):
    return [values[0]]
  if name in ("dynamic_slice", "gather") and all(_is_constant(v) for v in values[1:]):
    sliced = _constant_slice(eqn, values[0], values[1:] if name == "dynamic_slice" else values[1])
    if sliced is not None:
      return [sliced]
  if (name in ("shift_left", "shift_right_arithmetic") and _is_constant(values[1])
      and np.issubdtype(values[0].dtype, np.signedinteger)):
    return [_shift(name, *values)]
  if name == "sort" and params["num_keys"] > 1:
    return _sort(eqn, values)
  if name == "lt_to" and all(np.issubdtype(value.dtype, np.integer) for value in values):
    return [lax.lt(*values)]
  if name.startswith("scatter") and len(params["dimension_numbers"].operand_batching_dims):
    return [_unbatched_scatter(eqn, *values)]
  if name == "gather" and len(params["dimension_numbers"].operand_batching_dims):
    return [_unbatched_gather(eqn, *values)]
  out = eqn.primitive.bind(*values, **params)
  return list(out) if eqn.primitive.multiple_results else [out]


def _evaluate(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
  environment = {}

  def read(var: Any) -> Any:
    return var.val if isinstance(var, jax_core.Literal) else environment[var]

  environment.update(zip(jaxpr.constvars, consts))
  environment.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    outputs = _equation(eqn, [read(var) for var in eqn.invars])
    for var, value in zip(eqn.outvars, outputs):
      if not isinstance(var, jax_core.DropVar):
        environment[var] = value
  return [read(var) for var in jaxpr.outvars]


def resolved_call(closed_jaxpr: Any, *args: Any) -> list[Any]:
  """Evaluates `closed_jaxpr` on `args` (traced or concrete) under the rewrite of the module
  docstring: the flat outputs."""
  return _evaluate(closed_jaxpr.jaxpr, closed_jaxpr.consts, args)


def resolved(fn: Callable[..., Any], example_args: Sequence[Any]) -> Callable[..., list[Any]]:
  """`fn` (flat array arguments, any pytree of outputs) as a function of the same flat
  arguments returning its flat outputs, computed by the rewritten jaxpr."""
  closed = jax.make_jaxpr(fn)(*example_args)

  def call(*args: Any) -> list[Any]:
    return resolved_call(closed, *args)

  return call


def to_onnx(fn: Callable[..., Any], example_args: Sequence[jax.ShapeDtypeStruct], *,
            name: str, input_names: Sequence[str], output_names: Sequence[str]) -> Any:
  """The ONNX model of `fn` for the shapes and dtypes of `example_args`.

  Args:
    fn: a function of flat arrays; its flat outputs become the model's outputs.
    example_args: one ShapeDtypeStruct per argument.
    name: the model's graph name.
    input_names, output_names: the model's input and output names, in order.

  Returns:
    onnx.ModelProto (opset OPSET).

  Raises:
    NotImplementedError: a primitive jax2onnx cannot convert (its message names it).
  """
  # jax2onnx logs a traceback per example plugin whose library (equinox, dm-pix) is absent,
  # and onnx_ir a warning per constant whose type it leaves to the ONNX graph.
  for name in ("jax2onnx.plugins.plugin_system", "onnx_ir.serde"):
    std_logging.getLogger(name).setLevel(std_logging.ERROR)
  import jax2onnx  # pylint: disable=g-import-not-at-top (only the export needs it)
  return jax2onnx.to_onnx(resolved(fn, example_args), list(example_args), model_name=name,
                          opset=OPSET, input_names=list(input_names),
                          output_names=list(output_names))
