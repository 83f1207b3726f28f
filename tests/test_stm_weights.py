"""The authors' STM and RDE-VOS checkpoints (PyTorch state dicts saved as .npz) loaded into the
memory models, on state dicts built here with the official parameter names of their code."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from feelvos_jax import models
from feelvos_jax.training import weights

RESNET_BLOCKS = {"res2": (3, 64, 256), "res3": (4, 128, 512), "res4": (6, 256, 1024)}
"""torchvision ResNet-50 layer1..layer3 as STM names them: (blocks, width, output channels)."""


def _resnet(prefix, layer_names):
  """The official names and torch shapes of a ResNet-50 stem and layer1..layer3."""
  entries = {f"{prefix}.conv1.weight": (64, 3, 7, 7)}
  entries.update({f"{prefix}.bn1.{leaf}": (64,) for leaf in
                  ("weight", "bias", "running_mean", "running_var")})
  channels = 64
  for (layer, (blocks, width, out)), name in zip(RESNET_BLOCKS.items(), layer_names):
    for block in range(blocks):
      scope = f"{prefix}.{name}.{block}"
      inputs = channels if block == 0 else out
      convs = {"conv1": (width, inputs, 1, 1), "conv2": (width, width, 3, 3),
               "conv3": (out, width, 1, 1)}
      if block == 0:
        convs["downsample.0"] = (out, inputs, 1, 1)
      for conv, shape in convs.items():
        entries[f"{scope}.{conv}.weight"] = shape
        norm = "downsample.1" if conv == "downsample.0" else "bn" + conv[-1]
        entries.update({f"{scope}.{norm}.{leaf}": (shape[0],) for leaf in
                        ("weight", "bias", "running_mean", "running_var")})
    channels = out
  return entries


def _res_block(prefix, width):
  return {f"{prefix}.conv{i}.{leaf}": (width, width, 3, 3) if leaf == "weight" else (width,)
          for i in (1, 2) for leaf in ("weight", "bias")}


def stm_state_dict_shapes():
  """Every parameter and buffer of the authors' STM (model.py), with torch shapes."""
  entries = {}
  for encoder in ("Encoder_M", "Encoder_Q"):
    entries.update(_resnet(encoder, ("res2", "res3", "res4")))
    entries[f"{encoder}.mean"] = entries[f"{encoder}.std"] = (1, 3, 1, 1)
  entries["Encoder_M.conv1_m.weight"] = entries["Encoder_M.conv1_o.weight"] = (64, 1, 7, 7)
  for kv in ("KV_M_r4", "KV_Q_r4"):
    for name, width in (("Key", 128), ("Value", 512)):
      entries[f"{kv}.{name}.weight"], entries[f"{kv}.{name}.bias"] = (width, 1024, 3, 3), (width,)
  entries["Decoder.convFM.weight"], entries["Decoder.convFM.bias"] = (256, 1024, 3, 3), (256,)
  entries.update(_res_block("Decoder.ResMM", 256))
  for refine, skip in (("RF3", 512), ("RF2", 256)):
    entries[f"Decoder.{refine}.convFS.weight"] = (256, skip, 3, 3)
    entries[f"Decoder.{refine}.convFS.bias"] = (256,)
    entries.update(_res_block(f"Decoder.{refine}.ResFS", 256))
    entries.update(_res_block(f"Decoder.{refine}.ResMM", 256))
  entries["Decoder.pred2.weight"], entries["Decoder.pred2.bias"] = (2, 256, 3, 3), (2,)
  return entries


def _sam(prefix, channels):
  """The authors' SAM (`mem_compress.key_encoder` / `value_encoder`), bn_layer=False."""
  inner, quarter = channels // 2, channels // 4
  entries = {}
  for name in ("theta", "phi.0", "g.0"):
    entries[f"{prefix}.non_local.{name}.weight"] = (inner, channels, 1, 1, 1)
    entries[f"{prefix}.non_local.{name}.bias"] = (inner,)
  entries[f"{prefix}.non_local.W.weight"] = (channels, inner, 1, 1, 1)
  entries[f"{prefix}.non_local.W.bias"] = (channels,)
  entries[f"{prefix}.conv1.aspp1.atrous_conv.weight"] = (quarter, channels, 1, 1, 1)
  for index in (2, 3, 4):
    entries[f"{prefix}.conv1.aspp{index}.atrous_conv.weight"] = (quarter, channels, 1, 3, 3)
  entries[f"{prefix}.conv1.conv1.weight"] = (channels, 4 * quarter, 1, 3, 3)
  return entries


