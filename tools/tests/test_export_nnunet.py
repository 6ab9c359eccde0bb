#!/usr/bin/env python3
"""Tests of tools/export_nnunet.py on fake nnU-Net v2 result folders (tools/tests/nnunet_fixture.py).

    ~/.cache/kneenode/torch-2.11.0/bin/python tools/tests/test_export_nnunet.py [-v]

Needs PyPI's dynamic-network-architectures in that python (tools/tests/nnunet-deps.sh installs
it). The Rust integration test tests/it/export_nnunet.rs runs an exported model through
`kneenode run`.

The central check: the exported TorchScript, fed a random volume in kneenode's (i, j, k) order,
returns what nnU-Net's network returns for the same volume read the way nnU-Net reads it
(SimpleITK's (k, j, i) array, then transpose_forward, and back with transpose_backward), on the
patch size and on a non-cubic size, for plans whose axis mapping is a 3-cycle (so that a missing
reversal, a forward/backward mix-up or an inverted permutation all give other outputs; the test
checks that they would).
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
TOOLS = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(TOOLS))

import export_nnunet  # noqa: E402
import nnunet_fixture as fx  # noqa: E402

#: The fields of kneenode's `Manifest` (src/pipeline/models.rs) a patch3d manifest may use (the
#: cascade's `cascade` aside); unknown keys would land in the unread `extra` table, so the
#: exporter must write none.
MANIFEST_FIELDS = {
    "name", "kind", "version", "file", "in_channels", "num_classes", "spacing", "orientation",
    "patch_size", "normalization", "mirror_axes", "trained_on", "labels", "latent_size", "surfaces",
    "bscore",
}

KNEENODE_NAMES = [name for name, _ in sorted(fx.KNEENODE_LABELS.items(), key=lambda kv: kv[1])]


def load(model_file: Path):
    with export_nnunet.quiet_torchscript():
        return torch.jit.load(str(model_file), map_location="cpu")


def export(result_dir: Path, out: Path, *extra: str) -> dict:
    """Runs the exporter in this process; returns the parsed manifest."""
    with contextlib.redirect_stdout(io.StringIO()):
        code = export_nnunet.main([str(result_dir), "--out", str(out), *extra])
    assert code == 0, f"exporter exit {code}"
    return tomllib.loads((out / "manifest.toml").read_text())


def refusal(result_dir: Path, out: Path, *extra: str) -> str:
    """Runs the exporter expecting a refusal; returns its message."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = export_nnunet.main([str(result_dir), "--out", str(out), *extra])
    assert code == 2, f"exporter exit {code}, expected a refusal (2)"
    assert not (out / "manifest.toml").exists(), "a refused export wrote a manifest"
    return err.getvalue()


