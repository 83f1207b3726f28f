"""Tests of the depthwise and pointwise convolutions of feelvos_jax.models.layers.

`depthwise_conv_same` runs `depthwise_conv_shifted` on CPU and XLA's grouped convolution
(`depthwise_conv_native`) elsewhere; both are checked against a NumPy loop written from the
formula out[b, y, x, c] = sum_ij pad(in)[b, y*s + i*r, x*s + j*r, c] * kernel[i, j, 0, c]
(pad: (k_eff - 1) // 2 before, the rest after), and the shifted form's custom gradients
against the native convolution's autodiff.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from feelvos_jax.models import layers

# (input shape [B, H, W, C], kernel side, stride, rate): odd and even sides and kernels.
CASES = [
    pytest.param((2, 9, 10, 3), 7, 1, 1, marks=pytest.mark.slow),  # 7x7: the costly compile.
    ((1, 8, 7, 3), 3, 2, 1),
    ((2, 11, 6, 4), 3, 1, 2),
    ((1, 9, 9, 3), 3, 2, 2),
    ((1, 6, 5, 2), 4, 1, 1),
    ((1, 7, 8, 2), 4, 2, 1),
    ((1, 5, 5, 2), 1, 2, 1),
]


def numpy_depthwise(x: np.ndarray, kernel: np.ndarray, stride: int, rate: int) -> np.ndarray:
  """The formula of the module docstring, one loop per output element and tap."""
  batch, height, width, channels = x.shape
  k = kernel.shape[0]
  total = (k - 1) * rate
  before = total // 2
  padded = np.zeros((batch, height + total, width + total, channels), np.float64)
  padded[:, before:before + height, before:before + width] = x
  out_h, out_w = -(-height // stride), -(-width // stride)
  out = np.zeros((batch, out_h, out_w, channels), np.float64)
  for b in range(batch):
    for y in range(out_h):
      for x_ in range(out_w):
        for c in range(channels):
          for i in range(k):
            for j in range(k):
              out[b, y, x_, c] += (padded[b, y * stride + i * rate, x_ * stride + j * rate, c]
                                   * kernel[i, j, 0, c])
  return out


def _inputs(shape, k, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape).astype(np.float32)
  kernel = rng.normal(size=(k, k, 1, shape[-1])).astype(np.float32)
  return x, kernel, jnp.asarray(x, dtype), jnp.asarray(kernel, dtype)


@pytest.mark.parametrize("shape,k,stride,rate", CASES)
def test_forms_equal_the_numpy_loop(shape, k, stride, rate):
  x_np, kernel_np, x, kernel = _inputs(shape, k)
  expected = numpy_depthwise(x_np, kernel_np, stride, rate)
  for function in (layers.depthwise_conv_shifted, layers.depthwise_conv_native):
    np.testing.assert_allclose(function(x, kernel, stride, rate), expected, rtol=1e-5,
                               atol=1e-5, err_msg=function.__name__)
  same = jax.jit(lambda x, kernel: layers.depthwise_conv_same(x, kernel, stride=stride,
                                                              rate=rate))
  np.testing.assert_allclose(same(x, kernel), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,k,stride,rate", CASES)
def test_gradients_equal_the_native_convolution(shape, k, stride, rate):
  _, _, x, kernel = _inputs(shape, k, seed=1)
  weights = jnp.asarray(
      np.random.default_rng(2).normal(size=(shape[0], -(-shape[1] // stride),
                                            -(-shape[2] // stride), shape[3])), jnp.float32)

  def loss(function):
    return lambda x, kernel: jnp.sum(jnp.sin(function(x, kernel, stride, rate)) * weights)

  expected = jax.grad(loss(layers.depthwise_conv_native), argnums=(0, 1))(x, kernel)
  # On CPU depthwise_conv_same differentiates depthwise_conv_shifted's custom VJP.
  got = jax.jit(jax.grad(
      loss(lambda x, kernel, s, r: layers.depthwise_conv_same(x, kernel, stride=s, rate=r)),
      argnums=(0, 1)))(x, kernel)
  for name, value, reference in zip(("d/dx", "d/dkernel"), got, expected):
    assert value.shape == reference.shape, name
    np.testing.assert_allclose(value, reference, rtol=1e-4, atol=1e-4, err_msg=name)


def test_numpy_gradient_of_the_kernel():
  """d sum(out * w) / d kernel[i, j, 0, c] = sum pad(x)[tap (i, j)] * w: from the formula."""
  shape, k, stride, rate = (2, 7, 6, 3), 3, 2, 1
  x_np, _, x, kernel = _inputs(shape, k, seed=3)
  w = np.random.default_rng(4).normal(size=(2, 4, 3, 3)).astype(np.float32)
  got = jax.grad(lambda kernel: jnp.sum(
      layers.depthwise_conv_shifted(x, kernel, stride, rate) * w))(kernel)
  expected = np.zeros((k, k, 1, shape[-1]))
  for i in range(k):
    for j in range(k):
      tap = np.zeros((k, k, 1, shape[-1]), np.float32)
      tap[i, j, 0] = 1.0
      expected[i, j, 0] = np.sum(numpy_depthwise(x_np, tap, stride, rate) * w, axis=(0, 1, 2))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_within_tolerance():
  shape, k = (2, 10, 9, 6), 7
  _, _, x, kernel = _inputs(shape, k, seed=5, dtype=jnp.bfloat16)
  # The reference takes the bf16-rounded inputs, so only the sum's rounding differs.
  expected = numpy_depthwise(np.asarray(x, np.float32), np.asarray(kernel, np.float32), 1, 1)
  out = jax.jit(lambda x, kernel: layers.depthwise_conv_same(x, kernel))(x, kernel)
  assert out.dtype == jnp.bfloat16
  scale = np.abs(expected).max()
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=1e-2 * scale)
  grads = jax.jit(jax.grad(lambda x, kernel: jnp.sum(
      layers.depthwise_conv_same(x, kernel).astype(jnp.float32) ** 2), argnums=(0, 1)))(
          x, kernel)
  reference = jax.grad(lambda x, kernel: jnp.sum(layers.depthwise_conv_native(x, kernel) ** 2),
                       argnums=(0, 1))(x.astype(jnp.float32), kernel.astype(jnp.float32))
  for value, expected_grad in zip(grads, reference):
    assert value.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(value, np.float32), expected_grad,
                               atol=2e-2 * np.abs(expected_grad).max())


def test_cpu_lowering_has_no_grouped_convolution_and_export_keeps_both():
  x = jnp.zeros((1, 8, 8, 4))
  kernel = jnp.zeros((3, 3, 1, 4))
  same = lambda x, kernel: layers.depthwise_conv_same(x, kernel)
  cpu_text = jax.jit(same).lower(x, kernel).as_text()
  assert "convolution" not in cpu_text
  exported = jax.export.export(jax.jit(same), platforms=("cpu", "cuda"))(x, kernel)
  assert "convolution" in exported.mlir_module()
  np.testing.assert_array_equal(exported.call(x, kernel), same(x, kernel))


def test_depthwise_module_matches_nn_conv_parameters():
  """`conv2d_same(depthwise_channels=C)` keeps nn.Conv's parameter names, shapes, init."""
  x = jnp.asarray(np.random.default_rng(6).normal(size=(1, 9, 8, 4)), jnp.float32)
  module = layers.conv2d_same(4, 3, stride=2, rate=1, use_bias=True, depthwise_channels=4)
  reference = nn.Conv(4, (3, 3), strides=2, padding=(layers.same_padding(3),) * 2,
                      use_bias=True, feature_group_count=4)
  key = jax.random.PRNGKey(0)
  variables = module.init(key, x)
  reference_variables = reference.init(key, x)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, reference_variables)
  np.testing.assert_array_equal(variables["params"]["kernel"],
                                reference_variables["params"]["kernel"])
  variables = {"params": {"kernel": variables["params"]["kernel"],
                          "bias": jnp.arange(4.0)}}
  np.testing.assert_allclose(module.apply(variables, x), reference.apply(variables, x),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,stride,use_bias", [((2, 9, 8, 5), 1, True),
                                                  ((1, 9, 8, 5), 2, False),
                                                  ((1, 7, 10, 3), 2, True)])
