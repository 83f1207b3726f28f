"""Pretrained weights from user-provided files into the FEELVOS `params` / `batch_stats` trees.

`load_pretrained(params, batch_stats, path, backbone)` reads
  - for `xception65`: a TensorFlow checkpoint of the DeepLabv3+ Xception-65 family (the
    tensorflow/models DeepLab model zoo, e.g. its COCO-pretrained xception_65) or of the
    official FEELVOS code, via `tf.train.load_checkpoint` (a checkpoint prefix or folder);
  - for `resnet50` / `resnet101`: a torchvision state dict saved as `.npz`, e.g.
    `np.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})`.
It returns new trees (loaded leaves replaced, cast to the leaf's dtype; the rest untouched) and
a `LoadReport`. Every error is a ValueError whose message names `config.model.pretrained`, the
file and, where one is at fault, the variable:
  - a variable whose shape (or rank) differs from the model's names it and both shapes, unless
    `allow_shape_mismatch=True`, which leaves such leaves as they were and lists them in the
    report;
  - a variable that is not a real floating-point array (integer, bool, complex, object) or that
    holds NaN or inf is refused whatever the options;
  - fewer than `min_backbone_fraction` (default: all) of the backbone's variables loaded is
    refused, unless `allow_partial=True`: a file that matches nothing (another model's weights,
    another naming) would otherwise leave the model at its random initialisation.
Keys of a torchvision state dict lose the prefixes that wrappers add (`module.` of
`DataParallel` / `DistributedDataParallel`, `_orig_mod.` of `torch.compile`) before matching.

TF name map (Flax path under params/batch_stats -> TF variable; `<conv>` is a conv + batch
norm, mapped as `.../conv/kernel` -> `<scope>/weights` (depthwise: `depthwise_weights`),
`.../bn/scale|bias` -> `<scope>/BatchNorm/gamma|beta`, batch_stats `.../bn/mean|var` ->
`<scope>/BatchNorm/moving_mean|moving_variance`):
  backbone/entry_flow_conv1_{1,2}/<conv>        xception_65/entry_flow/conv1_{1,2}
  backbone/<block>_unit_<u>/separable_conv<i>/depthwise/<conv>
      xception_65/<block>/unit_<u>/xception_module/separable_conv<i>_depthwise
      (<block> is entry_flow_block1 .. exit_flow_block2 for entry_flow/block1 ..)
  backbone/<block>_unit_<u>/separable_conv<i>/pointwise/<conv>   ..._pointwise
  backbone/<block>_unit_<u>/shortcut/<conv>     .../xception_module/shortcut
  deeplab/aspp/{image_pooling,aspp0,concat_projection}/<conv>   same name at the top level
  deeplab/aspp/aspp<i>/{depthwise,pointwise}/<conv>             aspp<i>_{depthwise,pointwise}
  deeplab/decoder/feature_projection0/<conv>                    decoder/feature_projection0
  deeplab/decoder/decoder_conv<i>/{depthwise,pointwise}/<conv>  decoder/decoder_conv<i>_...
  embedding/separable_conv/{depthwise,pointwise}_{kernel,bias}
      embedding/split_separable_conv2d_{depthwise,pointwise}/{<weights>,biases}
  segmentation_head/layer_<n>/{depthwise,pointwise}_{kernel,bias}
      embedding_seg/split_separable_conv2d_<n>_{depthwise,pointwise}/{<weights>,biases}
  segmentation_head/logits/{kernel,bias}        logits/semantic/{weights,biases}
where <weights> is `depthwise_weights` or `weights`. Depthwise kernels are [k, k, C, 1] in TF
and [k, k, 1, C] here (transposed on load); other kernels share the [k, k, in, out] layout.
The embedding and head variables exist only in FEELVOS checkpoints; DeepLab checkpoints leave
them missing (they keep their initialisation).

torchvision name map (backbone only): `layer3.4.conv2.weight` -> backbone/layer3_4/conv2/kernel
(module path with '.' -> '_' between a layer and its block index, and `downsample.0|1` ->
`downsample_0|1`); conv `weight` [out, in, kh, kw] -> `kernel` [kh, kw, in, out]; batch norm
`weight|bias` -> `scale|bias`, `running_mean|running_var` -> batch_stats `mean|var`.

Memory models (`head="stm"` / `"rde"`, ResNet-50 only): the authors' whole-model state dicts
saved as .npz the same way. STM (`stm_name`): `Encoder_M|Encoder_Q.{conv1,bn1,res2..res4}` ->
memory_encoder|query_encoder/{conv1,bn1,layer1..layer3_<b>} (plus `Encoder_M.conv1_m|conv1_o`),
`KV_M_r4|KV_Q_r4.Key|Value` -> memory_key_value|query_key_value/key|value, `Decoder.*` ->
decoder/* (same module names). RDE-VOS (`rde_name`): `key_encoder.{res2,layer2,layer3}` ->
query_encoder, `mem_compress.{key,value}_encoder.non_local.{theta,phi.0,g.0,W}` and
`.conv1.{aspp<i>.atrous_conv,conv1}` -> {key,value}_aggregation/non_local/* and /aspp/*,
`mem_compress.compress_{key,value}` -> {key,value}_aggregation/compress (with
`model.memory_key_dim=64`); their ResNet-18 value encoder and decoder are another layout than
the STM ones used here and stay unloaded. Conv3d kernels [out, in, kt, kh, kw] become
[kt, kh, kw, in, out]. The "backbone" of `min_backbone_fraction` is both encoders (STM) or the
query encoder (RDE).

Bookkeeping entries are skipped, neither loaded nor reported: TF's `global_step` and optimizer
or moving-average slots (`.../Momentum`, `.../Adam*`, `.../ExponentialMovingAverage`), and
torchvision's `num_batches_tracked`.
"""
from collections.abc import Callable, Mapping
import dataclasses
import math
import os
import re
from typing import Any
import zipfile

