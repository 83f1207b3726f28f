"""The notebooks of notebooks/: committed without outputs, and executed end to end.

Each notebook runs in a fresh `python3` kernel of this interpreter (a kernelspec written into
a temporary JUPYTER_PATH), with the papermill convention for parameters: a cell injected
after the one tagged `parameters` sets `SMOKE = True` (a few training steps of a narrow
model on `synthetic_vos/tiny`) and the paths. A last injected cell saves what the notebook
computed, which is checked here against NumPy written from the formulas.
"""
import csv
import json
import os
import pathlib
import sys

import nbformat
from nbclient import NotebookClient
import numpy as np
import pytest

from feelvos_jax.vis import draw as vis_draw

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = REPOSITORY / "notebooks"
TIMEOUT_PER_CELL_S = 600


def test_notebooks_exist():
  names = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))
  assert names == ["inspect_feelvos.ipynb", "train_in_colab.ipynb"]


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  assert notebook.metadata.kernelspec.name == "python3"
  for index, cell in enumerate(notebook.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [], f"{path.name} cell {index} has outputs"
      assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"
  tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
  assert len(tagged) == 1, f"{path.name}: exactly one cell must be tagged 'parameters'"
  first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
  assert "google.colab" in first_code.source and "REPO_URL" in first_code.source


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
  """Environment of the notebook kernels: a `python3` kernelspec running sys.executable, one
  CPU device and a temporary TFDS data dir. The kernels inherit the session's compilation cache
  (tests/conftest.py)."""
  jupyter_path = tmp_path_factory.mktemp("jupyter")
  spec_dir = jupyter_path / "kernels" / "python3"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3 (feelvos_jax tests)", "language": "python"}))
  env = dict(os.environ)
  env["JUPYTER_PATH"] = os.pathsep.join(
      filter(None, [str(jupyter_path), os.environ.get("JUPYTER_PATH")]))
  env["IPYTHONDIR"] = str(tmp_path_factory.mktemp("ipython"))
  env["TFDS_DATA_DIR"] = str(tmp_path_factory.mktemp("tensorflow_datasets"))
  env["TMPDIR"] = str(tmp_path_factory.mktemp("tmp"))  # The notebooks' temporary workdirs.
  env["XLA_FLAGS"] = " ".join(flag for flag in env.get("XLA_FLAGS", "").split()
                              if not flag.startswith("--xla_force_host_platform_device_count"))
  env["JAX_PLATFORMS"] = "cpu"
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("JUPYTER_PATH", env["JUPYTER_PATH"])  # Read here by the kernelspec lookup.
    yield env


def run_notebook(name, env, parameters, save_code):
  """Executes notebooks/<name> with `parameters` (Python source) injected after the cell
  tagged `parameters` and `save_code` appended; returns the executed notebook."""
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  index = next(i for i, cell in enumerate(notebook.cells)
               if "parameters" in cell.metadata.get("tags", []))
  injected = nbformat.v4.new_code_cell(parameters)
  injected.metadata["tags"] = ["injected-parameters"]
  notebook.cells.insert(index + 1, injected)
  notebook.cells.append(nbformat.v4.new_code_cell(save_code))
  client = NotebookClient(notebook, kernel_name="python3", timeout=TIMEOUT_PER_CELL_S,
                          resources={"metadata": {"path": str(NOTEBOOKS)}})
  client.execute(env=env)
  return notebook


def image_outputs(notebook):
  return sum("image/png" in output.get("data", {})
             for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)


def tanh_distance(squared):
  return np.tanh(squared / 2.0)


def global_matching_reference(query, reference, labels, num_slots):
  """[h, w, K]: per slot, d(nearest reference pixel of that slot), 1 without any; loops."""
  height, width, _ = query.shape
  result = np.ones((height, width, num_slots))
  for y in range(height):
    for x in range(width):
      squared = np.sum((reference - query[y, x]) ** 2, axis=-1)
      for slot in range(num_slots):
        if np.any(labels == slot):
          result[y, x, slot] = tanh_distance(squared[labels == slot].min())
  return result


def local_matching_reference(query, previous, labels, num_slots, window):
  """[h, w, K]: per slot, d(nearest previous pixel of that slot within the window); loops."""
  height, width, _ = query.shape
  result = np.ones((height, width, num_slots))
  for y in range(height):
    for x in range(width):
      for dy in range(-window, window + 1):
        for dx in range(-window, window + 1):
          yy, xx = y + dy, x + dx
          if 0 <= yy < height and 0 <= xx < width and labels[yy, xx] < num_slots:
            slot = labels[yy, xx]
            squared = np.sum((query[y, x] - previous[yy, xx]) ** 2)
            result[y, x, slot] = min(result[y, x, slot], tanh_distance(squared))
  return result


@pytest.mark.slow
def test_train_in_colab(kernel_env, tmp_path):
  # Files, curves, export and bundle: plumbing, compiled without XLA optimizations (the bundle
  # is compared with the in-process run of the same kernel). Runs first: it builds
  # synthetic_vos/tiny, which the inspect notebook reads.
  workdir = tmp_path / "workdir"
  saved = tmp_path / "train.json"
  notebook = run_notebook(
      "train_in_colab.ipynb", dict(kernel_env, JAX_DISABLE_MOST_OPTIMIZATIONS="1"),
      f"SMOKE = True\nWORKDIR = {str(workdir)!r}\n",
      f"import json\npathlib.Path({str(saved)!r}).write_text(json.dumps({{"
      "'results': results, 'step': int(state.step), 'exported_equal': exported_equal, "
      "'losses': [value for _, value in sorted(history['train/loss'])], "
      "'predictions_dir': predictions_dir, 'strip_path': strip_path, "
      "'bundle_dir': str(bundle_dir), 'bundle_step': bundle.checkpoint_step, "
      "'executable': sys.executable}))")
  assert image_outputs(notebook) >= 2  # Training curves and the prediction strip.
  saved = json.loads(saved.read_text())
  assert saved["executable"] == sys.executable  # The kernel ran this interpreter.
  assert saved["step"] == 4
  assert len(saved["losses"]) == 4 and all(np.isfinite(saved["losses"]))
  assert saved["exported_equal"] is True
  assert saved["bundle_step"] == 4
  manifest = json.loads((pathlib.Path(saved["bundle_dir"]) / "manifest.json").read_text())
  assert manifest["checkpoint_step"] == 4
  assert pathlib.Path(saved["strip_path"]).stat().st_size > 0
  results = saved["results"]
  assert 0.0 <= results["J-Mean"] <= 1.0 and 0.0 <= results["F-Mean"] <= 1.0
  assert results["J&F-Mean"] == pytest.approx((results["J-Mean"] + results["F-Mean"]) / 2)
  with open(pathlib.Path(saved["predictions_dir"])
            / "global_results-validation-youtube_vos.csv") as file:
    row = next(csv.DictReader(file))
  assert float(row["J&F-Mean"]) == pytest.approx(results["J&F-Mean"], abs=1e-3)
  videos = [path for path in pathlib.Path(saved["predictions_dir"]).iterdir() if path.is_dir()]
  assert len(videos) == 8  # Every synthetic_vos/tiny validation video was propagated.


@pytest.mark.slow
def test_inspect_feelvos(kernel_env, tmp_path):
  saved = tmp_path / "inspect.npz"
  notebook = run_notebook(
      "inspect_feelvos.ipynb", kernel_env, "SMOKE = True\nFRAME = 3\n",
      f"np.savez({str(saved)!r}, current=np.asarray(current_embedding), "
      "reference=np.asarray(reference_embedding), previous=np.asarray(previous_embedding), "
      "reference_labels=reference_labels, previous_labels=previous_labels, "
      "global_maps=global_maps, local_maps=local_maps, previous_probs=previous_probs, "
      "predicted=predicted, ground_truth=ground_truth, j=scores.j, pca_rgb=pca_rgb, "
      "window=config.model.window, num_objects=num_objects, vis_strip=vis_strip, "
      "vis_frames=vis_video.frames, vis_segmentation=vis_video.segmentation, "
      "vis_categories=vis_video.categories)")
  assert image_outputs(notebook) >= 6  # Ground truth, maps, prediction, J/F, PCA, VIS strip.
  data = np.load(saved)
  assert int(data["num_objects"]) >= 2  # The notebook picks a video with 2+ objects.
  num_slots = 1 + int(data["num_objects"])
  frames, height, width = data["predicted"].shape
  h, w = -(-height // 4), -(-width // 4)
  assert data["global_maps"].shape == data["local_maps"].shape == (h, w, num_slots)
  np.testing.assert_allclose(
      data["global_maps"], global_matching_reference(
          data["current"], data["reference"], data["reference_labels"], num_slots), atol=1e-5)
  np.testing.assert_allclose(
      data["local_maps"], local_matching_reference(
          data["current"], data["previous"], data["previous_labels"], num_slots,
          int(data["window"])), atol=1e-5)
  np.testing.assert_array_equal(data["previous_labels"], data["predicted"][2, ::4, ::4])
  assert data["previous_probs"].shape == (h, w, num_slots)
  np.testing.assert_allclose(data["previous_probs"].sum(axis=-1), 1.0, atol=1e-5)
  truth = data["ground_truth"]
  for row in range(num_slots - 1):
    for t in range(frames):
      predicted_mask, true_mask = data["predicted"][t] == row + 1, truth[t] == row + 1
      union = np.sum(predicted_mask | true_mask)
      expected = 1.0 if union == 0 else np.sum(predicted_mask & true_mask) / union
      assert data["j"][row, t] == pytest.approx(expected)
  assert np.all(data["j"][:, 0] == 1.0)  # Frame 0 is the given mask.
  assert data["pca_rgb"].shape == (h, w, 3)
  assert 0.0 <= data["pca_rgb"].min() and data["pca_rgb"].max() <= 1.0
  # The VIS cell: every instance blended in its identity's colour over its frames' pixels.
  vis_frames, vis_segmentation = data["vis_frames"], data["vis_segmentation"]
  num_frames, vis_height, vis_width = vis_segmentation.shape
  assert data["vis_strip"].shape == (vis_height, num_frames * vis_width, 3)
  assert set(data["vis_categories"]) <= {1, 2, 3, 4}
  tiles = data["vis_strip"].reshape(vis_height, num_frames, vis_width, 3).transpose(1, 0, 2, 3)
  for identity in range(len(data["vis_categories"])):
    mask = vis_segmentation == identity + 1
    assert mask.any()
    colour = np.asarray(vis_draw.identity_colour(identity), np.float32)
    blended = 0.5 * vis_frames[mask].astype(np.float32) + 0.5 * colour
    close = np.all(np.abs(tiles[mask].astype(np.float32) - blended) <= 1, axis=-1)
    assert close.mean() > 0.5  # The rest: the box outline and the label text over the mask.
