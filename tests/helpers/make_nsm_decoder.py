"""Writes the analytic NSM decoder the tests use (tests/data/models/nsm-analytic/): a TorchScript
module with the NSM contract's interface (/tmp/nsm/CONTRACT.md),

    forward(latent[1, 6], xyz[N, 3]) -> sdf[N, 2]   (column 0 femur, column 1 femoral cartilage)

whose surfaces are ellipsoids with closed-form shape parameters, so a test knows what a fit
should find:

- z0: log of a uniform scale of everything (the normalisation and the ICP's scale absorb it,
  so the BScore vectors leave it out);
- z1, z2: log-stretch of the bone's y and z radii (0.8, 0.6, 0.45);
- z3, z4: cartilage centre offset along x and y (from (0, 0, -0.3));
- z5: log of the cartilage's size (radii 0.6, 0.45, 0.3).

The SDF is the first-order ellipsoid distance f/|grad f| through a tanh (values in (-1, 1), as a
trained decoder's final activation gives). One parameter (an output offset, 0) is left trainable
on purpose: kneenode must freeze it when it loads the model.

Run with the libtorch venv's python:
    ~/.cache/kneenode/torch-2.11.0/bin/python tests/helpers/make_nsm_decoder.py [OUT_DIR]
"""
import math
import sys
from pathlib import Path

import torch


class AnalyticKnee(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("bone_radii", torch.tensor([0.8, 0.6, 0.45]))
        self.register_buffer("cart_center", torch.tensor([0.0, 0.0, -0.3]))
        self.register_buffer("cart_radii", torch.tensor([0.6, 0.45, 0.3]))
        self.offset = torch.nn.Parameter(torch.zeros(1))

    @staticmethod
    def ellipsoid(p: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
        k0 = (p / radii).square().sum(dim=1).clamp_min(1e-12).sqrt()
        k1 = (p / (radii * radii)).square().sum(dim=1).clamp_min(1e-12).sqrt()
        return k0 * (k0 - 1.0) / k1

    def forward(self, latent: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        z = latent[0]
        scale = torch.exp(z[0])
        p = xyz / scale
        ones = torch.ones_like(z[0])
        bone_r = self.bone_radii * torch.stack([ones, torch.exp(z[1]), torch.exp(z[2])])
        cart_c = self.cart_center + 0.3 * torch.stack([z[3], z[4], torch.zeros_like(z[0])])
        cart_r = self.cart_radii * torch.exp(z[5])
        bone = self.ellipsoid(p, bone_r) * scale
        cart = self.ellipsoid(p - cart_c, cart_r) * scale
        return torch.tanh(torch.stack([bone, cart], dim=1)) + self.offset


def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


MANIFEST = """# An analytic NSM decoder for tests (tests/helpers/make_nsm_decoder.py): ellipsoids whose
# radii and position follow the latent in closed form. Not a model of real knees.
name = "nsm-analytic"
kind = "nsm"
version = "1"
file = "nsm.pt"
latent_size = 6
surfaces = ["femur", "femoral_cartilage"]
trained_on = "nothing: analytic ellipsoids"

[bscore.bone_and_cart]
vector = {bac}
mean_healthy = -0.1
std_healthy = 0.2

[bscore.bone_only]
vector = {bo}
mean_healthy = 0.0
std_healthy = 0.2
"""


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "data" / "models" / "nsm-analytic"
    out.mkdir(parents=True, exist_ok=True)
    module = torch.jit.script(AnalyticKnee())
    module.save(str(out / "nsm.pt"))
    bac = unit([0.0, 1.0, -1.0, 0.5, 0.0, 0.5])
    bo = unit([0.0, 1.0, -1.0, 0.0, 0.0, 0.0])
    fmt = lambda v: "[" + ", ".join(repr(x) for x in v) + "]"
    (out / "manifest.toml").write_text(MANIFEST.format(bac=fmt(bac), bo=fmt(bo)))
    # A self-check: the mean shape's bone surface passes through (0.8, 0, 0).
    with torch.no_grad():
        sdf = module(torch.zeros(1, 6), torch.tensor([[0.8, 0.0, 0.0], [0.0, 0.0, -0.6]]))
    assert abs(float(sdf[0, 0])) < 1e-6 and abs(float(sdf[1, 1])) < 1e-6, sdf
    print(f"wrote {out / 'nsm.pt'} and {out / 'manifest.toml'}")


if __name__ == "__main__":
    main()