import flax
import jax.numpy as jnp
import numpy as np

from feelvos_jax.models import xception

Path = tuple[str, ...]
Leaf = tuple[str, Path]  # (collection, path inside it)

_BN_LEAVES = {"scale": "BatchNorm/gamma", "bias": "BatchNorm/beta",
              "mean": "BatchNorm/moving_mean", "var": "BatchNorm/moving_variance"}
_TF_SKIPPED = re.compile(r"(^global_step$)|(/(Momentum|Adam\w*|ExponentialMovingAverage)$)")
_XCEPTION_MODULES = {
    "entry_flow_conv1_1": "entry_flow/conv1_1",
    "entry_flow_conv1_2": "entry_flow/conv1_2",
    **{xception.unit_module_name(scope, unit): f"{scope}/unit_{unit}/xception_module"
       for scope, _, _, _, num_units, _ in xception.XCEPTION65_BLOCKS
       for unit in range(1, num_units + 1)},
}
TORCH_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Key prefixes of wrapped PyTorch models (`DataParallel` / `DistributedDataParallel`,
`torch.compile`), removed from state-dict keys before they are matched."""
_TORCH_LEAVES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
                 ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
                 ("batch_stats", "var"): "running_var"}


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What `load_pretrained` did, by name.

  loaded: source variables copied into the model.
  missing: model leaves ('params/...' or 'batch_stats/...') that the file format names but
    the file lacks; they keep their current values.
  unexpected: source variables that no model leaf takes (bookkeeping entries excluded).
  mismatched: 'name: file shape vs model shape' for variables skipped because of their shape
    (only with allow_shape_mismatch=True; otherwise they raise).
  total: model leaves the file format names (loaded + missing + mismatched).
  backbone_loaded: loaded leaves of the backbone (`params/backbone/...`,
    `batch_stats/backbone/...`).
  backbone_total: backbone leaves the file format names.
  """
  loaded: tuple[str, ...]
  missing: tuple[str, ...]
  unexpected: tuple[str, ...]
  mismatched: tuple[str, ...]
  total: int = 0
  backbone_loaded: int = 0
  backbone_total: int = 0

  def summary(self) -> str:
    """A few lines for logs: `loaded N of M variables (B of K backbone variables)`, then the
    names of the missing, unexpected and mismatched variables."""
    lines = [f"loaded {len(self.loaded)} of {self.total} variables ({self.backbone_loaded} of "
             f"{self.backbone_total} backbone variables)"]
    for title, names in (("missing", self.missing), ("unexpected", self.unexpected),
                         ("shape mismatch", self.mismatched)):
      if names:
        lines.append(f"{title} ({len(names)}): " + ", ".join(names))
    return "\n".join(lines)


