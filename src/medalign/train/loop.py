"""The one training loop, in the spirit of nanoGPT's train.py.

``fit(cfg, run_dir)`` is the command-line entry: config -> run dir -> recipe + datasets ->
``train_model``. ``train_model(recipe, train_ds, val_ds, tc)`` is the loop itself, also used in
memory (``run_dir=None``) by the experiments (SSL label efficiency, GiMP): optimiser and schedule
(medalign.train.optim), then epochs of ``train_one_epoch`` -> ``validate`` -> ``end_epoch``
(plateau, best/last checkpoints, early stopping). The method-specific part is
``recipe.training_step(batch)`` (see medalign.recipes). What lands in the run directory is
described in medalign.train.checkpoint.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from medalign import dist as D
from medalign.config import ConfigError, dump_config
from medalign.data.cache import recorded_preprocess
from medalign.data.samplers import ResumableBatchSampler, sampling_weights
from medalign.errors import MedAlignError
from medalign.train import checkpoint as ckpt
from medalign.train.config import TrainConfig, resolve_config
from medalign.train.ema import WeightEMA
from medalign.train.optim import Plateau, Schedule, build_optimizer, build_schedule
from medalign.utils import atomic_write_json, seed_everything

STOP_HOOKS = ("stop_after_steps", "progress")  # the only train keys a resumed run may change


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _scalar(v: Any) -> float | None:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v.detach().float().item())
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


class _Step(nn.Module):
    """Wraps ``recipe.training_step`` as ``forward`` so DDP sees (and syncs) the step."""

    def __init__(self, recipe: nn.Module) -> None:
        super().__init__()
        self.recipe = recipe

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.recipe.training_step(batch)


@dataclass
class LoopState:
    """Where the loop is; saved in resume.pt so a killed run continues at the same batch."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best: float = math.inf        # best monitored score (sign-adjusted: lower is better)
    best_epoch: int = -1
    bad_epochs: int = 0           # early stopping
    epoch_loss_sum: float = 0.0
    epoch_loss_n: int = 0


@dataclass
class Loop:
    """Everything one run of the loop holds, passed to its small steps."""

    recipe: nn.Module
    step_module: nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: Callable[[], Any]
    lr_at: Schedule
    plateau: Plateau
    ema: WeightEMA | None
    tc: TrainConfig
    device: torch.device
    make_loader: Callable[..., torch.utils.data.DataLoader]
    log: ckpt.MetricsLog
    run_dir: Path | None
    config: dict | None
    steps_per_epoch: int
    total_steps: int
    state: LoopState = field(default_factory=LoopState)
    best_state: dict | None = None   # in-memory runs keep the best weights here
    history: list[dict[str, float]] = field(default_factory=list)  # one record per finished epoch

    @property
    def writes(self) -> bool:
        """Rank 0 of a run with a directory writes files; other ranks and in-memory runs do not."""
        return self.run_dir is not None and D.rank_world()[0] == 0

    @property
    def sign(self) -> float:
        return 1.0 if self.tc.monitor_mode == "min" else -1.0

    def eval_weights(self):
        """Validation and checkpoints see the averaged weights when EMA is on."""
        return self.ema.applied(self.recipe) if self.ema is not None else nullcontext()


