"""GiMP: gene-induced multimodal pretraining for image-omic classification (METHODS.md section 5).

Pieces (each in its own module): GroupMSA / SNN gene encoders (models/omics.py), Nystrom
patch aggregator + MPM decoder (models/mil.py), triplet loss (losses/triplet.py), masked L1
(losses/masked.py). This module joins them:

* ``pretrain_gene_encoder``: supervised pretraining of the gene encoder on expression alone
  (the encoder is then frozen, as in the paper).
* ``GiMP`` (recipe ``"gimp"``): ``stage="pretrain"`` -> triplet on CLS_pat = concat(CLS_img,
  CLS_ge) + masked-patch L1 on a contiguous subsequence of length L; ``stage="finetune"`` ->
  MLP head on CLS_pat from the whole bag, cross-entropy. Switches (``aggregator``,
  ``gene_encoder``, ``use_triplet``, ``use_mpm``) give every row of the paper's Table 2 and
  the image-only / gene-only baselines through the same code.
* ``ImageOmicCohort``: a manifest of bags + expression (e.g. ``medalign synth omics``) in memory,
  genes standardised with train-split statistics.
* ``run_gimp``: pretrain -> finetune (AdamW, cosine) -> test metrics, with a small loop of its
  own (bags have variable length, so the batch is a list; one config runs in seconds on CPU).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medalign.errors import CohortError
from medalign.losses.masked import MaskedL1Loss, contiguous_subsequence, random_patch_mask
from medalign.losses.triplet import TripletLoss
from medalign.models.mil import AGGREGATORS, PatchDecoder
from medalign.models.omics import GENE_ENCODERS
from medalign.recipes import RECIPES, Recipe


# --------------------------------------------------------------------------- data
@dataclass
class ImageOmicCohort:
    """Bags (list of (N_i, D) float tensors), standardised expression (P, G), labels, splits."""

    study_ids: list[str]
    patient_ids: list[str]
    bags: list[Tensor]
    expression: Tensor
    labels: Tensor
    splits: np.ndarray
    classes: list[str]
    genes: list[str]
    gene_groups: dict[str, list[str]]

    @classmethod
    def from_manifest(cls, manifest: str | Path, *, max_patients: int | None = None) -> "ImageOmicCohort":
        """Read manifest.csv (study_id, patient_id, split, label, bag, omics) and everything it points to."""
        import pandas as pd

        from medalign.data.bags import load_bag
        from medalign.data.omics import ExpressionScaler

        manifest = Path(manifest)
        if not manifest.exists():
            raise CohortError("manifest not found", path=str(manifest))
        df = pd.read_csv(manifest, dtype={"study_id": str, "patient_id": str})
        for col in ("study_id", "patient_id", "split", "label", "bag", "omics"):
            if col not in df.columns:
                raise CohortError(f"missing column '{col}'", path=str(manifest))
        if max_patients:
            df = df.iloc[:max_patients]
        root = manifest.parent
        expr_cache: dict[str, Any] = {}
        rows = []
        for i, r in df.iterrows():
            p = root / r["omics"]
            if str(p) not in expr_cache:
                expr_cache[str(p)] = pd.read_csv(p, index_col=0, dtype={0: str}) if p.exists() else None
            table = expr_cache[str(p)]
            if table is None:
                raise CohortError("expression file not found", study_id=r["study_id"], path=str(p))
            if r["patient_id"] not in table.index:
                raise CohortError(f"patient {r['patient_id']} not in expression table", study_id=r["study_id"],
                                  path=str(p))
            rows.append(table.loc[r["patient_id"]].to_numpy(np.float32))
        genes = list(next(iter(expr_cache.values())).columns)
        x = np.stack(rows)
        splits = df["split"].astype(str).to_numpy()
        if not (splits == "train").any():
            raise CohortError("no train rows (split column)", path=str(manifest))
        scaler = ExpressionScaler(log="auto").fit(x[splits == "train"])  # train statistics only
        classes = sorted(df["label"].astype(str).unique())
        labels = torch.tensor([classes.index(v) for v in df["label"].astype(str)])
        bags = [torch.from_numpy(np.array(load_bag(root / b, study_id=s))) for s, b in zip(df["study_id"], df["bag"])]
        groups_path = root / "gene_groups.json"
        groups = json.loads(groups_path.read_text()) if groups_path.exists() else {}
        return cls(df["study_id"].tolist(), df["patient_id"].tolist(), bags, torch.from_numpy(scaler.transform(x)),
                   labels, splits, classes, genes, groups)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    @property
    def in_dim(self) -> int:
        return int(self.bags[0].shape[1])


def iterate_minibatches(idx: np.ndarray, batch_size: int, *, rng: np.random.Generator | None) -> Iterator[np.ndarray]:
    """Shuffled (rng given) or ordered index batches."""
    idx = np.array(idx)
    if rng is not None:
        rng.shuffle(idx)
    for s in range(0, len(idx), batch_size):
        yield idx[s:s + batch_size]


def cohort_batch(cohort: ImageOmicCohort, idx: np.ndarray) -> dict[str, Any]:
    """The recipe's batch: bags as a list (variable N), expression (B, G), label (B,)."""
    return {"bags": [cohort.bags[i] for i in idx], "expression": cohort.expression[idx],
            "label": cohort.labels[idx], "study_id": [cohort.study_ids[i] for i in idx]}