def _conv_bn_tf_name(parts: Path) -> tuple[str, bool]:
  """('aspp1', 'depthwise', 'conv', 'kernel') -> ('aspp1_depthwise/depthwise_weights', True)."""
  *modules, layer, leaf = parts
  depthwise = bool(modules) and modules[-1] == "depthwise"
  if len(modules) >= 2 and modules[-1] in ("depthwise", "pointwise"):
    modules = modules[:-2] + [f"{modules[-2]}_{modules[-1]}"]
  if layer == "conv" and leaf == "kernel":
    return "/".join(modules + ["depthwise_weights" if depthwise else "weights"]), depthwise
  if layer == "bn" and leaf in _BN_LEAVES:
    return "/".join(modules + [_BN_LEAVES[leaf]]), False
  raise KeyError(parts)


def _separable_relu_tf_name(scope: str, leaf: str) -> tuple[str, bool]:
  """SeparableConvReLU leaf ('depthwise_kernel', ...) -> (TF name, is depthwise kernel)."""
  part, kind = leaf.split("_")
  if kind == "bias":
    return f"{scope}_{part}/biases", False
  return f"{scope}_{part}/{'depthwise_weights' if part == 'depthwise' else 'weights'}", (
      part == "depthwise")


def xception_tf_name(collection: str, path: Path) -> tuple[str, bool] | None:
  """TF variable of a FEELVOS (xception65) leaf and whether it is a depthwise kernel
  (stored [k, k, C, 1], transposed on load).

  None for leaves the TF checkpoints do not hold. See the module docstring for the map.
  """
  del collection  # The leaf name tells params from batch_stats.
  top, rest = path[0], path[1:]
  try:
    if top == "backbone" and rest[0] in _XCEPTION_MODULES:
      name, depthwise = _conv_bn_tf_name(rest[1:])
      return f"xception_65/{_XCEPTION_MODULES[rest[0]]}/{name}", depthwise
    if top == "deeplab" and rest[0] == "aspp":
      return _conv_bn_tf_name(rest[1:])
    if top == "deeplab" and rest[0] == "decoder":
      name, depthwise = _conv_bn_tf_name(rest[1:])
      return f"decoder/{name}", depthwise
    if top == "embedding" and rest[0] == "separable_conv":
      return _separable_relu_tf_name("embedding/split_separable_conv2d", rest[1])
    if top == "segmentation_head" and rest[0].startswith("layer_"):
      index = rest[0][len("layer_"):]
      return _separable_relu_tf_name(f"embedding_seg/split_separable_conv2d_{index}", rest[1])
    if top == "segmentation_head" and rest[0] == "logits":
      return f"logits/semantic/{'weights' if rest[1] == 'kernel' else 'biases'}", False
  except (KeyError, IndexError, ValueError):
    return None
  return None


def torchvision_name(collection: str, path: Path) -> tuple[str, bool] | None:
  """torchvision state-dict key of a FEELVOS (resnet) leaf and whether it is a conv kernel
  (stored [out, in, kh, kw], transposed on load)."""
  if path[0] != "backbone" or (collection, path[-1]) not in _TORCH_LEAVES:
    return None
  modules = ".".join(module.replace("_", ".") for module in path[1:-1])
  return f"{modules}.{_TORCH_LEAVES[collection, path[-1]]}", path[-1] == "kernel"


def pyramid_torchvision_name(collection: str, path: Path) -> tuple[str, bool] | None:
  """torchvision state-dict key of a MaskTrack R-CNN pyramid ResNet leaf (`vis/fpn.py`, under
  'encoder', named as `models/resnet.py`) and whether it is a conv kernel; None elsewhere (FPN
  and heads start from their initialisation)."""
  if path[0] != "encoder":
    return None
  return torchvision_name(collection, ("backbone",) + tuple(path[1:]))


