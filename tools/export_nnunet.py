#!/usr/bin/env python3
"""Exports a trained nnU-Net v2 model as TorchScript + a kneenode manifest (kind `patch3d`).

    python tools/export_nnunet.py RESULT_DIR --out models/NAME --orientation CODE
        [--fold 0] [--checkpoint checkpoint_final.pth] [--name NAME]
        [--configuration 3d_fullres] [--version TEXT] [--no-nnunet]

RESULT_DIR is nnU-Net's training output folder, e.g.
`nnUNet_results/Dataset123_Knee/nnUNetTrainer__nnUNetPlans__3d_fullres`, holding `plans.json`,
`dataset.json` and `fold_N/checkpoint_final.pth`. The script writes `OUT/model.pt` and
`OUT/manifest.toml`, which kneenode's sliding-window inference (`src/pipeline/segment.rs`) runs
as they are, and prints the lines to add to `dicom_config/models.toml`.

How nnU-Net's conventions become kneenode's (read from nnunetv2 2.8.1 and
dynamic-network-architectures 0.4.4 on PyPI; nothing of their code is copied here):

* **Axes.** nnU-Net reads an image with SimpleITK (or nibabel, transposed to match), so its
  array is in (k, j, i) order of the file's voxel axes (i = NIfTI's first axis), then
  `data.transpose(transpose_forward)`: network axis a is file-array axis transpose_forward[a],
  i.e. voxel axis 2 - transpose_forward[a]. The configuration's `spacing` and `patch_size` are
  in that network order. kneenode feeds (N, 1, I, J, K) in the voxel order of the manifest's
  `orientation`. The exported module permutes kneenode's axes into the network's, runs the
  network with deep supervision off (full-resolution logits only), and permutes the logits
  back; the manifest's spacing, patch size and mirror axes are written in i, j, k order.
* **Orientation.** nnU-Net never reorients (except with the `NibabelIOWithReorient` reader,
  which makes everything RAS): the network expects the voxel order its training images had on
  disk. kneenode reorients any input to the manifest's `orientation`, so that must be the
  training images' code, given with --orientation (see its help).
* **Intensities.** `ZScoreNormalization` without `use_mask_for_norm` is kneenode's `zscore`,
  `NoNormalization` is `none`; anything else (CTNormalization's dataset-wide clipping and
  statistics, z-score inside a nonzero mask, rescaling) has no kneenode equivalent and is
  refused, as are several input images (channels), 2D configurations and region-based labels.
  The second stage of a cascade (`3d_cascade_fullres`) is exported with --cascade-from naming
  its first stage's kneenode model: nnU-Net and kneenode both feed it the image followed by the
  first stage's labels 1..n-1, one-hot.
* **Network.** With nnunetv2 installed, the trainer's own `build_network_architecture` builds
  the network (custom trainers included), as nnU-Net's predictor does. Without it, the network
  is built from the plans with dynamic-network-architectures (nnU-Net's own architecture
  package), old-style plans (`UNet_class_name`, `n_conv_per_stage_encoder`, ...) included.
  Either way the checkpoint's weights must load strictly.

The traced module is checked against the eager network on a random patch-sized input and on a
second size before it is saved, and again after loading the saved file back.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import math
import pkgutil
import re
import sys
import warnings
from pathlib import Path
from typing import Any

ORIENTATION_HELP = """\
the voxel order of the images the model was trained on, as a kneenode orientation code: three
letters, one per voxel axis i, j, k (i = the NIfTI file's first axis), each naming the patient
direction the axis points toward as its index grows (L/R, P/A, S/I), e.g. PIR for a sagittal
series whose i runs anterior→posterior, j superior→inferior and k left→right. It is the code
nibabel prints with `nibabel.aff2axcodes(nibabel.load("imagesTr/case_0000.nii.gz").affine)`,
and SimpleITK with `sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
img.GetDirection())`. All training images must share it (nnU-Net does not reorient, so a
network trained on PIR images has only seen PIR). Not needed when the plans use the
NibabelIOWithReorient reader (then it is RAS)."""

#: The checkpoint file nnU-Net writes at the end of training.
DEFAULT_CHECKPOINT = "checkpoint_final.pth"

#: State-dict key prefixes left by torch.compile (`_orig_mod.`) and DistributedDataParallel
#: (`module.`); nnU-Net saves the unwrapped module, but checkpoints with them exist.
WRAPPER_PREFIXES = ("_orig_mod.", "module.")

#: Old-style plans (early nnU-Net v2) name the architecture by class name only.
OLD_PLANS_CLASSES = {
    "PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}

#: Axis letters of kneenode's orientation codes: letter → (patient axis, points toward +axis).
ORIENTATION_LETTERS = {
    "L": (0, True), "R": (0, False),
    "P": (1, True), "A": (1, False),
    "S": (2, True), "I": (2, False),
}


def note(text: str) -> None:
    print(f"export_nnunet: note: {text}", file=sys.stderr)


class ExportError(Exception):
    """The model cannot be exported as kneenode needs it; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------
# Reading the result folder
# ---------------------------------------------------------------------------------------------


def load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise ExportError(f"cannot read {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} is not valid JSON: {e}") from e


def fold_dir(result_dir: Path, fold: str) -> Path:
    """`fold_N`, or nnU-Net's `fold_all` (trained on every case) for `--fold all`."""
    if fold != "all" and not fold.isdigit():
        raise ExportError(f"--fold {fold!r}: want a fold number or 'all' (nnU-Net's fold_all)")
    d = result_dir / f"fold_{fold}"
    if not d.is_dir():
        found = sorted(p.name for p in result_dir.glob("fold_*") if p.is_dir())
        raise ExportError(
            f"{d} does not exist; {result_dir} has {', '.join(found) if found else 'no fold_* folders'}"
        )
    return d


def load_checkpoint(path: Path) -> dict:
    import torch

    if not path.is_file():
        others = sorted(p.name for p in path.parent.glob("*.pth"))
        hint = f" (there: {', '.join(others)}; pick one with --checkpoint)" if others else ""
        raise ExportError(f"{path} does not exist{hint}")
    # nnU-Net pickles more than tensors (init_args holds a torch.device, logging holds lists):
    # weights_only=True refuses it. Only export checkpoints you trust.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ExportError(f"{path} is not an nnU-Net v2 checkpoint (no 'network_weights')")
    return checkpoint


def strip_wrapper_prefixes(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    changed = True
        out[key] = value
    return out


def resolve_configuration(plans: dict, name: str) -> dict:
    """The configuration `name` with `inherits_from` applied (a child's keys win)."""
    configurations = plans.get("configurations", {})
    chain: list[str] = []
    while True:
        if name not in configurations:
            raise ExportError(
                f"the plans have no configuration {name!r} (they have {', '.join(configurations)})"
            )
        if name in chain:
            raise ExportError(f"the plans' configurations inherit in a circle: {' → '.join(chain + [name])}")
        chain.append(name)
        parent = configurations[name].get("inherits_from")
        if parent is None:
            break
        name = parent
    merged: dict = {}
    for n in reversed(chain):
        merged.update(json.loads(json.dumps(configurations[n])))
    merged.pop("inherits_from", None)
    return merged


def architecture(cfg: dict) -> tuple[str, dict, list[str]]:
    """(network class path, constructor kwargs, kwargs that name a class to import)."""
    if "architecture" in cfg:
        arch = cfg["architecture"]
        return arch["network_class_name"], dict(arch["arch_kwargs"]), list(arch.get("_kw_requires_import", []))
    # Early nnU-Net v2 plans: only the class name and the U-Net's hyperparameters. nnU-Net
    # rebuilds the same constructor arguments from them (plans_handler.ConfigurationManager).
    short = cfg.get("UNet_class_name")
    if short not in OLD_PLANS_CLASSES:
        raise ExportError(
            f"old-style plans with UNet_class_name {short!r}: only {', '.join(OLD_PLANS_CLASSES)} can be "
            "rebuilt from them; rerun nnUNetv2_plan_experiment, or install nnunetv2 and its trainer"
        )
    dim = len(cfg["patch_size"])
    stages = len(cfg["n_conv_per_stage_encoder"])
    base, most = cfg["UNet_base_num_features"], cfg["unet_max_num_features"]
    per_stage = "n_conv_per_stage" if short == "PlainConvUNet" else "n_blocks_per_stage"
    kwargs = {
        "n_stages": stages,
        "features_per_stage": [min(base * 2**s, most) for s in range(stages)],
        "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
        "kernel_sizes": cfg["conv_kernel_sizes"],
        "strides": cfg["pool_op_kernel_sizes"],
        per_stage: cfg["n_conv_per_stage_encoder"],
        "n_conv_per_stage_decoder": cfg["n_conv_per_stage_decoder"],
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    return OLD_PLANS_CLASSES[short], kwargs, ["conv_op", "norm_op", "dropout_op", "nonlin"]


# ---------------------------------------------------------------------------------------------
# What kneenode can run: labels, channels, normalisation, orientation
# ---------------------------------------------------------------------------------------------


def label_names(dataset_json: dict) -> list[str]:
    """Output channel index → label name. nnU-Net's outputs are its labels 0..n-1 in order."""
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ExportError("dataset.json has no 'labels'")
    # nnU-Net trains on regions exactly when a label's value is a list of several labels.
    regions = [name for name, v in labels.items() if isinstance(v, (list, tuple)) and len(v) > 1]
    if regions:
        raise ExportError(
            "region-based training (dataset.json labels that are lists of labels: "
            f"{', '.join(regions)}): the network's outputs are overlapping "
            "regions with sigmoids, not classes with a softmax, and kneenode's patch3d models are "
            "softmax + argmax over classes. Retrain with one integer per label."
        )
    by_value: dict[int, str] = {}
    for name, v in labels.items():
        if name == "ignore":
            continue  # nnU-Net's ignore label has no output channel
        if isinstance(v, (list, tuple)):
            v = v[0]
        if int(v) in by_value:
            raise ExportError(f"dataset.json labels {by_value[int(v)]!r} and {name!r} share the value {v}")
        by_value[int(v)] = name
    values = sorted(by_value)
    if values != list(range(len(values))):
        raise ExportError(
            f"dataset.json label values {values} are not 0, 1, …, n-1 (nnU-Net's output channel i is label i)"
        )
    return [by_value[v] for v in values]


def input_channels(dataset_json: dict) -> int:
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise ExportError("dataset.json has no 'channel_names'")
    if len(channels) != 1:
        raise ExportError(
            f"the model takes {len(channels)} input channels ({', '.join(map(str, channels.values()))}); "
            "kneenode feeds its patch3d models one image (one channel), so it cannot run it"
        )
    return 1


def kneenode_normalization(cfg: dict) -> str:
    schemes = cfg.get("normalization_schemes", [])
    masks = cfg.get("use_mask_for_norm", [False] * len(schemes))
    if len(schemes) != 1:
        raise ExportError(f"the plans have {len(schemes)} normalization schemes; kneenode feeds one channel")
    scheme, masked = schemes[0], bool(masks[0]) if masks else False
    if scheme == "ZScoreNormalization" and not masked:
        return "zscore"
    if scheme == "ZScoreNormalization":
        raise ExportError(
            "the plans normalise with ZScoreNormalization inside the image's nonzero mask "
            "(use_mask_for_norm = true, voxels outside stay 0); kneenode's zscore uses the whole "
            "volume, so the network would see other intensities than it was trained on"
        )
    if scheme == "NoNormalization":
        return "none"
    if scheme == "CTNormalization":
        raise ExportError(
            "the plans normalise with CTNormalization (clip to the training set's 0.5/99.5 "
            "percentiles, subtract its foreground mean, divide by its std); kneenode has only "
            "whole-volume zscore and none, so it cannot feed this network what it was trained on"
        )
    raise ExportError(
        f"the plans normalise with {scheme}; kneenode can only do ZScoreNormalization "
        "(whole volume, zscore) or NoNormalization (none)"
    )


def check_orientation(code: str) -> str:
    code = code.strip().upper()
    axes = [ORIENTATION_LETTERS.get(c, (None, None))[0] for c in code]
    if len(code) != 3 or None in axes or sorted(axes) != [0, 1, 2]:
        raise ExportError(f"--orientation {code!r}: want three letters, one each of L/R, P/A and S/I (e.g. PIR)")
    return code


def orientation(args_orientation: str | None, plans: dict, dataset_json: dict) -> str:
    # nnU-Net's predictor reads with the plans' reader (chosen at planning, from dataset.json's
    # overwrite_image_reader_writer when that is set; "None" means unset).
    override = dataset_json.get("overwrite_image_reader_writer")
    reader = plans.get("image_reader_writer") or (override if override != "None" else None)
    if reader == "NibabelIOWithReorient":
        # This reader reorients every image to (the closest) RAS before nnU-Net sees it.
        if args_orientation is not None and check_orientation(args_orientation) != "RAS":
            raise ExportError(
                f"the plans read images with NibabelIOWithReorient, which reorients them to RAS; "
                f"--orientation {args_orientation} contradicts that (leave it out)"
            )
        return "RAS"
    if args_orientation is None:
        raise ExportError(
            "--orientation is required: nnU-Net does not reorient images, so the network only knows "
            "the voxel order its training images had, and neither plans.json nor dataset.json says "
            f"which it was ({reader or 'SimpleITKIO'} reader). See --help for how to read it off a "
            "training image."
        )
    return check_orientation(args_orientation)


# ---------------------------------------------------------------------------------------------
# Axes
# ---------------------------------------------------------------------------------------------


def network_axes(transpose_forward: list[int], transpose_backward: list[int] | None) -> list[int]:
    """For each network spatial axis a, the kneenode axis (0 = i, 1 = j, 2 = k) it is.

    The reader's array is (k, j, i): array axis b is voxel axis 2 - b. nnU-Net's preprocessing
    transposes it so that network axis a is array axis transpose_forward[a].
    """
    tf = [int(a) for a in transpose_forward]
    if sorted(tf) != [0, 1, 2]:
        raise ExportError(f"transpose_forward {tf} is not a permutation of 0, 1, 2")
    if transpose_backward is not None:
        tb = [int(a) for a in transpose_backward]
        if [tf[b] for b in tb] != [0, 1, 2]:
            raise ExportError(f"transpose_backward {tb} does not undo transpose_forward {tf}")
    return [2 - a for a in tf]


def inverse(perm: list[int]) -> list[int]:
    inv = [0] * len(perm)
    for a, c in enumerate(perm):
        inv[c] = a
    return inv


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


def locate(dotted: str) -> Any:
    """The object a dotted path names (`torch.nn.LeakyReLU`, `pkg.module.Class`)."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
            return obj
        except AttributeError:
            continue
    return None


def network_class(dotted: str) -> Any:
    cls = locate(dotted)
    if cls is not None:
        return cls
    # Classes move between modules across dynamic-network-architectures versions
    # (residual_unet.ResidualEncoderUNet is now unet.ResidualEncoderUNet): look it up by name.
    short = dotted.rsplit(".", 1)[-1]
    try:
        import dynamic_network_architectures.architectures as archs
    except ImportError as e:
        raise ExportError(
            f"cannot import {dotted}: install nnU-Net's architecture package into this python "
            "(pip install dynamic-network-architectures, or tools/tests/nnunet-deps.sh)"
        ) from e
    for info in pkgutil.walk_packages(archs.__path__, archs.__name__ + "."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:
            continue  # e.g. the transformer architectures without timm
        if isinstance(getattr(module, short, None), type):
            return getattr(module, short)
    raise ExportError(f"network class {dotted} not found (is dynamic-network-architectures installed?)")


def build_from_plans(cfg: dict, in_channels: int, num_classes: int):
    class_name, kwargs, requires_import = architecture(cfg)
    for key in requires_import:
        if kwargs.get(key) is not None:
            obj = locate(kwargs[key])
            if obj is None:
                raise ExportError(f"the plans' {key} {kwargs[key]!r} cannot be imported")
            kwargs[key] = obj
    cls = network_class(class_name)
    kwargs["deep_supervision"] = False
    try:
        return cls(input_channels=in_channels, num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise ExportError(
            f"{class_name} does not take the plans' arguments ({e}); the plans may come from another "
            "dynamic-network-architectures version than the one installed"
        ) from e


def build_with_nnunetv2(trainer_name: str, plans: dict, cfg_name: str, dataset_json: dict, in_channels: int,
                        num_classes: int):
    """The network as nnU-Net's own predictor builds it, or None without nnunetv2 / the trainer."""
    try:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    except ImportError:
        return None
    trainer = None
    try:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        trainer = recursive_find_trainer_class_by_name(trainer_name)
    except ImportError:
        import nnunetv2
        from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

        trainer = recursive_find_python_class(
            str(Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"),
            trainer_name,
            "nnunetv2.training.nnUNetTrainer",
        )
    except Exception as e:  # the lookup raises when the trainer is nowhere to be found
        note(f"nnunetv2 cannot find trainer {trainer_name} ({e}); building the network from the plans")
        return None
    if trainer is None:
        note(f"nnunetv2 has no trainer {trainer_name}; building the network from the plans")
        return None
    plans_manager = PlansManager(plans)
    cfg_manager = plans_manager.get_configuration(cfg_name)
    build = trainer.build_network_architecture
    if "plans_manager" in inspect.signature(build).parameters:
        return build(plans_manager, cfg_manager, in_channels, num_classes, enable_deep_supervision=False)
    return build(
        cfg_manager.network_arch_class_name,
        cfg_manager.network_arch_init_kwargs,
        cfg_manager.network_arch_init_kwargs_req_import,
        in_channels,
        num_classes,
        enable_deep_supervision=False,
    )


def disable_deep_supervision(network) -> None:
    decoder = getattr(network, "decoder", None)
    if decoder is not None and hasattr(decoder, "deep_supervision"):
        decoder.deep_supervision = False
    if hasattr(network, "deep_supervision"):
        network.deep_supervision = False


def kneenode_order_module(network, to_network: list[int]):
    """Wraps `network` so it takes and returns tensors in kneenode's (N, C, I, J, K) order.

    `to_network[a]` is the kneenode axis that is network axis a.
    """
    import torch

    class KneenodeAxes(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network
            self.into = [0, 1] + [2 + c for c in to_network]
            self.back = [0, 1] + [2 + a for a in inverse(to_network)]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.network(x.permute(self.into))
            if isinstance(y, (list, tuple)):  # deep supervision left on by a custom network
                y = y[0]
            return y.permute(self.back)

    return KneenodeAxes()


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_torchscript():
    """Silences what tracing says about every fully convolutional network (shape checks in the
    norm layers become constants: they hold for every size) and PyTorch's notice that TorchScript
    is deprecated in favour of torch.export (libtorch, which kneenode links, loads TorchScript)."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        yield


def second_size(patch_net: list[int], strides: list[list[int]] | None) -> list[int]:
    """Another valid input size (network order): one downsampling factor less (or more) per axis."""
    if not strides:
        return [p // 2 for p in patch_net]
    factor = [math.prod(int(s[a]) for s in strides) for a in range(len(patch_net))]
    return [p - f if p - f >= f else p + f for p, f in zip(patch_net, factor, strict=True)]


def check_against_eager(eager, traced, shape: list[int], what: str) -> float:
    import torch

    x = torch.randn(shape)
    try:
        with torch.no_grad():
            want = eager(x)
            got = traced(x)
    except RuntimeError as e:
        raise ExportError(f"{what}: the network does not run on input {shape}: {e}") from e
    if list(got.shape) != list(want.shape):
        raise ExportError(f"{what}: TorchScript output shape {list(got.shape)}, eager {list(want.shape)}")
    diff = (got - want).abs().max().item()
    if not diff < 1e-4:
        raise ExportError(f"{what}: TorchScript and eager outputs differ by up to {diff:g}")
    return diff


def toml_string(s: str) -> str:
    # JSON's string escapes (\" \\ \n \t \uXXXX) are all valid in TOML basic strings.
    return json.dumps(s, ensure_ascii=False)


def toml_float(x: float) -> str:
    text = repr(float(x))
    return text if any(c in text for c in ".en") else text + ".0"


def manifest_text(m: dict, source: str, norm_note: str, mirror_note: str) -> str:
    spacing = ", ".join(toml_float(s) for s in m["spacing"])
    patch = ", ".join(str(p) for p in m["patch_size"])
    mirror = ", ".join(str(a) for a in m["mirror_axes"])
    cascade = m["cascade"]
    lines = [
        f"# A trained nnU-Net v2 model, exported by tools/export_nnunet.py from {source}",
        "# (rerun the script rather than editing this file by hand).",
        "#",
        f"# Input:  float32 (N, {m['in_channels']}, I, J, K): the volume reoriented to `orientation` and",
        "#         resampled to `spacing`, axes in kneenode's i, j, k order, normalised as",
        "#         `normalization` says"
        + (", then one channel per foreground label of `cascade`." if cascade else "."),
        f"#         Inside, the module permutes (I, J, K) into nnU-Net's axis order ({m['axes_note']})",
        "#         and the logits back.",
        f"# Output: logits (N, {m['num_classes']}, I, J, K), same spatial size; softmax over dim 1.",
        "# `patch_size` is the plans' patch size (what the network was trained on); any size the",
        f"# network's downsampling divides works ({m['divisible_note']}).",
        "# kneenode reproduces nnU-Net's preprocessing up to details: it resamples linearly (nnU-Net",
        "# with third-order splines), z-scores after resampling (nnU-Net before) and does not crop to",
        "# the nonzero region first. Sliding window as nnU-Net: step 0.5, Gaussian σ = patch / 8.",
        f"name = {toml_string(m['name'])}",
        'kind = "patch3d"',
        f"version = {toml_string(m['version'])}",
        f"file = {toml_string(m['file'])}",
    ]
    if cascade:
        lines += [
            "# The second stage of nnU-Net's cascade (3d_cascade_fullres): after the image, its input",
            "# holds the first stage's labels 1, 2, … one-hot, one channel each, as nnU-Net feeds them.",
            f"cascade = {toml_string(cascade)}",
        ]
    lines += [
        f"in_channels = {m['in_channels']}",
        f"num_classes = {m['num_classes']}",
        f"spacing = [{spacing}]   # mm, along i, j, k of `orientation` (the plans' spacing, reordered)",
        "# The training images' voxel order: each letter is the patient direction the voxel axis",
        "# (i, j, k) points toward as its index grows; kneenode reorients every input to it.",
        f"orientation = {toml_string(m['orientation'])}",
        f"patch_size = [{patch}]",
        f"# {norm_note}",
        f"normalization = {toml_string(m['normalization'])}",
        f"# {mirror_note}",
        f"mirror_axes = [{mirror}]",
        f"trained_on = {toml_string(m['trained_on'])}",
        "",
        "[labels]",
    ]
    lines += [f"{i} = {toml_string(name)}" for i, name in enumerate(m["labels"])]
    return "\n".join(lines) + "\n"


def export(args: argparse.Namespace) -> dict:
    import torch

    result_dir = Path(args.result_dir)
    if not result_dir.is_dir():
        raise ExportError(f"{result_dir} is not a folder")
    fold_path = fold_dir(result_dir, args.fold)
    checkpoint = load_checkpoint(fold_path / args.checkpoint)
    init_args = checkpoint.get("init_args") or {}

    plans = load_json(result_dir / "plans.json") if (result_dir / "plans.json").exists() else init_args.get("plans")
    dataset_json = (
        load_json(result_dir / "dataset.json") if (result_dir / "dataset.json").exists()
        else init_args.get("dataset_json")
    )
    if not isinstance(plans, dict) or not isinstance(dataset_json, dict):
        raise ExportError(f"{result_dir} has no plans.json / dataset.json (nor does the checkpoint)")

    trained_cfg = init_args.get("configuration")
    cfg_name = args.configuration or trained_cfg
    if cfg_name is None:
        parts = result_dir.name.split("__")
        cfg_name = parts[2] if len(parts) == 3 else "3d_fullres"
    if trained_cfg is not None and cfg_name != trained_cfg:
        raise ExportError(f"the checkpoint was trained as configuration {trained_cfg!r}, not {cfg_name!r}")
    cfg = resolve_configuration(plans, cfg_name)

    # What kneenode cannot run is refused before anything is built.
    names = label_names(dataset_json)
    in_channels = input_channels(dataset_json)
    previous = cfg.get("previous_stage")
    if previous and not args.cascade_from:
        raise ExportError(
            f"{cfg_name} is the second stage of a cascade: besides the image it takes the labels "
            f"{previous} predicted, one-hot, as {len(names) - 1} more input channels. Export {previous} "
            f"too (its own result folder, …__{previous}), register it, and give its registry name "
            "here with --cascade-from NAME"
        )
    if args.cascade_from and not previous:
        raise ExportError(
            f"--cascade-from: {cfg_name} is not the second stage of a cascade (its plans name no previous_stage)"
        )
    if previous:
        # nnU-Net appends one channel per foreground label (1..n-1, in order) of the previous
        # stage's segmentation to the image: kneenode's `cascade` does the same.
        in_channels += len(names) - 1
    patch_net = [int(p) for p in cfg["patch_size"]]
    if len(patch_net) != 3:
        raise ExportError(f"{cfg_name} is a {len(patch_net)}D configuration; kneenode's patch3d needs a 3D one")
    normalization = kneenode_normalization(cfg)
    code = orientation(args.orientation, plans, dataset_json)
    to_network = network_axes(plans.get("transpose_forward", [0, 1, 2]), plans.get("transpose_backward"))
    to_kneenode = inverse(to_network)
    spacing_net = [float(s) for s in cfg["spacing"]]
    spacing = [spacing_net[to_kneenode[c]] for c in range(3)]
    patch = [patch_net[to_kneenode[c]] for c in range(3)]
    allowed = checkpoint.get("inference_allowed_mirroring_axes")
    mirror = sorted(to_network[int(a)] for a in allowed) if allowed else []

    trainer_name = checkpoint.get("trainer_name", "nnUNetTrainer")
    network = None if args.no_nnunet else build_with_nnunetv2(
        trainer_name, plans, cfg_name, dataset_json, in_channels, len(names)
    )
    built_by = "nnunetv2's trainer"
    if network is None:
        network = build_from_plans(cfg, in_channels, len(names))
        built_by = "the plans"
    state = strip_wrapper_prefixes(checkpoint["network_weights"])
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(
            f"the checkpoint's weights do not fit the network built from {built_by} "
            f"({type(network).__name__}); a custom trainer may build another one (install nnunetv2 and "
            f"the trainer's code): {e}"
        ) from e
    disable_deep_supervision(network)
    network = network.float().eval()
    for p in network.parameters():
        p.requires_grad_(False)

    module = kneenode_order_module(network, to_network).eval()
    example = torch.randn([1, in_channels, *patch])
    with torch.no_grad(), quiet_torchscript():
        traced = torch.jit.trace(module, example, check_trace=False)
    strides = architecture(cfg)[1].get("strides")
    other_net = second_size(patch_net, strides)
    other = [other_net[to_kneenode[c]] for c in range(3)]
    diffs = [
        check_against_eager(module, traced, [1, in_channels, *patch], f"patch {patch}"),
        check_against_eager(module, traced, [1, in_channels, *other], f"size {other}"),
    ]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_file = out / "model.pt"
    with quiet_torchscript():
        traced.save(str(model_file))
        reloaded = torch.jit.load(str(model_file), map_location="cpu")
    diffs.append(check_against_eager(module, reloaded, [1, in_channels, *other], f"{model_file} reloaded"))

    fold_text = f"fold {args.fold}"
    plans_name = plans.get("plans_name", "nnUNetPlans")
    epoch = checkpoint.get("current_epoch")
    version = args.version or (
        f"{trainer_name}__{plans_name}__{cfg_name} {fold_text}" + (f", epoch {epoch}" if epoch is not None else "")
    )
    dataset_name = plans.get("dataset_name") or dataset_json.get("name") or result_dir.parent.name
    n_train = dataset_json.get("numTraining")
    trained_on = f"nnU-Net v2 {dataset_name}" + (f", {n_train} training cases" if n_train else "") + f", {fold_text}"
    strides_kn = None
    if strides:
        factor_net = [math.prod(int(s[a]) for s in strides) for a in range(3)]
        strides_kn = [factor_net[to_kneenode[c]] for c in range(3)]
    axis_names = "ijk"
    manifest = {
        "name": args.name or out.resolve().name,
        "version": version,
        "file": model_file.name,
        "num_classes": len(names),
        "in_channels": in_channels,
        "cascade": args.cascade_from,
        "spacing": spacing,
        "orientation": code,
        "patch_size": patch,
        "normalization": normalization,
        "mirror_axes": mirror,
        "trained_on": trained_on,
        "labels": names,
        "axes_note": ", ".join(axis_names[c].upper() for c in to_network),
        "divisible_note": (
            "multiples of " + " × ".join(map(str, strides_kn)) + " along i, j, k" if strides_kn else "see the plans"
        ),
    }
    norm_note = (
        "nnU-Net's ZScoreNormalization: (x − mean) / std over the whole volume, no mask, no clipping."
        if normalization == "zscore" else "nnU-Net's NoNormalization: intensities as they are."
    )
    mirror_note = (
        "The checkpoint's inference_allowed_mirroring_axes as i, j, k axes; kneenode mirrors only\n"
        "# with --tta (nnU-Net's predictor mirrors by default)."
        if mirror else "The checkpoint allows no mirroring at inference."
    )
    source = f"{result_dir.resolve().parent.name}/{result_dir.resolve().name}/{fold_path.name}/{args.checkpoint}"
    text = manifest_text(manifest, source, norm_note, mirror_note)
    (out / "manifest.toml").write_text(text)
    return {
        "out": out,
        "manifest": manifest,
        "built_by": built_by,
        "max_diff": max(diffs),
        "configuration": cfg_name,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="export_nnunet.py",
        description=(
            "Export a trained nnU-Net v2 model (its result folder) as TorchScript + a kneenode "
            "manifest that kneenode's patch3d inference runs."
        ),
        epilog=(
            "Refused, with the reason: several input images (channels), region-based labels, 2D "
            "configurations, and normalisations kneenode cannot reproduce (CTNormalization, "
            "z-score inside a nonzero mask). Afterwards add the model to dicom_config/models.toml: "
            '[models.NAME] manifest = "OUT/manifest.toml".'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("result_dir", metavar="RESULT_DIR",
                   help="nnU-Net's training output folder (TRAINER__PLANS__CONFIGURATION) with plans.json, "
                        "dataset.json and fold_N/")
    p.add_argument("--out", required=True, help="output folder (created): model.pt and manifest.toml")
    p.add_argument("--fold", default="0", help="which fold's checkpoint: a number, or 'all' for fold_all (default 0)")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                   help=f"checkpoint file in the fold folder (default {DEFAULT_CHECKPOINT})")
    p.add_argument("--name", help="model name in the manifest (default: the --out folder's name)")
    p.add_argument("--orientation", metavar="CODE", help=ORIENTATION_HELP)
    p.add_argument("--configuration",
                   help="plans configuration (default: the checkpoint's, normally 3d_fullres)")
    p.add_argument("--version",
                   help="version string shown in results (default: trainer__plans__configuration, fold, epoch)")
    p.add_argument("--cascade-from", metavar="NAME",
                   help="for the second stage of a cascade (3d_cascade_fullres): the registry name of its "
                        "first stage (3d_lowres), exported with this script from its own result folder")
    p.add_argument("--no-nnunet", action="store_true",
                   help="build the network from the plans even if nnunetv2 is installed")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = export(args)
    except ExportError as e:
        print(f"export_nnunet: error: {e}", file=sys.stderr)
        return 2
    m = result["manifest"]
    out = result["out"].resolve()
    print(
        f"exported {m['name']} ({result['configuration']}, network built from {result['built_by']}): "
        f"{m['num_classes']} classes, patch {m['patch_size']}, spacing {m['spacing']} mm, orientation "
        f"{m['orientation']}, normalization {m['normalization']}, mirror axes {m['mirror_axes']}; "
        f"TorchScript vs eager max |diff| {result['max_diff']:.2e}"
    )
    print(f"wrote {out / 'model.pt'} and {out / 'manifest.toml'}; register it in dicom_config/models.toml:")
    key = m["name"] if re.fullmatch(r"[A-Za-z0-9_-]+", m["name"]) else toml_string(m["name"])
    print(f"[models.{key}]\nmanifest = {toml_string(str(out / 'manifest.toml'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
