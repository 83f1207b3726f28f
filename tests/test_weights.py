"""Tests of feelvos_jax.weights: checkpoints written here, loaded into real model trees.

The model trees come from `jax.eval_shape(model.init)` (nothing compiled) filled with zeros;
the expected variable names are written out independently from DeepLab's and torchvision's
layouts, so a wrong name map fails here.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from configs import common
from configs import ytvis
from feelvos_jax.models import build_model
from feelvos_jax.training import sharding
from feelvos_jax.training import weights
from feelvos_jax.vis import train as vis_train

HEAD_LAYERS = 2
BN_TF = ("gamma", "beta", "moving_mean", "moving_variance")


def zero_variables(backbone):
  """(params, batch_stats) of a FEELVOS with `backbone`, zeros in the real shapes."""
  config = common.get_base_config().model
  config.update(dict(backbone=backbone, window=1, max_objects=1, head_num_layers=HEAD_LAYERS))
  side = 9  # Stride 4 of 33x33 frames.
  embedding = jax.ShapeDtypeStruct((1, side, side, config.embedding_dim), jnp.float32)
  labels = jax.ShapeDtypeStruct((1, side, side), jnp.int32)
  args = (jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.uint8), embedding, labels, embedding,
          labels, jax.ShapeDtypeStruct((1, side, side, 2), jnp.float32),
          jax.ShapeDtypeStruct((1,), jnp.int32))
  model = build_model(config)
  abstract = jax.eval_shape(model.init, {"params": jax.random.key(0)}, *args)
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  return variables["params"], variables["batch_stats"]


def deeplab_feelvos_tf_names():
  """Every variable of a FEELVOS checkpoint (DeepLab Xception-65 + ASPP + decoder + heads)."""
  names = []

  def conv_bn(scope, depthwise=False):
    names.append(f"{scope}/{'depthwise_weights' if depthwise else 'weights'}")
    names.extend(f"{scope}/BatchNorm/{variable}" for variable in BN_TF)

  def separable(scope):
    conv_bn(f"{scope}_depthwise", depthwise=True)
    conv_bn(f"{scope}_pointwise")

  conv_bn("xception_65/entry_flow/conv1_1")
  conv_bn("xception_65/entry_flow/conv1_2")
  for block, units, shortcut in [("entry_flow/block1", 1, True), ("entry_flow/block2", 1, True),
                                 ("entry_flow/block3", 1, True),
                                 ("middle_flow/block1", 16, False),
                                 ("exit_flow/block1", 1, True), ("exit_flow/block2", 1, False)]:
    for unit in range(1, units + 1):
      module = f"xception_65/{block}/unit_{unit}/xception_module"
      for index in (1, 2, 3):
        separable(f"{module}/separable_conv{index}")
      if shortcut:
        conv_bn(f"{module}/shortcut")
  conv_bn("image_pooling")
  conv_bn("aspp0")
  for index in (1, 2, 3):
    separable(f"aspp{index}")
  conv_bn("concat_projection")
  conv_bn("decoder/feature_projection0")
  separable("decoder/decoder_conv0")
  separable("decoder/decoder_conv1")
  heads = ["embedding/split_separable_conv2d"] + [
      f"embedding_seg/split_separable_conv2d_{n}" for n in range(HEAD_LAYERS)]
  for scope in heads:
    names += [f"{scope}_depthwise/depthwise_weights", f"{scope}_depthwise/biases",
              f"{scope}_pointwise/weights", f"{scope}_pointwise/biases"]
  return names + ["logits/semantic/weights", "logits/semantic/biases"]


def write_tf_checkpoint(prefix, arrays):
  """A TF (V2) checkpoint holding `arrays` under their names, as TF1 savers write them."""
  tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=list(arrays),
                    shape_and_slices=[""] * len(arrays),
                    tensors=[tf.constant(value) for value in arrays.values()])
  return str(prefix)


def leaf(tree, path):
  for key in path.split("/"):
    tree = tree[key]
  return np.asarray(tree)


@pytest.fixture(scope="module")
def xception_variables():
  return zero_variables("xception65")


def test_tf_checkpoint_fills_every_variable_in_place(xception_variables, tmp_path):
  params, batch_stats = xception_variables
  # TF-layout shapes of the model's variables, through the module's own name map ...
  tf_shapes = {}
  for collection, tree in (("params", params), ("batch_stats", batch_stats)):
    for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
      keys = tuple(key.key for key in path)
      name, depthwise = weights.xception_tf_name(collection, keys)
      tf_shapes[name] = (value.shape[:2] + (value.shape[3], 1)) if depthwise else value.shape
  # ... must name exactly the variables of DeepLab's layout.
  expected = deeplab_feelvos_tf_names()
  assert len(expected) == 660 + 70 + 4 * (1 + HEAD_LAYERS) + 2
  assert sorted(tf_shapes) == sorted(expected)
  rng = np.random.default_rng(0)
  arrays = {name: rng.standard_normal(shape, dtype=np.float32)
            for name, shape in tf_shapes.items()}
  arrays["global_step"] = np.array(1000, np.int64)
  arrays["aspp0/weights/Momentum"] = np.zeros(tf_shapes["aspp0/weights"], np.float32)
  prefix = write_tf_checkpoint(tmp_path / "model.ckpt", arrays)

  new_params, new_batch_stats, report = weights.load_pretrained(
      params, batch_stats, prefix, "xception65")
  assert report.missing == () and report.unexpected == () and report.mismatched == ()
  assert len(report.loaded) == len(expected)
  trees = {"params": new_params, "batch_stats": new_batch_stats}
  transposed = lambda a: np.transpose(a, (0, 1, 3, 2))
  for name, where, transform in [
      ("xception_65/entry_flow/conv1_1/weights",
       "params/backbone/entry_flow_conv1_1/conv/kernel", None),
      ("xception_65/entry_flow/conv1_2/BatchNorm/moving_mean",
       "batch_stats/backbone/entry_flow_conv1_2/bn/mean", None),
      ("xception_65/middle_flow/block1/unit_1/xception_module/separable_conv1_depthwise/"
       "depthwise_weights",
       "params/backbone/middle_flow_block1_unit_1/separable_conv1/depthwise/conv/kernel",
       transposed),
      ("xception_65/middle_flow/block1/unit_16/xception_module/separable_conv3_pointwise/"
       "BatchNorm/moving_variance",
       "batch_stats/backbone/middle_flow_block1_unit_16/separable_conv3/pointwise/bn/var", None),
      ("xception_65/exit_flow/block1/unit_1/xception_module/shortcut/BatchNorm/gamma",
       "params/backbone/exit_flow_block1_unit_1/shortcut/bn/scale", None),
      ("xception_65/exit_flow/block2/unit_1/xception_module/separable_conv3_pointwise/weights",
       "params/backbone/exit_flow_block2_unit_1/separable_conv3/pointwise/conv/kernel", None),
      ("image_pooling/weights", "params/deeplab/aspp/image_pooling/conv/kernel", None),
      ("aspp0/BatchNorm/beta", "params/deeplab/aspp/aspp0/bn/bias", None),
      ("aspp2_depthwise/depthwise_weights", "params/deeplab/aspp/aspp2/depthwise/conv/kernel",
       transposed),
      ("concat_projection/weights", "params/deeplab/aspp/concat_projection/conv/kernel", None),
      ("decoder/feature_projection0/weights",
       "params/deeplab/decoder/feature_projection0/conv/kernel", None),
      ("decoder/decoder_conv1_depthwise/BatchNorm/moving_mean",
       "batch_stats/deeplab/decoder/decoder_conv1/depthwise/bn/mean", None),
      ("embedding/split_separable_conv2d_depthwise/depthwise_weights",
       "params/embedding/separable_conv/depthwise_kernel", transposed),
      ("embedding/split_separable_conv2d_pointwise/biases",
       "params/embedding/separable_conv/pointwise_bias", None),
      ("embedding_seg/split_separable_conv2d_1_pointwise/weights",
       "params/segmentation_head/layer_1/pointwise_kernel", None),
      ("embedding_seg/split_separable_conv2d_0_depthwise/depthwise_weights",
       "params/segmentation_head/layer_0/depthwise_kernel", transposed),
      ("logits/semantic/biases", "params/segmentation_head/logits/bias", None),
  ]:
    expected_value = arrays[name] if transform is None else transform(arrays[name])
    collection, path = where.split("/", 1)
    np.testing.assert_array_equal(leaf(trees[collection], path), expected_value, err_msg=name)
  # Every leaf was overwritten (the zeros are gone).
  for tree in trees.values():
    assert all(np.any(np.asarray(value) != 0) for value in jax.tree.leaves(tree))


def test_tf_checkpoint_reports_missing_and_unexpected(xception_variables, tmp_path):
  params, batch_stats = xception_variables
  rng = np.random.default_rng(1)
  gamma = rng.standard_normal(256).astype(np.float32)
  prefix = write_tf_checkpoint(tmp_path / "partial.ckpt", {
      "aspp0/BatchNorm/gamma": gamma,
      "xception_65/logits/weights": np.zeros((1, 1, 2048, 1001), np.float32),
      "global_step": np.array(5, np.int64),
      "aspp0/BatchNorm/gamma/ExponentialMovingAverage": gamma})
  new_params, _, report = weights.load_pretrained(params, batch_stats, prefix, "xception65",
                                                  allow_partial=True)
  assert report.loaded == ("aspp0/BatchNorm/gamma",)
  assert report.unexpected == ("xception_65/logits/weights",)
  num_leaves = len(jax.tree.leaves(params)) + len(jax.tree.leaves(batch_stats))
  assert len(report.missing) == num_leaves - 1
  assert "params/backbone/entry_flow_conv1_1/conv/kernel" in report.missing
  assert "batch_stats/deeplab/aspp/aspp0/bn/mean" in report.missing
  np.testing.assert_array_equal(new_params["deeplab"]["aspp"]["aspp0"]["bn"]["scale"], gamma)
  assert "missing" in report.summary() and "xception_65/logits/weights" in report.summary()


def test_shape_mismatch_raises_or_is_reported(xception_variables, tmp_path):
  params, batch_stats = xception_variables
  prefix = write_tf_checkpoint(tmp_path / "wrong.ckpt", {
      "aspp0/weights": np.ones((1, 1, 2048, 7), np.float32),
      "aspp0/BatchNorm/beta": np.ones(256, np.float32)})
  with pytest.raises(ValueError, match=r"aspp0/weights.*\(1, 1, 2048, 7\).*\(1, 1, 2048, 256\)"):
    weights.load_pretrained(params, batch_stats, prefix, "xception65")
  new_params, _, report = weights.load_pretrained(params, batch_stats, prefix, "xception65",
                                                  allow_shape_mismatch=True, allow_partial=True)
  assert report.loaded == ("aspp0/BatchNorm/beta",)
  assert len(report.mismatched) == 1 and report.mismatched[0].startswith("aspp0/weights:")
  assert not np.any(new_params["deeplab"]["aspp"]["aspp0"]["conv"]["kernel"])
  np.testing.assert_array_equal(new_params["deeplab"]["aspp"]["aspp0"]["bn"]["bias"], 1.0)


def torchvision_resnet50_state(rng):
  """A torchvision resnet50 state dict (random values), written out from its layout."""
  state = {}

  def conv(name, outputs, inputs, kernel):
    state[f"{name}.weight"] = rng.standard_normal((outputs, inputs, kernel, kernel),
                                                  dtype=np.float32)

  def batch_norm(name, channels):
    for suffix in ("weight", "bias", "running_mean", "running_var"):
      state[f"{name}.{suffix}"] = rng.standard_normal(channels, dtype=np.float32)
    state[f"{name}.num_batches_tracked"] = np.array(100, np.int64)

  conv("conv1", 64, 3, 7)
  batch_norm("bn1", 64)
  inputs = 64
  for layer, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), 1):
    for block in range(blocks):
      prefix = f"layer{layer}.{block}"
      conv(f"{prefix}.conv1", width, inputs, 1)
      batch_norm(f"{prefix}.bn1", width)
      conv(f"{prefix}.conv2", width, width, 3)
      batch_norm(f"{prefix}.bn2", width)
      conv(f"{prefix}.conv3", 4 * width, width, 1)
      batch_norm(f"{prefix}.bn3", 4 * width)
      if block == 0:
        conv(f"{prefix}.downsample.0", 4 * width, inputs, 1)
        batch_norm(f"{prefix}.downsample.1", 4 * width)
      inputs = 4 * width
  state["fc.weight"] = rng.standard_normal((1000, 2048), dtype=np.float32)
  state["fc.bias"] = rng.standard_normal(1000, dtype=np.float32)
  return state


def test_torchvision_npz_fills_the_resnet_backbone(tmp_path):
  params, batch_stats = zero_variables("resnet50")
  state = torchvision_resnet50_state(np.random.default_rng(2))
  path = str(tmp_path / "resnet50.npz")
  np.savez(path, **state)
  new_params, new_batch_stats, report = weights.load_pretrained(
      params, batch_stats, path, "resnet50")
  assert report.missing == () and report.mismatched == ()
  assert report.unexpected == ("fc.bias", "fc.weight")
  assert len(report.loaded) == len([k for k in state if not k.endswith("num_batches_tracked")
                                    and not k.startswith("fc.")])
  to_flax = lambda a: np.transpose(a, (2, 3, 1, 0))
  backbone, stats = new_params["backbone"], new_batch_stats["backbone"]
  np.testing.assert_array_equal(backbone["conv1"]["kernel"], to_flax(state["conv1.weight"]))
  np.testing.assert_array_equal(backbone["bn1"]["scale"], state["bn1.weight"])
  np.testing.assert_array_equal(stats["bn1"]["var"], state["bn1.running_var"])
  np.testing.assert_array_equal(backbone["layer3_5"]["conv2"]["kernel"],
                                to_flax(state["layer3.5.conv2.weight"]))
  np.testing.assert_array_equal(backbone["layer2_0"]["downsample_0"]["kernel"],
                                to_flax(state["layer2.0.downsample.0.weight"]))
  np.testing.assert_array_equal(backbone["layer4_0"]["downsample_1"]["bias"],
                                state["layer4.0.downsample.1.bias"])
  np.testing.assert_array_equal(stats["layer4_2"]["bn3"]["mean"],
                                state["layer4.2.bn3.running_mean"])
  assert all(np.any(np.asarray(value) != 0) for value in jax.tree.leaves((backbone, stats)))
  # Only the backbone comes from the file.
  assert not np.any(new_params["deeplab"]["aspp"]["aspp0"]["conv"]["kernel"])


def test_bad_backbone_or_file_is_rejected(tmp_path):
  with pytest.raises(ValueError, match=r"config\.model\.backbone='tiny'.*resnet101"):
    weights.load_pretrained({}, {}, str(tmp_path / "x.npz"), "tiny")
  with pytest.raises(ValueError, match=r"config\.model\.pretrained=.*no such file"):
    weights.load_pretrained({}, {}, str(tmp_path / "absent.npz"), "resnet50")
  with pytest.raises(ValueError, match=r"config\.model\.pretrained=.*not a torchvision"):
    weights.load_pretrained({}, {}, str(tmp_path / "model.ckpt"), "resnet101")
  with pytest.raises(ValueError, match=r"config\.model\.pretrained=.*no such checkpoint"):
    weights.load_pretrained({}, {}, str(tmp_path / "model.ckpt"), "xception65")


@pytest.fixture(scope="module")
def resnet_variables():
  return zero_variables("resnet50")


NUM_RESNET50_BACKBONE_VARIABLES = 53 * 5  # 53 convolutions, each followed by a batch norm.


def save_npz(tmp_path, name, state):
  path = str(tmp_path / name)
  np.savez(path, **state)
  return path


def assert_one_line_naming(error, *fragments):
  message = str(error.value)
  assert "\n" not in message, message
  for fragment in fragments:
    assert fragment in message, (fragment, message)


def test_module_prefixed_state_dict_loads_like_the_plain_one(resnet_variables, tmp_path):
  params, batch_stats = resnet_variables
  state = torchvision_resnet50_state(np.random.default_rng(3))
  plain = weights.load_pretrained(params, batch_stats, save_npz(tmp_path, "plain.npz", state),
                                  "resnet50")
  for prefix in ("module.", "_orig_mod.module."):  # DataParallel; torch.compile of it.
    path = save_npz(tmp_path, "wrapped.npz", {prefix + k: v for k, v in state.items()})
    wrapped = weights.load_pretrained(params, batch_stats, path, "resnet50")
    assert wrapped[2] == plain[2]
    assert wrapped[2].backbone_loaded == wrapped[2].backbone_total == (
        NUM_RESNET50_BACKBONE_VARIABLES)
    jax.tree.map(np.testing.assert_array_equal, wrapped[:2], plain[:2])
  both = dict(state, **{"module.conv1.weight": state["conv1.weight"]})
  with pytest.raises(ValueError) as error:
    weights.load_pretrained(params, batch_stats, save_npz(tmp_path, "both.npz", both), "resnet50")
  assert_one_line_naming(error, "both.npz", "'conv1.weight'", "'module.conv1.weight'")


def test_file_matching_nothing_is_refused_unless_partial_is_allowed(resnet_variables, tmp_path):
  params, batch_stats = resnet_variables
  rng = np.random.default_rng(4)
  path = save_npz(tmp_path, "unrelated.npz", {
      "encoder.weight": rng.standard_normal((8, 3, 3, 3), dtype=np.float32),
      "decoder.bias": rng.standard_normal(8, dtype=np.float32)})
  with pytest.raises(ValueError) as error:
    weights.load_pretrained(params, batch_stats, path, "resnet50")
  assert_one_line_naming(error, f"config.model.pretrained={path!r}",
                         f"filled 0 of the {NUM_RESNET50_BACKBONE_VARIABLES} variables",
                         "'conv1.weight'", "'decoder.bias'", "pretrained_allow_partial=True")
  new_params, _, report = weights.load_pretrained(params, batch_stats, path, "resnet50",
                                                  allow_partial=True)
  assert report.loaded == () and report.unexpected == ("decoder.bias", "encoder.weight")
  assert report.summary().startswith(f"loaded 0 of {NUM_RESNET50_BACKBONE_VARIABLES} variables")
  jax.tree.map(np.testing.assert_array_equal, new_params, params)  # Nothing changed.


def test_min_fraction_sets_how_much_of_the_backbone_must_load(resnet_variables, tmp_path):
  params, batch_stats = resnet_variables
  state = torchvision_resnet50_state(np.random.default_rng(5))
  half = {k: v for k, v in state.items() if not k.startswith(("layer3", "layer4"))}
  path = save_npz(tmp_path, "half.npz", half)
  with pytest.raises(ValueError, match=r"filled (\d+) of the 265 .*pretrained_min_fraction=1.0"):
    weights.load_pretrained(params, batch_stats, path, "resnet50")
  _, _, report = weights.load_pretrained(params, batch_stats, path, "resnet50",
                                         min_backbone_fraction=0.3)
  assert 0.3 * 265 <= report.backbone_loaded < 265
  with pytest.raises(ValueError, match="pretrained_min_fraction=0.9"):
    weights.load_pretrained(params, batch_stats, path, "resnet50", min_backbone_fraction=0.9)


@pytest.mark.parametrize("name,value,fragments", [
    ("conv1.weight", np.zeros((64, 3, 7), np.float32),
     ["shape mismatch for conv1.weight: file shape (64, 3, 7) (rank 3)", "(7, 7, 3, 64) (rank 4)"]),
    ("bn1.running_var", np.zeros((64, 1), np.float32), ["bn1.running_var: file shape", "rank 2"]),
    ("layer1.0.conv2.weight", np.full((64, 64, 3, 3), np.nan, np.float32),
     ["'layer1.0.conv2.weight'", "36864 NaN or infinite values"]),
    ("bn1.weight", np.array([np.inf] + [1.0] * 63, np.float32), ["'bn1.weight'", "1 NaN"]),
    ("bn1.bias", np.zeros(64, np.complex64), ["'bn1.bias'", "complex64"]),
    ("layer4.2.bn3.running_mean", np.zeros(2048, np.int64),
     ["'layer4.2.bn3.running_mean'", "int64"]),
])
def test_bad_variable_is_an_error_naming_it(resnet_variables, tmp_path, name, value, fragments):
  params, batch_stats = resnet_variables
  state = torchvision_resnet50_state(np.random.default_rng(6))
  state[name] = value
  path = save_npz(tmp_path, "bad.npz", state)
  with pytest.raises(ValueError) as error:
    weights.load_pretrained(params, batch_stats, path, "resnet50", allow_partial=True)
  assert_one_line_naming(error, f"config.model.pretrained={path!r}", *fragments)


def test_unreadable_files_are_errors_naming_them(resnet_variables, tmp_path):
  params, batch_stats = resnet_variables
  text = tmp_path / "notes.npz"
  text.write_text("not a zip")
  single = tmp_path / "single.npz"
  with open(single, "wb") as f:
    np.save(f, np.zeros(3))
  pickled = save_npz(tmp_path, "pickled.npz", {"conv1.weight": np.array([{}], dtype=object)})
  for path, fragment in ((str(text), "cannot be read as a .npz"),
                         (str(single), "holds one array"),
                         (pickled, "variable 'conv1.weight' cannot be read")):
    with pytest.raises(ValueError) as error:
      weights.load_pretrained(params, batch_stats, path, "resnet50")
    assert_one_line_naming(error, f"config.model.pretrained={path!r}", fragment)


def test_torchvision_npz_fills_the_masktrack_pyramid_before_anything_compiles(tmp_path):
  """configs/ytvis.py with model.pretrained: the torchvision ResNet-50 lands in the pyramid's
  encoder (read from the abstract train state's shapes), FPN and heads keep their values; a
  backbone the file cannot fill is refused naming the key."""
  config = ytvis.get_config()
  model = vis_train.build_model(config)
  _, abstract = vis_train.abstract_train_state(
      config, model, vis_train.create_optimizer(config), sharding.create_mesh(config.mesh))
  state = torchvision_resnet50_state(np.random.default_rng(7))
  config.model.pretrained = str(tmp_path / "resnet50.npz")
  np.savez(config.model.pretrained, **state)
  params, batch_stats = vis_train.read_pretrained(config, abstract)
  to_flax = lambda a: np.transpose(a, (2, 3, 1, 0))
  encoder = params["encoder"]
  np.testing.assert_array_equal(encoder["conv1"]["kernel"], to_flax(state["conv1.weight"]))
  np.testing.assert_array_equal(encoder["layer3_5"]["conv2"]["kernel"],
                                to_flax(state["layer3.5.conv2.weight"]))
  np.testing.assert_array_equal(encoder["layer2_0"]["downsample_1"]["scale"],
                                state["layer2.0.downsample.1.weight"])
  np.testing.assert_array_equal(batch_stats["encoder"]["layer4_2"]["bn3"]["mean"],
                                state["layer4.2.bn3.running_mean"])
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(encoder))
  assert all(isinstance(leaf, jax.ShapeDtypeStruct)
             for leaf in jax.tree.leaves((params["neck"], params["track_head"])))
  config.model.backbone = "tiny"
  with pytest.raises(ValueError, match=r"config\.model\.backbone='tiny'.*'resnet50' or "
                                       r"'resnet101'"):
    vis_train.read_pretrained(config, abstract)
