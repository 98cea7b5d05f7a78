"""brain-CLIP: 3D U-Net image encoder + frozen (cached) text encoder + symmetric contrastive loss."""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medalign.data.reports import mirror_laterality, report_views, select_report_section
from medalign.data.schema import CLASSES, PAPER_SEQUENCES
from medalign.losses.clip import ClipLoss
from medalign.losses.distill import ViewDistillLoss
from medalign.losses.lesion import LesionClassLoss, VoxelLesionLoss
from medalign.models.heads import ProjectionHead
from medalign.models.image3d import build_image_encoder
from medalign.models.text import TextEncoder
from medalign.recipes import RECIPES, Recipe
# re-exported: the view helpers lived here before recipes.views
from medalign.recipes.views import bright_tail, jitter_batch, sequence_dropout, shared_views, single_views  # noqa: F401
from medalign.recipes.views import mirror_batch


TEXT_VIEW_MODES = ("none", "sections", "paraphrases")


def _text_view_mode(text_views: bool | str) -> str:
    """``text_views`` as one of :data:`TEXT_VIEW_MODES` (False -> none, True -> sections)."""
    if isinstance(text_views, bool) or text_views is None:
        return "sections" if text_views else "none"
    if str(text_views) not in TEXT_VIEW_MODES:
        raise ValueError(f"recipe.text_views must be true, false or one of {', '.join(TEXT_VIEW_MODES)}; "
                         f"got '{text_views}'")
    return str(text_views)


def _evidence_mode(value: bool | str) -> str:
    """``recipe.lesion_evidence`` -> "" (off), "brain", "lesion" or "volume"."""
    mode = {False: "", True: "brain"}.get(value, value) if isinstance(value, bool) else str(value)
    if mode not in ("", "brain", "lesion", "volume"):
        raise ValueError(f"recipe.lesion_evidence must be false, true, 'brain', 'lesion' or 'volume', got {value!r}")
    return mode


def evidence_size(mode: str, num_classes: int) -> int:
    """How many values :func:`lesion_evidence` appends to the pooled features in ``mode``."""
    return {"": 0, "volume": 1 + num_classes}.get(mode, 2 * (1 + num_classes))


VOLUME_FLOOR = 1e-3  # lesion share of the grid below which "volume" evidence is ~linear, above ~log


def lesion_evidence(logits: torch.Tensor, mode: str = "lesion") -> torch.Tensor:
    """Study-level summary (B, :func:`evidence_size`) of lesion-head logits (B, 1 + K, *grid); channel 0 = no lesion.

    ``"brain"``: mean and max of each channel's probability over all cells. ``"lesion"`` (no
    gradient): with w = 1 - p(no lesion) per cell, the lesion load (mean w) and the class mix of
    the lesion cells (sum w p_c / sum w), then the same over the top 1/16 of cells by w. A brain
    without lesions gives a low load whatever the head says at its faint cells, which an average
    over the whole brain mixes in with the lesions.

    ``"volume"`` (no gradient; for a head trained on lesion shares, ``lesion_targets:
    fraction``), (B, 1 + K): the estimated lesion share of the grid, all classes and per class
    (mean over the cells of 1 - p(no lesion) and of p_c), as log(1 + share / 1e-3) / log(1 + 1e3):
    0 without lesion, 0.1 at 0.1 % of the grid (~1.5 ml in a head), 1 when every cell is lesion.
    """
    p = logits.softmax(1).flatten(2)  # (B, 1 + K, cells)
    if mode == "brain":
        return torch.cat([p.mean(-1), p.amax(-1)], dim=1)
    p = p.detach()
    if mode == "volume":
        share = torch.cat([1.0 - p[:, :1].mean(-1), p[:, 1:].mean(-1)], dim=1).clamp_min(0.0)  # (B, 1 + K)
        return torch.log1p(share / VOLUME_FLOOR) / math.log1p(1.0 / VOLUME_FLOOR)
    w = 1.0 - p[:, 0]  # (B, cells) lesion-ness
    k = max(1, w.shape[-1] // 16)
    top = w.topk(k, dim=-1).indices  # (B, k)
    p_top = p.gather(2, top[:, None].expand(-1, p.shape[1], -1))  # (B, 1 + K, k)
    out = []
    for q in (p, p_top):
        wq = 1.0 - q[:, 0]  # (B, n)
        mix = (q[:, 1:] * wq[:, None]).sum(-1) / wq.sum(-1, keepdim=True).clamp_min(1e-6)  # (B, K)
        out += [wq.mean(-1, keepdim=True), mix]
    return torch.cat(out, dim=1)  # (B, 2 (1 + K))


def _sequence_weights(weights: dict[str, float] | None, sequences: Sequence[str]) -> torch.Tensor | None:
    """``recipe.single_sequence_weights`` as a (C,) tensor in ``sequences`` order; one-line errors naming the key."""
    if weights is None:
        return None
    if not isinstance(weights, dict):
        raise ValueError("recipe.single_sequence_weights must map sequences to weights, e.g. {flair: 2, dwi: 1}; "
                         f"got {weights!r}")
    unknown = sorted(set(weights) - set(sequences))
    if unknown:
        raise ValueError(f"recipe.single_sequence_weights: '{unknown[0]}' is not one of the run's sequences "
                         f"({', '.join(sequences)})")
    bad = {k: v for k, v in weights.items() if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0)}
    if bad or not any(weights.values()):
        key = next(iter(bad), "")
        raise ValueError(f"recipe.single_sequence_weights must be non-negative numbers, not all 0"
                         + (f"; got {key}: {bad[key]!r}" if bad else ""))
    return torch.tensor([float(weights.get(s, 0.0)) for s in sequences])  # (C,)