class BagOmicDataset(torch.utils.data.Dataset):
    """Map-style view of one split of an ImageOmicCohort for the shared training loop."""

    def __init__(self, cohort: ImageOmicCohort, split: str | None) -> None:
        self.cohort = cohort
        self.idx = np.arange(len(cohort.study_ids)) if split is None else cohort.indices(split)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self.idx[i])
        c = self.cohort
        return {"bag": c.bags[j], "expression": c.expression[j], "label": int(c.labels[j]), "study_id": c.study_ids[j]}


# --------------------------------------------------------------------------- gene encoder pretraining
class GeneClassifier(nn.Module):
    """Gene encoder + linear head, for supervised gene-only pretraining and evaluation."""

    def __init__(self, encoder: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.dim, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x)["cls"])  # (B, n_classes)


def build_gene_encoder(name: str, n_genes: int, **kwargs: Any) -> nn.Module:
    """Build a gene encoder; ``kwargs`` may be flat or keyed by encoder name ({"groupmsa": {...}, "snn": {...}})."""
    if any(k in GENE_ENCODERS for k in kwargs):
        kwargs = dict(kwargs.get(name) or {})
    return GENE_ENCODERS.build(name, n_genes=n_genes, **kwargs)


def pretrain_gene_encoder(encoder: nn.Module, x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor, *,
                          n_classes: int, epochs: int = 30, lr: float = 1e-3, weight_decay: float = 1e-2,
                          batch_size: int = 32, seed: int = 0) -> tuple[GeneClassifier, dict]:
    """Supervised gene-only training (AdamW, cosine); keeps the weights with the best val accuracy."""
    torch.manual_seed(seed)
    model = GeneClassifier(encoder, n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x_train) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    rng = np.random.default_rng(seed)
    best, best_state, history = -1.0, None, []
    for epoch in range(epochs):
        model.train()
        for b in iterate_minibatches(np.arange(len(x_train)), batch_size, rng=rng):
            if len(b) < 2:
                continue
            loss = F.cross_entropy(model(x_train[b]), y_train[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(x_val).argmax(1) == y_val).float().mean()) if len(x_val) else 0.0
        history.append({"epoch": epoch, "val_acc": acc, "loss": float(loss.detach())})
        if acc > best:
            best, best_state = acc, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, {"best_val_acc": best, "history": history}


def save_gene_encoder(encoder: nn.Module, path: str | Path) -> Path:
    """Save a (pretrained) gene encoder's weights as safetensors, atomically."""
    from safetensors.torch import save_file

    from medalign.utils import atomic_path

    path = Path(path)
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.detach().contiguous() for k, v in encoder.state_dict().items()}, str(tmp))
    return path


