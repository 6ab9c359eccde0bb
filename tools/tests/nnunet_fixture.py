#!/usr/bin/env python3
"""A fake nnU-Net v2 result folder with a randomly initialised network, and a reference prediction.

Real nnU-Net weights cannot be had here, so tools/export_nnunet.py is tested on networks of
nnU-Net's exact shape (built with dynamic-network-architectures, nnU-Net's own architecture
package) saved the way nnU-Net's trainer saves them. Used by tools/tests/test_export_nnunet.py
and by the Rust integration test tests/it/export_nnunet.rs:

    python tools/tests/nnunet_fixture.py make RESULT_DIR --kn-spacing 2 2 2.5 --kn-patch 64 64 48 \\
        [--transpose-forward 0 2 1] [--seed 0]
    python tools/tests/nnunet_fixture.py predict RESULT_DIR IMAGE.f32 I J K LABELS.u8 [--fold 0]

`predict` is what nnU-Net would compute for an image already on the model's grid and normalised
the way kneenode does it (whole-volume z-score, unbiased std): IMAGE.f32 is float32 voxels, i
fastest (kneenode's storage order); LABELS.u8 gets the argmax, i fastest. It goes through
nnU-Net's own conventions, written out independently of the exporter: the image as SimpleITK
returns it ((k, j, i) array), `transpose(transpose_forward)`, the network, and back with
`transpose(transpose_backward)` as nnU-Net's export_prediction does.

kneenode orders (i, j, k) everywhere here; "net" order is the network's (transposed) order.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

#: kneenode's label map (DOMAIN.md), as nnU-Net's dataset.json writes labels: name → value.
KNEENODE_LABELS = {
    "background": 0,
    "patellar cartilage": 1,
    "femoral cartilage": 2,
    "medial tibial cartilage": 3,
    "lateral tibial cartilage": 4,
    "medial meniscus": 5,
    "lateral meniscus": 6,
    "femur": 7,
    "tibia": 8,
    "patella": 9,
}

CLASS_PATHS = {
    "PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}


def to_net_order(values_kn, transpose_forward):
    """A per-axis (i, j, k) quantity in nnU-Net's network order, the way nnU-Net gets there:
    SimpleITK reports the array (and its spacing) as (k, j, i), then transpose_forward."""
    as_read = list(values_kn)[::-1]
    return [as_read[a] for a in transpose_forward]


def arch_kwargs(n_stages: int, features: list[int], strides_net, kernels_net, residual: bool) -> dict:
    per_stage = "n_blocks_per_stage" if residual else "n_conv_per_stage"
    return {
        "n_stages": n_stages,
        "features_per_stage": features,
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": kernels_net,
        "strides": strides_net,
        per_stage: [1, 2, 2, 2][:n_stages] if residual else [2] * n_stages,
        "n_conv_per_stage_decoder": [1] * (n_stages - 1) if residual else [2] * (n_stages - 1),
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


def instantiate(class_name: str, kwargs: dict, in_channels: int, num_classes: int, deep_supervision: bool):
    """The network as nnU-Net's get_network_from_plans builds it (then He-initialised as there)."""
    import dynamic_network_architectures.architectures.unet as unet

    resolved = dict(kwargs)
    resolved["conv_op"] = torch.nn.Conv3d
    resolved["norm_op"] = torch.nn.InstanceNorm3d
    resolved["nonlin"] = torch.nn.LeakyReLU
    cls = getattr(unet, class_name.rsplit(".", 1)[-1])
    net = cls(input_channels=in_channels, num_classes=num_classes, deep_supervision=deep_supervision, **resolved)
    net.apply(net.initialize)
    return net