def rde_state_dict_shapes():
  """The authors' RDE_VOS parameters this model takes (key encoder, mem_compress) and a few it
  does not (their ResNet-18 value encoder and decoder), with torch shapes."""
  entries = _resnet("key_encoder", ("res2", "layer2", "layer3"))
  for kind, channels in (("key", 64), ("value", 512)):
    entries.update(_sam(f"mem_compress.{kind}_encoder", channels))
    entries[f"mem_compress.compress_{kind}.weight"] = (channels, channels, 2, 3, 3)
    entries[f"mem_compress.compress_{kind}.bias"] = (channels,)
  entries["key_proj.key_proj.weight"] = (64, 1024, 3, 3)
  entries["value_encoder.conv1.weight"] = (64, 5, 7, 7)
  entries["decoder.pred.weight"] = (1, 256, 3, 3)
  return entries


def _save(path, shapes, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {f"module.{name}": (rng.standard_normal(shape) * 0.01).astype(np.float16)
            for name, shape in shapes.items()}
  np.savez(path, **arrays)
  return {name: arrays[f"module.{name}"] for name in shapes}


def _abstract_variables(head, **changes):
  config = common.get_base_config().model
  config.backbone, config.head, config.max_objects = "resnet50", head, 1
  config.update(changes)
  model = models.build_model(config)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *models.example_inputs(model)))


@pytest.mark.slow
def test_stm_state_dict_fills_every_variable(tmp_path):
  path = str(tmp_path / "stm.npz")
  stored = _save(path, stm_state_dict_shapes())
  variables = _abstract_variables("stm")
  params, batch_stats, report = weights.load_pretrained(
      variables["params"], variables["batch_stats"], path, "resnet50", head="stm")
  assert not report.missing and not report.mismatched
  assert set(report.unexpected) == {"Encoder_M.mean", "Encoder_M.std", "Encoder_Q.mean",
                                    "Encoder_Q.std"}
  assert report.backbone_loaded == report.backbone_total > 0
  np.testing.assert_array_equal(params["decoder"]["pred2"]["kernel"][0, 2, 5, 1],
                                jnp.float32(stored["Decoder.pred2.weight"][1, 5, 0, 2]))
  np.testing.assert_array_equal(
      params["memory_encoder"]["layer2_0"]["downsample_0"]["kernel"][0, 0, 7, 9],
      jnp.float32(stored["Encoder_M.res3.0.downsample.0.weight"][9, 7, 0, 0]))
  np.testing.assert_array_equal(batch_stats["query_encoder"]["layer3_5"]["bn3"]["var"],
                                jnp.float32(stored["Encoder_Q.res4.5.bn3.running_var"]))
  np.testing.assert_array_equal(params["memory_key_value"]["key"]["bias"],
                                jnp.float32(stored["KV_M_r4.Key.bias"]))


@pytest.mark.slow
def test_rde_state_dict_fills_the_key_encoder_and_aggregation(tmp_path):
  path = str(tmp_path / "rde.npz")
  stored = _save(path, rde_state_dict_shapes())
  variables = _abstract_variables("rde", memory_key_dim=64)
  params, _, report = weights.load_pretrained(
      variables["params"], variables["batch_stats"], path, "resnet50", head="rde")
  assert not report.missing and not report.mismatched
  assert set(report.unexpected) == {"key_proj.key_proj.weight", "value_encoder.conv1.weight",
                                    "decoder.pred.weight"}
  np.testing.assert_array_equal(
      params["value_aggregation"]["compress"]["kernel"][1, 2, 0, 3, 4],
      jnp.float32(stored["mem_compress.compress_value.weight"][4, 3, 1, 2, 0]))
  np.testing.assert_array_equal(
      params["key_aggregation"]["non_local"]["phi"]["kernel"][0, 0, 0, 5, 3],
      jnp.float32(stored["mem_compress.key_encoder.non_local.phi.0.weight"][3, 5, 0, 0, 0]))
  np.testing.assert_array_equal(
      params["query_encoder"]["layer1_0"]["conv2"]["kernel"][2, 1, 4, 6],
      jnp.float32(stored["key_encoder.res2.0.conv2.weight"][6, 4, 2, 1]))


def test_memory_model_weights_need_resnet50(tmp_path):
  path = tmp_path / "stm.npz"
  np.savez(path, x=np.zeros(1, np.float32))
  with pytest.raises(ValueError, match="config.model.backbone='tiny'.*'resnet50'"):
    weights.load_pretrained({}, {}, str(path), "tiny", head="stm")
