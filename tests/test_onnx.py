"""ONNX export (`--config.export.format=onnx`) and `segment --onnx`: the jaxpr rewrite of
`onnx_graph` against JAX, and the exported models under onnxruntime against in-process inference.

The rewrite tests need no converter. The export tests need jax2onnx, installed apart from
requirements.txt (`pip install --no-deps jax2onnx==0.17.1`: its dependency pins conflict with
ours; README "Export"), and are skipped without it, saying so.
"""
import fractions
import json
import os

import av
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from datasets import palette
from feelvos_jax.inference import onnx_export
from feelvos_jax.inference import onnx_graph
from feelvos_jax.tools import segment
from feelvos_jax.training import integrity
from tests import testing


def _resolved(fn, *args):
  return onnx_graph.resolved(fn, args)(*args)


def test_rewrite_inlines_the_default_branch_of_platform_dependent():
  def fn(x):
    return lax.platform_dependent(x, cpu=lambda v: v + 1.0, default=lambda v: v * 10.0)

  closed = jax.make_jaxpr(onnx_graph.resolved(fn, [jnp.ones(3)]))(jnp.ones(3))
  names = {eqn.primitive.name for eqn in closed.jaxpr.eqns}
  assert "platform_index" not in names and "cond" not in names
  np.testing.assert_array_equal(_resolved(fn, jnp.arange(3.0))[0], [0.0, 10.0, 20.0])


def test_rewrite_keeps_the_values_of_batched_scatters_gathers_sorts_and_shifts():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, (1, 40)).astype(np.int32)

  def fn(labels):
    def one(row):
      counts = jnp.bincount(row, length=5)
      _, order = lax.sort((row, jnp.zeros(row.shape, jnp.uint32), jnp.arange(40)), num_keys=2)[::2]
      inverse = jnp.zeros(40, jnp.int32).at[order].set(jnp.arange(40))
      mantissa, exponent = jnp.frexp(row.astype(jnp.float32) + 0.5)
      return counts, order, inverse[row], mantissa, exponent, jnp.searchsorted(counts, row)
    return jax.vmap(one)(labels)

  expected = jax.tree.leaves(jax.jit(fn)(labels))
  closed = jax.make_jaxpr(onnx_graph.resolved(fn, [labels]))(labels)
  for eqn in closed.jaxpr.eqns:
    numbers = eqn.params.get("dimension_numbers")
    assert not getattr(numbers, "operand_batching_dims", ()), eqn
    assert eqn.primitive.name not in ("shift_left", "shift_right_arithmetic", "lt_to")
  for got, want in zip(jax.jit(onnx_graph.resolved(fn, [labels]))(labels), expected):
    np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
  """(workdir, ONNX folder): a checkpoint of the small model with a head that follows the
  matching maps (decisive masks), exported for 48x48 frames, 5 objects, 2 reference frames
  (not a power of two at stride 4: local matching runs in two rows of tiles)."""
  pytest.importorskip("jax2onnx", reason="the ONNX export needs jax2onnx, installed apart "
                      "from requirements.txt: pip install --no-deps jax2onnx==0.17.1")
  config, model, variables, _, _ = testing.shared_setup()
  variables = testing.map_reading_variables(variables, config.model.decoder_channels)
  workdir = tmp_path_factory.mktemp("onnx_workdir")
  testing.save_checkpoint(config, model, variables, workdir, 7)
  config = testing.small_config()
  config.export.format = "onnx"
  config.export.buckets = ((48, 48, 5),)
  config.export.max_reference_frames = 2
  folder = onnx_export.export(config, str(workdir))
  return str(workdir), str(folder)


def _write_video(tmp_path):
  """A 12-frame 36x44 H.264 video (padded to 48x48) whose second object appears at frame 4,
  and its masks folder."""
  frames, labels, _ = testing.make_video(12, 2, height=36, width=44, seed=3, appear=[0, 4])
  path = str(tmp_path / "clip.mp4")
  with av.open(path, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=fractions.Fraction(10))
    stream.width, stream.height, stream.pix_fmt = 44, 36, "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  masks = tmp_path / "clip_masks"
  masks.mkdir()
  for index in (0, 4):
    given = np.where(labels[index] == 2, 2 if index == 4 else 0, labels[index] == 1)
    palette.palette_image(given.astype(np.uint8)).save(masks / f"{index}.png")
  return path, str(masks)


def _masks(folder):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  names = sorted(os.listdir(folder))
  return np.stack([np.asarray(Image.open(os.path.join(folder, name))) for name in names])


@pytest.mark.slow
def test_onnx_models_give_the_masks_of_the_workdir(onnx_models, tmp_path):
  workdir, folder = onnx_models
  manifest = json.loads(open(os.path.join(folder, "manifest.json")).read())
  assert manifest["checkpoint_step"] == 7 and manifest["opset"] == onnx_graph.OPSET
  assert sorted(manifest["files"]) == ["config.json", "start_48x48x5.onnx",
                                       "step_48x48x5_r1.onnx", "step_48x48x5_r2.onnx"]
  video, masks = _write_video(tmp_path)
  segment.run(video, None, masks, str(tmp_path / "jax"), workdir=workdir, overlay_video=False,
              gif_seconds=0)
  [summary] = segment.run(video, None, masks, str(tmp_path / "onnx"), onnx_dir=folder,
                          overlay_video=False, gif_seconds=0)
  assert summary.frames == 12
  in_process = _masks(tmp_path / "jax" / "masks" / "clip")
  from_onnx = _masks(tmp_path / "onnx" / "masks" / "clip")
  assert (in_process == 2).any() and (in_process == 1).any()
  np.testing.assert_array_equal(from_onnx, in_process)
  record = json.loads((tmp_path / "onnx" / "clip_manifest.json").read_text())
  assert record["model"] == {"kind": "onnx", "path": folder, "checkpoint_step": 7}


@pytest.mark.slow
def test_a_changed_onnx_file_is_refused_naming_it(onnx_models, tmp_path):
  _, folder = onnx_models
  copy = tmp_path / "copy"
  os.makedirs(copy)
  for name in os.listdir(folder):
    data = open(os.path.join(folder, name), "rb").read()
    if name == "step_48x48x5_r1.onnx":
      data = data[:-1] + bytes([data[-1] ^ 1])
    (copy / name).write_bytes(data)
  with pytest.raises(integrity.IntegrityError, match="step_48x48x5_r1.onnx"):
    onnx_export.load(copy)


def test_loading_a_folder_without_models_says_how_to_export(tmp_path):
  with pytest.raises(FileNotFoundError, match="export.format=onnx"):
    onnx_export.load(tmp_path)


def test_export_without_jax2onnx_names_the_key_and_the_install(monkeypatch, tmp_path):
  find_spec = onnx_export.importlib.util.find_spec
  monkeypatch.setattr(onnx_export.importlib.util, "find_spec",
                      lambda name, *args: None if name == "jax2onnx" else find_spec(name, *args))
  config = testing.small_config()
  config.export.format = "onnx"
  config.export.buckets = ((48, 48, 5),)
  with pytest.raises(ValueError, match=r"export.format='onnx' needs jax2onnx.*pip install"):
    onnx_export.export(config, str(tmp_path))
  assert not os.listdir(tmp_path)
