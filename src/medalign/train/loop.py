"""The training loop: one flat function, ``fit(cfg, run_dir)``, in the spirit of nanoGPT's train.py.

The method-specific part is ``recipe.training_step(batch)`` (see medalign.recipes); everything
else is here, top to bottom: config -> run dir -> data -> model -> optimiser -> (resume) ->
epochs of steps -> validation -> checkpoints.

Run directory::

    config.yaml            resolved config (defaults + file + overrides)
    meta.json              seed, package versions, git hash, device, world size
    preprocess.json        the PreprocessConfig of the cohort cache (for on-the-fly inference)
    metrics.jsonl          one JSON per line: {"epoch","step","split","loss",...,"lr"}
    checkpoints/best.safetensors, checkpoints/last.safetensors   recipe weights (+ metadata)
    checkpoints/resume.pt  optimiser / schedule / epoch / step / RNG state for --resume
    summary.json           final figures (written at the end)
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from medalign.config import dump_config, merge
from medalign.data.schema import PAPER_SEQUENCES, PAPER_SHAPE
from medalign.errors import MedAlignError
from medalign.train import dist as D
from medalign.utils import atomic_path, atomic_write_json, atomic_write_text, seed_everything

# Every key the loop reads, with its default; a config file overrides any of them.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {
        "kind": "cohort",          # cohort (manifest + preprocessed cache) | synthetic (tiny, in memory)
        "manifest": None,
        "cache_dir": None,
        "sequences": list(PAPER_SEQUENCES),
        "shape": list(PAPER_SHAPE),
        "augment": None,           # e.g. "paper" (TorchIO, train split only)
        "train_split": "train",
        "val_split": "val",
        "num_workers": 0,
        "preprocess": None,        # PreprocessConfig fields, when the cache does not record them
    },
    "recipe": {"name": "clip"},
    "train": {
        "epochs": 300,
        "batch_size": 8,
        "optimizer": "adam",       # adam | adamw | sgd
        "lr": 0.01,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "scheduler": "plateau",    # plateau (on the monitored val metric) | cosine | constant
        "plateau_patience": 10,
        "plateau_factor": 0.5,
        "warmup_steps": 0,
        "min_lr": 0.0,             # floor for cosine
        "grad_clip": 1.0,          # max global grad norm; null = off
        "ema_decay": None,         # e.g. 0.99: validate and save an exponential moving average of the weights
        "amp": True,               # mixed precision, CUDA only (bf16 when supported, else fp16 + scaler)
        "device": None,            # None -> cuda:LOCAL_RANK when available, else cpu
        "monitor": "loss",         # val metric for best checkpoint, plateau and early stopping
        "monitor_mode": "min",
        "early_stopping_patience": None,  # epochs without improvement; null = off
        "drop_last": True,         # contrastive batches of 1 carry no signal
        "log_every": 10,
        "checkpoint_every_steps": 0,  # extra mid-epoch resume points; 0 = only at epoch end
        "max_steps": None,         # stop after this many optimiser steps in total
        "stop_after_steps": None,  # simulate a kill: save resume state and return (tests)
        "progress": True,
        "find_unused_parameters": False,
        "tensorboard": True,       # used only when the tensorboard package is installed
    },
}


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Defaults merged under the user's config."""
    return merge(DEFAULTS, cfg or {})


