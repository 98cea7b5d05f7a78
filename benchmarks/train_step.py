"""Time one brain-CLIP training step, split into data / text / image fwd+bwd / optimiser.

Prints, per image encoder preset: median seconds per part, samples/s, peak RSS, and the ratio of
a step that reads text features from the cache vs. a step that re-encodes the reports with the
frozen transformer every time (what the reference implementation did).

    python benchmarks/train_step.py                         # CPU config + paper encoder, synthetic data
    python benchmarks/train_step.py --encoder unet3d --batch 2 --steps 1   # paper encoder is slow on CPU
    python benchmarks/train_step.py --manifest M --cache DIR # real cached cohort (train split)
    python benchmarks/train_step.py --encoder cpu_config,cpu_config+contrast_shares --batch 16 --threads 2
    python benchmarks/train_step.py --encoder cpu_config+channels_last=false,cpu_config --batch 16 --threads 2 --steps 8
"""
from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F


def bench(encoder: str, args: argparse.Namespace) -> dict:
    from medalign.recipes import default_collate
    from medalign.recipes.clip import ClipRecipe
    from medalign.data.datasets import SyntheticPairs

    torch.manual_seed(0)
    shape = tuple(args.shape)
    if args.manifest:
        from medalign.data.datasets import CohortDataset

        ds = CohortDataset(args.manifest, args.cache, split="train")
        seqs = ds.sequences
        shape = tuple(ds.cache.config.shape)
    else:
        ds = SyntheticPairs(n=args.batch * (args.steps + 1), channels=args.channels, shape=shape)
        seqs = ("dwi", "t2s", "flair")[: args.channels]
    name, *switches = encoder.split("+")  # "cpu_config+contrast_shares": the preset with that option on
    if name == "cpu_config":  # the image encoder of configs/brain_clip_cpu.yaml
        from pathlib import Path

        from medalign.config import load_config

        enc_cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "brain_clip_cpu.yaml")["recipe"]["image_encoder"]
    else:
        enc_cfg = {"name": name}
    for switch in switches:  # "+OPT" turns a boolean option on, "+OPT=false" off (cpu_config+channels_last=false)
        key, _, value = switch.partition("=")
        enc_cfg = {**enc_cfg, key: value.lower() not in ("false", "0", "off")}
    recipe = ClipRecipe(sequences=seqs, input_shape=shape, image_encoder=enc_cfg,
                        text_encoder={"cache_dir": args.text_cache})
    opt = torch.optim.Adam([p for p in recipe.parameters() if p.requires_grad], lr=1e-4)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, collate_fn=default_collate,
                                         drop_last=True)
    it = iter(loader)
    recipe.text_encoder.sentence(sorted(set(getattr(ds, "texts", SyntheticPairs.REPORTS))))  # fill cache
    times: dict[str, list[float]] = {"data": [], "text": [], "image_fwd_bwd": [], "optimizer": [], "text_uncached": []}
    for step in range(args.steps + 1):  # step 0 = warm-up, not counted
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        with torch.no_grad():
            tf = recipe.text_features(batch["text"])  # (B, Dt) from the cache
        t2 = time.perf_counter()
        txt = F.normalize(recipe.text_proj(tf), dim=-1)
        img = recipe.encode_image(batch["image"], batch["sequence_mask"])
        loss = recipe.loss(img, txt, recipe.logit_scale())["contrastive_loss"]
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        recipe.text_encoder._encode_uncached(list(batch["text"]))  # what re-encoding would cost
        t5 = time.perf_counter()
        if step:
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                times[k].append(v)
    med = {k: statistics.median(v) for k, v in times.items()}
    cached = med["data"] + med["text"] + med["image_fwd_bwd"] + med["optimizer"]
    uncached = cached - med["text"] + med["text_uncached"]
    n_params = sum(p.numel() for p in recipe.parameters() if p.requires_grad)
    return {"encoder": encoder, "params": n_params, **med, "step_cached": cached, "step_reencode": uncached,
            "samples_per_s": args.batch / cached, "reencode_over_cached": uncached / cached}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="cpu_config,unet3d",
                    help="comma list of: cpu_config (configs/brain_clip_cpu.yaml), unet3d_cpu, unet3d (paper); "
                         "NAME+OPT turns the encoder's boolean option OPT on (cpu_config+contrast_shares), "
                         "NAME+OPT=false off (cpu_config+channels_last=false)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, default=[16, 112, 112])
    ap.add_argument("--manifest", default=None)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--text-cache", default=None, help="text cache dir (default: a temporary one)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    if args.text_cache is None:
        tmp = tempfile.TemporaryDirectory()
        args.text_cache = tmp.name
    encoders = [e.strip() for e in args.encoder.split(",") if e.strip()]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"shape {tuple(args.shape)}, {args.steps} timed steps (median)")
    cols = ["data", "text", "image_fwd_bwd", "optimizer", "step_cached", "text_uncached", "step_reencode"]
    print(f"{'encoder':<12} {'params':>10} " + " ".join(f"{c:>13}" for c in cols) + f" {'samples/s':>9} {'reenc/cached':>12}")
    for enc in encoders:
        r = bench(enc, args)
        print(f"{r['encoder']:<12} {r['params']:>10,} " + " ".join(f"{r[c]:>12.3f}s" for c in cols)
              + f" {r['samples_per_s']:>9.2f} {r['reencode_over_cached']:>11.2f}x")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