_STM_MODULES = {"memory_encoder": "Encoder_M", "query_encoder": "Encoder_Q",
                "memory_key_value": "KV_M_r4", "query_key_value": "KV_Q_r4",
                "decoder": "Decoder"}
_STM_LAYERS = {"layer1": "res2", "layer2": "res3", "layer3": "res4"}
_KEY_VALUE = {"key": "Key", "value": "Value"}


def _torch_module(name: str, layers: Mapping[str, str]) -> str:
  """One Flax module name as a torch module path: `layer2_0` -> `<layers[layer2]>.0`,
  `downsample_1` -> `downsample.1`, `key` -> `Key`; others unchanged."""
  head, _, index = name.rpartition("_")
  if head in layers and index.isdigit():
    return f"{layers[head]}.{index}"
  if head == "downsample":
    return f"downsample.{index}"
  return _KEY_VALUE.get(name, name)


def stm_name(collection: str, path: Path) -> tuple[str, bool] | None:
  """The official STM state-dict key of an STM leaf (`model.py` of the authors' code:
  `Encoder_M` / `Encoder_Q` with `res2..res4`, `KV_M_r4` / `KV_Q_r4` with `Key` / `Value`,
  `Decoder` with `convFM`, `ResMM`, `RF3`, `RF2`, `pred2`) and whether it is a conv kernel."""
  if path[0] not in _STM_MODULES or (collection, path[-1]) not in _TORCH_LEAVES:
    return None
  modules = [_STM_MODULES[path[0]]] + [_torch_module(m, _STM_LAYERS) for m in path[1:-1]]
  return f"{'.'.join(modules)}.{_TORCH_LEAVES[collection, path[-1]]}", path[-1] == "kernel"


_RDE_AGGREGATION = {"key_aggregation": ("mem_compress.key_encoder", "mem_compress.compress_key"),
                    "value_aggregation": ("mem_compress.value_encoder",
                                          "mem_compress.compress_value")}
_RDE_NON_LOCAL = {"theta": "theta", "phi": "phi.0", "g": "g.0", "W": "W"}


def rde_name(collection: str, path: Path) -> tuple[str, bool] | None:
  """The RDE-VOS authors' state-dict key (`model/network.py`, `model/modules.py`) of an RDE
  leaf they have: the query encoder from their `key_encoder` (ResNet-50 `res2`, `layer2`,
  `layer3`) and the two aggregation modules from `mem_compress` (`non_local.{theta,phi.0,g.0,W}`,
  `conv1.aspp<i>.atrous_conv`, `conv1.conv1`, `compress_key` / `compress_value`). Their value
  encoder (ResNet-18 + fuser) and decoder have another layout than STM's, kept here: those
  leaves have no name."""
  if (collection, path[-1]) not in _TORCH_LEAVES:
    return None
  leaf = _TORCH_LEAVES[collection, path[-1]]
  if path[0] == "query_encoder":
    layers = {"layer1": "res2", "layer2": "layer2", "layer3": "layer3"}
    modules = ["key_encoder"] + [_torch_module(m, layers) for m in path[1:-1]]
    return f"{'.'.join(modules)}.{leaf}", path[-1] == "kernel"
  if path[0] not in _RDE_AGGREGATION:
    return None
  sam, compress = _RDE_AGGREGATION[path[0]]
  inner = path[1:-1]
  if inner == ("compress",):
    return f"{compress}.{leaf}", path[-1] == "kernel"
  if inner[0] == "non_local" and inner[1] in _RDE_NON_LOCAL:
    return f"{sam}.non_local.{_RDE_NON_LOCAL[inner[1]]}.{leaf}", path[-1] == "kernel"
  if inner[0] == "aspp" and inner[-1] == "conv":
    name = "conv1" if inner[1] == "conv1" else f"{inner[1]}.atrous_conv"
    return f"{sam}.conv1.{name}.{leaf}", path[-1] == "kernel"
  return None