def load_gene_encoder(encoder: nn.Module, path: str | Path) -> nn.Module:
    """Load weights saved by save_gene_encoder; a mismatch names the file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise CohortError("gene encoder checkpoint not found", path=str(path))
    try:
        encoder.load_state_dict(load_file(str(path)))
    except RuntimeError as e:
        raise CohortError(f"gene encoder checkpoint does not match the encoder: {e}", path=str(path)) from e
    return encoder


# --------------------------------------------------------------------------- the recipe
@RECIPES.register("gimp")
class GiMP(Recipe):
    """GiMP recipe (see module docstring).

    Args:
        in_dim: patch-feature size (1024 for ResNet50 features).
        n_genes / n_classes: expression length / number of classes.
        dim: aggregator width (CLS_img size).
        aggregator: ``"nystrom"`` (paper), ``"transmil"``, ``"abmil"`` or None (gene only).
        aggregator_kwargs: extra kwargs (heads, num_layers, num_landmarks, attention).
        gene_encoder: ``"groupmsa"``, ``"snn"`` or None (image only); ``gene_kwargs`` its kwargs.
        freeze_genes: keep the gene encoder frozen (paper: pretrained on genes, then frozen).
        use_triplet / use_mpm: the two pretraining objectives.
        mpm_length: contiguous subsequence length L (paper 6000); mask_ratio 0.5.
        margin / mining: triplet margin delta (0.8) and ``"batch_hard"``|``"random"``|``"all"``.
        normalise_tokens: L2-normalise CLS_img and CLS_ge before concatenation, so the squared
            distances live in [0, 8] and the 0.8 margin means the same whatever ``dim`` is
            (the paper does not say; raw LayerNorm tokens have norm ~sqrt(dim)).
        stage: ``"pretrain"`` or ``"finetune"`` (what ``training_step`` computes).
    """

    def __init__(self, *, in_dim: int = 1024, n_genes: int = 0, n_classes: int = 2, dim: int = 64,
                 aggregator: str | None = "nystrom", aggregator_kwargs: dict | None = None,
                 gene_encoder: str | None = "groupmsa", gene_kwargs: dict | None = None, freeze_genes: bool = True,
                 use_triplet: bool = True, use_mpm: bool = True, mpm_length: int = 6000, mask_ratio: float = 0.5,
                 margin: float = 0.8, mining: str = "batch_hard", normalise_tokens: bool = True,
                 head_hidden: int = 64, dropout: float = 0.1, stage: str = "pretrain", seed: int = 0,
                 gene_checkpoint: str | None = None) -> None:
        super().__init__()
        if aggregator is None and gene_encoder is None:
            raise ValueError("GiMP needs an aggregator, a gene encoder or both")
        if use_mpm and aggregator not in ("nystrom", "transmil"):
            raise ValueError(f"MPM needs a token-mixing aggregator (nystrom/transmil), not {aggregator!r}")
        self.aggregator = AGGREGATORS.build(aggregator, in_dim=in_dim, dim=dim, **(aggregator_kwargs or {})) \
            if aggregator else None
        self.gene_encoder = build_gene_encoder(gene_encoder, n_genes, **(gene_kwargs or {})) if gene_encoder else None
        if gene_checkpoint:  # weights from pretrain_gene_encoder (save_gene_encoder), e.g. for the shared loop
            load_gene_encoder(self.gene_encoder, gene_checkpoint)
        self.freeze_genes = freeze_genes and self.gene_encoder is not None
        if self.freeze_genes:
            self.gene_encoder.requires_grad_(False)
        self.decoder = PatchDecoder(dim, in_dim) if use_mpm else None
        self.use_triplet, self.use_mpm = use_triplet, use_mpm
        self.mpm_length, self.mask_ratio, self.normalise = mpm_length, mask_ratio, normalise_tokens
        self.triplet = TripletLoss(margin, mining=mining)
        self.reconstruction = MaskedL1Loss()
        pat_dim = (dim if self.aggregator else 0) + (self.gene_encoder.dim if self.gene_encoder else 0)
        self.pat_dim = pat_dim
        self.head = nn.Sequential(nn.Linear(pat_dim, head_hidden), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(head_hidden, n_classes))
        self.stage = stage
        self.generator = torch.Generator().manual_seed(seed)

    def train(self, mode: bool = True) -> "GiMP":
        super().train(mode)
        if self.freeze_genes:  # a frozen encoder keeps dropout off too
            self.gene_encoder.eval()
        return self

    # ----------------------------------------------------------------- encoders
    def gene_token(self, expression: Tensor) -> Tensor | None:
        if self.gene_encoder is None:
            return None
        if self.freeze_genes:
            with torch.no_grad():
                return self.gene_encoder(expression)["cls"]
        return self.gene_encoder(expression)["cls"]

    def image_tokens(self, bags: list[Tensor]) -> Tensor | None:
        """CLS_img of whole bags, one at a time (variable N; never padded to the longest)."""
        if self.aggregator is None:
            return None
        return torch.cat([self.aggregator(b[None])["cls"] for b in bags])  # (B, d)

    def patient_token(self, cls_img: Tensor | None, cls_ge: Tensor | None) -> Tensor:
        """CLS_pat = concat(CLS_img, CLS_ge) (each L2-normalised when normalise_tokens)."""
        parts = [t for t in (cls_img, cls_ge) if t is not None]
        if self.normalise:
            parts = [F.normalize(t, dim=-1) for t in parts]
        return torch.cat(parts, dim=-1)  # (B, pat_dim)

    def encode_patient(self, bags: list[Tensor], expression: Tensor) -> Tensor:
        return self.patient_token(self.image_tokens(bags), self.gene_token(expression))

    def forward(self, bags: list[Tensor], expression: Tensor) -> Tensor:
        """Class logits (B, n_classes) from whole bags + expression."""
        return self.head(self.encode_patient(bags, expression))

    # ----------------------------------------------------------------- steps
    def pretrain_step(self, batch: dict) -> dict[str, Tensor]:
        bags, labels = batch["bags"], batch["label"]
        out: dict[str, Tensor] = {}
        cls_img = None
        if self.aggregator is not None:
            seqs = torch.stack([contiguous_subsequence(b, self.mpm_length, generator=self.generator)
                                for b in bags])  # (B, L, D)
            pm = random_patch_mask(len(bags), self.mpm_length, self.mask_ratio, generator=self.generator,
                                   device=seqs.device) if self.use_mpm else None
            agg = self.aggregator(seqs, patch_mask=pm)
            cls_img = agg["cls"]
            if self.use_mpm:
                out.update(self.reconstruction(self.decoder(agg["tokens"]), seqs, pm))
        if self.use_triplet:
            x = self.patient_token(cls_img, self.gene_token(batch["expression"]))
            out.update(self.triplet(x, labels, generator=self.generator))
        return out

    def finetune_step(self, batch: dict) -> dict[str, Tensor]:
        logits = self(batch["bags"], batch["expression"])
        labels = batch["label"]
        return {"ce_loss": F.cross_entropy(logits, labels),
                "acc": (logits.argmax(1) == labels).float().mean().detach()}

    def training_step(self, batch: dict) -> dict[str, Tensor]:
        batch = self._as_bag_batch(batch)
        return self.pretrain_step(batch) if self.stage == "pretrain" else self.finetune_step(batch)

    def _as_bag_batch(self, batch: dict) -> dict:
        """Accept our collate's ``bags`` or a ``bag`` list; bags are a list, which the loop does not move."""
        dev = self.head[0].weight.device
        bags = batch["bags"] if "bags" in batch else batch["bag"]
        return {**batch, "bags": [b.to(dev) for b in bags], "expression": batch["expression"].to(dev),
                "label": batch["label"].to(dev)}

    # ----------------------------------------------------------------- loop integration
    def build_dataset(self, data_cfg: dict, split: str | None, *, train: bool):
        """``data.manifest``: an image-omic manifest (e.g. from ``medalign synth omics``)."""
        if "manifest" not in data_cfg:
            raise ValueError("gimp needs data.manifest (an image-omic manifest.csv)")
        key = str(data_cfg["manifest"])
        cache = getattr(self, "_cohorts", {})
        if key not in cache:
            cache[key] = ImageOmicCohort.from_manifest(key)
            self._cohorts = cache
        return BagOmicDataset(cache[key], split)

    @staticmethod
    def collate(samples: list[dict]) -> dict:
        return {"bags": [s["bag"] for s in samples], "expression": torch.stack([s["expression"] for s in samples]),
                "label": torch.tensor([s["label"] for s in samples]), "study_id": [s["study_id"] for s in samples]}