def make_result(
    result_dir: Path,
    *,
    kn_spacing=(0.6, 0.5, 3.0),
    kn_patch=(64, 64, 48),
    transpose_forward=(0, 2, 1),
    network: str = "PlainConvUNet",
    plans_format: str = "current",
    wrapper_prefix: str = "",
    normalization: str = "ZScoreNormalization",
    use_mask_for_norm: bool = False,
    channels: int = 1,
    labels: dict | None = None,
    mirror_axes_net=(0, 1, 2),
    folds=("0",),
    configuration: str = "3d_fullres",
    cascade: bool = False,
    reader: str = "SimpleITKIO",
    seed: int = 0,
    boost_logits: float = 1.0,
) -> Path:
    """Writes plans.json, dataset.json and fold_*/checkpoint_final.pth as nnU-Net v2 does."""
    tf = [int(a) for a in transpose_forward]
    tb = [tf.index(a) for a in range(3)]
    spacing_net = [float(s) for s in to_net_order(kn_spacing, tf)]
    patch_net = [int(p) for p in to_net_order(kn_patch, tf)]
    # nnU-Net's planner puts the coarsest axis first (transpose_forward) and, for an anisotropic
    # grid, does not downsample it at the first pooling and uses 1×3×3 kernels there.
    n_stages = 4
    strides_net = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    kernels_net = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    features = [8, 16, 32, 64]
    residual = network == "ResidualEncoderUNet"
    kwargs = arch_kwargs(n_stages, features, strides_net, kernels_net, residual)
    labels = dict(KNEENODE_LABELS if labels is None else labels)
    regions = any(isinstance(v, list) and len(v) > 1 for v in labels.values())
    num_outputs = (
        len([v for v in labels.values() if isinstance(v, list)]) if regions
        else len([k for k in labels if k != "ignore"])
    )

    cfg = {
        "data_identifier": f"nnUNetPlans_{configuration}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": patch_net,
        "median_image_size_in_voxels": [p * 2 for p in patch_net],
        "spacing": spacing_net,
        "normalization_schemes": [normalization] * channels,
        "use_mask_for_norm": [use_mask_for_norm] * channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        "batch_dice": False,
    }
    if plans_format == "current":
        cfg["architecture"] = {
            "network_class_name": CLASS_PATHS[network],
            "arch_kwargs": kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        }
    elif plans_format == "old":
        # Early nnU-Net v2 plans (before the `architecture` block).
        cfg.update({
            "UNet_class_name": network,
            "UNet_base_num_features": features[0],
            "unet_max_num_features": features[-1],
            "n_conv_per_stage_encoder": kwargs["n_blocks_per_stage" if residual else "n_conv_per_stage"],
            "n_conv_per_stage_decoder": kwargs["n_conv_per_stage_decoder"],
            "num_pool_per_axis": [sum(1 for s in strides_net if s[a] > 1) for a in range(3)],
            "pool_op_kernel_sizes": strides_net,
            "conv_kernel_sizes": kernels_net,
        })
    else:
        raise ValueError(plans_format)
    configurations = {configuration: cfg}
    if configuration != "3d_fullres":
        configurations["3d_fullres"] = copy.deepcopy(cfg)
    net_channels = channels
    if cascade:
        # As nnU-Net's planner writes a cascade: the full-res stage inherits everything from
        # 3d_fullres and names its first stage; it gets one more channel per foreground label.
        configuration = "3d_cascade_fullres"
        configurations = {"3d_fullres": cfg, "3d_lowres": copy.deepcopy(cfg),
                          configuration: {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}
        configurations["3d_lowres"]["next_stage"] = configuration
        net_channels = channels + num_outputs - 1
    plans = {
        "dataset_name": "Dataset999_KneeFixture",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing_net,
        "original_median_shape_after_transp": [p * 2 for p in patch_net],
        "image_reader_writer": reader,
        "transpose_forward": tf,
        "transpose_backward": tb,
        "configurations": configurations,
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(c): {"max": 1000.0, "mean": 300.0, "median": 290.0, "min": 0.0, "percentile_00_5": 10.0,
                     "percentile_99_5": 900.0, "std": 120.0}
            for c in range(channels)
        },
    }
    dataset_json = {
        "channel_names": {str(c): ["MRI", "T2"][c % 2] for c in range(channels)},
        "labels": labels,
        "numTraining": 12,
        "file_ending": ".nii.gz",
        "name": "KneeFixture",
    }
    if regions:
        dataset_json["regions_class_order"] = list(range(1, num_outputs + 1))

    result_dir.mkdir(parents=True, exist_ok=True)
    (result_dir / "plans.json").write_text(json.dumps(plans, indent=4))
    (result_dir / "dataset.json").write_text(json.dumps(dataset_json, indent=4))
    for i, fold in enumerate(folds):
        torch.manual_seed(seed + i)
        # Training runs with deep supervision; the state dict is the same either way (the
        # decoder always builds every segmentation head).
        net = instantiate(CLASS_PATHS[network], kwargs, net_channels, num_outputs, deep_supervision=True)
        if boost_logits != 1.0:
            with torch.no_grad():
                for p in net.decoder.seg_layers[-1].parameters():
                    p.mul_(boost_logits)
        weights = {wrapper_prefix + k: v for k, v in net.state_dict().items()}
        # Exactly the keys nnUNetTrainer.save_checkpoint writes (nnunetv2 2.8.1).
        checkpoint = {
            "network_weights": weights,
            "optimizer_state": {"state": {}, "param_groups": []},
            "grad_scaler_state": None,
            "logging": {"mean_fg_dice": [0.1], "ema_fg_dice": [0.1], "train_losses": [1.0],
                        "val_losses": [1.0], "lrs": [0.01], "epoch_start_timestamps": [0.0],
                        "epoch_end_timestamps": [1.0], "dice_per_class_or_region": [[0.1]]},
            "_best_ema": 0.1,
            "current_epoch": 1000,
            "init_args": {"plans": plans, "configuration": configuration,
                          "fold": fold if fold == "all" else int(fold),
                          "dataset_json": dataset_json, "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": tuple(mirror_axes_net) if mirror_axes_net is not None else None,
        }
        d = result_dir / f"fold_{fold}"
        d.mkdir(exist_ok=True)
        torch.save(checkpoint, d / "checkpoint_final.pth")
    return result_dir


def eager_network(result_dir: Path, fold: str = "0"):
    """The fixture's network with the checkpoint's weights, deep supervision off."""
    checkpoint = torch.load(result_dir / f"fold_{fold}" / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    plans = checkpoint["init_args"]["plans"]
    cfg = dict(plans["configurations"][checkpoint["init_args"]["configuration"]])
    while "inherits_from" in cfg:
        cfg = {**plans["configurations"][cfg.pop("inherits_from")], **cfg}
    arch = cfg["architecture"] if "architecture" in cfg else None
    if arch is None:
        residual = cfg["UNet_class_name"] == "ResidualEncoderUNet"
        kwargs = arch_kwargs(len(cfg["n_conv_per_stage_encoder"]),
                             [min(cfg["UNet_base_num_features"] * 2**s, cfg["unet_max_num_features"])
                              for s in range(len(cfg["n_conv_per_stage_encoder"]))],
                             cfg["pool_op_kernel_sizes"], cfg["conv_kernel_sizes"], residual)
        class_name = CLASS_PATHS[cfg["UNet_class_name"]]
    else:
        kwargs, class_name = arch["arch_kwargs"], arch["network_class_name"]
    ds = checkpoint["init_args"]["dataset_json"]
    n_out = len([k for k in ds["labels"] if k != "ignore"])
    channels = len(ds["channel_names"]) + (n_out - 1 if cfg.get("previous_stage") else 0)
    net = instantiate(class_name, kwargs, channels, n_out, deep_supervision=False)
    weights = {}
    for k, v in checkpoint["network_weights"].items():
        for prefix in ("module.", "_orig_mod."):
            k = k[len(prefix):] if k.startswith(prefix) else k
        weights[k] = v
    net.load_state_dict(weights)
    return net.eval(), plans


def reference_logits(result_dir: Path, image_kn: np.ndarray, fold: str = "0") -> np.ndarray:
    """nnU-Net's logits (classes, I, J, K) for an (I, J, K) or (C, I, J, K) image that is already
    preprocessed (for a cascade: the image, then the previous stage's one-hot channels)."""
    net, plans = eager_network(result_dir, fold)
    tf, tb = plans["transpose_forward"], plans["transpose_backward"]
    image = image_kn[None] if image_kn.ndim == 3 else image_kn
    as_read = image.transpose(0, 3, 2, 1)  # SimpleITK.GetArrayFromImage: (k, j, i) per channel
    data = as_read.transpose([0] + [a + 1 for a in tf])  # DefaultPreprocessor.run_case_npy
    with torch.no_grad():
        logits = net(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None])[0].numpy()
    back = logits.transpose([0] + [a + 1 for a in tb])  # export_prediction: revert transpose
    return back.transpose(0, 3, 2, 1)  # (C, k, j, i) array → kneenode (C, i, j, k)


def zscore_like_kneenode(image: np.ndarray) -> np.ndarray:
    x = image.astype(np.float64)
    return ((x - x.mean()) / max(x.std(ddof=1), 1e-8)).astype(np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write a fake result folder")
    m.add_argument("result_dir", type=Path)
    m.add_argument("--kn-spacing", type=float, nargs=3, required=True)
    m.add_argument("--kn-patch", type=int, nargs=3, required=True)
    m.add_argument("--transpose-forward", type=int, nargs=3, default=[0, 2, 1])
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--boost-logits", type=float, default=1.0,
                   help="scale the last segmentation head (more classes win somewhere)")
    r = sub.add_parser("predict", help="nnU-Net's labels for a preprocessed-by-kneenode image")
    r.add_argument("result_dir", type=Path)
    r.add_argument("image", type=Path)
    r.add_argument("dims", type=int, nargs=3)
    r.add_argument("labels", type=Path)
    r.add_argument("--fold", default="0")
    a = p.parse_args(argv)
    if a.cmd == "make":
        make_result(a.result_dir, kn_spacing=a.kn_spacing, kn_patch=a.kn_patch,
                    transpose_forward=a.transpose_forward, seed=a.seed, boost_logits=a.boost_logits)
        print(f"wrote {a.result_dir}")
        return 0
    i, j, k = a.dims
    # i fastest on disk: a Fortran-ordered (I, J, K) array.
    image = np.fromfile(a.image, dtype="<f4").reshape((i, j, k), order="F")
    logits = reference_logits(a.result_dir, zscore_like_kneenode(image), a.fold)
    labels = logits.argmax(0).astype(np.uint8)
    labels.reshape(-1, order="F").tofile(a.labels)
    counts = np.bincount(labels.ravel(), minlength=logits.shape[0])
    print(f"labels per class: {counts.tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