def _torch_kernel_to_flax(kernel: np.ndarray) -> np.ndarray:
  """A torch conv kernel [out, in, (kt,) kh, kw] in Flax's [(kt,) kh, kw, in, out] layout."""
  return np.transpose(kernel, tuple(range(2, kernel.ndim)) + (1, 0))


def _load_tensorflow(path: str) -> dict[str, Callable[[], np.ndarray]]:
  """{variable name: reader} of a TF checkpoint (prefix or folder)."""
  import tensorflow as tf  # Imported on use: heavy, and only this format needs it.
  try:
    reader = tf.train.load_checkpoint(path)
  except (tf.errors.OpError, ValueError) as error:
    raise ValueError(f"config.model.pretrained={path!r} cannot be read as a TensorFlow "
                     f"checkpoint: {error}") from error
  return {name: (lambda name=name: reader.get_tensor(name))
          for name in reader.get_variable_to_shape_map() if not _TF_SKIPPED.search(name)}


def _strip_wrapper_prefixes(names: list[str], path: str) -> dict[str, str]:
  """{state-dict key without `TORCH_WRAPPER_PREFIXES`: key as stored}.

  ValueError naming the file and both keys when two keys become one.
  """
  stripped = {}
  for name in names:
    key = name
    while key.startswith(TORCH_WRAPPER_PREFIXES):
      key = key[len(next(p for p in TORCH_WRAPPER_PREFIXES if key.startswith(p))):]
    if key in stripped:
      raise ValueError(f"config.model.pretrained={path!r}: keys {stripped[key]!r} and {name!r} "
                       f"both name {key!r} once the wrapper prefixes "
                       f"{TORCH_WRAPPER_PREFIXES} are removed")
    stripped[key] = name
  return stripped


def _load_npz(path: str) -> dict[str, Callable[[], np.ndarray]]:
  """{key: reader} of a .npz state dict, keys without wrapper prefixes
  (`_strip_wrapper_prefixes`), num_batches_tracked entries excluded."""
  try:
    arrays = np.load(path)
  except (OSError, ValueError, zipfile.BadZipFile) as error:
    raise ValueError(f"config.model.pretrained={path!r} cannot be read as a .npz state dict: "
                     f"{error}") from error
  if not isinstance(arrays, np.lib.npyio.NpzFile):
    raise ValueError(f"config.model.pretrained={path!r} holds one array, not a state dict of "
                     "named arrays (np.savez(path, **state_dict))")
  names = list(arrays.files)

  def read(stored: str) -> np.ndarray:
    try:
      return arrays[stored]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
      raise ValueError(f"config.model.pretrained={path!r}: variable {stored!r} cannot be read "
                       f"({error})") from error

  return {name: (lambda stored=stored: read(stored))
          for name, stored in _strip_wrapper_prefixes(names, path).items()
          if not name.endswith("num_batches_tracked")}


@dataclasses.dataclass(frozen=True)
class _Format:
  """How one backbone's pretrained file is read and mapped."""
  description: str
  is_npz: bool
  read: Callable[[str], dict[str, Callable[[], np.ndarray]]]
  leaf_name: Callable[[str, Path], tuple[str, bool] | None]
  kernel_to_flax: Callable[[np.ndarray], np.ndarray]
  backbone_roots: tuple[str, ...] = ("backbone",)
  backbones: tuple[str, ...] = ("resnet50",)


_TF_FORMAT = _Format("a TensorFlow checkpoint (DeepLab Xception-65 or FEELVOS)", False,
                     _load_tensorflow, xception_tf_name,
                     lambda kernel: np.transpose(kernel, (0, 1, 3, 2)))
_TORCH_FORMAT = _Format("a torchvision state dict saved as .npz", True, _load_npz,
                        torchvision_name, lambda kernel: np.transpose(kernel, (2, 3, 1, 0)))
FORMATS = {"xception65": _TF_FORMAT, "resnet50": _TORCH_FORMAT, "resnet101": _TORCH_FORMAT}
"""The pretrained-weight format of each backbone that has one."""

