"""Using a trained run from Python: ``m = medalign.load(run_dir)``.

>>> m = medalign.load("runs/brain_clip_cpu")
>>> img = m.encode_image("synth-0007")                       # a study in the run's cache
>>> img = m.encode_image({"flair": "flair.nii.gz"})           # raw NIfTI, preprocessed on the fly
>>> txt = m.encode_text(["acute infarct in the left MCA territory"])
>>> m.similarity(txt, img)                                    # (1, 1) cosine similarity
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from medalign.data.schema import canonical_sequence
from medalign.errors import CohortError, MedAlignError

_LOG = logging.getLogger("medalign.api")


def _read_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    p = run_dir / "config.yaml"
    if not p.is_file():
        raise MedAlignError(f"{run_dir} is not a run directory (no config.yaml)")
    return yaml.safe_load(p.read_text())


class MedAlignModel:
    """A trained (or untrained baseline) recipe with numpy-in/numpy-out encoders.

    Attributes: ``recipe`` (the nn.Module, eval mode), ``config`` (resolved config dict),
    ``model_id`` (hash of weights + config), ``preprocess_config`` (PreprocessConfig or None),
    ``sequences`` (input channel order), ``run_dir``, ``device``.
    """

    def __init__(self, recipe: torch.nn.Module, config: dict[str, Any], run_dir: Path, model_id: str,
                 device: torch.device, cache_dir: str | Path | None = None) -> None:
        self.recipe = recipe.eval()
        self.config = config
        self.run_dir = Path(run_dir)
        self.model_id = model_id
        self.device = device
        data = config.get("data") or {}
        self.sequences: tuple[str, ...] = tuple(getattr(recipe, "sequences", None) or data.get("sequences") or ())
        self.cache_dir = Path(cache_dir) if cache_dir else (Path(data["cache_dir"]) if data.get("cache_dir") else None)
        self._cache = None
        self.preprocess_config = self._preprocess_config()

    def __repr__(self) -> str:
        return f"MedAlignModel({self.config['recipe']['name']!r}, id={self.model_id}, run_dir='{self.run_dir}')"

    # ------------------------------------------------------------------ preprocessing
    def _preprocess_config(self):
        import json

        p = self.run_dir / "preprocess.json"
        d = json.loads(p.read_text()) if p.is_file() else None
        if d is None:
            from medalign.data.cache import recorded_preprocess

            d = recorded_preprocess(self.config.get("data") or {})
        if d is None:
            return None
        from medalign.data.imaging import PreprocessConfig

        return PreprocessConfig.from_dict(d)

    def _cohort_cache(self):
        if self._cache is None:
            if self.cache_dir is None:
                raise MedAlignError("this run has no data.cache_dir; pass cache_dir= to medalign.load or give images/paths")
            from medalign.data.cache import CohortCache, check_cache_matches

            cache = CohortCache(self.cache_dir)
            check_cache_matches(cache.config, self.preprocess_config, cache_dir=self.cache_dir)
            self._cache = cache
        return self._cache

    def _one(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One study -> (image (C, D, H, W), sequence_mask (C,))."""
        if isinstance(x, (str, Path)) and Path(x).is_dir():  # a DICOM study folder
            return self._dicom_study(Path(x))
        if isinstance(x, str):
            cache = self._cohort_cache()
            try:
                s = cache.load(x)
            except KeyError:
                raise CohortError(f"not in the cohort cache {self.cache_dir}", study_id=x) from None
            return torch.from_numpy(np.array(s["image"], dtype=np.float32)), torch.from_numpy(np.array(s["sequence_mask"], dtype=bool))
        if isinstance(x, Mapping):
            if self.preprocess_config is None:
                raise MedAlignError(f"run {self.run_dir} records no preprocessing settings; cannot read raw images")
            from medalign.data.imaging import preprocess_study

            study_id = str(x.get("study_id", "upload"))
            known = self.preprocess_config.sequences
            series: dict[str, Any] = {}
            for k, v in x.items():
                if k == "study_id":
                    continue
                name = canonical_sequence(k) or str(k)  # "swi" -> "t2s", "T1ce" -> "t1c"
                if name in series:
                    raise CohortError(f"sequence '{name}' given twice (as {sorted(j for j in x if (canonical_sequence(j) or j) == name)})",
                                      study_id=study_id)
                series[name] = v
            unknown = sorted(k for k in series if k not in known)
            if unknown:  # a study may bring more series than the model reads: skip them, say which
                _LOG.warning("skipping sequence(s) %s: not inputs of this model (it reads %s)", unknown, list(known))
            usable = {k: v for k, v in series.items() if k in known}
            if not usable:
                raise CohortError(f"no usable sequence: the study has {sorted(series)}, this model reads {list(known)}",
                                  study_id=study_id)
            study = preprocess_study(usable, self.preprocess_config, study_id=study_id)
            return torch.from_numpy(np.ascontiguousarray(study.image)), torch.from_numpy(np.asarray(study.sequence_mask, dtype=bool))
        raise TypeError(f"cannot encode {type(x).__name__}: give a study id, a dict sequence->path, or a tensor")

    def _dicom_study(self, folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """A folder holding one DICOM study: the same identification and choice as ``medalign ingest``,
        converted to NIfTI in a temporary folder, then preprocessed like raw NIfTI input."""
        import tempfile

        from medalign.data.ingest import study_volumes

        if self.preprocess_config is None:
            raise MedAlignError(f"run {self.run_dir} records no preprocessing settings; cannot read raw images")
        with tempfile.TemporaryDirectory(prefix="medalign-dicom-") as td:
            paths = study_volumes(folder, td, sequences=tuple(self.preprocess_config.sequences))
            return self._one(paths)

    # ------------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_image(self, x: Any, sequence_mask: Any = None, *, batch_size: int = 8, mirror: bool = False) -> np.ndarray:
        """Image embeddings (N, E), L2-normalised; with ``mirror``, each the normalised mean of the study's and
        its left-right mirror's (test-time mirroring, as ``readout.mirror``; 3D volumes only).

        ``x``: a study id in the run's cache, a folder holding one DICOM study (series identified
        as by ``medalign ingest``), a dict ``{sequence: NIfTI path or DICOM series folder}``,
        a list of those, or an array/tensor (C, D, H, W) / (B, C, D, H, W) already preprocessed.
        ``sequence_mask`` (C,) or (B, C) bool marks present channels for array input.
        """
        if isinstance(x, (np.ndarray, torch.Tensor)):
            img = torch.as_tensor(x, dtype=torch.float32)
            if img.dim() == 4:
                img = img[None]  # (1, C, D, H, W)
            if img.dim() != 5 and getattr(self.recipe, "image_encoder", None) is not None \
                    and getattr(self.recipe.image_encoder, "spatial_dims", 3) == 3:
                raise ValueError(f"image tensor must be (C, D, H, W) or (B, C, D, H, W), got {tuple(img.shape)}")
            if sequence_mask is None:
                mask = torch.ones(img.shape[:2], dtype=torch.bool)  # (B, C)
            else:
                mask = torch.as_tensor(np.asarray(sequence_mask), dtype=torch.bool)
                if mask.dim() == 1:
                    mask = mask[None].expand(img.shape[0], -1)  # (B, C)
            images, masks = list(img), list(mask)
        else:
            items = x if isinstance(x, (list, tuple)) else [x]
            pairs = [self._one(i) for i in items]
            images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
        return self._encode(images, masks, batch_size, mirror=mirror)

    @torch.no_grad()
    def _encode(self, images: list[torch.Tensor], masks: list[torch.Tensor], batch_size: int = 8,
                mirror: bool = False) -> np.ndarray:
        """Preprocessed studies (each (C, D, H, W), or a 2D recipe's own shape) and their masks (C,) -> (N, E).
        ``mirror``: the mean with the left-right mirror (W, the last axis of medalign's RAS volumes, as
        ``recipe.flip_lr`` mirrors in training), normalised again."""
        if mirror and any(im.dim() != 4 for im in images):
            raise MedAlignError("readout.mirror mirrors the patient's left-right axis of a 3D volume (C, D, H, W); "
                                f"this run's images are {tuple(images[0].shape)}: read it with mirror off")
        out = []
        for i in range(0, len(images), batch_size):
            im = torch.stack(images[i : i + batch_size]).to(self.device)  # (b, C, D, H, W)
            mk = torch.stack(masks[i : i + batch_size]).to(self.device)  # (b, C)
            e = self.recipe.encode_image(im, mk).float()  # (b, E)
            if mirror:
                e = torch.nn.functional.normalize(e + self.recipe.encode_image(im.flip(-1), mk).float(), dim=-1)  # (b, E)
            out.append(e.cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, getattr(self.recipe, "embed_dim", 0)), np.float32)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Report/query embeddings (N, E), L2-normalised."""
        if isinstance(texts, str):
            texts = [texts]
        return self.recipe.encode_text(list(texts)).float().cpu().numpy()

    @torch.no_grad()
    def encode_report(self, reports: Sequence[str]) -> np.ndarray:
        """Manifest reports -> (N, E): the part of each report the recipe was trained on
        (``text_section``, e.g. the impression), then :meth:`encode_text`. Free-text queries use
        :meth:`encode_text` unchanged."""
        if isinstance(reports, str):
            reports = [reports]
        select = getattr(self.recipe, "report_texts", None)
        return self.encode_text(select(list(reports)) if select else list(reports))

    def classify(self, studies: Any, *, prompts: str | Path | None = None, pool: str = "ensemble",
                 absence: str = "ignore", neighbours: float | None = None, k: int | None = None,
                 bank: str | Path | None = None, mirror: bool | None = None) -> list[dict[str, Any]]:
        """Classification: one dict per study with ``label`` (the top class), ``probabilities``
        {class: p} (summing to 1) and the protocol.

        Zero-shot (``neighbours=0``, the default unless the run's config sets ``readout``): the
        softmax of the model's logit scale x the class scores of the prompt set ``prompts`` (default ``medalign/eval/prompts.yaml``, the one ``medalign
        evaluate`` uses), with ``pool`` and ``absence`` as in
        :func:`medalign.eval.zeroshot.scores_from_prompt_bank`. With ``neighbours=w`` > 0 the
        probabilities are ``w`` x the class shares among the study's ``k`` nearest training
        studies with the same sequences (:mod:`medalign.eval.neighbours`; ``bank``: the labelled
        manifest whose train split votes, default the run's) + (1 - w) x the zero-shot ones;
        ``nearest`` then gives the five nearest's study ids. With ``mirror`` every embedding, the study's and
        the voters', is the mean over the study and its left-right mirror. ``neighbours``, ``k`` and ``mirror``
        left None take the run's ``readout`` (0, 20 and off for runs trained without one).

        ``studies``: anything :meth:`encode_image` takes (a study id, a DICOM folder, a dict
        {sequence: path}, or a list of those).
        """
        from medalign.eval.zeroshot import PROMPTS_FILE

        neighbours, k, mirror = self.readout(neighbours, k, mirror)
        if not 0.0 <= neighbours <= 1.0:
            raise MedAlignError(f"neighbours is the vote's weight in [0, 1], got {neighbours}")
        items = studies if isinstance(studies, (list, tuple)) else [studies]
        pairs = [self._one(i) for i in items]  # preprocessed once: the masks say which sequences each study has
        emb = self._encode([q[0] for q in pairs], [q[1] for q in pairs], mirror=mirror)
        masks = torch.stack([q[1] for q in pairs])  # (N, C)
        classes, p = self.zero_shot_probabilities(emb, prompts=prompts, pool=pool, absence=absence)
        nearest: list[list[str]] = [[] for _ in items]
        top = p.argmax(axis=1)  # (N,)
        if neighbours > 0:
            p, nearest, calls = self._with_neighbours(emb, masks.numpy(), classes, p, neighbours, k, bank, mirror)
            top = calls if neighbours == 1 else p.argmax(axis=1)  # the vote alone: its tie-break (the nearer class)
        scale = self.logit_scale()
        out = []
        for i, item in enumerate(items):
            name = item if isinstance(item, str) else (str(item) if isinstance(item, Path) else f"study {i + 1}")
            out.append({"study": name, "label": classes[int(top[i])],
                        "probabilities": {c: float(p[i, j]) for j, c in enumerate(classes)},
                        "prompt_set": str(prompts or PROMPTS_FILE), "pool": pool, "absence": absence,
                        "logit_scale": scale, "mirror": mirror,
                        **({"neighbours": neighbours, "k": k, "nearest": nearest[i]} if neighbours > 0 else {})})
        return out

    def readout(self, neighbours: float | None = None, k: int | None = None,
                mirror: bool | None = None) -> tuple[float, int, bool]:
        """The vote's weight, k and test-time mirroring that :meth:`classify` uses: those given, else the run's
        ``readout`` (zero-shot, unmirrored for runs trained without one)."""
        from medalign.train.config import ReadoutConfig

        r = ReadoutConfig.from_dict(self.config.get("readout"))
        return (r.neighbours if neighbours is None else float(neighbours), r.k if k is None else int(k),
                r.mirror if mirror is None else bool(mirror))

    def _with_neighbours(self, emb: np.ndarray, masks: np.ndarray, classes: list[str], p: np.ndarray, weight: float,
                         k: int, bank: str | Path | None, mirror: bool = False
                         ) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
        """Zero-shot probabilities ``p`` (N, C) blended with the neighbour vote, the five nearest's ids and
        the vote's calls (N,); studies are grouped by the sequences they have (each group meets the
        training studies with those sequences alone)."""
        from medalign.eval.neighbours import load_bank, neighbour_vote

        out, nearest, calls = p.copy(), [[] for _ in range(len(emb))], np.zeros(len(emb), dtype=int)
        views: dict[tuple[str, ...], list[int]] = {}
        for i, m in enumerate(masks):
            views.setdefault(tuple(s for s, on in zip(self.sequences, m) if on), []).append(i)
        for view, rows in views.items():
            b = load_bank(self, view, manifest=bank, mirror=mirror)
            shares, calls[rows], top = neighbour_vote(emb[rows], b["embeddings"], b["labels"], classes, k=k)
            out[rows] = weight * shares + (1 - weight) * p[rows]
            for r, t in zip(rows, top):
                nearest[r] = [b["study_ids"][j] for j in t[:5]]
        return out, nearest, calls

    def zero_shot_probabilities(self, embeddings: Any, *, prompts: str | Path | None = None, pool: str = "ensemble",
                                absence: str = "ignore") -> tuple[list[str], np.ndarray]:
        """Class probabilities (N, C) of any embeddings (N, E) in the joint space (images, or reports
        through :meth:`encode_report`): softmax of the logit scale x the prompt-bank scores, the
        protocol of :meth:`classify`. Returns (classes, probabilities)."""
        from medalign.eval.zeroshot import embed_prompts, load_prompts, scores_from_prompt_bank

        bank = embed_prompts(load_prompts(prompts), self.encode_text)
        scores = scores_from_prompt_bank(np.asarray(embeddings, dtype=np.float64), bank, pool=pool, absence=absence)
        z = self.logit_scale() * scores  # (N, C)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        return [str(c) for c in bank["classes"]], p / p.sum(axis=1, keepdims=True)

    def logit_scale(self) -> float:
        """The recipe's learned logit scale (CLIP's 1/0.07 when it has none), capped at 100 as open_clip does."""
        s = getattr(self.recipe, "logit_scale", None)
        try:
            s = s() if callable(s) else s
            s = float(s.detach().cpu()) if hasattr(s, "detach") else (float(s) if s is not None else None)
        except (TypeError, ValueError, RuntimeError):
            s = None
        return float(min(s, 100.0)) if s is not None and np.isfinite(s) and s > 0 else 1 / 0.07

    @staticmethod
    def similarity(a: Any, b: Any) -> np.ndarray:
        """Cosine similarity matrix (N, M) between two sets of embeddings (normalised again to be safe)."""
        a = np.atleast_2d(np.asarray(a, dtype=np.float32))
        b = np.atleast_2d(np.asarray(b, dtype=np.float32))
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return a @ b.T  # (N, M)


def _device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _checkpoint_path(run_dir: Path, checkpoint: str | Path) -> Path:
    if str(checkpoint) in ("best", "last"):
        p = run_dir / "checkpoints" / f"{checkpoint}.safetensors"
        last = run_dir / "checkpoints" / "last.safetensors"
        if not p.is_file() and checkpoint == "best" and last.is_file():
            # every finished epoch writes 'best' (without validation it follows the train loss), so a
            # missing one was deleted or lost: never swap in other weights without being asked
            raise MedAlignError(f"{p} is missing (last.safetensors exists: load it with checkpoint='last', "
                                f"or --checkpoint last)")
        return p
    return Path(checkpoint)


def load(run_dir: str | Path, *, checkpoint: str | Path = "best", device: str | torch.device | None = None,
         cache_dir: str | Path | None = None) -> MedAlignModel:
    """Load a trained run (``checkpoint`` = "best", "last" or a .safetensors path)."""
    from medalign.recipes import build_recipe
    from medalign.train.checkpoint import load_weights

    run_dir = Path(run_dir)
    cfg = _read_config(run_dir)
    path = _checkpoint_path(run_dir, checkpoint)
    if not path.is_file():
        raise MedAlignError(f"no checkpoint '{checkpoint}' in {run_dir / 'checkpoints'}")
    dev = _device(device)
    recipe = build_recipe(cfg)
    load_weights(recipe, path)
    recipe.to(dev)
    h = hashlib.sha256()
    h.update(path.read_bytes())
    h.update((run_dir / "config.yaml").read_bytes())
    return MedAlignModel(recipe, cfg, run_dir, h.hexdigest()[:16], dev, cache_dir=cache_dir)


def build_untrained(run_dir: str | Path, *, device: str | torch.device | None = None, seed: int | None = None,
                    cache_dir: str | Path | None = None) -> MedAlignModel:
    """Same config as ``run_dir``, random initial weights (seeded): the baseline for evaluation."""
    from medalign.recipes import build_recipe

    run_dir = Path(run_dir)
    cfg = _read_config(run_dir)
    torch.manual_seed(int(cfg.get("seed", 0) if seed is None else seed))
    dev = _device(device)
    recipe = build_recipe(cfg).to(dev)
    mid = "untrained-" + hashlib.sha256((run_dir / "config.yaml").read_bytes()).hexdigest()[:12]
    return MedAlignModel(recipe, cfg, run_dir, mid, dev, cache_dir=cache_dir)


__all__ = ["MedAlignModel", "load", "build_untrained"]
