"""Supervised baseline: 3D image encoder + linear head + cross-entropy on the study labels.

The "supervised 3D CNN from scratch" sanity check of the evaluation suite, trained through the
same loop as every other recipe. Studies without a label (label = -1) are ignored by the loss.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medalign.data.schema import CLASSES, PAPER_SEQUENCES
from medalign.models.image3d import build_image_encoder
from medalign.recipes import RECIPES, Recipe


@RECIPES.register("supervised")
class SupervisedRecipe(Recipe):
    """Image encoder trained from scratch on class labels.

    Args:
        sequences: input channels, in order.
        input_shape: (D, H, W) of the preprocessed volumes.
        image_encoder: ``{"name": <IMAGE_ENCODERS key>, **kwargs}``.
        n_classes: number of classes (default: the five of schema.CLASSES).
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(self, *, sequences: Sequence[str] = PAPER_SEQUENCES, input_shape: Sequence[int] | None = (16, 112, 112),
                 image_encoder: dict | None = None, n_classes: int = len(CLASSES), label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.sequences = tuple(sequences)
        self.image_encoder = build_image_encoder(image_encoder, in_channels=len(self.sequences),
                                                 input_shape=input_shape)
        self.head = nn.Linear(self.image_encoder.out_dim, n_classes)
        self.n_classes = n_classes
        self.label_smoothing = float(label_smoothing)

    def _features(self, image: torch.Tensor, sequence_mask: torch.Tensor | None) -> torch.Tensor:
        return self.image_encoder(image, sequence_mask)["global"]  # (B, F)

    def logits(self, image: torch.Tensor, sequence_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, n_classes)."""
        return self.head(self._features(image, sequence_mask))

    def encode_image(self, image: torch.Tensor, sequence_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Penultimate features, L2-normalised (B, F): what probes and retrieval see."""
        return F.normalize(self._features(image, sequence_mask), dim=-1)

    def encode_and_classify(self, image: torch.Tensor,
                            sequence_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(:meth:`encode_image`, :meth:`logits`) from one pass of the encoder: (B, F), (B, n_classes)."""
        feats = self._features(image, sequence_mask)  # (B, F)
        return F.normalize(feats, dim=-1), self.head(feats)

    def _loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        label = label.to(logits.device).long()
        if (label >= 0).any():
            return F.cross_entropy(logits, label, ignore_index=-1, label_smoothing=self.label_smoothing)
        return logits.sum() * 0.0  # a batch without labels contributes nothing, graph kept

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        logits = self.logits(batch["image"], batch.get("sequence_mask"))
        label = torch.as_tensor(batch["label"])
        return {"classification_loss": self._loss(logits, label)}

    @torch.no_grad()
    def validation_step(self, batch: dict) -> dict[str, Any]:
        logits = self.logits(batch["image"], batch.get("sequence_mask"))
        label = torch.as_tensor(batch["label"])
        return {"classification_loss": self._loss(logits, label), "logits": logits.float().cpu(), "label": label.cpu()}

    def validation_end(self, outputs: list[dict[str, Any]]) -> dict[str, float]:
        if not outputs:
            return {}
        logits = torch.cat([o["logits"] for o in outputs])  # (N, n_classes)
        label = torch.cat([o["label"] for o in outputs])  # (N,)
        ok = label >= 0
        if not ok.any():
            return {}
        return {"accuracy": float((logits[ok].argmax(1) == label[ok]).float().mean())}