HEAD_FORMATS = {
    "stm": _Format("the authors' STM state dict saved as .npz", True, _load_npz, stm_name,
                   _torch_kernel_to_flax, ("memory_encoder", "query_encoder")),
    "rde": _Format("the authors' RDE-VOS state dict saved as .npz", True, _load_npz, rde_name,
                   _torch_kernel_to_flax, ("query_encoder",)),
    "masktrack": _Format("a torchvision ResNet state dict saved as .npz", True, _load_npz,
                         pyramid_torchvision_name, _torch_kernel_to_flax, ("encoder",),
                         ("resnet50", "resnet101")),
}
"""Formats of the memory models (`config.model.head`), whole-model checkpoints with a ResNet-50
encoder; their "backbone" (for `min_backbone_fraction`) is `backbone_roots`."""


def _check_path(path: str, file_format: _Format) -> None:
  if file_format.is_npz != path.endswith(".npz"):
    raise ValueError(f"config.model.pretrained={path!r} is not {file_format.description}")
  exists = (os.path.isfile(path) if file_format.is_npz
            else os.path.isdir(path) or os.path.isfile(path + ".index"))
  if not exists:
    raise ValueError(f"config.model.pretrained={path!r}: no such "
                     f"{'file' if file_format.is_npz else 'checkpoint (prefix.index or folder)'}")


def _check_values(stored: np.ndarray, name: str, where: str, path: str) -> None:
  """ValueError naming the variable unless `stored` is a real floating-point array of finite
  values."""
  if not jnp.issubdtype(stored.dtype, jnp.floating):
    raise ValueError(f"config.model.pretrained={path!r}: variable {name!r} (for {where}) has "
                     f"dtype {stored.dtype}; expected real floating-point weights")
  bad = int(np.size(stored) - np.count_nonzero(np.isfinite(stored)))
  if bad:
    raise ValueError(f"config.model.pretrained={path!r}: variable {name!r} (for {where}) holds "
                     f"{bad} NaN or infinite values of {np.size(stored)}")


def _is_backbone(where: str, roots: tuple[str, ...] = ("backbone",)) -> bool:
  return where.split("/")[1] in roots


def _check_enough(report: LoadReport, missing_names: list[str], path: str, backbone: str,
                  min_backbone_fraction: float) -> None:
  """ValueError naming the file unless `min_backbone_fraction` of the backbone's variables
  loaded; `missing_names` are the file names of the backbone variables it lacks."""
  needed = math.ceil(min_backbone_fraction * report.backbone_total - 1e-9)
  if report.backbone_loaded >= needed:
    return
  examples = ", ".join(repr(name) for name in missing_names[:3])
  unused = ", ".join(repr(name) for name in report.unexpected[:3])
  raise ValueError(
      f"config.model.pretrained={path!r} filled {report.backbone_loaded} of the "
      f"{report.backbone_total} variables of the {backbone} backbone (needed: {needed}, "
      f"config.model.pretrained_min_fraction={min_backbone_fraction}); it lacks e.g. {examples}"
      + (f" and holds {len(report.unexpected)} name{'s' * (len(report.unexpected) > 1)} the "
         f"model does not take, e.g. {unused}" if report.unexpected else "")
      + "; set --config.model.pretrained_allow_partial=True to load it anyway")