# --------------------------------------------------------------------------- driver
ABLATIONS: dict[str, dict[str, Any]] = {
    # name: (aggregator, gene_encoder, triplet, mpm) -- the rows of the paper's Table 2 + baselines
    "ABMIL (image only)": dict(aggregator="abmil", gene_encoder=None, use_triplet=False, use_mpm=False),
    "TransMIL (image only)": dict(aggregator="transmil", gene_encoder=None, use_triplet=False, use_mpm=False),
    "Aggregator (image only)": dict(aggregator="nystrom", gene_encoder=None, use_triplet=False, use_mpm=False),
    "SNN (gene only)": dict(aggregator=None, gene_encoder="snn", use_triplet=False, use_mpm=False),
    "GroupMSA (gene only)": dict(aggregator=None, gene_encoder="groupmsa", use_triplet=False, use_mpm=False),
    "Aggregator + SNN": dict(aggregator="nystrom", gene_encoder="snn", use_triplet=False, use_mpm=False),
    "Aggregator + GroupMSA": dict(aggregator="nystrom", gene_encoder="groupmsa", use_triplet=False, use_mpm=False),
    "Aggregator + MPM": dict(aggregator="nystrom", gene_encoder=None, use_triplet=False, use_mpm=True),
    "Aggregator + Triplet": dict(aggregator="nystrom", gene_encoder=None, use_triplet=True, use_mpm=False),
    "Aggregator + GroupMSA + Triplet": dict(aggregator="nystrom", gene_encoder="groupmsa", use_triplet=True,
                                            use_mpm=False),
    "GiMP (all)": dict(aggregator="nystrom", gene_encoder="groupmsa", use_triplet=True, use_mpm=True),
    "GiMP with SNN genes": dict(aggregator="nystrom", gene_encoder="snn", use_triplet=True, use_mpm=True),
}


# Defaults of ``medalign gimp ablation`` (configs/gimp_cpu.yaml holds the same): small enough for
# ~2 min on one shared CPU core; the paper's L = 6000 / 1024-d / 100+70 epochs need a GPU.
DEFAULT_ABLATION: dict[str, dict[str, Any]] = {
    "synth": dict(n=200, n_classes=2, seed=0, feat_dim=32, n_genes=256, n_gene_groups=16, informative_groups=4,
                  img_signal=1.0, gene_signal=1.5, tumour_fraction=0.04, bag_min=100, bag_max=1500, fmt="h5"),
    "train": dict(dim=32, aggregator_kwargs={"heads": 2, "num_landmarks": 32},
                  gene_kwargs={"groupmsa": {"n_fragments": 16, "n_groups": 4, "dim": 32, "heads": 2},
                               "snn": {"hidden": (128,), "dim": 32}},
                  pretrain_epochs=6, finetune_epochs=8, gene_epochs=60, lr=1e-3, pretrain_lr=1e-3, batch_size=4,
                  mpm_length=512, mining="batch_hard", margin=0.8, n_boot=1000),
}


