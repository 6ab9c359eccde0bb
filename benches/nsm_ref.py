"""The reference side of benches/nsm.sh: the NSM latent fit as a plain PyTorch loop.

    python benches/nsm_ref.py --manifest M --case CASE.json --steps N [--warmup W] [--device cpu]

Reads the case `kneenode bench nsm` wrote (initial latent, schedule, each surface's column and
points), loads the same TorchScript decoder, freezes its parameters, and runs the contract's
loop on all the points every step: forward, gather each point's column, L1 of the SDF clamped
to +-clamp (target 0), backward, torch.optim.Adam with lr = lr0 * (1/decay)^(step // every),
loss.item() (keeping the latent of the lowest loss, as kneenode does). Untimed warm-up steps first, from a copy of the latent. Prints one JSON line like
kneenode's.
"""
import argparse
import json
import time
import tomllib
from pathlib import Path

import torch


def fit(decoder, init, xyz, columns, case, steps, device):
    latent = torch.tensor(init, dtype=torch.float32, device=device).view(1, -1).requires_grad_(True)
    opt = torch.optim.Adam([latent], lr=case["lr"])
    loss_value, best, best_latent = float("nan"), float("inf"), latent.detach().clone()
    for step in range(steps):
        lr = case["lr"] * case["lr_decay"] ** -(step // case["lr_every"])
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        sdf = decoder(latent, xyz).gather(1, columns)
        loss = sdf.clamp(-case["clamp"], case["clamp"]).abs().mean()
        loss.backward()
        loss_value = loss.item()
        if loss_value < best:
            best, best_latent = loss_value, latent.detach().clone()
        opt.step()
    return best_latent.view(-1).cpu().tolist(), loss_value, best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--case", required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    manifest_path = Path(args.manifest)
    manifest = tomllib.loads(manifest_path.read_text())
    decoder = torch.jit.load(str(manifest_path.parent / manifest["file"]), map_location=device)
    decoder.eval()
    for p in decoder.parameters():
        p.requires_grad_(False)
    case = json.loads(Path(args.case).read_text())
    xyz = torch.cat(
        [torch.tensor(s["points"], dtype=torch.float32) for s in case["surfaces"]]
    ).to(device)
    columns = torch.cat(
        [torch.full((len(s["points"]), 1), s["column"], dtype=torch.int64) for s in case["surfaces"]]
    ).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.warmup > 0:
        fit(decoder, case["init_latent"], xyz, columns, case, args.warmup, device)
    sync()
    start = time.perf_counter()
    latent, loss, best = fit(decoder, case["init_latent"], xyz, columns, case, args.steps, device)
    sync()
    seconds = time.perf_counter() - start
    print(json.dumps({
        "implementation": "pytorch",
        "device": str(device),
        "threads": torch.get_num_threads(),
        "points": int(xyz.shape[0]),
        "steps": args.steps,
        "seconds": seconds,
        "ms_per_step": 1e3 * seconds / max(args.steps, 1),
        "final_loss": loss,
        "best_loss": best,
        "latent": latent,
    }))


if __name__ == "__main__":
    main()