# ---------------------------------------------------------------------------------------------
# Data helpers: a resumable batch sampler and a tiny synthetic paired set
# ---------------------------------------------------------------------------------------------
class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of a per-epoch permutation, sharded over ranks, that can start mid-epoch.

    The permutation depends only on (seed, epoch), so a resumed run sees exactly the batches
    the killed run would have seen. Sharding follows DistributedSampler (pad to a multiple of
    the world size, then ``rank::world``).
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world: int = 1, drop_last: bool = True) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world, self.drop_last = rank, world, drop_last
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _shard(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = math.ceil(self.n / self.world) * self.world
        order += order[: total - self.n]  # pad so every rank gets the same number of samples
        return order[self.rank :: self.world]

    def _batches(self) -> list[list[int]]:
        shard = self._shard()
        bs = self.batch_size
        batches = [shard[i : i + bs] for i in range(0, len(shard), bs)]
        # Drop a short last batch only if at least one full batch remains.
        if self.drop_last and len(batches) > 1 and len(batches[-1]) < bs:
            batches = batches[:-1]
        return batches

    def batches_per_epoch(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()[self.start_batch :]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)


class SyntheticPairs(Dataset):
    """Tiny in-memory image-report pairs for tests and benchmarks (``data.kind: synthetic``).

    Study i has class ``i % n_classes``; its image carries a bright cube whose position and
    channel depend on the class (plus noise), and its report names the class. Samples match the
    CohortDataset dict exactly.
    """

    REPORTS = (
        "Acute infarct with restricted diffusion in the left hemisphere.",
        "Enhancing tumor with surrounding oedema in the right frontal lobe.",
        "Intraparenchymal hemorrhage with blooming on T2 star.",
        "Normal study. No acute intracranial abnormality.",
        "Small vessel disease and nonspecific white matter changes.",
    )

    def __init__(self, split: str = "all", n: int = 10, channels: int = 2, shape: tuple[int, ...] = (8, 32, 32),
                 n_classes: int = 5, seed: int = 0, missing_every: int = 0) -> None:
        self.split, self.n, self.channels, self.shape = split, n, channels, tuple(shape)
        self.n_classes, self.seed, self.missing_every = n_classes, seed, missing_every
        # Different splits get different noise (and study ids), same class layout.
        self.offset = {"train": 0, "val": 1000, "test": 2000}.get(split, 0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.offset + i)
        c = i % self.n_classes
        img = 0.1 * torch.randn(self.channels, *self.shape, generator=g)  # (C, D, H, W)
        d, h, w = self.shape
        s = max(2, h // 4)
        y0 = (c * (h - s)) // max(1, self.n_classes - 1)
        img[c % self.channels, d // 4 : d // 4 + max(1, d // 2), y0 : y0 + s, w // 4 : w // 4 + s] += 1.0
        seq_mask = torch.ones(self.channels, dtype=torch.bool)
        if self.missing_every and i % self.missing_every == self.missing_every - 1:
            seq_mask[0] = False
            img[0] = 0
        sid = f"{self.split}-{self.offset + i:04d}"
        return {"image": img, "sequence_mask": seq_mask, "text": self.REPORTS[c % len(self.REPORTS)],
                "label": c, "study_id": sid, "patient_id": f"p{sid}"}


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _scalar(v: Any) -> float | None:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v.detach().float().item())
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def save_weights(recipe: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """Recipe state_dict -> safetensors, atomically (frozen text encoders are not in it)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in recipe.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})


def load_weights(recipe: nn.Module, path: Path, *, strict: bool = True) -> dict[str, Any]:
    """Load a safetensors checkpoint into ``recipe``; returns its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise MedAlignError(f"checkpoint not found: {path}")
    state = load_file(str(path))
    missing, unexpected = recipe.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise MedAlignError(f"checkpoint {path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return {k: json.loads(v) for k, v in meta.items()}


def _git_hash() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except Exception:
        return None


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("medalign", "torch", "numpy", "transformers", "safetensors", "torchio", "SimpleITK"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def preprocess_dict(data_cfg: dict) -> dict | None:
    """The PreprocessConfig the cohort cache was built with (or ``data.preprocess``)."""
    if data_cfg.get("preprocess"):
        return dict(data_cfg["preprocess"])
    cache_dir = data_cfg.get("cache_dir")
    if cache_dir:
        for name in ("config.json", "preprocess.json", "index.json"):
            p = Path(cache_dir) / name
            if p.is_file():
                try:
                    d = json.loads(p.read_text())
                except Exception:
                    continue
                for key in ("preprocess", "preprocess_config", "config"):
                    if isinstance(d.get(key), dict) and "sequences" in d[key]:
                        return d[key]
                if "sequences" in d and "shape" in d:
                    return d
    if data_cfg.get("kind", "cohort") == "cohort":
        return {"sequences": list(data_cfg["sequences"]), "shape": list(data_cfg["shape"])}
    return None


def _rng_state() -> dict[str, Any]:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


class _Step(nn.Module):
    """Wraps ``recipe.training_step`` as ``forward`` so DDP sees (and syncs) the step."""

    def __init__(self, recipe: nn.Module) -> None:
        super().__init__()
        self.recipe = recipe

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.recipe.training_step(batch)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
class WeightEMA:
    """Exponential moving average of a module's state: weights and float buffers (BatchNorm stats).

    ``shadow = d * shadow + (1 - d) * current`` after every optimiser step, with the decay warmed up
    as ``d_t = min(decay, (1 + t) / (10 + t))`` so the average does not remember the random
    initialisation for long (timm's ModelEmaV2 does the same). Integer buffers are copied.
    Why: with ~200 training studies the weights at any single step are noisy; the validation
    metric that picks the best checkpoint then picks a lucky step. The average is smoother.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise MedAlignError(f"train.ema_decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach().to(s.dtype), 1.0 - d)  # s = d * s + (1 - d) * v
            else:
                s.copy_(v)

    @contextmanager
    def applied(self, module: nn.Module) -> Iterator[None]:
        """Swap the averaged weights in for the ``with`` block, then put the live ones back."""
        live = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.shadow)
        try:
            yield
        finally:
            module.load_state_dict(live)


def fit(cfg: dict[str, Any], run_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg["recipe"]`` on ``cfg["data"]`` with ``cfg["train"]``; everything lands in ``run_dir``.

    Returns a summary dict (steps, epochs, best monitored value, checkpoint paths, stopped flag).
    Under torchrun the process group is initialised from the environment and only rank 0 writes.
    """
    from medalign.recipes import build_recipe

    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    resume_path = ckpt_dir / "resume.pt"

    # -- 1. config: on --resume the run's own resolved config wins (the run must not change) --
    if resume and (run_dir / "config.yaml").is_file():
        import yaml

        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        # Only the stop hooks may differ between the killed and the resumed invocation.
        for k in ("stop_after_steps", "progress"):
            saved["train"][k] = (cfg.get("train") or {}).get(k, DEFAULTS["train"][k])
        cfg = saved
    cfg = resolve_config(cfg)
    tc, dc = cfg["train"], cfg["data"]

    # -- 2. processes and device: torchrun sets WORLD_SIZE/RANK/LOCAL_RANK --
    rank, world, local_rank = D.init_from_env(tc["device"])
    main = rank == 0
    if tc["device"]:
        device = torch.device(tc["device"])
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    # Same seed on every rank: identical initial weights (DDP also broadcasts them).
    seed_everything(int(cfg["seed"]))

    # -- 3. run directory: resolved config + reproducibility metadata --
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume or not (run_dir / "config.yaml").is_file():
            clean = copy.deepcopy(cfg)
            clean["train"]["stop_after_steps"] = None  # a test hook, not part of the experiment
            dump_config(clean, run_dir / "config.yaml")
            atomic_write_json(run_dir / "meta.json", {
                "seed": cfg["seed"], "versions": _versions(), "git": _git_hash(), "world_size": world,
                "device": str(device), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "argv": sys.argv,
            })
            pp = preprocess_dict(dc)
            if pp is not None:
                atomic_write_json(run_dir / "preprocess.json", pp)
    D.barrier()

    # -- 4. model, data --
    recipe = build_recipe(cfg).to(device)
    train_ds = recipe.build_dataset(dc, dc["train_split"], train=True)
    val_ds = recipe.build_dataset(dc, dc["val_split"], train=False) if dc.get("val_split") else None
    if val_ds is not None and len(val_ds) == 0:
        val_ds = None
    if len(train_ds) == 0:
        raise MedAlignError(f"no training studies in split '{dc['train_split']}' of {dc.get('manifest')}")
    seqs = getattr(train_ds, "sequences", None)
    if seqs is not None and tuple(seqs) != tuple(dc["sequences"]):
        raise MedAlignError(f"the cache {dc.get('cache_dir')} holds sequences {list(seqs)} but data.sequences is "
                            f"{list(dc['sequences'])}; set data.sequences={list(seqs)}")
    # Frozen parts (the text encoder) fill their caches now, so every step costs only the image side.
    recipe.prepare([d for d in (train_ds, val_ds) if d is not None])
    bs = int(tc["batch_size"])
    # A recipe may group its batches (MICLe/HLSS need >= 2 studies of a patient per batch);
    # any sampler it returns must offer set_epoch(epoch, start_batch) and batches_per_epoch().
    sampler = recipe.batch_sampler(train_ds, batch_size=bs, train=True, seed=int(cfg["seed"]), rank=rank,
                                   world=world, drop_last=bool(tc["drop_last"])) \
        or ResumableBatchSampler(len(train_ds), bs, shuffle=True, seed=int(cfg["seed"]), rank=rank,
                                 world=world, drop_last=bool(tc["drop_last"]))
    workers = int(dc.get("num_workers") or 0)

    def loader(ds: Dataset, batch_sampler: Sampler, epoch: int = 0) -> torch.utils.data.DataLoader:
        # Own generator: a DataLoader otherwise draws its workers' base seed from the global RNG
        # each time it is iterated, which would make a resumed run's random stream diverge.
        g = torch.Generator().manual_seed(int(cfg["seed"]) * 1000 + epoch + 1000003 * rank)
        return torch.utils.data.DataLoader(ds, batch_sampler=batch_sampler, num_workers=workers,
                                           collate_fn=recipe.collate, pin_memory=device.type == "cuda",
                                           persistent_workers=False, generator=g)

    # -- 5. optimiser over the trainable parameters only (the text encoder is frozen and outside) --
    params = [p for p in recipe.parameters() if p.requires_grad]
    name = tc["optimizer"].lower()
    if name == "adam":
        opt = torch.optim.Adam(params, lr=tc["lr"], betas=tuple(tc["betas"]), weight_decay=tc["weight_decay"])
    elif name == "adamw":
        opt = torch.optim.AdamW(params, lr=tc["lr"], betas=tuple(tc["betas"]), weight_decay=tc["weight_decay"])
    elif name == "sgd":
        opt = torch.optim.SGD(params, lr=tc["lr"], momentum=0.9, weight_decay=tc["weight_decay"])
    else:
        raise MedAlignError(f"unknown train.optimizer '{tc['optimizer']}' (adam, adamw, sgd)")

    # Mixed precision only on CUDA: bf16 when the GPU has it (no scaler needed), else fp16 + GradScaler.
    use_amp = bool(tc["amp"]) and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp else nullcontext

    step_module: nn.Module = _Step(recipe)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        step_module = DDP(step_module, device_ids=[device.index] if device.type == "cuda" else None,
                          find_unused_parameters=bool(tc["find_unused_parameters"]))

    # -- 6. loop state (all of it goes into resume.pt) --
    steps_per_epoch = sampler.batches_per_epoch()
    epochs = int(tc["epochs"])
    total_steps = steps_per_epoch * epochs
    if tc["max_steps"]:
        total_steps = min(total_steps, int(tc["max_steps"]))
    sign = 1.0 if tc["monitor_mode"] == "min" else -1.0
    state: dict[str, Any] = {
        "epoch": 0, "step_in_epoch": 0, "global_step": 0,
        "best": math.inf, "best_epoch": -1, "bad_epochs": 0,   # early stopping (on the monitor)
        "lr_scale": 1.0, "plateau_best": math.inf, "plateau_bad": 0,  # ReduceLROnPlateau
        "epoch_loss_sum": 0.0, "epoch_loss_n": 0,
    }

    ema = WeightEMA(recipe, float(tc["ema_decay"])) if tc["ema_decay"] else None
    # validation and the best/last checkpoints see the averaged weights when EMA is on
    eval_weights = (lambda: ema.applied(recipe)) if ema is not None else nullcontext

    if resume:
        if not resume_path.is_file():
            raise MedAlignError(f"--resume: no resume state at {resume_path}")
        rs = torch.load(resume_path, map_location="cpu", weights_only=False)
        recipe.load_state_dict(rs["model"])
        if ema is not None:
            ema.shadow = {k: v.to(device) for k, v in rs["ema"].items()}
        opt.load_state_dict(rs["optimizer"])
        scaler.load_state_dict(rs["scaler"])
        state.update(rs["state"])
        _set_rng_state(rs["rng"])
        # Forget log lines written after the resume point (the killed run's lost steps).
        mpath = run_dir / "metrics.jsonl"
        if main and mpath.is_file():
            keep = [ln for ln in mpath.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= state["global_step"]]
            atomic_write_text(mpath, "".join(ln + "\n" for ln in keep))

    def save_resume() -> None:
        if main:
            payload = {"model": recipe.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                       "state": dict(state), "rng": _rng_state(), "config": cfg,
                       "ema": ema.shadow if ema is not None else None}
            with atomic_path(resume_path, suffix=".pt") as tmp:
                torch.save(payload, tmp)

    def get_lr(step: int) -> float:
        """Base lr x linear warmup x (cosine decay | plateau scale)."""
        lr = float(tc["lr"])
        warm = int(tc["warmup_steps"] or 0)
        if warm and step < warm:
            return lr * (step + 1) / warm
        if tc["scheduler"] == "cosine":
            progress = (step - warm) / max(1, total_steps - warm)
            return tc["min_lr"] + 0.5 * (lr - tc["min_lr"]) * (1 + math.cos(math.pi * min(1.0, progress)))
        if tc["scheduler"] == "plateau":
            return lr * state["lr_scale"]
        return lr

    metrics_f = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if main else None
    tb = None
    if main and tc["tensorboard"]:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:  # tensorboard not installed: JSONL only
            tb = None

    def log(rec: dict[str, Any]) -> None:
        if metrics_f is not None:
            metrics_f.write(json.dumps(rec) + "\n")
            metrics_f.flush()
        if tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    tb.add_scalar(f"{rec['split']}/{k}", v, rec["step"])

    def ckpt_meta(extra: dict | None = None) -> dict:
        return {"epoch": state["epoch"], "step": state["global_step"], "recipe": cfg["recipe"]["name"], **(extra or {})}

    # -- 7. epochs --
    stopped = False
    tqdm = None
    if tc["progress"] and main:
        from tqdm.auto import tqdm
    t_start = time.time()
    try:
        while state["epoch"] < epochs and state["global_step"] < total_steps:
            epoch = state["epoch"]
            sampler.set_epoch(epoch, start_batch=state["step_in_epoch"])
            step_module.train()
            bar = tqdm(total=steps_per_epoch, initial=state["step_in_epoch"], desc=f"epoch {epoch + 1}/{epochs}",
                       leave=False, dynamic_ncols=True) if tqdm else None
            for batch in loader(train_ds, sampler, epoch):
                step = state["global_step"]
                if step >= total_steps:
                    break
                lr = get_lr(step)
                for group in opt.param_groups:
                    group["lr"] = lr
                batch = to_device(batch, device)

                # forward + loss: the recipe returns named losses; we optimise their sum
                with autocast():
                    out = step_module(batch)
                losses = {k: v for k, v in out.items() if k.endswith("_loss")}
                if not losses:
                    raise MedAlignError(f"recipe '{cfg['recipe']['name']}' returned no *_loss key: {sorted(out)}")
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise MedAlignError(f"non-finite loss {float(loss)} at epoch {epoch + 1} step {step + 1}; "
                                        f"lower train.lr (now {lr:g}) or check the data")

                # backward, gradient clipping (on unscaled grads), optimiser step
                scaler.scale(loss).backward()
                if tc["grad_clip"]:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, float(tc["grad_clip"]))
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(recipe, state["global_step"])

                state["global_step"] += 1
                state["step_in_epoch"] += 1
                lval = float(loss.detach())
                state["epoch_loss_sum"] += lval
                state["epoch_loss_n"] += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{lval:.4f}", lr=f"{lr:.2e}")
                if state["global_step"] % max(1, int(tc["log_every"])) == 0 or state["step_in_epoch"] == steps_per_epoch:
                    rec = {"epoch": epoch + 1, "step": state["global_step"], "split": "train", "loss": lval, "lr": lr}
                    for k, v in out.items():
                        s = _scalar(v)
                        if s is not None:
                            rec[k] = s
                    log(rec)
                if tc["checkpoint_every_steps"] and state["global_step"] % int(tc["checkpoint_every_steps"]) == 0:
                    save_resume()
                if tc["stop_after_steps"] and state["global_step"] >= int(tc["stop_after_steps"]):
                    stopped = True  # simulated kill: resume state on disk, nothing else
                    save_resume()
                    break
            if bar is not None:
                bar.close()
            if stopped:
                break
            finished_epoch = state["step_in_epoch"] >= steps_per_epoch
            if not finished_epoch and state["global_step"] < total_steps:
                continue  # cannot happen unless the loader ended early; keep going

            # -- validation: mean batch losses + the recipe's split-level metrics --
            train_loss = state["epoch_loss_sum"] / max(1, state["epoch_loss_n"])
            val: dict[str, float] = {}
            if val_ds is not None:
                recipe.eval()
                outputs = []
                vs = ResumableBatchSampler(len(val_ds), bs, shuffle=False, drop_last=False)
                with torch.no_grad(), autocast(), eval_weights():
                    for vb in loader(val_ds, vs):
                        outputs.append(recipe.validation_step(to_device(vb, device)))
                recipe.train()
                keys = [k for k in outputs[0] if k.endswith("_loss")]
                for k in keys:
                    val[k] = float(np.mean([float(o[k]) for o in outputs]))
                val["loss"] = float(sum(val[k] for k in keys))
                val.update(recipe.validation_end(outputs))
                log({"epoch": epoch + 1, "step": state["global_step"], "split": "val", **val, "lr": get_lr(state["global_step"])})
            monitor_value = val.get(tc["monitor"], train_loss if not val else None)
            if monitor_value is None:
                raise MedAlignError(f"train.monitor '{tc['monitor']}' is not a validation metric; have {sorted(val)}")
            # rank 0 decides (float noise across ranks must not split plateau/early-stop decisions)
            score = D.broadcast_float(sign * monitor_value, device)

            # ReduceLROnPlateau semantics (torch defaults: rel. threshold 1e-4, no cooldown)
            if tc["scheduler"] == "plateau":
                if score < state["plateau_best"] - abs(state["plateau_best"]) * 1e-4:
                    state["plateau_best"], state["plateau_bad"] = score, 0
                else:
                    state["plateau_bad"] += 1
                    if state["plateau_bad"] > int(tc["plateau_patience"]):
                        state["lr_scale"] *= float(tc["plateau_factor"])
                        state["plateau_bad"] = 0

            # best / last checkpoints, early stopping
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            state["epoch_loss_sum"], state["epoch_loss_n"] = 0.0, 0
            improved = score < state["best"]
            if improved:
                state["best"], state["best_epoch"], state["bad_epochs"] = score, state["epoch"], 0
            else:
                state["bad_epochs"] += 1
            if main:
                meta = ckpt_meta({"train_loss": train_loss, **{f"val_{k}": v for k, v in val.items()}})
                with eval_weights():
                    if improved:
                        save_weights(recipe, ckpt_dir / "best.safetensors", meta)
                    save_weights(recipe, ckpt_dir / "last.safetensors", meta)
            save_resume()
            if tqdm is not None:
                msg = f"epoch {state['epoch']}/{epochs}  train {train_loss:.4f}"
                if val:
                    msg += "  val " + "  ".join(f"{k} {v:.4f}" for k, v in val.items() if k != "n")
                tqdm.write(msg + ("  *" if improved else ""))
            pat = tc["early_stopping_patience"]
            if pat is not None and state["bad_epochs"] >= int(pat):
                if tqdm is not None:
                    tqdm.write(f"early stopping: no improvement of '{tc['monitor']}' for {pat} epochs")
                break
    except KeyboardInterrupt:
        save_resume()  # a Ctrl-C'd run can be continued with --resume
        raise
    finally:
        if metrics_f is not None:
            metrics_f.close()
        if tb is not None:
            tb.close()

    summary = {
        "run_dir": str(run_dir), "steps": state["global_step"], "epochs": state["epoch"], "stopped": stopped,
        "best_epoch": state["best_epoch"], f"best_{tc['monitor']}": sign * state["best"] if state["best_epoch"] >= 0 else None,
        "seconds": time.time() - t_start, "world_size": world,
        "best_checkpoint": str(ckpt_dir / "best.safetensors"), "last_checkpoint": str(ckpt_dir / "last.safetensors"),
    }
    if main and not stopped:
        atomic_write_json(run_dir / "summary.json", summary)
    D.barrier()
    return summary
