"""Channels-last vs the default layout for the CPU preset's training step, measured in pairs.

Builds the brain-CLIP CPU preset twice from one seed (``recipe.image_encoder.channels_last`` on and
off), then times full training steps (image forward + contrastive loss + backward + AdamW step,
text features from the cache) alternately, one of each per round, on the same batch. Prints the
median time per step of each and the median of the per-round ratios with a bootstrap 95 % CI: the
machine's load drifts, and pairing cancels most of it.

    python benchmarks/memory_format.py [--rounds 12] [--batch 16] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def _recipe(channels_last: bool, seqs: tuple[str, ...], shape: tuple[int, ...]):
    from medalign.config import load_config
    from medalign.recipes.clip import ClipRecipe

    enc = load_config(Path(__file__).resolve().parents[1] / "configs" / "brain_clip_cpu.yaml")["recipe"]["image_encoder"]
    torch.manual_seed(0)
    return ClipRecipe(sequences=seqs, input_shape=shape, image_encoder={**enc, "channels_last": channels_last},
                      text_encoder={"cache_dir": False}, gather=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--shape", type=int, nargs=3, default=[16, 112, 112])
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    seqs, shape = ("dwi", "t2s", "flair"), tuple(a.shape)
    g = torch.Generator().manual_seed(1)
    image = torch.randn(a.batch, len(seqs), *shape, generator=g)  # (B, C, D, H, W)
    text = torch.randn(a.batch, 384, generator=g)  # (B, Dt): cached sentence features stand-in
    runs = {}
    for name, flag in (("default", False), ("channels_last", True)):
        rec = _recipe(flag, seqs, shape)
        rec.train()
        opt = torch.optim.AdamW([p for p in rec.parameters() if p.requires_grad], lr=1e-4)
        runs[name] = (rec, opt)

    def step(name: str) -> float:
        rec, opt = runs[name]
        t0 = time.perf_counter()
        img = rec.encode_image(image)
        txt = rec.project_text(text)
        rec.loss(img, txt, rec.logit_scale())["contrastive_loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for name in runs:  # warm-up: oneDNN picks and caches its kernels
        step(name), step(name)
    times: dict[str, list[float]] = {n: [] for n in runs}
    for r in range(a.rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]  # alternate who goes first
        for name in order:
            times[name].append(step(name))
    ratios = np.array(times["channels_last"]) / np.array(times["default"])
    rng = np.random.default_rng(0)
    boot = [float(np.median(rng.choice(ratios, ratios.size))) for _ in range(2000)]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {a.batch}, shape {shape}, "
          f"{a.rounds} rounds")
    for name, ts in times.items():
        print(f"{name:<14} median step {statistics.median(ts):.3f} s")
    print(f"channels_last / default: median paired ratio {np.median(ratios):.3f} "
          f"[{np.percentile(boot, 2.5):.3f}, {np.percentile(boot, 97.5):.3f}] (95 % bootstrap CI), "
          f"faster in {int((ratios < 1).sum())} of {ratios.size} rounds")


if __name__ == "__main__":
    main()
