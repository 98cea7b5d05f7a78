"""The paper's sanity-check baselines, evaluated by the same code as the run itself.

- ``untrained``: the run's own architecture with random weights (``api.build_untrained``).
- ``supervised_3d_cnn``: the run's image encoder trained from scratch on the labels with the
  ``supervised`` recipe through the same training loop (short budget), then probed like the run;
  its own linear head's test predictions are reported as ``classifier``.
- ``text_only``: the frozen text encoder on the *reports* + logistic regression. Labels come
  from reports, so this is an upper bound that shows what the text carries.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from medalign.eval.zeroshot import DEFAULT_POOL


def text_only_classifier(train_reports: Sequence[str], train_y: Sequence[int], test_reports: Sequence[str],
                         test_y: Sequence[int], *, encode: Callable[[list[str]], np.ndarray], n_classes: int,
                         class_names: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Frozen text features + logistic regression; classification metrics with CIs on test."""
    from medalign.eval.evaluate import class_cis
    from medalign.eval.probe import fit_predict_scores
    from medalign.eval.zeroshot import classification_metrics

    tr_y, te_y = np.asarray(train_y, int), np.asarray(test_y, int)
    tr, te = tr_y >= 0, te_y >= 0
    if tr.sum() < 2 or te.sum() < 1:
        return {"skipped": "too few labelled reports"}
    Xtr = np.asarray(encode([str(t) for t in np.asarray(train_reports)[tr]]), np.float64)
    Xte = np.asarray(encode([str(t) for t in np.asarray(test_reports)[te]]), np.float64)
    s = fit_predict_scores("logreg", Xtr, tr_y[tr], Xte, n_classes, seed=seed)
    m = classification_metrics(te_y[te], s, n_classes=n_classes, class_names=class_names)
    m["ci"] = class_cis(te_y[te], s, n_boot, seed)
    return {"description": "frozen text encoder on reports + logistic regression", "classifier": m}


def _untrained(run_dir: Path, manifest: Path, cache: Path, split: str, prompt_bank_fn, pool, n_boot, seed) -> dict:
    from medalign import api
    from medalign.eval.evaluate import _embed, evaluate_embeddings

    model = api.build_untrained(run_dir, cache_dir=cache)
    if prompt_bank_fn is None:  # image-only recipe
        test = _embed_image_only(model, manifest, cache, split)
        train = _embed_image_only(model, manifest, cache, "train", required=False)
    else:
        test = _embed(model, manifest, cache, split)
        train = _embed(model, manifest, cache, "train", required=False)
    bank = prompt_bank_fn(model) if prompt_bank_fn else None
    res = evaluate_embeddings(test, train=train, prompt_bank=bank, pool=pool, n_boot=n_boot, seed=seed,
                              probes=("logreg", "knn"))
    res.pop("tables", None)
    res["description"] = "same architecture, random weights"
    return res


# 10 epochs of the default 211-study training split at batch 16: the budget of every supervised baseline
# figure before the FLAIR-heavy demo cohort (issue 20, stop 70), where 10 epochs of 811 studies made the
# baseline half the run's steps and most of `make demo`'s evaluate stage
BASELINE_MIN_STEPS = 130


