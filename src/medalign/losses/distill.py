"""View distillation: a study seen through fewer sequences should embed where its full view does."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ViewDistillLoss(nn.Module):
    """``weight * mean(1 - cos(student_i, stopgrad(teacher_i)))`` over the rows given.

    Cross-modal distillation for missing sequences (the teacher sees every sequence of the study,
    the student one of them; cf. knowledge distillation for missing MRI modalities, Hu et al.
    2020, "Knowledge distillation from multi-modal to mono-modal segmentation networks"). The
    teacher is detached, so only the reduced view moves: on FLAIR alone the embedding must say
    what the DWI and T2* would have added (an infarct is bright on DWI, white-matter disease is
    not), which the report loss on a FLAIR-only view (``single_sequence``) only asks of the class.
    Inputs (B, E) L2-normalised; an empty batch gives a zero loss that keeps the graph.
    """

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"view distillation weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        if student.shape != teacher.shape:
            raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} embeddings differ in shape")
        if student.shape[0] == 0:
            return {"view_distill_loss": student.sum() * 0.0}
        cos = F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1)  # (B,)
        return {"view_distill_loss": self.weight * (1.0 - cos).mean()}