def _train(model: GiMP, cohort: ImageOmicCohort, step: Callable[[dict], dict], *, epochs: int, lr: float,
           batch_size: int, seed: int, weight_decay: float = 1e-2,
           eval_fn: Callable[[], float] | None = None, log: list | None = None, tag: str = "") -> None:
    """AdamW + cosine over ``epochs`` on the train split; keeps the best-val weights when eval_fn given."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    train_idx = cohort.indices("train")
    steps = epochs * math.ceil(len(train_idx) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    rng = np.random.default_rng(seed)
    best, best_state = -1.0, None
    for epoch in range(epochs):
        model.train()
        sums: dict[str, float] = {}
        for b in iterate_minibatches(train_idx, batch_size, rng=rng):
            if len(b) < 2:
                continue
            out = step(cohort_batch(cohort, b))
            loss = sum(v for k, v in out.items() if k.endswith("_loss"))
            if not isinstance(loss, Tensor) or not loss.requires_grad:
                continue
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        rec = {"stage": tag, "epoch": epoch, **{k: round(v, 5) for k, v in sums.items()}}
        if eval_fn is not None:
            rec["val_acc"] = eval_fn()
            if rec["val_acc"] > best:
                best, best_state = rec["val_acc"], copy.deepcopy(model.state_dict())
        if log is not None:
            log.append(rec)
    if best_state is not None:
        model.load_state_dict(best_state)


@torch.no_grad()
def predict(model: GiMP, cohort: ImageOmicCohort, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (n, C), CLS_pat (n, pat_dim)) for the given rows, whole bags."""
    model.eval()
    probs, toks = [], []
    for b in iterate_minibatches(idx, 16, rng=None):
        batch = cohort_batch(cohort, b)
        tok = model.encode_patient(batch["bags"], batch["expression"])
        probs.append(model.head(tok).softmax(-1))
        toks.append(tok)
    return torch.cat(probs).numpy(), torch.cat(toks).numpy()


def run_gimp(cohort: ImageOmicCohort, *, aggregator: str | None = "nystrom", gene_encoder: str | None = "groupmsa",
             use_triplet: bool = True, use_mpm: bool = True, dim: int = 32, aggregator_kwargs: dict | None = None,
             gene_kwargs: dict | None = None, gene_encoders: dict[str, nn.Module] | None = None,
             pretrain_epochs: int = 10, finetune_epochs: int = 10, gene_epochs: int = 30, lr: float = 1e-4,
             pretrain_lr: float | None = None, batch_size: int = 8, mpm_length: int = 6000,
             mining: str = "batch_hard", margin: float = 0.8, seed: int = 0) -> dict[str, Any]:
    """One configuration end to end: [gene pretrain] -> [GiMP pretrain] -> finetune -> test.

    ``gene_encoders`` caches pretrained gene encoders by name so an ablation trains each once.
    Returns metrics, the pretrained CLS_pat of the train split (for t-SNE) and the log.
    """
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    log: list[dict] = []
    model = GiMP(in_dim=cohort.in_dim, n_genes=cohort.expression.shape[1], n_classes=len(cohort.classes), dim=dim,
                 aggregator=aggregator, aggregator_kwargs=aggregator_kwargs, gene_encoder=gene_encoder,
                 gene_kwargs=gene_kwargs, use_triplet=use_triplet, use_mpm=use_mpm, mpm_length=mpm_length,
                 margin=margin, mining=mining, seed=seed)
    if gene_encoder is not None:  # supervised gene-only pretraining, then frozen
        cache = gene_encoders if gene_encoders is not None else {}
        if gene_encoder not in cache:
            tr, va = cohort.indices("train"), cohort.indices("val")
            torch.manual_seed(seed)  # the same gene encoder whichever row asks first
            enc = build_gene_encoder(gene_encoder, cohort.expression.shape[1], **(gene_kwargs or {}))
            clf, info = pretrain_gene_encoder(enc, cohort.expression[tr], cohort.labels[tr], cohort.expression[va],
                                              cohort.labels[va], n_classes=len(cohort.classes), epochs=gene_epochs,
                                              lr=1e-3, seed=seed)
            cache[gene_encoder] = clf.encoder
            log.append({"stage": "gene_pretrain", "best_val_acc": info["best_val_acc"]})
        model.gene_encoder.load_state_dict(cache[gene_encoder].state_dict())
    train_idx, val_idx, test_idx = cohort.indices("train"), cohort.indices("val"), cohort.indices("test")
    tsne_tokens = tsne_test = None
    if aggregator is not None and (use_triplet or use_mpm) and pretrain_epochs > 0:
        model.stage = "pretrain"
        _train(model, cohort, model.pretrain_step, epochs=pretrain_epochs, lr=pretrain_lr or lr,
               batch_size=batch_size, seed=seed, log=log, tag="pretrain")
        _, tsne_tokens = predict(model, cohort, train_idx)
        _, tsne_test = predict(model, cohort, test_idx)

    def val_acc() -> float:
        p, _ = predict(model, cohort, val_idx)
        return float((p.argmax(1) == cohort.labels[val_idx].numpy()).mean())

    model.stage = "finetune"
    _train(model, cohort, model.finetune_step, epochs=finetune_epochs, lr=lr, batch_size=batch_size, seed=seed,
           eval_fn=val_acc, log=log, tag="finetune")
    probs, _ = predict(model, cohort, test_idx)
    y = cohort.labels[test_idx].numpy()
    return {"probs": probs, "y": y, "pred": probs.argmax(1), "tsne_tokens": tsne_tokens,
            "tsne_labels": cohort.labels[train_idx].numpy(), "tsne_test_tokens": tsne_test,
            "tsne_test_labels": cohort.labels[test_idx].numpy(), "log": log, "seconds": time.perf_counter() - t0,
            "model": model}


