"""Writes the tiny TorchScript models the integration tests use (committed under tests/data/models).

- slow: a "segmentation model" whose forward pass loops for days, for the worker's timeout,
  crash and cancel tests. It has the demo model's interface (1 channel in, 10 out).
- analytic/: closed-form "segmentation models" for the slice2d, ensemble and cascade tests
  (tests/it/ensemble.rs). Each works on 2D input (N, C, H, W) and 3D input (N, C, I, J, K) alike:
  - intensity.pt: an intensity classifier, logits −(x − c_k)² for class centres c_k = k
    (k = 0..9), so an image whose voxels hold their label's number segments to itself;
  - intensity_bad12.pt: the same with c_1 = 1.9 and c_2 = 100, i.e. it says 1 where the truth
    is 1 or 2 and never says 2 (a coronal model that is wrong only on a label it is not
    trusted for);
  - constant7.pt: says 7 everywhere (a broken model that fusion must outvote);
  - colmax.pt (2D only): the intensity classifier applied to the maximum of each column
    (over H), so its output depends on which axes form the slice;
  - onehot.pt: the second stage of a cascade that returns its one-hot input channels as
    logits, 10 · [1 − Σ onehot, onehot_1, …] (channel 0, the image, is ignored), so a cascade
    reproduces its first stage's labels exactly, in label order.

Every file is a few KB. Run with the libtorch venv's python:
    ~/.cache/kneenode/torch-2.11.0/bin/python tools/make_test_models.py
"""
from pathlib import Path
from typing import List

import torch


class Slow(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for _ in range(1_000_000_000):
            y = y * 1.0
        return y.expand(x.shape[0], 10, x.shape[2], x.shape[3], x.shape[4])


def _class_shape(x: torch.Tensor) -> List[int]:
    """(1, -1, 1, …): a per-class vector broadcast over x's batch and spatial axes."""
    shape = [1, -1]
    for _ in range(x.dim() - 2):
        shape.append(1)
    return shape


class Intensity(torch.nn.Module):
    def __init__(self, centres: List[float]) -> None:
        super().__init__()
        self.register_buffer("centres", torch.tensor(centres, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.centres.view(_class_shape(x))
        return -((x[:, :1] - c) ** 2)


class Constant(torch.nn.Module):
    def __init__(self, label: int, classes: int) -> None:
        super().__init__()
        logits = torch.zeros(classes)
        logits[label] = 10.0
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.view(_class_shape(x)) + 0.0 * x[:, :1]


class ColumnMax(torch.nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.register_buffer("centres", torch.arange(classes, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        column = x[:, :1].amax(dim=2, keepdim=True)
        logits = -((column - self.centres.view(1, -1, 1, 1)) ** 2)
        return logits.expand(x.shape[0], self.centres.shape[0], x.shape[2], x.shape[3])


class OneHotPassthrough(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        onehot = x[:, 1:]
        background = 1.0 - onehot.sum(dim=1, keepdim=True)
        return 10.0 * torch.cat([background, onehot], dim=1)


def main() -> None:
    root = Path(__file__).resolve().parent.parent / "tests" / "data" / "models"
    out = root / "slow"
    out.mkdir(parents=True, exist_ok=True)
    torch.jit.script(Slow()).save(str(out / "slow.pt"))
    print(f"wrote {out / 'slow.pt'}")

    analytic = root / "analytic"
    analytic.mkdir(parents=True, exist_ok=True)
    centres = [float(k) for k in range(10)]
    bad = list(centres)
    bad[1], bad[2] = 1.9, 100.0
    models = {
        "intensity.pt": Intensity(centres),
        "intensity_bad12.pt": Intensity(bad),
        "constant7.pt": Constant(7, 10),
        "colmax.pt": ColumnMax(10),
        "onehot.pt": OneHotPassthrough(),
    }
    for name, module in models.items():
        torch.jit.script(module.eval()).save(str(analytic / name))
        print(f"wrote {analytic / name}")


if __name__ == "__main__":
    main()
