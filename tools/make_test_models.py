"""Writes the tiny TorchScript models the integration tests use (committed under tests/data/models).

- slow: a "segmentation model" whose forward pass loops for days, for the worker's timeout,
  crash and cancel tests. It has the demo model's interface (1 channel in, 10 out).

Run with the libtorch venv's python:  ~/.cache/kneenode/torch-2.11.0/bin/python tools/make_test_models.py
"""
from pathlib import Path

import torch


class Slow(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for _ in range(1_000_000_000):
            y = y * 1.0
        return y.expand(x.shape[0], 10, x.shape[2], x.shape[3], x.shape[4])


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "tests" / "data" / "models" / "slow"
    out.mkdir(parents=True, exist_ok=True)
    torch.jit.script(Slow()).save(str(out / "slow.pt"))
    print(f"wrote {out / 'slow.pt'}")


if __name__ == "__main__":
    main()