def classification_metrics(y: np.ndarray, pred: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Accuracy and macro-F1 with percentile bootstrap CIs over test patients."""
    from sklearn.metrics import f1_score

    try:
        from medalign.eval.bootstrap import bootstrap_ci
    except ImportError:  # pragma: no cover - the eval helper is part of the package
        bootstrap_ci = _bootstrap_ci
    acc = bootstrap_ci(lambda a, b: float((a == b).mean()), y, pred, n=n_boot, seed=seed)
    f1 = bootstrap_ci(lambda a, b: float(f1_score(a, b, average="macro")), y, pred, n=n_boot, seed=seed)
    return {"accuracy": acc, "macro_f1": f1, "n_test": int(len(y))}


def _bootstrap_ci(fn: Callable[..., float], *arrays: np.ndarray, n: int = 1000, seed: int = 0,
                  alpha: float = 0.05) -> dict:
    rng = np.random.default_rng(seed)
    m = len(arrays[0])
    stats = [fn(*(a[idx] for a in arrays)) for idx in (rng.integers(0, m, m) for _ in range(n))]
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return {"value": float(fn(*arrays)), "lo": float(lo), "hi": float(hi), "n_boot": n, "alpha": alpha}


def fmt_ci(ci: dict) -> str:
    return f"{ci['value']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]"


# --------------------------------------------------------------------------- experiments (CLI drivers)
def _write_extra(run_dir: Path, name: str, payload: dict) -> Path:
    """run_dir/report_extras/<name>.json in the CONTRACTS.md format (rendered by the HTML report)."""
    from medalign.utils import atomic_write_json

    path = run_dir / "report_extras" / f"{name}.json"
    atomic_write_json(path, payload)
    return path


def run_tcga(data_dir: str | Path, out_dir: str | Path, *, cohorts: tuple[str, ...] = ("blca", "coadread", "stad"),
             label: str = "cohort", use_signatures: bool = True, epochs: int = 30, seed: int = 0, dim: int = 64,
             n_fragments: int = 64, n_groups: int = 8, n_boot: int = 1000,
             fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> dict[str, Any]:
    """GroupMSA vs SNN vs logistic regression on real TCGA expression (patient-level split).

    Scaling statistics come from the train split only; logistic regression picks C on val.
    Writes results.json, splits.csv and report_extras/gimp_tcga.json under out_dir.
    """
    from sklearn.linear_model import LogisticRegression

    from medalign.data.omics import ExpressionScaler, load_xena, patient_split, read_signatures, signature_gene_order
    from medalign.utils import atomic_path, atomic_write_json

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    table = load_xena(data_dir, cohorts, label=label)
    counts = table.labels.value_counts()
    keep = counts[counts >= 10].index  # classes too rare to split are dropped (and reported)
    dropped = {k: int(v) for k, v in counts.items() if k not in keep}
    mask = table.labels.isin(keep).to_numpy()
    expr, labels = table.expression[mask], table.labels[mask]
    genes = list(expr.columns)
    groups = {}
    sig_path = data_dir / "xena_signatures.csv"
    if use_signatures and sig_path.exists():
        genes, groups = signature_gene_order(genes, read_signatures(sig_path))
        expr = expr[genes]
    split = patient_split(labels, fractions=fractions, seed=seed)
    classes = sorted(labels.unique())
    y_all = labels.map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    idx = {s: np.flatnonzero(split.to_numpy() == s) for s in ("train", "val", "test")}
    scaler = ExpressionScaler(log="auto").fit(expr.to_numpy()[idx["train"]])  # train-only statistics
    x_all = scaler.transform(expr.to_numpy())
    xs = {s: torch.from_numpy(x_all[i]) for s, i in idx.items()}
    ys = {s: torch.from_numpy(y_all[i]) for s, i in idx.items()}
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    best_c, best_acc = 1.0, -1.0
    for c in (0.001, 0.01, 0.1, 1.0):
        lr = LogisticRegression(C=c, max_iter=3000).fit(xs["train"].numpy(), ys["train"].numpy())
        acc = float((lr.predict(xs["val"].numpy()) == ys["val"].numpy()).mean())
        if acc > best_acc:
            best_c, best_acc, best_lr = c, acc, lr
    results["Logistic regression"] = {"pred": best_lr.predict(xs["test"].numpy()), "val_acc": best_acc,
                                      "seconds": time.perf_counter() - t0, "params": {"C": best_c}}
    n_genes = len(genes)
    specs = {"GroupMSA": ("groupmsa", dict(n_fragments=n_fragments, n_groups=n_groups, dim=dim, heads=4)),
             "SNN": ("snn", dict(hidden=(256,), dim=dim))}
    for name, (key, kw) in specs.items():
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        clf, info = pretrain_gene_encoder(build_gene_encoder(key, n_genes, **kw), xs["train"], ys["train"], xs["val"],
                                          ys["val"], n_classes=len(classes), epochs=epochs, lr=1e-3, seed=seed)
        with torch.no_grad():
            pred = clf(xs["test"]).argmax(1).numpy()
        save_gene_encoder(clf.encoder, out_dir / f"{key}_encoder.safetensors")  # reusable frozen encoder
        results[name] = {"pred": pred, "val_acc": info["best_val_acc"], "seconds": time.perf_counter() - t0,
                         "params": {**kw, "n_parameters": sum(p.numel() for p in clf.parameters())}}
    y_test = ys["test"].numpy()
    rows, summary = [], {}
    for name, r in results.items():
        m = classification_metrics(y_test, r["pred"], n_boot=n_boot, seed=seed)
        summary[name] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "val_acc": r["val_acc"],
                         "seconds": round(r["seconds"], 2), "params": r["params"]}
        rows.append([name, fmt_ci(m["accuracy"]), fmt_ci(m["macro_f1"]), f"{r['val_acc']:.3f}", f"{r['seconds']:.1f}"])
    n_split = {s: int(len(i)) for s, i in idx.items()}
    out = {"task": label, "cohorts": list(cohorts), "classes": classes, "dropped_rare_classes": dropped,
           "n_genes": n_genes, "n_signature_groups": len(groups), "split_sizes": n_split, "seed": seed,
           "log_transform": scaler.use_log_, "results": summary}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "results.json", out)
    with atomic_path(out_dir / "splits.csv") as tmp:
        split.rename("split").to_frame().assign(label=labels).to_csv(tmp)
    task = "cancer type" if label == "cohort" else f"subtype ({label})"
    md = (f"Real TCGA RNA-seq (Xena tables: {', '.join(c.upper() for c in cohorts)}), {task}, "
          f"{len(classes)} classes ({', '.join(classes)}), {n_genes} genes"
          f"{f' ordered by {len(groups)} signature groups' if groups else ''}. Patient-level stratified split "
          f"train/val/test = {n_split['train']}/{n_split['val']}/{n_split['test']}; z-scores use train "
          f"statistics only. Gene encoders trained supervised ({epochs} epochs, AdamW, cosine; best val epoch). "
          f"95% percentile bootstrap CIs over test patients ({n_boot} resamples)."
          + (f" Classes with < 10 patients dropped: {dropped}." if dropped else ""))
    _write_extra(out_dir, f"gimp_tcga_{label}", {
        "title": f"GiMP gene encoders on real TCGA: {task}", "markdown": md, "images": [],
        "tables": [{"caption": "Test accuracy / macro-F1 [95% CI]",
                    "columns": ["Model", "Accuracy", "Macro-F1", "Val acc", "Seconds"], "rows": rows}]})
    return out


def _tsne_plot(path: Path, panels: list[list[tuple[str, np.ndarray, np.ndarray]]], classes: list[str],
               seed: int) -> None:
    """One row of t-SNE panels per entry of ``panels`` (e.g. train split, test split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from medalign.eval.plots import save_figure

    n_rows, n_cols = len(panels), len(panels[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 4 * n_rows), squeeze=False)
    for ax, (title, tok, y) in ((a, p) for row_axes, row in zip(axes, panels) for a, p in zip(row_axes, row)):
        if 1 < len(set(y.tolist())) < len(y):  # a number to go with the picture: silhouette of CLS_pat by class
            from sklearn.metrics import silhouette_score

            title = f"{title}\nsilhouette {silhouette_score(tok, y):.2f}"
        if len(tok) >= 8:
            emb = TSNE(n_components=2, perplexity=min(30, max(2, len(tok) // 4)), init="pca",
                       random_state=seed).fit_transform(tok)
        else:  # too few points for t-SNE (tiny test runs): the first two coordinates
            emb = tok[:, :2]
        for c, name in enumerate(classes):
            ax.scatter(emb[y == c, 0], emb[y == c, 1], s=12, label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    axes[0][0].legend(fontsize=8)
    fig.suptitle("t-SNE of CLS_pat after pretraining (rows: train split, test split)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


TSNE_TITLES = {"GiMP (all)": "GiMP: image + GroupMSA genes", "GiMP with SNN genes": "GiMP with SNN genes",
               "Aggregator + Triplet": "without gene inducing (image triplet)", "Aggregator + MPM": "image only, MPM"}


def run_ablation(manifest: str | Path, out_dir: str | Path, *, rows: list[str] | None = None,
                 seeds: tuple[int, ...] = (0,), n_boot: int = 1000, tsne: bool = True, **kwargs: Any) -> dict[str, Any]:
    """Table-2-style ablation (+ baselines) on an image-omic cohort; t-SNE of CLS_pat (Fig. 2 style).

    kwargs go to ``run_gimp`` (dim, epochs, mpm_length, aggregator_kwargs, gene_kwargs ...).
    Writes results.json, report_extras/gimp_ablation.json and report_extras/gimp_ablation_tsne.png.
    """
    from medalign.utils import atomic_path, atomic_write_json

    out_dir = Path(out_dir)
    cohort = ImageOmicCohort.from_manifest(manifest)
    names = rows or list(ABLATIONS)
    unknown = [r for r in names if r not in ABLATIONS]
    if unknown:
        raise CohortError(f"unknown ablation rows {unknown}; known: {list(ABLATIONS)}")
    table, summary, tsne_panels = [], {}, []
    gene_caches: dict[int, dict[str, nn.Module]] = {}  # each gene encoder is pretrained once per seed
    for name in names:
        cfg = ABLATIONS[name]
        accs, f1s, secs, first = [], [], [], None
        for seed in seeds:
            r = run_gimp(cohort, **cfg, seed=seed, gene_encoders=gene_caches.setdefault(seed, {}), **kwargs)
            m = classification_metrics(r["y"], r["pred"], n_boot=n_boot, seed=seed)
            accs.append(m["accuracy"]["value"]), f1s.append(m["macro_f1"]["value"]), secs.append(r["seconds"])
            first = first or (r, m)
        r, m = first
        if tsne and r["tsne_tokens"] is not None and name in TSNE_TITLES:
            tsne_panels.append((name, r["tsne_tokens"], r["tsne_labels"], r["tsne_test_tokens"],
                                r["tsne_test_labels"]))
        mark = lambda b: "✓" if b else ""  # noqa: E731
        gene = {"groupmsa": "GroupMSA", "snn": "SNN", None: ""}[cfg["gene_encoder"]]
        agg = {"nystrom": "Nystrom", "transmil": "TransMIL", "abmil": "ABMIL", None: ""}[cfg["aggregator"]]
        acc_txt = fmt_ci(m["accuracy"]) + (f"; mean over {len(seeds)} seeds {np.mean(accs):.3f}" if len(seeds) > 1 else "")
        table.append([name, agg, gene, mark(cfg["use_triplet"]), mark(cfg["use_mpm"]), acc_txt, fmt_ci(m["macro_f1"]),
                      f"{np.mean(secs):.1f}"])
        summary[name] = {**{k: v for k, v in cfg.items()}, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                         "accuracy_per_seed": accs, "macro_f1_per_seed": f1s, "seconds": secs,
                         "log_seed0": r["log"]}
    images = []
    if tsne_panels:
        order = list(TSNE_TITLES)
        tsne_panels.sort(key=lambda p: order.index(p[0]))
        titles = TSNE_TITLES
        png = out_dir / "report_extras" / "gimp_ablation_tsne.png"
        _tsne_plot(png, [[(f"{titles[p[0]]} (train)", p[1], p[2]) for p in tsne_panels],
                         [(f"{titles[p[0]]} (test)", p[3], p[4]) for p in tsne_panels]], cohort.classes, seeds[0])
        with atomic_path(out_dir / "cls_pat_pretrained.npz", suffix=".npz") as tmp:  # to re-plot or re-measure
            np.savez(tmp, **{f"{p[0]}/train": p[1] for p in tsne_panels}, **{f"{p[0]}/test": p[3] for p in tsne_panels},
                     train_labels=tsne_panels[0][2], test_labels=tsne_panels[0][4])
        images.append(png.relative_to(out_dir).as_posix())
    n_split = {s: int(len(cohort.indices(s))) for s in ("train", "val", "test")}
    lens = [int(b.shape[0]) for b in cohort.bags]
    md = (f"Synthetic image-omic cohort `{manifest}`: {len(cohort.bags)} patients ({', '.join(cohort.classes)}), "
          f"bags of {min(lens)}..{max(lens)} patches x {cohort.in_dim} features, {cohort.expression.shape[1]} genes; "
          f"train/val/test = {n_split['train']}/{n_split['val']}/{n_split['test']}. Pretraining (triplet and/or MPM) on "
          f"the train split, then fine-tuning (MLP head, AdamW, cosine, best-val epoch), test accuracy with 95% "
          f"bootstrap CIs over test patients. Settings: "
          + ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) + f"; seeds={list(seeds)}. "
          "Read the t-SNE with care: the gene encoder was pretrained with labels on the same train patients, "
          "so a clean train-split picture is not evidence of generalisation; the test row and the table are.")
    payload = {"title": "GiMP ablation (paper Table 2 style) on the synthetic image-omic cohort", "markdown": md,
               "images": images,
               "tables": [{"caption": "Ablation: aggregator / gene encoder / triplet / MPM (test, 95% CI)",
                           "columns": ["Configuration", "Aggregator", "Genes", "Triplet", "MPM", "Accuracy",
                                       "Macro-F1", "Seconds"], "rows": table}]}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_extra(out_dir, "gimp_ablation", payload)
    atomic_write_json(out_dir / "results.json", {"manifest": str(manifest), "settings": kwargs, "seeds": list(seeds),
                                                 "results": summary})
    return {"results": summary, "table": table, "images": images}
