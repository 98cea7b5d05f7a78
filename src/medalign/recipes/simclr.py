"""SimCLR recipe: two augmented views of one image, projection MLP, NT-Xent (Chen et al., 2020).

Also home of :class:`TensorAugment`, the torch-only 2D/3D augmentation (random resized crop,
flip, intensity jitter, noise) shared by the MICLe and HLSS recipes: it runs batched on any
device and needs no torchvision.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medalign.data.schema import PAPER_SEQUENCES
from medalign.losses.ntxent import NTXentLoss
from medalign.data.masking import mask_sequences
from medalign.models.image3d import build_image_encoder
from medalign.recipes import RECIPES, Recipe

# The SSL recipes train their encoder from scratch on CPUs: the light preset, not the paper's.
SSL_DEFAULT_ENCODER = "unet3d_cpu"


class TensorAugment(nn.Module):
    """Random resized crop + flip (one affine resample) and per-channel intensity jitter.

    For each sample: side scale ``s ~ U(sqrt(min_area), 1)`` per axis (crop of area >= min_area),
    centre offset ``t ~ U(-(1-s), 1-s)``, flip of the last (left-right) axis with probability
    ``flip_p``; then ``x' = x * a + b * std(x) + noise`` with ``a ~ U(1 - intensity, 1 + intensity)``,
    ``b ~ U(-shift, shift)`` per channel. Missing sequences (``sequence_mask`` False) stay zero.

    Example: ``TensorAugment(spatial_dims=2)(torch.rand(8, 1, 28, 28))`` -> (8, 1, 28, 28).
    """

    def __init__(self, *, spatial_dims: int = 3, min_area: float = 0.4, flip_p: float = 0.5,
                 intensity: float = 0.2, shift: float = 0.1, noise: float = 0.02) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not 0 < min_area <= 1:
            raise ValueError(f"min_area must be in (0, 1], got {min_area}")
        self.spatial_dims, self.min_area, self.flip_p = spatial_dims, min_area, flip_p
        self.intensity, self.shift, self.noise = intensity, shift, noise

    def sample_params(self, b: int, c: int, *, device, generator: torch.Generator | None = None) -> dict:
        """Draw the random parameters (replayable through :meth:`apply`)."""
        n = self.spatial_dims

        def u(*shape):
            return torch.rand(*shape, generator=generator).to(device)

        lo = self.min_area ** (1.0 / n)  # side scale so that prod(scales) >= min_area
        scale = lo + (1 - lo) * u(b, n)  # (B, n) in the grid's (x, y[, z]) order
        offset = (2 * u(b, n) - 1) * (1 - scale)  # (B, n)
        flip = u(b) < self.flip_p  # (B,)
        a = 1 + self.intensity * (2 * u(b, c) - 1)  # (B, C)
        sh = self.shift * (2 * u(b, c) - 1)  # (B, C)
        return {"scale": scale, "offset": offset, "flip": flip, "a": a, "b": sh,
                "noise_seed": int(torch.randint(0, 2**31 - 1, (1,), generator=generator))}

    def apply(self, x: torch.Tensor, p: dict, sequence_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Deterministic transform given parameters ``p``."""
        b, c = x.shape[:2]
        n = self.spatial_dims
        scale = p["scale"].clone()
        scale[:, 0] = torch.where(p["flip"], -scale[:, 0], scale[:, 0])  # x axis = last dim
        theta = torch.zeros(b, n, n + 1, device=x.device, dtype=x.dtype)  # (B, n, n+1)
        theta[:, range(n), range(n)] = scale.to(x.dtype)
        theta[:, :, n] = p["offset"].to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, *spatial, n)
        y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        view = (b, c) + (1,) * n
        std = y.flatten(2).std(-1).clamp_min(1e-6).reshape(view)  # (B, C, 1...)
        y = y * p["a"].to(y).reshape(view) + p["b"].to(y).reshape(view) * std  # (B, C, ...) per-channel a, b
        if self.noise > 0:
            g = torch.Generator(device="cpu").manual_seed(p["noise_seed"])
            y = y + self.noise * std * torch.randn(y.shape, generator=g).to(y)
        return mask_sequences(y, sequence_mask)  # noise and shift must not revive missing sequences

    def forward(self, x: torch.Tensor, sequence_mask: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"TensorAugment(spatial_dims={self.spatial_dims}) expects "
                             f"(B, C, {'D, ' if self.spatial_dims == 3 else ''}H, W), got {tuple(x.shape)}")
        return self.apply(x, self.sample_params(x.shape[0], x.shape[1], device=x.device, generator=generator),
                          sequence_mask)