def test_pointwise_module_matches_nn_conv(shape, stride, use_bias):
  """`conv2d_same(features, 1)` is a `PointwiseConv` with nn.Conv's parameter names, shapes
  and init, and its outputs (odd sides at stride 2: pixels 0, 2, 4, ...) and gradients."""
  x = jnp.asarray(np.random.default_rng(7).normal(size=shape), jnp.float32)
  module = layers.conv2d_same(6, 1, stride=stride, use_bias=use_bias, name="conv")
  assert isinstance(module, layers.PointwiseConv)
  reference = nn.Conv(6, (1, 1), strides=stride, padding=((0, 0), (0, 0)), use_bias=use_bias)
  key = jax.random.PRNGKey(1)
  variables = module.init(key, x)
  reference_variables = reference.init(key, x)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, reference_variables)
  np.testing.assert_array_equal(variables["params"]["kernel"],
                                reference_variables["params"]["kernel"])
  if use_bias:
    variables = {"params": dict(variables["params"], bias=jnp.arange(6.0))}
  got = module.apply(variables, x)
  assert got.shape == (shape[0], -(-shape[1] // stride), -(-shape[2] // stride), 6)
  np.testing.assert_allclose(got, reference.apply(variables, x), rtol=1e-5, atol=1e-5)
  loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))
  grads = jax.grad(loss(module), argnums=(0, 1))(variables, x)
  reference_grads = jax.grad(loss(reference), argnums=(0, 1))(variables, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads,
               reference_grads)