@RECIPES.register("clip")
class ClipRecipe(Recipe):
    """Image-report contrastive learning (brain-CLIP, METHODS.md section 1).

    Args:
        sequences: input channels, in order (paper: dwi, t2s, flair).
        input_shape: (D, H, W) of the preprocessed volumes (sizes the flatten+FC layer).
        image_encoder: ``{"name": <IMAGE_ENCODERS key>, **kwargs}``.
        text_encoder: keyword arguments of :class:`TextEncoder` (frozen, cached).
        embed_dim: shared embedding size (paper: 256).
        projection: ``"linear"`` (paper) or ``"mlp"``.
        logit_scale_init: initial ``exp(t)``. We use CLIP's 1/0.07 = 14.3 (the reference
            code's initial value is not given in the paper); the scale is clamped at
            ``logit_scale_max`` = 100 as open_clip does (the reference left it unclamped).
        sequence_dropout: probability of hiding each present sequence during training, so
            that a study with fewer sequences still embeds sensibly.
        single_sequence: probability that a training study shows just one of its present
            sequences (drawn uniformly), as a single-FLAIR or single-DWI study would.
        single_sequence_weights: ``{sequence: weight}``: draw that one sequence in proportion to these
            weights instead (sequences not named weigh 0; a study with none of them present: uniformly),
            e.g. ``{flair: 2, dwi: 1}`` for the single series real studies most often are.
        gather: all-gather embeddings across DDP ranks (negatives span the global batch).
        jitter: training-only on-tensor augmentation ``{"shift": [d, h, w], "scale": s, "tail": {...}}``
            (see :func:`jitter_batch`, :func:`bright_tail`); ``None`` = off (paper: TorchIO augmentation in the data layer).
        flip_lr: probability that a training study is mirrored left-right, its report's sides swapped
            with it ("left" <-> "right", "L" <-> "R": :func:`medalign.data.reports.mirror_laterality`),
            so the pair stays true (a plain flip would pair "left MCA infarct" with a right one).
            0 = off (the preset); the mirrored reports are encoded once by :meth:`prepare`.
        text_section: which part of a *report* the text encoder sees: ``"full"`` (the whole
            report, default) or ``"impression"`` (the impression/conclusion section when the
            report has one, else the report without boilerplate; see
            :func:`medalign.data.reports.extract_impression`). Applied to reports in training,
            ``embed`` and evaluation (:meth:`encode_report`), never to free-text queries
            (:meth:`encode_text`).
        target_temperature: soft contrastive targets from the similarity of the frozen report
            features (see :class:`~medalign.losses.clip.ClipLoss`); ``None`` = one-hot (paper).
        text_views: in training, each report is replaced by one of its label-preserving views,
            drawn anew every step; every view is encoded once by :meth:`prepare` (frozen cache).
            Validation, ``embed`` and evaluation see the ``text_section`` view only.
            ``False`` / ``"none"`` = the paper's one text per report; ``True`` / ``"sections"`` =
            views cut from the report (section text, impression, findings, findings less one
            sentence; see :func:`medalign.data.reports.report_views`); ``"paraphrases"`` = those
            plus the ``text_section`` view of each of the study's other wordings (the manifest
            column ``report_paraphrases``, e.g. ``medalign synth brain --paraphrases K``: other
            reports of the same truth), all views of a report equally likely. A manifest
            without that column (or an empty cell) gives the ``"sections"`` views.
        text_adapter: a trainable residual MLP (D -> D -> D, last layer zero-initialised, so
            training starts from the locked tower) on the frozen text features before the text
            projection. ``False`` (default) = LiT-style locked text tower with a linear map.
        lesion_aux: weight of an auxiliary loss (0 = off, the paper): a 1x1 conv on the image
            encoder's ``local`` map (``image_encoder.local_level``) predicts, per cell, whether it
            holds a lesion and of which class (the study's label), trained on the studies whose
            cache has a lesion mask (:class:`~medalign.losses.lesion.LesionClassLoss`). For cohorts
            with masks (the synthetic one): it makes the features at a lesion tell white-matter
            disease from tumour oedema, which matching reports alone did not. Training only.
        lesion_evidence: with ``lesion_aux``, a summary of the head's class probabilities joins
            the pooled image features before the projection (2 x 6 values, at inference too), so
            the embedding carries how much of each lesion class the head sees. ``True`` /
            ``"brain"``: mean and max over all cells, trained through; ``"lesion"``: read from the
            head without gradient (only the lesion loss trains it, so the contrastive loss cannot
            turn it into a channel of its own) and pooled over the cells it calls lesion
            (:func:`lesion_evidence`); ``"volume"``: the lesion volume per class that a head
            trained with ``lesion_targets: fraction`` estimates, no gradient.
        label_targets: weight w of class-label targets in the contrastive loss (0 = off, the
            paper): each study's targets become (1 - w) x its own report + w x the batch's reports
            of the same class (manifest column ``label``; rows without one keep their own; see
            :class:`~medalign.losses.clip.ClipLoss`).
        label_similarity: with ``label_targets``, split the class share among the batch's other reports
            of the class by the similarity of their frozen features (softmax of cos / this temperature)
            instead of equally, so a study of a grab-bag class is pulled to reports of its own kind
            (``None`` = equally; see :class:`~medalign.losses.clip.ClipLoss`).
        twin_views: > 0 trains a patient's studies in one batch (a study and its lesion-free twin,
            ``synth brain --twins``) through one shared view, a single sequence with this
            probability (:func:`shared_views`); 0 = the loop's plain shuffle.
        view_distill: weight of view distillation (0 = off, the paper): in training, up to
            ``view_distill_batch`` studies of each batch that show two or more sequences are encoded
            again through one of them (drawn uniformly), and that embedding is pulled towards the
            study's own (detached) embedding (:class:`~medalign.losses.distill.ViewDistillLoss`). A
            FLAIR-only study must then embed where its full study does, which asks the encoder to
            read on FLAIR alone what DWI and T2* tell (a real clinical FLAIR often comes alone).
            Costs a forward/backward of ``view_distill_batch`` more studies per step.
        view_distill_batch: how many studies per step get the distilled view (0 = all of them).
        lesion_voxels: weight of a per-voxel lesion loss (0 = off): a 1x1 conv on the ``local`` map
            predicts, for each of a cell's ``lesion_upsample`` voxels, whether it is lesion
            (:class:`~medalign.losses.lesion.VoxelLesionLoss`; training only, studies with a mask).
            With ``image_encoder.local_level: 0`` behind the 1x4x4 stem it asks the first level to
            keep a thin lesion's voxels, which a per-cell target lets it average away.
        lesion_upsample: image grid / ``local`` map grid per axis, for ``lesion_voxels``.
        lesion_targets: what the head learns per cell: ``"any"`` (a lesion voxel in the cell,
            lesion and lesion-free cells balanced) or ``"fraction"`` (the cell's lesion share,
            calibrated; see :class:`~medalign.losses.lesion.LesionClassLoss`).
    """

    def __init__(self, *, sequences: Sequence[str] = PAPER_SEQUENCES, input_shape: Sequence[int] | None = (16, 112, 112),
                 image_encoder: dict | None = None, text_encoder: dict | None = None, embed_dim: int = 256,
                 projection: str = "linear", logit_scale_init: float = 1 / 0.07, logit_scale_max: float = 100.0,
                 learn_logit_scale: bool = True, sequence_dropout: float = 0.0, single_sequence: float = 0.0,
                 single_sequence_weights: dict[str, float] | None = None, gather: bool = True,
                 text_section: str = "full", jitter: dict | None = None, flip_lr: float = 0.0,
                 target_temperature: float | None = None, text_views: bool | str = False,
                 text_adapter: bool = False, lesion_aux: float = 0.0, lesion_evidence: bool | str = False,
                 lesion_targets: str = "any", label_targets: float = 0.0, label_similarity: float | None = None,
                 twin_views: float = 0.0,
                 view_distill: float = 0.0, view_distill_batch: int = 8, lesion_voxels: float = 0.0,
                 lesion_upsample: Sequence[int] = (1, 4, 4)) -> None:
        super().__init__()
        self.sequences = tuple(sequences)
        self.image_encoder = build_image_encoder(image_encoder, in_channels=len(self.sequences),
                                                 input_shape=input_shape)
        self.text_encoder_cfg = dict(text_encoder or {})
        self._text: list[TextEncoder] = []  # a list, so the frozen encoder is not a submodule
        self.lesion_head: nn.Module | None = None
        if lesion_evidence and not lesion_aux:
            raise ValueError("recipe.lesion_evidence needs recipe.lesion_aux > 0 (the head it reads is trained by it)")
        self.lesion_evidence = _evidence_mode(lesion_evidence)
        if lesion_aux:
            self.lesion_head = self._local_conv(1 + len(CLASSES), "lesion_aux")
            self.lesion_loss = LesionClassLoss(weight=lesion_aux, targets=lesion_targets)
        self.voxel_head: nn.Module | None = None
        if lesion_voxels:
            self.voxel_head = self._local_conv(math.prod(lesion_upsample), "lesion_voxels")
            self.voxel_loss = VoxelLesionLoss(lesion_voxels, tuple(lesion_upsample))
        self._warned_no_masks = False
        self._checked_labels = False
        extra = evidence_size(self.lesion_evidence, len(CLASSES))
        self.image_proj = ProjectionHead(self.image_encoder.out_dim + extra, embed_dim, projection)
        self.text_proj = ProjectionHead(self.text_encoder.dim, embed_dim, projection)
        self.text_view_mode = _text_view_mode(text_views)
        self.text_adapter: nn.Module | None = None
        if text_adapter:
            d = self.text_encoder.dim
            self.text_adapter = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
            nn.init.zeros_(self.text_adapter[2].weight)
            nn.init.zeros_(self.text_adapter[2].bias)
        log_init = torch.tensor(math.log(logit_scale_init), dtype=torch.float32)
        self.log_logit_scale = nn.Parameter(log_init, requires_grad=learn_logit_scale)
        self.log_scale_max = math.log(logit_scale_max)
        self.sequence_dropout = float(sequence_dropout)
        self.single_sequence = float(single_sequence)
        self.single_weights = _sequence_weights(single_sequence_weights, self.sequences)
        self.twin_views = float(twin_views)
        if view_distill_batch < 0:
            raise ValueError(f"recipe.view_distill_batch must be >= 0 (0 = the whole batch), got {view_distill_batch}")
        self.view_distill = ViewDistillLoss(view_distill) if view_distill != 0 else None
        self.view_distill_batch = int(view_distill_batch)
        self.loss = ClipLoss(gather=gather, target_temperature=target_temperature, label_weight=label_targets,
                             label_similarity=label_similarity)
        self.embed_dim = embed_dim
        select_report_section("", text_section)  # fail early on an unknown section name
        self.text_section = text_section
        self.jitter = dict(jitter) if jitter else None
        if not 0.0 <= float(flip_lr) <= 1.0:
            raise ValueError(f"recipe.flip_lr is a probability in [0, 1], got {flip_lr}")
        self.flip_lr = float(flip_lr)

    # ------------------------------------------------------------------ parts
    def _local_conv(self, out_channels: int, option: str) -> nn.Module:
        """A 1x1 conv on the image encoder's ``local`` map (for the lesion heads); ``option`` names the setting in errors."""
        local_dim = getattr(self.image_encoder, "local_dim", None)
        if local_dim is None:
            raise ValueError(f"recipe.{option} needs an image encoder with a local feature map (local_dim); "
                             f"{type(self.image_encoder).__name__} has none")
        conv = nn.Conv2d if getattr(self.image_encoder, "spatial_dims", 3) == 2 else nn.Conv3d
        return conv(int(local_dim), out_channels, kernel_size=1)

    @property
    def text_encoder(self) -> TextEncoder:
        """The frozen, cached text encoder (built on first use)."""
        if not self._text:
            self._text.append(TextEncoder(**self.text_encoder_cfg))
        return self._text[0]

    def logit_scale(self) -> torch.Tensor:
        # Clamp in log space (open_clip clamps the parameter to ln(100) after each step).
        return self.log_logit_scale.clamp(max=self.log_scale_max).exp()

    def _device(self) -> torch.device:
        return self.log_logit_scale.device

    def encode_image(self, image: torch.Tensor, sequence_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, E), L2-normalised; missing sequences are zeroed first."""
        return self._encode(image, sequence_mask)[0]

    def _encode(self, image: torch.Tensor, sequence_mask: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """(embedding (B, E), the encoder's outputs + ``lesion_logits`` when the head runs)."""
        enc = dict(self.image_encoder(image, sequence_mask))  # global (B, F), local (B, C_l, *grid)
        g = enc["global"]
        if self.lesion_head is not None and (self.training or self.lesion_evidence):
            enc["lesion_logits"] = self.lesion_head(enc["local"])  # (B, 1 + K, *grid)
        if self.voxel_head is not None and self.training:
            enc["voxel_logits"] = self.voxel_head(enc["local"])  # (B, prod(lesion_upsample), *grid)
        if self.lesion_evidence:
            g = torch.cat([g, lesion_evidence(enc["lesion_logits"], self.lesion_evidence)], dim=1)  # (B, F + 2 (1 + K))
        return F.normalize(self.image_proj(g), dim=-1), enc

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Frozen sentence features (B, Dt) from the cache (no grad)."""
        return self._text_on_device().sentence(list(texts)).to(self._device())

    def _text_on_device(self) -> TextEncoder:
        enc = self.text_encoder
        if "device" not in self.text_encoder_cfg and enc.device != self._device():
            enc.to(self._device())  # the frozen transformer follows the recipe (GPU when training on GPU)
        return enc

    def project_text(self, feats: torch.Tensor) -> torch.Tensor:
        """Frozen features (B, Dt) -> (B, E), L2-normalised (through the adapter when enabled)."""
        if self.text_adapter is not None:
            feats = feats + self.text_adapter(feats)  # (B, Dt) residual
        return F.normalize(self.text_proj(feats), dim=-1)  # (B, E)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """list of B texts -> (B, E), L2-normalised."""
        return self.project_text(self.text_features(texts))

    def report_texts(self, reports: Sequence[str]) -> list[str]:
        """The part of each report the text encoder sees (``text_section``)."""
        return [select_report_section(r, self.text_section) for r in reports]

    def encode_report(self, reports: list[str]) -> torch.Tensor:
        """Reports (from a manifest) -> (B, E): like :meth:`encode_text` after ``text_section``."""
        return self.encode_text(self.report_texts(reports))

    def training_texts(self, reports: Sequence[str], paraphrases: Sequence[Sequence[str]] | None = None) -> list[str]:
        """The text each report contributes to a training step: one random view with ``text_views``.

        ``paraphrases``: per report, its other wordings (a batch's ``"paraphrases"``); used only in
        training with ``text_views="paraphrases"``.
        """
        if not (self.training and self.text_view_mode != "none"):
            return self.report_texts(reports)
        paras = paraphrases if paraphrases is not None else [()] * len(reports)
        out = []
        for r, p in zip(reports, paras):
            views = self._views(r, p)
            out.append(views[int(torch.randint(len(views), (1,)))])
        return out

    def _views(self, report: str, paraphrases: Sequence[str] = ()) -> list[str]:
        key = (report, tuple(paraphrases) if self.text_view_mode == "paraphrases" else ())
        memo = self.__dict__.setdefault("_view_memo", {})  # (report, paraphrases) -> views (the labeller is not free)
        if key not in memo:
            memo[key] = report_views(report, self.text_section, paraphrases=key[1])
        return memo[key]

    def batch_sampler(self, dataset, *, batch_size: int, train: bool, seed: int = 0, rank: int = 0,
                      world: int = 1, drop_last: bool = True):
        """With ``twin_views``, training batches that keep each patient's studies together."""
        if not (train and self.twin_views > 0):
            return None
        from medalign.data.samplers import GroupedBatchSampler, dataset_patient_ids

        return GroupedBatchSampler(dataset_patient_ids(dataset), batch_size, seed=seed, rank=rank, world=world,
                                   drop_last=drop_last)

    def prepare(self, datasets: list) -> None:
        """Encode every distinct report (every view, with ``text_views``) once before training."""
        pairs = []  # (report, its paraphrases) of every study
        for ds in datasets:
            reports = getattr(ds, "texts", None) or []
            paras = getattr(ds, "paraphrases", None) or [()] * len(reports)
            pairs += [(r, tuple(p)) for r, p in zip(reports, paras)]
        texts = set(self.report_texts([r for r, _ in pairs]))
        if self.text_view_mode != "none":
            texts |= {v for r, p in set(pairs) for v in self._views(r, p)}
        if self.flip_lr > 0:
            texts |= {mirror_laterality(t) for t in texts}
        texts = sorted(texts)
        if texts:
            self._text_on_device().sentence(texts)

    # ------------------------------------------------------------------ steps
    def image_inputs(self, batch: dict, lesions: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(image, sequence_mask, lesion masks) of a batch; in training with sequence dropout and jitter applied.

        ``lesions``: also take the batch's lesion masks (B, *spatial), jittered with the image;
        otherwise (or when the batch has none) the third item is None.
        """
        image = batch["image"]
        mask = batch.get("sequence_mask")
        lesion = batch.get("mask") if lesions else None
        if mask is None:
            mask = torch.ones(image.shape[:2], dtype=torch.bool, device=image.device)  # (B, C)
        if self.training:  # a no-op when the probabilities are 0
            original = mask
            mask = sequence_dropout(mask, self.sequence_dropout, single=self.single_sequence,
                                    weights=self.single_weights)
            if self.twin_views > 0 and batch.get("patient_id") is not None:
                mask = shared_views(mask, original, batch["patient_id"], self.twin_views)
        if self.training and self.jitter:
            if lesion is not None:
                image, lesion = jitter_batch(image, **self.jitter, follow=lesion)
            else:
                image = jitter_batch(image, **self.jitter)
        return image, mask, lesion

    def mirror(self, image: torch.Tensor, texts: list[str], lesion: torch.Tensor | None = None,
               patients: Sequence[str] | None = None) -> tuple[torch.Tensor, list[str], torch.Tensor | None]:
        """In training with ``flip_lr``: mirror a share of the studies left-right and swap the sides
        in their texts (image (B, C, *spatial), B texts, lesion masks (B, *spatial) or None); with
        ``twin_views`` a patient's studies in the batch share the draw (``patients``: B ids)."""
        if not (self.training and self.flip_lr > 0):
            return image, texts, lesion
        groups = patients if self.twin_views > 0 else None
        image, flipped, lesion = mirror_batch(image, self.flip_lr, follow=lesion, groups=groups)
        texts = [mirror_laterality(t) if f else t for t, f in zip(texts, flipped.tolist())]
        return image, texts, lesion

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        aux = (self.lesion_head is not None or self.voxel_head is not None) and self.training
        image, mask, lesion = self.image_inputs(batch, lesions=aux)
        texts = self.training_texts(batch["text"], batch.get("paraphrases"))
        image, texts, lesion = self.mirror(image, texts, lesion, batch.get("patient_id"))
        feats = self.text_features(texts)  # (B, Dt), frozen
        embed, enc = self._encode(image, mask)
        out = {
            "image_embed": embed,
            "text_embed": self.project_text(feats),  # (B, E), as encode_report
            "text_features": feats,
            "logit_scale": self.logit_scale(),
        }
        if self.training and self.view_distill is not None:
            out.update(self._distill_views(image, mask, embed))
        if aux and lesion is not None:
            out.update({k: enc[k] for k in ("lesion_logits", "voxel_logits") if k in enc})  # (B, *, *grid)
            out["lesion_mask"] = lesion  # (B, *spatial), shifted with the image
        elif aux and not self._warned_no_masks:
            self._warned_no_masks = True  # once per run: a cohort without masks trains, the head just learns nothing
            logging.getLogger(__name__).warning(
                "recipe.lesion_aux is on but this training batch has no lesion masks (manifest column 'mask'): "
                "the auxiliary loss is skipped for studies without one")
        return out

    def _distill_views(self, image: torch.Tensor, mask: torch.Tensor, embed: torch.Tensor) -> dict[str, torch.Tensor]:
        """Student (one sequence) and teacher (the step's own view) embeddings of up to
        ``view_distill_batch`` studies whose view has two or more sequences."""
        rows = (mask.sum(dim=1) > 1).nonzero().flatten()  # (n,) studies with something to take away
        if self.view_distill_batch:
            rows = rows[:self.view_distill_batch]
        student = self._encode(image[rows], single_views(mask[rows]))[0] if len(rows) else embed[:0]  # (n, E)
        return {"student_embed": student, "teacher_embed": embed[rows].detach()}

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        f = self(batch)
        labels = batch.get("label")
        if self.loss.label_weight > 0 and labels is not None and not self._checked_labels:
            self._checked_labels = True  # the first step only: the check syncs a GPU, and a cohort is labelled or not
            if bool((labels < 0).all()):
                logging.getLogger(__name__).warning(
                    "recipe.label_targets is on but this training batch has no class labels (manifest column "
                    "'label'; `medalign label-reports MANIFEST --out F` predicts them from the reports): "
                    "unlabelled studies keep the paper's targets")
        out: dict[str, torch.Tensor] = dict(self.loss(f["image_embed"], f["text_embed"], f["logit_scale"],
                                                      f["text_features"], labels=labels))
        out["logit_scale"] = f["logit_scale"].detach()
        if "student_embed" in f:
            out.update(self.view_distill(f["student_embed"], f["teacher_embed"]))
        if "lesion_logits" in f:
            out.update(self.lesion_loss(f["lesion_logits"], f["lesion_mask"], batch["label"], batch["has_mask"]))
        if "voxel_logits" in f:
            out.update(self.voxel_loss(f["voxel_logits"], f["lesion_mask"], batch["has_mask"]))
        return out

    @torch.no_grad()
    def validation_step(self, batch: dict) -> dict[str, Any]:
        f = self(batch)
        # Plain (un-gathered) loss per batch; validation runs the full split on every rank.
        loss = ClipLoss(gather=False)(f["image_embed"], f["text_embed"], f["logit_scale"])
        return {**loss, "image_embed": f["image_embed"].float().cpu(), "text_embed": f["text_embed"].float().cpu()}

    def validation_end(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        """Report -> image retrieval over the whole split: R@1, R@5 (matched by position = study)."""
        if not outputs:
            return {}
        img = torch.cat([o["image_embed"] for o in outputs])  # (N, E)
        txt = torch.cat([o["text_embed"] for o in outputs])  # (N, E)
        sim = txt @ img.T  # (N, N) report x image
        target = sim.diagonal()[:, None]  # (N, 1)
        rank = (sim > target).sum(1)  # (N,) images scoring above the true one
        n = img.shape[0]
        return {"recall@1": float((rank < 1).float().mean()), "recall@5": float((rank < 5).float().mean()),
                "mean_rank": float(rank.float().mean() + 1), "n": float(n)}
