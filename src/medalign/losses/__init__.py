"""Losses: nn.Modules that take features and return a dict of named ``*_loss`` tensors."""
from medalign.losses.clip import ClipLoss
from medalign.losses.distill import ViewDistillLoss
from medalign.losses.lesion import LesionClassLoss

__all__ = ["ClipLoss", "LesionClassLoss", "ViewDistillLoss"]