@pytest.mark.parametrize("shape,stride", [((2, 9, 8, 5), 1), ((1, 9, 8, 5), 2), ((1, 7, 10, 3), 3)])
def test_pointwise_forms_match_numpy(shape, stride):
  """Both forms `pointwise_conv` picks from (matmul on CPU, XLA's convolution elsewhere) equal
  out[b, i, j] = x[b, s i, s j] @ kernel, written as loops, at odd sides."""
  rng = np.random.default_rng(11)
  x = rng.normal(size=shape).astype(np.float32)
  kernel = rng.normal(size=(1, 1, shape[-1], 4)).astype(np.float32)
  out_h, out_w = -(-shape[1] // stride), -(-shape[2] // stride)
  expected = np.zeros((shape[0], out_h, out_w, 4), np.float32)
  for b in range(shape[0]):
    for i in range(out_h):
      for j in range(out_w):
        expected[b, i, j] = x[b, stride * i, stride * j] @ kernel[0, 0]
  for form in (layers.pointwise_conv_matmul, layers.pointwise_conv_native, layers.pointwise_conv):
    np.testing.assert_allclose(form(jnp.asarray(x), jnp.asarray(kernel), stride=stride),
                               expected, rtol=1e-5, atol=1e-5)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match=r"kernel \[1, 1, C, F\]"):
    layers.pointwise_conv(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 1, 2, 5)))
  with pytest.raises(ValueError, match="stride must be >= 1"):
    layers.pointwise_conv(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 1, 3, 5)), stride=0)
  with pytest.raises(ValueError, match=r"kernel \[k, k, 1, C\]"):
    layers.depthwise_conv_same(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 1, 2)))
  with pytest.raises(ValueError, match="stride and rate"):
    layers.depthwise_conv_same(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 1, 3)), stride=0)
  with pytest.raises(ValueError, match="depthwise_channels=3"):
    layers.conv2d_same(4, 3, depthwise_channels=3, name="conv")