# ---------------------------------------------------------------------------------------------
# fit: the command-line entry
# ---------------------------------------------------------------------------------------------
def fit(cfg: dict[str, Any], run_dir: str | Path, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train ``cfg["recipe"]`` on ``cfg["data"]`` with ``cfg["train"]``; everything lands in ``run_dir``.

    Returns a summary dict (steps, epochs, best monitored value, checkpoint paths, stopped flag).
    Under torchrun the process group is initialised from the environment and only rank 0 writes.
    """
    from medalign.recipes import build_recipe

    run_dir = Path(run_dir)
    cfg = run_config(cfg, run_dir, resume=resume)
    tc, dc = TrainConfig.from_dict(cfg["train"]), cfg["data"]
    rank, world, device = setup_device(tc.device)
    ckpt.prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, clean=rank == 0)  # before any write
    seed_everything(int(cfg["seed"]))  # same seed on every rank: identical initial weights
    if rank == 0:
        init_run_dir(run_dir, cfg, resume=resume, world=world, device=device)
    D.barrier()
    recipe = build_recipe(cfg).to(device)
    train_ds, val_ds = build_datasets(recipe, dc)
    return train_model(recipe, train_ds, val_ds, tc, seed=int(cfg["seed"]), device=device, run_dir=run_dir,
                       resume=resume, config=cfg, num_workers=int(dc.get("num_workers") or 0))


def run_config(cfg: dict[str, Any], run_dir: Path, *, resume: bool) -> dict[str, Any]:
    """The resolved config; on ``--resume`` the run's own saved config wins (the run must not change)."""
    if resume and (run_dir / "config.yaml").is_file():
        import yaml

        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        defaults = TrainConfig()
        for k in STOP_HOOKS:
            saved["train"][k] = (cfg.get("train") or {}).get(k, getattr(defaults, k))
        cfg = saved
    return resolve_config(cfg)


def setup_device(device: str | None) -> tuple[int, int, torch.device]:
    """(rank, world, device): torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; cuda:LOCAL_RANK when available."""
    rank, world, local_rank = D.init_from_env(device)
    if device:
        return rank, world, torch.device(device)
    if torch.cuda.is_available():
        return rank, world, torch.device("cuda", local_rank)
    return rank, world, torch.device("cpu")


def init_run_dir(run_dir: Path, cfg: dict[str, Any], *, resume: bool, world: int, device: torch.device) -> None:
    """Resolved config + reproducibility metadata (+ the cache's preprocessing) for a new run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume and (run_dir / "config.yaml").is_file():
        return
    clean = copy.deepcopy(cfg)
    clean["train"]["stop_after_steps"] = None  # a test hook, not part of the experiment
    dump_config(clean, run_dir / "config.yaml")
    ckpt.write_run_meta(run_dir, seed=int(cfg["seed"]), world=world, device=device)
    pp = recorded_preprocess(cfg["data"])
    if pp is not None:
        atomic_write_json(run_dir / "preprocess.json", pp)


def build_datasets(recipe: nn.Module, dc: dict[str, Any]) -> tuple[Dataset, Dataset | None]:
    """The recipe's train and val datasets, checked against the data config."""
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
    return train_ds, val_ds


# ---------------------------------------------------------------------------------------------
# train_model: the loop
# ---------------------------------------------------------------------------------------------
def train_model(recipe: nn.Module, train_ds: Dataset, val_ds: Dataset | None = None, tc: TrainConfig | None = None,
                *, seed: int = 0, device: torch.device | str | None = None, run_dir: Path | None = None,
                resume: bool = False, config: dict | None = None, num_workers: int = 0,
                sampler: Sampler | None = None, keep_best: bool = False) -> dict[str, Any]:
    """Train ``recipe`` on ``train_ds``, validating on ``val_ds`` after every epoch.

    ``run_dir=None`` trains in memory (no files); ``keep_best=True`` then loads the weights with the
    best monitored value at the end (how the experiments select on val). ``sampler`` overrides the
    recipe's batch sampler and the default shuffled one.
    """
    tc = tc or TrainConfig()
    device = torch.device(device) if device is not None else next(recipe.parameters()).device
    loop, sampler = _build_loop(recipe, train_ds, val_ds, tc, seed=seed, device=device, run_dir=run_dir,
                                config=config, num_workers=num_workers, sampler=sampler)
    if resume:
        restore(loop, run_dir)
    else:
        save_resume(loop)  # step 0: a run killed in its first epoch can still be --resumed
    stopped = False
    bar_factory = _progress(tc.progress and D.rank_world()[0] == 0)
    t_start = time.time()
    try:
        while loop.state.epoch < tc.epochs and loop.state.global_step < loop.total_steps:
            stopped = train_one_epoch(loop, train_ds, sampler, bar_factory)
            if stopped:
                break
            # an epoch ends when its loader does (a grouped sampler may yield fewer batches than epoch 0)
            val = validate(loop, val_ds)
            if end_epoch(loop, val, bar_factory):
                break
    except KeyboardInterrupt:
        save_resume(loop)  # a Ctrl-C'd run can be continued with --resume
        raise
    finally:
        loop.log.close()
    if keep_best and loop.best_state is not None:
        recipe.load_state_dict(loop.best_state)
    return _summary(loop, stopped, time.time() - t_start)


def _build_loop(recipe: nn.Module, train_ds: Dataset, val_ds: Dataset | None, tc: TrainConfig, *, seed: int,
                device: torch.device, run_dir: Path | None, config: dict | None, num_workers: int,
                sampler: Sampler | None) -> tuple[Loop, Sampler]:
    """Caches, sampler, optimiser, AMP, DDP wrapper, schedule, EMA: everything before the first step."""
    rank, world = D.rank_world()
    # Frozen parts (the text encoder) fill their caches now, so every step costs only the image side.
    recipe.prepare([d for d in (train_ds, val_ds) if d is not None])
    # A recipe may group its batches (MICLe/HLSS need >= 2 studies of a patient per batch);
    # any sampler must offer set_epoch(epoch, start_batch) and batches_per_epoch().
    sampler = sampler or recipe.batch_sampler(train_ds, batch_size=tc.batch_size, train=True, seed=seed, rank=rank,
                                              world=world, drop_last=tc.drop_last)
    if sampler is not None and (asked := [k for k in ("class_balance", "protocol_balance") if getattr(tc, k)]):
        raise ConfigError(f"train.{asked[0]}: the batches come from {type(sampler).__name__} "
                          f"({type(recipe).__name__}), which does not balance them; set it to 0")
    sampler = sampler or ResumableBatchSampler(
        len(train_ds), tc.batch_size, shuffle=True, seed=seed, rank=rank, world=world, drop_last=tc.drop_last,
        weights=sampling_weights(train_ds, class_balance=tc.class_balance, protocol_balance=tc.protocol_balance))

    def make_loader(ds: Dataset, batch_sampler: Sampler, epoch: int = 0) -> torch.utils.data.DataLoader:
        # Own generator: a DataLoader otherwise draws its workers' base seed from the global RNG
        # each time it is iterated, which would make a resumed run's random stream diverge.
        g = torch.Generator().manual_seed(seed * 1000 + epoch + 1000003 * rank)
        return torch.utils.data.DataLoader(ds, batch_sampler=batch_sampler, num_workers=num_workers,
                                           collate_fn=recipe.collate, pin_memory=device.type == "cuda",
                                           persistent_workers=False, generator=g)

    # optimiser over the trainable parameters only (the text encoder is frozen and outside)
    opt = build_optimizer((p for p in recipe.parameters() if p.requires_grad), tc)
    # Mixed precision only on CUDA: bf16 when the GPU has it (no scaler needed), else fp16 + GradScaler.
    use_amp = tc.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp else nullcontext
    step_module: nn.Module = _Step(recipe)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        step_module = DDP(step_module, device_ids=[device.index] if device.type == "cuda" else None,
                          find_unused_parameters=tc.find_unused_parameters)
    steps_per_epoch = sampler.batches_per_epoch()
    total_steps = steps_per_epoch * tc.epochs
    if tc.max_steps:
        total_steps = min(total_steps, tc.max_steps)
    plateau = Plateau(tc.plateau_patience, tc.plateau_factor)
    ema = WeightEMA(recipe, tc.ema_decay) if tc.ema_decay else None
    writes = run_dir is not None and rank == 0
    if writes:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    loop = Loop(recipe=recipe, step_module=step_module, opt=opt, scaler=scaler, autocast=autocast,
                lr_at=build_schedule(tc, total_steps, plateau), plateau=plateau, ema=ema, tc=tc, device=device,
                make_loader=make_loader, log=ckpt.MetricsLog(Path(run_dir) if writes else None,
                                                             tensorboard=tc.tensorboard),
                run_dir=Path(run_dir) if run_dir is not None else None, config=config,
                steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    return loop, sampler


def train_one_epoch(loop: Loop, train_ds: Dataset, sampler: Sampler, bar_factory: Callable | None) -> bool:
    """Steps of one epoch (from ``state.step_in_epoch`` on a resumed run); True when a stop hook fired."""
    st, tc = loop.state, loop.tc
    epoch = st.epoch
    sampler.set_epoch(epoch, start_batch=st.step_in_epoch)
    loop.step_module.train()
    bar = bar_factory(total=loop.steps_per_epoch, initial=st.step_in_epoch, desc=f"epoch {epoch + 1}/{tc.epochs}",
                      leave=False, dynamic_ncols=True) if bar_factory else None
    try:
        for batch in loop.make_loader(train_ds, sampler, epoch):
            if st.global_step >= loop.total_steps:
                break
            lr = loop.lr_at(st.global_step)
            for group in loop.opt.param_groups:
                group["lr"] = lr
            out, loss = optimisation_step(loop, to_device(batch, loop.device))
            st.global_step += 1
            st.step_in_epoch += 1
            lval = float(loss.detach())
            st.epoch_loss_sum += lval
            st.epoch_loss_n += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{lval:.4f}", lr=f"{lr:.2e}")
            if st.global_step % tc.log_every == 0 or st.step_in_epoch == loop.steps_per_epoch:
                rec = {"epoch": epoch + 1, "step": st.global_step, "split": "train", "loss": lval, "lr": lr}
                rec.update({k: s for k, v in out.items() if (s := _scalar(v)) is not None})
                loop.log(rec)
            if tc.checkpoint_every_steps and st.global_step % tc.checkpoint_every_steps == 0:
                save_resume(loop)
            if tc.stop_after_steps and st.global_step >= tc.stop_after_steps:
                save_resume(loop)  # simulated kill: resume state on disk, nothing else
                return True
    finally:
        if bar is not None:
            bar.close()
    return False


def optimisation_step(loop: Loop, batch: dict) -> tuple[dict, torch.Tensor]:
    """Forward (the recipe's named losses, summed), backward, clip, step, EMA. Returns (outputs, loss)."""
    with loop.autocast():
        out = loop.step_module(batch)
    losses = {k: v for k, v in out.items() if k.endswith("_loss")}
    if not losses:
        raise MedAlignError(f"recipe '{type(loop.recipe).__name__}' returned no *_loss key: {sorted(out)}")
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise MedAlignError(f"non-finite loss {float(loss)} at epoch {loop.state.epoch + 1} step "
                            f"{loop.state.global_step + 1}; lower train.lr (now {loop.lr_at(loop.state.global_step):g}) "
                            f"or check the data")
    if not loss.requires_grad:
        return out, loss  # nothing to learn from this batch (e.g. no valid triplet); not an error
    # backward, gradient clipping (on unscaled grads), optimiser step
    loop.scaler.scale(loss).backward()
    if loop.tc.grad_clip:
        loop.scaler.unscale_(loop.opt)
        params = [p for g in loop.opt.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, loop.tc.grad_clip)
    loop.scaler.step(loop.opt)
    loop.scaler.update()
    loop.opt.zero_grad(set_to_none=True)
    if loop.ema is not None:
        loop.ema.update(loop.recipe, loop.state.global_step)
    return out, loss


def validate(loop: Loop, val_ds: Dataset | None) -> dict[str, float]:
    """Mean batch losses on ``val_ds`` + the recipe's split-level metrics (``validation_end``); {} without val."""
    if val_ds is None:
        return {}
    recipe = loop.recipe
    recipe.eval()
    outputs = []
    vs = ResumableBatchSampler(len(val_ds), loop.tc.batch_size, shuffle=False, drop_last=False)
    with torch.no_grad(), loop.autocast(), loop.eval_weights():
        for vb in loop.make_loader(val_ds, vs):
            outputs.append(recipe.validation_step(to_device(vb, loop.device)))
    recipe.train()
    keys = [k for k in outputs[0] if k.endswith("_loss")]
    val = {k: float(np.mean([float(o[k]) for o in outputs])) for k in keys}
    val["loss"] = float(sum(val[k] for k in keys))
    val.update(recipe.validation_end(outputs))
    loop.log({"epoch": loop.state.epoch + 1, "step": loop.state.global_step, "split": "val", **val,
              "lr": loop.lr_at(loop.state.global_step)})
    return val


def end_epoch(loop: Loop, val: dict[str, float], bar_factory: Callable | None) -> bool:
    """Plateau schedule, best/last checkpoints, resume point, early stopping. True = stop early."""
    st, tc = loop.state, loop.tc
    train_loss = st.epoch_loss_sum / max(1, st.epoch_loss_n)
    monitor_value = val.get(tc.monitor, train_loss if not val else None)
    if monitor_value is None:
        raise MedAlignError(f"train.monitor '{tc.monitor}' is not a validation metric; have {sorted(val)}")
    # rank 0 decides (float noise across ranks must not split plateau/early-stop decisions)
    score = D.broadcast_float(loop.sign * monitor_value, loop.device)
    if tc.scheduler == "plateau":
        loop.plateau.observe(score)
    st.epoch += 1
    st.step_in_epoch = 0
    st.epoch_loss_sum, st.epoch_loss_n = 0.0, 0
    improved = score < st.best
    if improved:
        st.best, st.best_epoch, st.bad_epochs = score, st.epoch, 0
    else:
        st.bad_epochs += 1
    loop.history.append({"epoch": st.epoch, "train_loss": train_loss, **{f"val_{k}": v for k, v in val.items()}})
    chosen = improved or tc.select == "last"  # the weights that become the run's model
    save_checkpoints(loop, chosen, {"train_loss": train_loss, **{f"val_{k}": v for k, v in val.items()}})
    save_resume(loop)
    if bar_factory is not None:
        msg = f"epoch {st.epoch}/{tc.epochs}  train {train_loss:.4f}"
        if val:
            msg += "  val " + "  ".join(f"{k} {v:.4f}" for k, v in val.items() if k != "n")
        bar_factory.write(msg + ("  *" if improved else ""))
    if tc.early_stopping_patience is not None and st.bad_epochs >= tc.early_stopping_patience:
        if bar_factory is not None:
            bar_factory.write(f"early stopping: no improvement of '{tc.monitor}' for {tc.early_stopping_patience} epochs")
        return True
    return False


# ---------------------------------------------------------------------------------------------
# checkpoints and resume
# ---------------------------------------------------------------------------------------------
def save_checkpoints(loop: Loop, chosen: bool, metrics: dict[str, float]) -> None:
    """best (when ``chosen``, by ``train.select``) and last weights; an in-memory run keeps the chosen."""
    st = loop.state
    with loop.eval_weights():
        if loop.run_dir is None:
            if chosen:
                loop.best_state = copy.deepcopy(loop.recipe.state_dict())
            return
        if not loop.writes:
            return
        name = (loop.config or {}).get("recipe", {}).get("name", type(loop.recipe).__name__)
        meta = {"epoch": st.epoch, "step": st.global_step, "recipe": name, **metrics}
        ckpt_dir = loop.run_dir / "checkpoints"
        if chosen:
            ckpt.save_weights(loop.recipe, ckpt_dir / "best.safetensors", meta)
        ckpt.save_weights(loop.recipe, ckpt_dir / "last.safetensors", meta)


def save_resume(loop: Loop) -> None:
    """Everything needed to continue exactly here (rank 0 of a run with a directory)."""
    if not loop.writes:
        return
    ckpt.save_resume(loop.run_dir / "checkpoints" / "resume.pt", {
        "model": loop.recipe.state_dict(), "optimizer": loop.opt.state_dict(), "scaler": loop.scaler.state_dict(),
        "state": asdict(loop.state), "plateau": asdict(loop.plateau), "config": loop.config,
        "ema": loop.ema.shadow if loop.ema is not None else None})


def restore(loop: Loop, run_dir: Path | None) -> None:
    """Load resume.pt into the loop (weights, optimiser, scaler, EMA, state, RNG); trim the metrics log."""
    if run_dir is None:
        raise MedAlignError("resume needs a run directory")
    path = Path(run_dir) / "checkpoints" / "resume.pt"
    fresh = not path.is_file() and (Path(run_dir) / "config.yaml").is_file()  # killed before step 0's point
    if fresh:  # nothing was trained: start clean (fit has checked that config.yaml predates this call)
        logging.getLogger(__name__).warning("no resume point in %s: starting the run from step 0", run_dir)
    else:
        rs = ckpt.load_resume(path)
        loop.recipe.load_state_dict(rs["model"])
        if loop.ema is not None:
            loop.ema.shadow = {k: v.to(loop.device) for k, v in rs["ema"].items()}
        loop.opt.load_state_dict(rs["optimizer"])
        loop.scaler.load_state_dict(rs["scaler"])
        loop.state = LoopState(**rs["state"])
        for k, v in rs["plateau"].items():
            setattr(loop.plateau, k, v)  # the schedule closure holds this object: update it in place
        ckpt.set_rng_state(rs["rng"])
    if loop.writes:  # the log file is replaced: reopen it
        ckpt.trim_metrics(loop.run_dir / "metrics.jsonl", loop.state.global_step)
        loop.log.close()
        loop.log = ckpt.MetricsLog(loop.run_dir, tensorboard=loop.tc.tensorboard)
    if fresh:
        save_resume(loop)


def _summary(loop: Loop, stopped: bool, seconds: float) -> dict[str, Any]:
    st, tc = loop.state, loop.tc
    summary = {
        "run_dir": str(loop.run_dir) if loop.run_dir is not None else None, "steps": st.global_step,
        "epochs": st.epoch, "stopped": stopped, "best_epoch": st.best_epoch, "select": tc.select,
        "selected_epoch": st.best_epoch if tc.select == "best" else st.epoch,
        f"best_{tc.monitor}": loop.sign * st.best if st.best_epoch >= 0 else None,
        "seconds": seconds, "world_size": D.rank_world()[1], "history": loop.history,
    }
    if loop.run_dir is not None:
        ckpt_dir = loop.run_dir / "checkpoints"
        summary.update(best_checkpoint=str(ckpt_dir / "best.safetensors"),
                       last_checkpoint=str(ckpt_dir / "last.safetensors"))
        if loop.writes and not stopped:
            atomic_write_json(loop.run_dir / "summary.json", summary)
    D.barrier()
    return summary


def _progress(on: bool):
    """tqdm (its class offers both the bar and ``.write``) when progress is on, else None."""
    if not on:
        return None
    from tqdm.auto import tqdm

    return tqdm
