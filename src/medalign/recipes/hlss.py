"""HLSS (Watawana et al.): hierarchical, language-tied self-supervision.

For MRI the hierarchy is patient -> study (or sequence) -> slab (or slice). Every study in a
patient-grouped batch is cut into ``n_slabs`` slabs along depth; each slab is augmented twice
and encoded: backbone features ``h`` of shape (B*S, 2, F). At each level L:

- ``<L>_supcon_loss``: SupCon (t = 0.07) on a per-level projection of ``h``, labels = the
  instance's level-L ancestor: two views of a slab (slab level), two slabs of a study (study
  level), two studies of a patient (patient level) are positives.
- ``<L>_language_loss``: the language tie. ``h`` is projected into the frozen text encoder's
  space; its cosine similarities to the level's attribute descriptions (YAML, embedded once)
  form a language-tied representation, on which SupCon is computed with the same labels.
- ``<L>_attribute_loss`` (levels with an ``attribute`` in the YAML): cross-entropy of those
  similarities towards the description of the instance's own attribute value (slab position,
  MRI sequence), both derived from the data without labels.

``encode_image`` is the mean of the slab features of a study (L2-normalised); ``slab_features``
gives the per-slab features for kNN at slab, study and patient level.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medalign.data.hierarchy import batch_hierarchy_labels, split_slabs
from medalign.data.schema import PAPER_SEQUENCES
from medalign.losses.supcon import SupConLoss
from medalign.data.masking import mask_sequences
from medalign.recipes import RECIPES
from medalign.recipes.simclr import SSLRecipe

DEFAULT_DESCRIPTIONS = Path(__file__).with_name("hlss_descriptions.yaml")
ATTRIBUTES = ("position", "sequence")


def load_descriptions(source: str | Path | dict | None = None) -> dict[str, dict]:
    """The YAML (default: the packaged ``hlss_descriptions.yaml``) -> {level: {"attribute", "keys", "texts"}}.

    ``keys`` are the description names (attribute values); ``texts`` = descriptions + extra.
    """
    import yaml

    from medalign.errors import MedAlignError

    where = str(source) if not isinstance(source, dict) else "<dict>"
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source) if source is not None else DEFAULT_DESCRIPTIONS
        if not path.is_file():
            raise MedAlignError(f"HLSS descriptions file not found: {path}")
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        where = str(path)
    out = {}
    for level, block in raw.items():
        if not isinstance(block, dict) or "descriptions" not in block:
            raise MedAlignError(f"{where}: level '{level}' needs a 'descriptions' mapping")
        desc = block["descriptions"]
        if isinstance(desc, list):
            desc = {f"{level}_{i}": t for i, t in enumerate(desc)}
        if not isinstance(desc, dict) or not desc:
            raise MedAlignError(f"{where}: level '{level}': 'descriptions' must be a non-empty mapping name -> text")
        attr = block.get("attribute")
        if attr is not None and attr not in ATTRIBUTES:
            raise MedAlignError(f"{where}: level '{level}': unknown attribute '{attr}' (known: {', '.join(ATTRIBUTES)})")
        extra = [str(t) for t in (block.get("extra") or [])]
        out[str(level)] = {"attribute": attr, "keys": [str(k) for k in desc],
                           "texts": [str(t) for t in desc.values()] + extra}
    return out


@RECIPES.register("hlss")
class HLSSRecipe(SSLRecipe):
    """Hierarchical language-tied self-supervision on MRI volumes.

    Args:
        sequences, input_shape: channels and (D, H, W) of the volumes (from ``data``).
        image_encoder: ``{"name": <IMAGE_ENCODERS key>, **kwargs}``; it sees one slab,
            (C, D // n_slabs, H, W), or one slice (C, H, W) when ``spatial_dims: 2``.
        n_slabs: slabs per study (``spatial_dims: 2`` encoders always use single slices).
        middle: ``"study"`` or ``"sequence"`` (each available sequence of a study is its own unit).
        levels: the levels that get losses (default: patient, middle, fine).
        level_weights: optional {level: weight}.
        proj_dim, temperature: per-level projection size and SupCon temperature (0.07).
        descriptions: YAML path or dict (default: packaged ``hlss_descriptions.yaml``).
        text_encoder: keyword arguments of :class:`medalign.models.text.TextEncoder` (frozen), or an
            object with ``sentence(texts) -> (K, Dt)``.
        language_weight, attribute_weight: weights of the language-tied SupCon and attribute CE.
        text_temperature: temperature of the attribute cross-entropy over description similarities.
        coarse_features: what the losses of the coarser levels (``middle``, patient) see.
            ``"slab"`` (HLSS as published: every level's loss on the fine-level features, labelled by
            their ancestor) or ``"mean"``: the mean of a unit's slab features per view, the same
            study embedding the kNN evaluation and ``encode_image`` use. With 8-slice volumes a lesion
            sits in one slab, so a "patient positive" between a lesion slab and a lesion-free slab of
            a follow-up shares nothing learnable; mean-pooled study embeddings do share the lesion.
    """

    patient_batches = True

    def __init__(self, *, sequences: Sequence[str] = PAPER_SEQUENCES, input_shape: Sequence[int] | None = (16, 112, 112),
                 image_encoder: dict | None = None, n_slabs: int = 4, middle: str = "study",
                 levels: Sequence[str] | None = None, level_weights: dict | None = None, proj_dim: int = 128,
                 temperature: float = 0.07, descriptions: str | Path | dict | None = None,
                 text_encoder: dict | Any | None = None, language_weight: float = 1.0, attribute_weight: float = 0.5,
                 text_temperature: float = 0.1, augment: dict | None = None, gather: bool = True,
                 coarse_features: str = "slab") -> None:
        # default: the CPU preset as it is (Conv -> BatchNorm -> ReLU, avg + max pooling of every level);
        # with last-level average pooling the encoder learned nothing on the synthetic cohort.
        enc = dict(image_encoder or {"name": "unet3d_cpu"})
        spatial_dims = int(enc.get("spatial_dims", 3))
        shape = tuple(input_shape) if input_shape is not None else None
        if shape is not None and len(shape) != 3:
            raise ValueError(f"HLSS input_shape must be (D, H, W), got {shape}")
        if spatial_dims == 2:
            n_slabs = shape[0] if shape is not None else n_slabs
            enc_shape = shape[1:] if shape is not None else None
        else:
            if shape is not None and shape[0] % n_slabs:
                raise ValueError(f"depth {shape[0]} is not divisible into {n_slabs} slabs")
            enc_shape = (shape[0] // n_slabs, *shape[1:]) if shape is not None else None
        super().__init__(sequences=sequences, input_shape=enc_shape, image_encoder=enc, augment=augment)
        if coarse_features not in ("slab", "mean"):
            raise ValueError(f"HLSS coarse_features must be 'slab' or 'mean', got '{coarse_features}'")
        self.coarse_features = coarse_features
        if middle not in ("study", "sequence"):
            raise ValueError(f"HLSS middle must be 'study' or 'sequence', got '{middle}'")
        if enc_shape is not None:
            try:  # a slab too thin for the encoder's pooling fails here, not mid-training
                with torch.no_grad():
                    self.encoder(torch.zeros(1, len(self.sequences), *enc_shape))
            except RuntimeError as e:
                raise ValueError(f"HLSS slab input {tuple(enc_shape)} (input {shape}, n_slabs {n_slabs}) is too small "
                                 f"for the image encoder: use fewer slabs or fewer levels ({str(e).splitlines()[0]})") from None
        self.n_slabs, self.middle = int(n_slabs), middle
        self.fine_level = "slice" if spatial_dims == 2 else "slab"
        self.levels = tuple(levels) if levels is not None else ("patient", middle, self.fine_level)
        unknown = set(self.levels) - {"patient", middle, self.fine_level}
        if unknown:
            raise ValueError(f"HLSS levels {sorted(unknown)} are not in the hierarchy (patient, {middle}, {self.fine_level})")
        self.level_weights = {lvl: float((level_weights or {}).get(lvl, 1.0)) for lvl in self.levels}
        self.language_weight, self.attribute_weight = float(language_weight), float(attribute_weight)
        self.text_temperature = float(text_temperature)
        self.supcon = SupConLoss(temperature=temperature, gather=gather, local_labels=True)
        from medalign.models.heads import ProjectionHead
        from medalign.models.text import TextEncoder

        self.desc = load_descriptions(descriptions)
        missing = [lvl for lvl in self.levels if lvl not in self.desc]
        if missing and language_weight > 0:
            raise ValueError(f"HLSS descriptions have no block for level(s) {missing}")
        self.proj = nn.ModuleDict({lvl: ProjectionHead(self.feat_dim, proj_dim, kind="mlp") for lvl in self.levels})
        self.text_proj = nn.ModuleDict()
        if language_weight > 0 or attribute_weight > 0:
            # A dict configures the frozen TextEncoder; any object with ``sentence(texts) -> (K, Dt)``
            # is used as is (tests pass a tiny stand-in instead of loading a transformer).
            te = text_encoder if hasattr(text_encoder, "sentence") else TextEncoder(**(text_encoder or {}))
            for lvl in self.levels:
                t = F.normalize(te.sentence(self.desc[lvl]["texts"]).float(), dim=-1)  # (K, Dt)
                # A persistent buffer: checkpoints carry the exact description embeddings used.
                self.register_buffer(f"desc_{lvl}", t, persistent=True)
                self.text_proj[lvl] = nn.Linear(self.feat_dim, t.shape[1])

    # ------------------------------------------------------------------ features
    def _instances(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C, D, H, W) -> slab/slice inputs (B*S, C, T, H, W) or (B*S, C, H, W), and their masks."""
        if x.ndim != 5:
            raise ValueError(f"HLSS expects volumes (B, C, D, H, W), got {tuple(x.shape)}")
        s = x.shape[2] if self.spatial_dims == 2 else self.n_slabs
        xs = split_slabs(x, s)  # (B*S, C, T, H, W)
        if self.spatial_dims == 2:
            xs = xs.squeeze(2)  # (B*S, C, H, W): T = 1
        ms = mask.repeat_interleave(s, dim=0) if mask is not None else None  # (B*S, C)
        return xs, ms

    def slab_features(self, image: torch.Tensor, sequence_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, D, H, W) -> backbone features per slab/slice (B, S, F)."""
        b = image.shape[0]
        xs, ms = self._instances(image, sequence_mask)
        return self.features(xs, ms).reshape(b, -1, self.feat_dim)  # (B, S, F)

    def encode_image(self, image: torch.Tensor, sequence_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Study embedding: mean of its slab features, L2-normalised (B, F)."""
        return F.normalize(self.slab_features(image, sequence_mask).mean(1), dim=-1)

    def language_logits(self, level: str, h: torch.Tensor) -> torch.Tensor:
        """Cosine similarities of features h (..., F) to the level's descriptions (..., K)."""
        u = F.normalize(self.text_proj[level](h), dim=-1)  # (..., Dt)
        return u @ getattr(self, f"desc_{level}").t()  # (..., K)

    # ------------------------------------------------------------------ batch -> hierarchy
    def _expand_sequences(self, batch: dict):
        """middle="sequence": one unit per (study, available sequence), other channels zeroed."""
        x, m = batch["image"], batch.get("sequence_mask")
        if m is None:
            m = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        rows, chans = torch.nonzero(m, as_tuple=True)  # units
        onehot = F.one_hot(chans, x.shape[1]).bool()  # (U, C)
        xu = mask_sequences(x[rows], onehot)  # (U, C, D, H, W)
        pids = [batch["patient_id"][r] for r in rows.tolist()]
        units = [f"{batch['study_id'][r]}/{self.sequences[c]}" for r, c in zip(rows.tolist(), chans.tolist())]
        return xu, onehot, pids, units, chans

    def _attribute_targets(self, level: str, labels: dict, seq_chan: torch.Tensor | None, s: int) -> torch.Tensor | None:
        spec = self.desc.get(level) or {}
        attr, keys = spec.get("attribute"), spec.get("keys") or []
        if attr == "position" and level == self.fine_level:
            return (labels["position"] * len(keys)) // s  # slab index -> description bin
        if attr == "sequence" and level == "sequence" and seq_chan is not None:
            lookup = {k: i for i, k in enumerate(keys)}
            t = [lookup.get(self.sequences[c], -100) for c in seq_chan.repeat_interleave(s).tolist()]
            return torch.tensor(t, dtype=torch.long)
        return None

    def training_step(self, batch: dict) -> dict[str, Any]:
        seq_chan = None
        if self.middle == "sequence":
            x, m, pids, mids, seq_chan = self._expand_sequences(batch)
        else:
            x, m = batch["image"], batch.get("sequence_mask")
            pids, mids = list(batch["patient_id"]), list(batch["study_id"])
        xs, ms = self._instances(x, m)  # (N, C, ...) with N = B*S
        s = xs.shape[0] // x.shape[0]
        n = xs.shape[0]
        views = torch.cat([self.augment(xs, ms), self.augment(xs, ms)])  # (2N, C, ...)
        mm = torch.cat([ms, ms]) if ms is not None else None
        h = self.features(views, mm).reshape(2, n, -1).transpose(0, 1)  # (N, 2, F)
        labels = batch_hierarchy_labels(pids, mids, s)
        labels[self.middle] = labels.pop("study")
        labels[self.fine_level] = labels.pop("slab")
        out: dict[str, Any] = {}
        units = n // s
        for lvl in self.levels:
            y, hl, rows = labels[lvl].to(h.device), h, slice(None)
            if self.coarse_features == "mean" and lvl != self.fine_level:
                # one row per study (or sequence unit): the mean of its slab features, per view
                hl = h.reshape(units, s, 2, -1).mean(1)  # (U, 2, F): instances are unit-major
                rows = slice(None, None, s)
                y = y[rows]
            w = self.level_weights[lvl]
            out[f"{lvl}_supcon_loss"] = w * self.supcon(self.proj[lvl](hl), y)["supcon_loss"]
            if lvl in self.text_proj:
                logits = self.language_logits(lvl, hl)  # (N or U, 2, K)
                if self.language_weight > 0:
                    # SupCon L2-normalises: the language-tied representation is the direction of
                    # the similarity profile over the level's descriptions.
                    out[f"{lvl}_language_loss"] = w * self.language_weight * self.supcon(logits, y)["supcon_loss"]
                target = self._attribute_targets(lvl, labels, seq_chan, s)
                if target is not None:
                    target = target[rows]
                if target is not None and self.attribute_weight > 0:
                    k = len(self.desc[lvl]["keys"])
                    att = logits[..., :k] / self.text_temperature  # (N, 2, k)
                    out[f"{lvl}_attribute_loss"] = w * self.attribute_weight * F.cross_entropy(
                        att.reshape(-1, k), target.to(h.device).repeat_interleave(2), ignore_index=-100)  # (2N, k) vs (2N,)
        return out
