"""GiMP: gene-induced multimodal pretraining for image-omic classification (METHODS.md section 5).

Pieces (each in its own module): GroupMSA / SNN gene encoders (models/omics.py), Nystrom
patch aggregator + MPM decoder (models/mil.py), triplet loss (losses/triplet.py), masked L1
(losses/masked.py); the image-omic cohort lives in data/omic_cohort.py. This module joins them
into the recipe ``GiMP`` (``"gimp"``): ``stage="pretrain"`` -> triplet on CLS_pat =
concat(CLS_img, CLS_ge) + masked-patch L1 on a contiguous subsequence of length L;
``stage="finetune"`` -> MLP head on CLS_pat from the whole bag, cross-entropy. Switches
(``aggregator``, ``gene_encoder``, ``use_triplet``, ``use_mpm``) give every row of the paper's
Table 2 and the image-only / gene-only baselines through the same code. The drivers
(gene-encoder pretraining, pretrain -> finetune -> test, TCGA and ablation tables) are in
medalign.experiments.gimp.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medalign.data.omic_cohort import BagOmicDataset, ImageOmicCohort
from medalign.losses.masked import MaskedL1Loss, contiguous_subsequence, random_patch_mask
from medalign.losses.triplet import TripletLoss
from medalign.models.mil import AGGREGATORS, PatchDecoder
from medalign.models.omics import build_gene_encoder, load_gene_encoder
from medalign.recipes import RECIPES, Recipe


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
        """The ``stage`` attribute decides: pretrain (triplet / MPM) or finetune (cross-entropy)."""
        batch = self._as_bag_batch(batch)
        return self.pretrain_step(batch) if self.stage == "pretrain" else self.finetune_step(batch)

    @torch.no_grad()
    def validation_step(self, batch: dict) -> dict[str, Any]:
        """The training losses; in finetune also per-patient hits, so ``acc`` is over the whole split."""
        batch = self._as_bag_batch(batch)
        if self.stage == "pretrain":
            return self.pretrain_step(batch)
        logits = self(batch["bags"], batch["expression"])
        return {"ce_loss": F.cross_entropy(logits, batch["label"]), "correct": logits.argmax(1) == batch["label"]}

    def validation_end(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        """Split accuracy (finetune stage); nothing beyond the mean losses when pretraining."""
        hits = [o["correct"] for o in outputs if "correct" in o]
        return {"acc": float(torch.cat(hits).float().mean())} if hits else {}

    def _as_bag_batch(self, batch: dict) -> dict:
        """Accept our collate's ``bags`` or a ``bag`` list; bags are a list, which the loop does not move."""
        dev = self.head[0].weight.device
        bags = batch["bags"] if "bags" in batch else batch["bag"]
        return {**batch, "bags": [b.to(dev) for b in bags], "expression": batch["expression"].to(dev),
                "label": batch["label"].to(dev)}

    # ----------------------------------------------------------------- loop integration
    def build_dataset(self, data_cfg: dict, split: str | None, *, train: bool):
        """``data.manifest``: an image-omic manifest (e.g. from ``medalign synth omics``)."""
        if not data_cfg.get("manifest"):  # the resolved data config always has the key, maybe None
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