class ExportTest(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.tmp = Path(self._tmp.name)
        torch.manual_seed(0)

    def tearDown(self) -> None:
        self._tmp.cleanup()

    def assert_matches_nnunet(self, result_dir: Path, model_file: Path, sizes: list[tuple[int, int, int]],
                              fold: str = "0", channels: int = 1) -> None:
        scripted = load(model_file)
        for size in sizes:
            x = torch.randn(1, channels, *size)
            with torch.no_grad():
                got = scripted(x)[0].numpy()
            want = fx.reference_logits(result_dir, x[0].numpy(), fold)
            self.assertEqual(got.shape, want.shape, f"size {size}")
            diff = float(np.abs(got - want).max())
            self.assertLess(diff, 1e-4, f"size {size}: TorchScript vs nnU-Net's network differ by {diff}")

    def test_current_plans_with_compiled_prefix(self) -> None:
        # transpose_forward [0, 2, 1]: network axes are kneenode's (k, i, j), a 3-cycle.
        res = fx.make_result(self.tmp / "res", kn_spacing=(0.6, 0.5, 3.0), kn_patch=(64, 64, 48),
                             transpose_forward=(0, 2, 1), wrapper_prefix="_orig_mod.", mirror_axes_net=(1, 2))
        ckpt = torch.load(res / "fold_0" / "checkpoint_final.pth", weights_only=False)
        self.assertTrue(all(k.startswith("_orig_mod.") for k in ckpt["network_weights"]))
        m = export(res, self.tmp / "out" / "knee", "--orientation", "PIR")

        self.assertLessEqual(set(m), MANIFEST_FIELDS)
        self.assertEqual(m["name"], "knee")
        self.assertEqual(m["kind"], "patch3d")
        self.assertEqual(m["version"], "nnUNetTrainer__nnUNetPlans__3d_fullres fold 0, epoch 1000")
        self.assertEqual(m["file"], "model.pt")
        self.assertEqual(m["in_channels"], 1)
        self.assertEqual(m["num_classes"], 10)
        # The plans hold spacing [3.0, 0.6, 0.5] and patch [48, 64, 64] in network order.
        plans_cfg = ckpt["init_args"]["plans"]["configurations"]["3d_fullres"]
        self.assertEqual(plans_cfg["spacing"], [3.0, 0.6, 0.5])
        self.assertEqual(plans_cfg["patch_size"], [48, 64, 64])
        self.assertEqual(m["spacing"], [0.6, 0.5, 3.0])
        self.assertEqual(m["patch_size"], [64, 64, 48])
        self.assertEqual(m["orientation"], "PIR")
        self.assertEqual(m["normalization"], "zscore")
        # Network axes 1 and 2 are kneenode's i and j.
        self.assertEqual(m["mirror_axes"], [0, 1])
        self.assertIn("Dataset999_KneeFixture", m["trained_on"])
        self.assertEqual(m["labels"], {str(i): n for i, n in enumerate(KNEENODE_NAMES)})

        model = self.tmp / "out" / "knee" / "model.pt"
        # The patch, and a non-cubic size the network's downsampling (8, 8, 4 along i, j, k) divides.
        self.assert_matches_nnunet(res, model, [(64, 64, 48), (40, 56, 20)])

        # The same comparison would catch wrong axes: every other mapping gives other logits.
        scripted = load(model)
        net, plans = fx.eager_network(res)
        x = torch.randn(1, 1, 48, 48, 48)  # cubic, so every permutation runs
        with torch.no_grad():
            got = scripted(x)
            for into in ([0, 1, 2], [0, 2, 1], [2, 1, 0], [1, 2, 0], [1, 0, 2]):  # all but the right [2, 0, 1]
                back = [into.index(c) for c in range(3)]
                wrong = net(x.permute(0, 1, *[2 + c for c in into])).permute(0, 1, *[2 + a for a in back])
                self.assertGreater(float((wrong - got).abs().max()), 0.1, f"mapping {into} is indistinguishable")

    def test_old_plans_format_with_ddp_prefix(self) -> None:
        # transpose_forward [1, 0, 2] (another 3-cycle after the reversal), early-v2 plans keys.
        res = fx.make_result(self.tmp / "res", kn_spacing=(0.4, 2.5, 0.45), kn_patch=(48, 40, 64),
                             transpose_forward=(1, 0, 2), plans_format="old", wrapper_prefix="module.",
                             mirror_axes_net=None)
        m = export(res, self.tmp / "out", "--orientation", "las", "--name", "old-plans", "--version", "7")
        self.assertEqual((m["name"], m["version"], m["orientation"]), ("old-plans", "7", "LAS"))
        self.assertEqual(m["spacing"], [0.4, 2.5, 0.45])
        self.assertEqual(m["patch_size"], [48, 40, 64])
        self.assertEqual(m["mirror_axes"], [])
        self.assertLessEqual(set(m), MANIFEST_FIELDS)
        self.assert_matches_nnunet(res, self.tmp / "out" / "model.pt", [(48, 40, 64), (56, 36, 72)])

    def test_residual_encoder_unet_fold_all(self) -> None:
        res = fx.make_result(self.tmp / "res", kn_spacing=(1.0, 1.0, 1.0), kn_patch=(32, 48, 40),
                             transpose_forward=(2, 0, 1), network="ResidualEncoderUNet", folds=("all",))
        m = export(res, self.tmp / "out", "--orientation", "RAS", "--fold", "all")
        self.assertIn("fold all", m["version"])
        self.assertEqual(m["patch_size"], [32, 48, 40])
        self.assertEqual(m["mirror_axes"], [0, 1, 2])
        self.assert_matches_nnunet(res, self.tmp / "out" / "model.pt", [(32, 48, 40), (24, 40, 32)], "all")

    def test_nibabel_reorienting_reader_means_ras(self) -> None:
        res = fx.make_result(self.tmp / "res", kn_patch=(32, 32, 24), reader="NibabelIOWithReorient")
        self.assertEqual(export(res, self.tmp / "out")["orientation"], "RAS")
        self.assertIn("reorients them to RAS", refusal(res, self.tmp / "out2", "--orientation", "PIR"))

    def test_refusals(self) -> None:
        cases = [
            # (fixture options, exporter flags, words the message must hold)
            (dict(normalization="CTNormalization"), [], ["CTNormalization", "zscore"]),
            (dict(normalization="RescaleTo01Normalization"), [], ["RescaleTo01Normalization"]),
            (dict(use_mask_for_norm=True), [], ["use_mask_for_norm", "whole"]),
            (dict(channels=2), [], ["2 input channels", "one"]),
            (dict(labels={"background": 0, "femur": [1, 2], "femoral cartilage": 2}), [],
             ["region-based", "femur"]),
            (dict(labels={"background": 0, "femur": 1, "tibia": 3}), [], ["0, 1, …, n-1"]),
            (dict(), ["--orientation", "PIX"], ["PIX", "L/R"]),
            (dict(), [], ["--orientation is required"]),
            (dict(), ["--fold", "3"], ["fold_3", "fold_0"]),
            (dict(), ["--configuration", "3d_lowres"], ["3d_fullres", "3d_lowres"]),
        ]
        for i, (options, flags, words) in enumerate(cases):
            with self.subTest(options=options, flags=flags):
                res = fx.make_result(self.tmp / f"res{i}", kn_patch=(32, 32, 24), **options)
                if "--orientation" not in flags and words != ["--orientation is required"]:
                    flags = [*flags, "--orientation", "PIR"]
                message = refusal(res, self.tmp / f"out{i}", *flags)
                for w in words:
                    self.assertIn(w, message)

    def test_cascade_second_stage(self) -> None:
        res = fx.make_result(self.tmp / "res", kn_patch=(32, 32, 24), cascade=True, transpose_forward=(1, 0, 2))
        message = refusal(res, self.tmp / "out", "--orientation", "PIR")
        self.assertIn("second stage of a cascade", message)
        self.assertIn("--cascade-from", message)
        m = export(res, self.tmp / "out", "--orientation", "PIR", "--cascade-from", "knee_lowres")
        self.assertLessEqual(set(m), MANIFEST_FIELDS | {"cascade"})
        self.assertEqual((m["cascade"], m["in_channels"], m["num_classes"]), ("knee_lowres", 10, 10))
        self.assertIn("3d_cascade_fullres", m["version"])
        # The image and nine one-hot channels, permuted like the image.
        self.assert_matches_nnunet(res, self.tmp / "out" / "model.pt", [(32, 32, 24), (24, 40, 16)], channels=10)
        plain = fx.make_result(self.tmp / "plain", kn_patch=(32, 32, 24))
        self.assertIn("not the second stage", refusal(plain, self.tmp / "out2", "--orientation", "PIR",
                                                      "--cascade-from", "x"))

    def test_command_line(self) -> None:
        """As a user runs it: exit 0 and the registry lines; exit 2 and one clear line on refusal."""
        res = fx.make_result(self.tmp / "res", kn_patch=(32, 32, 24))
        script = str(TOOLS / "export_nnunet.py")
        ok = subprocess.run([sys.executable, script, str(res), "--out", str(self.tmp / "m"), "--orientation", "PIR"],
                            capture_output=True, text=True)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        self.assertIn("[models.m]", ok.stdout)
        bad = subprocess.run([sys.executable, script, str(res), "--out", str(self.tmp / "n")],
                             capture_output=True, text=True)
        self.assertEqual(bad.returncode, 2)
        self.assertTrue(bad.stderr.startswith("export_nnunet: error: --orientation is required"), bad.stderr)
        self.assertNotIn("Traceback", bad.stderr)


if __name__ == "__main__":
    unittest.main()
