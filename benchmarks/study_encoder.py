"""Cost of the study-level image encoder vs early fusion: step time and peak memory vs series count
(and of the local-contrast input, ``image_encoder.local_contrast``, on in the CPU preset since stop 48: the
baseline turns it off).

One image-encoder forward + backward + projection per batch (the text side is a cache read and
the same for all), on random volumes of the preset's grid. Each configuration runs in its own
process so its peak RSS is its own. Ratios are against early fusion on the paper's 3 sequences
(configs/brain_clip_cpu.yaml's encoder) measured in the same run.

    python benchmarks/study_encoder.py                  # batch 16, 16x112x112, 5 timed steps
    python benchmarks/study_encoder.py --steps 2 --batch 4   # quick
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEVEN = ("dwi", "adc", "t2s", "flair", "t1", "t1c", "t2")
CASES = [  # (name, config, sequences the model reads, series present per study, image_encoder overrides)
    ("early, 3 channels (baseline)", "brain_clip_cpu.yaml", 3, 3, {"local_contrast": None}),
    ("early, 3 + local contrast (preset)", "brain_clip_cpu.yaml", 3, 3, {}),
    ("early, 7 channels", "brain_clip_cpu.yaml", 7, 7, {"local_contrast": None}),
    ("attention, 1 series", "brain_clip_study_cpu.yaml", 7, 1, {}),
    ("attention, 3 series", "brain_clip_study_cpu.yaml", 7, 3, {}),
    ("attention, 7 series", "brain_clip_study_cpu.yaml", 7, 7, {}),
]


def one(config: str, n_seq: int, present: int, batch: int, steps: int, shape: tuple[int, ...],
        overrides: dict | None = None) -> dict:
    import torch

    from medalign.config import load_config
    from medalign.models.heads import ProjectionHead
    from medalign.models.image3d import build_image_encoder

    torch.manual_seed(0)
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "2")))
    spec = {**load_config(ROOT / "configs" / config)["recipe"]["image_encoder"], **(overrides or {})}
    enc = build_image_encoder(spec, in_channels=n_seq, input_shape=shape)
    head = ProjectionHead(enc.out_dim, 256, "linear")
    opt = torch.optim.AdamW([*enc.parameters(), *head.parameters()], lr=1e-3)
    x = torch.randn(batch, n_seq, *shape)
    mask = torch.zeros(batch, n_seq, dtype=torch.bool)
    mask[:, :present] = True
    times = []
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for step in range(steps + 1):  # step 0 = warm-up
        t0 = time.perf_counter()
        loss = head(enc(x, mask)["global"]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params = sum(p.numel() for p in enc.parameters())
    return {"step_s": statistics.median(times), "peak_rss_mib": peak / 1024, "step_rss_mib": (peak - rss0) / 1024,
            "params": params}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--shape", type=int, nargs=3, default=(16, 112, 112))
    p.add_argument("--_one", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._one:
        print(json.dumps(one(a._one[0], int(a._one[1]), int(a._one[2]), a.batch, a.steps, tuple(a.shape),
                             json.loads(a._one[3]))))
        return
    rows = []
    for name, config, n_seq, present, overrides in CASES:
        out = subprocess.run([sys.executable, __file__, "--_one", config, str(n_seq), str(present),
                              json.dumps(overrides),
                              "--batch", str(a.batch), "--steps", str(a.steps), "--shape", *map(str, a.shape)],
                             capture_output=True, text=True, check=True)
        rows.append((name, json.loads(out.stdout.strip().splitlines()[-1])))
    base = rows[0][1]
    print(f"image encoder fwd+bwd+step, batch {a.batch}, grid {tuple(a.shape)}, median of {a.steps} steps")
    print(f"{'configuration':<32}{'params':>10}{'s/step':>9}{'x base':>8}{'peak RSS MiB':>14}{'x base':>8}")
    for name, r in rows:
        print(f"{name:<32}{r['params']:>10,}{r['step_s']:>9.3f}{r['step_s'] / base['step_s']:>8.2f}"
              f"{r['peak_rss_mib']:>14.0f}{r['peak_rss_mib'] / base['peak_rss_mib']:>8.2f}")


if __name__ == "__main__":
    main()