def baseline_epochs(run_epochs: int, *, batch_size: int, n_train: int | None = None, drop_last: bool = True) -> int:
    """Epochs of the supervised baseline: a tenth of the run's steps, at least ``BASELINE_MIN_STEPS``, at most
    the run's epochs (steps of ``n_train`` training studies in batches of ``batch_size``); without ``n_train``,
    the run's epochs up to 10, else a tenth of them (at least 10)."""
    if n_train is None:
        return run_epochs if run_epochs <= 10 else max(10, run_epochs // 10)
    b = max(1, int(batch_size))
    per_epoch = max(1, int(n_train) // b if drop_last else math.ceil(int(n_train) / b))
    budget = max(run_epochs * per_epoch / 10, BASELINE_MIN_STEPS)
    return max(1, min(run_epochs, math.ceil(budget / per_epoch)))


def supervised_config(run_cfg: dict, *, epochs: int | None = None, n_train: int | None = None) -> dict:
    """The run's config with the recipe swapped for ``supervised`` (same image encoder and data).

    ``epochs`` None -> a short budget (:func:`baseline_epochs`): with ``n_train`` (training studies) a tenth
    of the run's optimisation steps, at least ``BASELINE_MIN_STEPS``, never more epochs than the run's;
    without it, the run's epochs when <= 10, else a tenth of them (at least 10).
    """
    cfg = copy.deepcopy(run_cfg)
    rc = cfg.get("recipe") or {}
    new = {"name": "supervised"}
    for k in ("image_encoder", "sequences", "input_shape"):
        if k in rc:
            new[k] = rc[k]
    cfg["recipe"] = new
    tr = cfg.setdefault("train", {})
    if epochs is None:
        epochs = baseline_epochs(int(tr.get("epochs") or 300), batch_size=int(tr.get("batch_size") or 16),
                                 n_train=n_train, drop_last=bool(tr.get("drop_last", True)))
    tr["epochs"] = int(epochs)
    for k in ("resume", "init_from", "checkpoint"):
        tr.pop(k, None)
    tr["progress"] = False
    tr["monitor"], tr["monitor_mode"] = "loss", "min"  # the clip run may monitor a retrieval metric
    cfg.setdefault("data", {})
    cfg["data"]["augment"] = None  # short budget: no augmentation
    return cfg


class _ImageOnly:
    """embed_manifest adapter for an image-only recipe: zero text embeddings, head logits kept."""

    def __init__(self, model) -> None:
        self.model, self.cache_dir, self.logits = model, model.cache_dir, []

    def encode_image(self, x, sequence_mask=None):
        import torch

        both = getattr(self.model.recipe, "encode_and_classify", None)
        if both is None:
            return self.model.encode_image(x, sequence_mask)
        with torch.no_grad():  # one encoder pass for the embedding and the head's logits
            im = torch.as_tensor(np.asarray(x), dtype=torch.float32).to(self.model.device)  # (B, C, D, H, W)
            mk = None if sequence_mask is None else \
                torch.as_tensor(np.asarray(sequence_mask), dtype=torch.bool).to(self.model.device)  # (B, C)
            emb, logits = both(im, mk)
        self.logits.append(logits.float().cpu().numpy())
        return emb.float().cpu().numpy()

    def encode_text(self, texts):
        return np.zeros((len(texts), 1), np.float32)


def _embed_image_only(model, manifest, cache, split, *, required=True):
    from medalign.eval.evaluate import _embed

    proxy = _ImageOnly(model)
    emb = _embed(proxy, manifest, cache, split, required=required)
    if emb is not None:
        emb["has_report"] = np.zeros(len(emb["study_id"]), bool)
        emb["text_embed"] = emb["image_embed"]
        if proxy.logits:
            emb["logits"] = np.concatenate(proxy.logits)
    return emb


def _trained_alike(out_dir: Path, cfg: dict) -> bool:
    """Whether ``out_dir`` holds a finished baseline run of the same recipe, data, seed and epochs as ``cfg``."""
    import yaml

    if not ((out_dir / "summary.json").is_file() and (out_dir / "config.yaml").is_file()):
        return False
    done = yaml.safe_load((out_dir / "config.yaml").read_text(encoding="utf-8")) or {}

    def what(c: dict) -> tuple:  # what the baseline's weights depend on
        tr, data = c.get("train") or {}, c.get("data") or {}
        return c.get("recipe"), c.get("seed"), tr.get("epochs"), data.get("manifest"), data.get("cache_dir")

    return what(done) == what(cfg)


def _supervised(run_dir: Path, manifest: Path, cache: Path, split: str, n_boot: int, seed: int,
                epochs: int | None, say, n_train: int | None = None) -> dict:
    import medalign.recipes.supervised  # noqa: F401  (registers "supervised")
    from medalign import api
    from medalign.data.schema import CLASSES
    from medalign.errors import MedAlignError
    from medalign.eval.evaluate import class_cis, label_ints, label_names
    from medalign.eval.probe import label_efficiency
    from medalign.eval.zeroshot import classification_metrics
    from medalign.train.loop import fit

    out_dir = run_dir / "eval" / "baselines" / "supervised_3d_cnn"
    import yaml

    run_cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    cfg = supervised_config(run_cfg, epochs=epochs, n_train=n_train)
    cfg["data"]["manifest"], cfg["data"]["cache_dir"] = str(manifest), str(cache)
    if _trained_alike(out_dir, cfg):  # evaluate run again (another --pool, say): the baseline it trained is reused
        say(f"the supervised 3D CNN baseline in {out_dir} was trained on this data with this budget: reused")
    elif (out_dir / "summary.json").is_file():
        raise MedAlignError(f"{out_dir} holds a supervised baseline trained on other data or with another budget; "
                            "remove that folder to train this one")
    else:
        say(f"training the supervised 3D CNN baseline into {out_dir} ({cfg['train'].get('epochs', '?')} epochs)")
        fit(cfg, out_dir)
    sup = api.load(out_dir, cache_dir=cache)
    test = _embed_image_only(sup, manifest, cache, split)
    train = _embed_image_only(sup, manifest, cache, "train", required=False)
    y = label_ints(label_names(test["label"], CLASSES), CLASSES)
    res: dict = {"description": f"{(cfg['recipe'].get('image_encoder') or {}).get('name', 'unet3d')} trained from "
                                f"scratch on labels ({cfg['train'].get('epochs')} epochs)", "run_dir": str(out_dir)}
    if "logits" in test and (y >= 0).any():  # the model's own head on the test images
        s = test["logits"][y >= 0]
        m = classification_metrics(y[y >= 0], s, n_classes=len(CLASSES), class_names=CLASSES)
        m["ci"] = class_cis(y[y >= 0], s, n_boot, seed)
        res["classifier"] = m
    if train is not None:
        ty = label_ints(label_names(train["label"], CLASSES), CLASSES)
        res["probe"] = label_efficiency(train["image_embed"], ty, test["image_embed"], y, probes=("logreg", "knn"),
                                        seed=seed, n_boot=min(n_boot, 500), n_classes=len(CLASSES), class_names=CLASSES)
    return res


def run_baselines(run_dir: str | Path, manifest: Path, cache: Path, *, test: dict, train: dict | None,
                  split: str = "test", prompt_bank_fn=None, pool: str = DEFAULT_POOL, n_boot: int = 1000, seed: int = 0,
                  supervised_epochs: int | None = None, which: Sequence[str] = ("untrained", "supervised_3d_cnn", "text_only"),
                  say=print) -> dict:
    """Every baseline; one that fails is recorded as {"skipped": reason} and the rest still run."""
    from medalign.data.schema import CLASSES
    from medalign.eval.evaluate import label_ints, label_names

    run_dir = Path(run_dir)
    out: dict = {}
    for name in which:
        try:
            say(f"baseline: {name}")
            if name == "untrained":
                out[name] = _untrained(run_dir, manifest, cache, split, prompt_bank_fn, pool, n_boot, seed)
            elif name == "supervised_3d_cnn":
                out[name] = _supervised(run_dir, manifest, cache, split, n_boot, seed, supervised_epochs, say,
                                        n_train=None if train is None else len(train["study_id"]))
            elif name == "text_only":
                if train is None or not np.asarray(train.get("has_report", [True])).any():
                    out[name] = {"skipped": "no training split"}
                    continue
                import yaml

                from medalign.models.text import TextEncoder

                run_cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
                tcfg = dict((run_cfg.get("recipe") or {}).get("text_encoder") or {})
                enc = TextEncoder(**tcfg)
                out[name] = text_only_classifier(
                    train["report"], label_ints(label_names(train["label"], CLASSES), CLASSES),
                    test["report"], label_ints(label_names(test["label"], CLASSES), CLASSES),
                    encode=lambda ts: enc.sentence(ts).cpu().numpy(), n_classes=len(CLASSES),
                    class_names=CLASSES, n_boot=n_boot, seed=seed)
            else:
                out[name] = {"skipped": f"unknown baseline '{name}'"}
        except Exception as e:  # a baseline must not sink the evaluation; say why in the report
            out[name] = {"skipped": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
            say(f"baseline {name} skipped: {out[name]['skipped']}")
    return out