class SSLRecipe(Recipe):
    """Shared parts of the image-only self-supervised recipes: encoder, augment, encode_image.

    ``encode_image`` returns the L2-normalised *backbone* features (not the projection), as
    SimCLR prescribes for downstream probes and fine-tuning.

    Data: the default cohort dataset (3D MRI), ``data.kind: pneumoniamnist`` (2D X-rays,
    ``data.path``/``data.size``/``data.limit``), or ``data.kind: synthetic`` with
    ``data.studies_per_patient: k`` (consecutive synthetic studies share a patient). Training batches are patient-grouped when
    ``patient_batches`` is true (see :meth:`batch_sampler`).
    """

    patient_batches: bool = False

    def __init__(self, *, sequences: Sequence[str] = PAPER_SEQUENCES, input_shape: Sequence[int] | None = (16, 112, 112),
                 image_encoder: dict | nn.Module | None = None, augment: dict | None = None) -> None:
        super().__init__()
        self.sequences = tuple(sequences)
        self.encoder = build_image_encoder(image_encoder, in_channels=len(self.sequences), input_shape=input_shape,
                                           default=SSL_DEFAULT_ENCODER)
        self.spatial_dims = int(getattr(self.encoder, "spatial_dims", 3))
        self.feat_dim = int(getattr(self.encoder, "out_dim"))
        self.augment = TensorAugment(spatial_dims=self.spatial_dims, **(augment or {}))

    def _mask(self, batch: dict) -> torch.Tensor | None:
        return batch.get("sequence_mask")

    def features(self, image: torch.Tensor, sequence_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Un-normalised backbone features (B, F); missing sequences zeroed first."""
        return self.encoder(mask_sequences(image, sequence_mask))["global"]  # (B, F)

    def encode_image(self, image: torch.Tensor, sequence_mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.features(image, sequence_mask), dim=-1)  # (B, F)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        from medalign.errors import MedAlignError

        raise MedAlignError(f"recipe '{type(self).__name__}' is image-only: it has no text encoder")

    def build_dataset(self, data_cfg: dict, split: str | None, *, train: bool):
        if data_cfg.get("kind") == "pneumoniamnist":
            from medalign.data.xray import PneumoniaMNISTDataset

            return PneumoniaMNISTDataset(split or "train", path=data_cfg.get("path"), limit=data_cfg.get("limit"),
                                         size=data_cfg.get("size"))
        ds = super().build_dataset(data_cfg, split, train=train)
        if data_cfg.get("kind") == "synthetic" and int(data_cfg.get("studies_per_patient") or 1) > 1:
            ds = GroupedPatients(ds, int(data_cfg["studies_per_patient"]))
        return ds

    def batch_sampler(self, dataset, *, batch_size: int, train: bool, seed: int = 0, rank: int = 0,
                      world: int = 1, drop_last: bool = True):
        """A :class:`PatientBatchSampler` over ``dataset``'s patient ids for training when
        ``patient_batches`` (MICLe study instances, HLSS); ``None`` = the loop's default."""
        if not (train and self.patient_batches):
            return None
        from medalign.data.samplers import PatientBatchSampler, dataset_patient_ids

        pids = dataset_patient_ids(dataset)
        bs = max(4, batch_size - batch_size % 2)
        return PatientBatchSampler(pids, batch_size=bs, instances_per_patient=2, seed=seed, num_replicas=world,
                                   rank=rank, drop_last=drop_last)


class GroupedPatients(torch.utils.data.Dataset):
    """Give consecutive samples of a dataset a shared ``patient_id`` (``k`` studies per patient):
    the in-memory synthetic pairs have one study per patient, MICLe/HLSS tests need several."""

    def __init__(self, dataset, k: int) -> None:
        self.dataset, self.k = dataset, k
        self.patient_ids = [f"{getattr(dataset, 'split', 'all')}-p{i // k:04d}" for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], "patient_id": self.patient_ids[i]}


@RECIPES.register("simclr")
class SimCLRRecipe(SSLRecipe):
    """SimCLR: ``loss = NT-Xent(g(f(aug(x))), g(f(aug'(x))))`` with a 2-layer projection MLP g.

    Args:
        sequences, input_shape: input channels and spatial size (filled from ``data`` by build_recipe).
        image_encoder: encoder module or ``{"name": <IMAGE_ENCODERS key>, **kwargs}``.
        proj_dim: projection output size (SimCLR: 128).
        temperature: NT-Xent temperature (0.1).
        augment: TensorAugment keyword arguments.
    """

    def __init__(self, *, sequences: Sequence[str] = PAPER_SEQUENCES, input_shape: Sequence[int] | None = (16, 112, 112),
                 image_encoder: dict | nn.Module | None = None, proj_dim: int = 128, temperature: float = 0.1,
                 augment: dict | None = None, gather: bool = True) -> None:
        super().__init__(sequences=sequences, input_shape=input_shape, image_encoder=image_encoder, augment=augment)
        from medalign.models.heads import ProjectionHead

        self.projection = ProjectionHead(self.feat_dim, proj_dim, kind="mlp")
        self.loss = NTXentLoss(temperature=temperature, gather=gather)

    def project(self, x: torch.Tensor, sequence_mask: torch.Tensor | None) -> torch.Tensor:
        return self.projection(self.features(self.augment(x, sequence_mask), sequence_mask))  # (B, P)

    def training_step(self, batch: dict) -> dict[str, Any]:
        x, m = batch["image"], self._mask(batch)
        return self.loss(self.project(x, m), self.project(x, m))