def load_pretrained(params: Mapping[str, Any], batch_stats: Mapping[str, Any], path: str,
                    backbone: str, *, allow_shape_mismatch: bool = False,
                    min_backbone_fraction: float = 1.0, allow_partial: bool = False,
                    head: str = "feelvos"
                    ) -> tuple[dict[str, Any], dict[str, Any], LoadReport]:
  """Copies the variables of a pretrained file into the FEELVOS variable trees.

  Args:
    params: the model's 'params' collection (from `model.init`).
    batch_stats: its 'batch_stats' collection.
    path: the weights file: a TF checkpoint prefix or folder for xception65, a .npz
      torchvision state dict for resnet50 / resnet101.
    backbone: config.model.backbone.
    allow_shape_mismatch: skip variables whose shape differs (listed in the report) instead
      of raising.
    min_backbone_fraction: the fraction of the backbone's variables (those the format names)
      that must load (config.model.pretrained_min_fraction).
    allow_partial: return whatever loaded, even below `min_backbone_fraction`
      (config.model.pretrained_allow_partial).
    head: config.model.head; "stm" and "rde" read the authors' whole-model checkpoints
      (`HEAD_FORMATS`, ResNet-50 only) instead of a backbone file; "masktrack" (the VIS loop)
      reads a torchvision ResNet-50/101 into MaskTrack R-CNN's pyramid ('encoder').

  Returns:
    (params, batch_stats, report): new nested dicts and a LoadReport.

  Raises:
    ValueError: no pretrained format for `backbone`; a missing, unreadable or wrong-format file;
      a shape or rank mismatch (naming every mismatched variable with both shapes); a variable
      that is not real floating point or holds NaN / inf (naming it); fewer backbone variables
      loaded than `min_backbone_fraction` asks, unless `allow_partial`. Each names the file.
  """
  if head in HEAD_FORMATS:
    file_format = HEAD_FORMATS[head]
    if backbone not in file_format.backbones:
      raise ValueError(f"config.model.backbone={backbone!r}: config.model.pretrained holds "
                       f"{file_format.description}, for "
                       f"{' or '.join(repr(b) for b in file_format.backbones)}")
  elif backbone not in FORMATS:
    raise ValueError(f"config.model.backbone={backbone!r} has no pretrained weight format; "
                     f"config.model.pretrained works with {sorted(FORMATS)}")
  else:
    file_format = FORMATS[backbone]
  _check_path(path, file_format)
  source = file_format.read(path)
  trees = {"params": flax.traverse_util.flatten_dict(flax.core.unfreeze(params)),
           "batch_stats": flax.traverse_util.flatten_dict(flax.core.unfreeze(batch_stats))}
  loaded, missing, missing_names, mismatched, used = [], [], [], [], set()
  total = backbone_total = backbone_loaded = 0
  for collection, flat in trees.items():
    for leaf_path, leaf in flat.items():
      named = file_format.leaf_name(collection, leaf_path)
      if named is None:
        continue
      name, is_kernel = named
      where = f"{collection}/{'/'.join(leaf_path)}"
      total += 1
      backbone_total += _is_backbone(where, file_format.backbone_roots)
      if name not in source:
        missing.append(where)
        if _is_backbone(where, file_format.backbone_roots):
          missing_names.append(name)
        continue
      used.add(name)
      stored = np.asarray(source[name]())
      if stored.ndim != len(leaf.shape):
        mismatched.append(f"{name}: file shape {stored.shape} (rank {stored.ndim}) vs model "
                          f"shape {tuple(leaf.shape)} (rank {len(leaf.shape)}) at {where}")
        continue
      _check_values(stored, name, where, path)
      value = file_format.kernel_to_flax(stored) if is_kernel else stored
      if value.shape != tuple(leaf.shape):
        mismatched.append(f"{name}: file shape {stored.shape} (as the model lays it out: "
                          f"{value.shape}) vs model shape {tuple(leaf.shape)} at {where}")
        continue
      flat[leaf_path] = jnp.asarray(value, dtype=leaf.dtype)
      loaded.append(name)
      backbone_loaded += _is_backbone(where, file_format.backbone_roots)
  if mismatched and not allow_shape_mismatch:
    raise ValueError(f"config.model.pretrained={path!r}: shape mismatch for "
                     + "; ".join(mismatched))
  report = LoadReport(loaded=tuple(sorted(loaded)), missing=tuple(sorted(missing)),
                      unexpected=tuple(sorted(set(source) - used)),
                      mismatched=tuple(sorted(mismatched)), total=total,
                      backbone_loaded=backbone_loaded, backbone_total=backbone_total)
  if not allow_partial:
    _check_enough(report, missing_names, path, backbone, min_backbone_fraction)
  return (flax.traverse_util.unflatten_dict(trees["params"]),
          flax.traverse_util.unflatten_dict(trees["batch_stats"]), report)
