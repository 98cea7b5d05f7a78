"""Where a free-text query (or one report sentence) points in one study, drawn in the one display convention.

Used by the service's overlay route (``POST /attention/{study_id}``) and ``medalign attend --report``:

- :func:`query_map`: the map on the model's local grid. A recipe with word attention (GLoRIA) gives
  the word<->region attention of the query's content words, averaged (each word's map sums to 1
  over the regions, so the mean does too); any other text-image recipe whose image encoder is a
  ``UNetEncoder`` (CLIP) gives the Grad-CAM map of cos(image, text) (:func:`gradcam_map`).
  The choice follows what the recipe can do (:func:`map_method`), never its name.
- :func:`most_attended_slices`: the axial slices holding most of the (upsampled) map's mass.
- :func:`overlay_png`: :func:`attention_overlay_png` (grey image, colour map, L/R markers) as bytes;
  :func:`stack_png_rows` puts several such figures under one another (one row per sentence).
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medalign.eval.localisation import attention_overlay_png, find_image_encoder, gradcam_map, upsample_map

WORD_ATTENTION = "word attention"
GRADCAM = "grad-cam"


def map_method(recipe: Any) -> str | None:
    """:data:`WORD_ATTENTION` for a recipe with ``word_attention``, :data:`GRADCAM` for one with a text
    side and a ``UNetEncoder`` image encoder, else None (no map can be drawn for a text query)."""
    if recipe is None:
        return None
    if callable(getattr(recipe, "word_attention", None)):
        return WORD_ATTENTION
    if not (callable(getattr(recipe, "encode_text", None)) and callable(getattr(recipe, "encode_image", None))):
        return None
    try:
        find_image_encoder(recipe)
    except (ValueError, AttributeError):
        return None
    return GRADCAM


def content_words(words: Sequence[str], word_mask: Sequence[bool] | None = None) -> list[int]:
    """Indices of the query's content words: words the recipe scores (``word_mask``: no punctuation),
    without stop words and without negated words ("no haemorrhage" has no region to point at).

    Falls back to every scored word, then to every word, so a query never has an empty map.
    """
    from medalign.recipes.gloria import STOPWORDS, negated_words

    mask = [True] * len(words) if word_mask is None else [bool(m) for m in word_mask]
    neg = negated_words(list(words))
    keep = [i for i, w in enumerate(words) if mask[i] and w.lower() not in STOPWORDS and not neg[i]
            and any(ch.isalnum() for ch in w)]
    if keep:
        return keep
    scored = [i for i, m in enumerate(mask) if m]
    return scored or list(range(len(words)))


def _device(recipe: Any) -> Any:
    import torch

    p = next(iter(recipe.parameters()), None) if hasattr(recipe, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


def query_map(recipe: Any, image: Any, sequence_mask: Any, text: str, *, prior: Any = None) -> dict[str, Any]:
    """The map of ``text`` over one study on the model's local grid.

    image (C, D, H, W), sequence_mask (C,) (tensors or arrays). Returns dict(map (d, h, w) float64
    numpy, non-negative; method (:func:`map_method`); words: the words averaged, GLoRIA only).
    ``prior``: a :class:`~medalign.eval.normative.NormativePrior`; the map is then re-weighted by the
    study's anomaly (:func:`~medalign.eval.normative.grounded_map`, on the prior's grid) and
    ``method`` says so. Raises ValueError when the recipe can draw no map, or the text has no word.
    """
    out = _raw_query_map(recipe, image, sequence_mask, text)
    if prior is not None:
        from medalign.eval.normative import grounded_map

        anomaly = prior.anomaly(np.asarray(image, dtype=np.float32),
                                None if sequence_mask is None else np.asarray(sequence_mask, dtype=bool))
        out = {**out, "map": grounded_map(out["map"], anomaly).astype(np.float64),
               "method": f"{out['method']} x normative prior"}
    return out


def _raw_query_map(recipe: Any, image: Any, sequence_mask: Any, text: str) -> dict[str, Any]:
    import torch

    method = map_method(recipe)
    if method is None:
        raise ValueError(f"{type(recipe).__name__} gives no attention map for a text query "
                         "(needs word attention, or a text side and a UNet image encoder for Grad-CAM)")
    dev = _device(recipe)
    x = torch.as_tensor(np.asarray(image, dtype=np.float32)).to(dev)  # (C, D, H, W)
    sm = None if sequence_mask is None else torch.as_tensor(np.asarray(sequence_mask, dtype=bool)).to(dev)  # (C,)
    if method == GRADCAM:
        return {"map": np.clip(gradcam_map(recipe, x, sm, text), 0, None), "method": method, "words": []}
    with torch.no_grad():
        res = recipe.word_attention(x, sm, text)
    words = list(res["words"])
    if not words:
        raise ValueError("the text has no word to attend with")
    idx = content_words(words, res.get("word_mask"))
    att = np.asarray(res["attention"], dtype=np.float64)  # (W, d, h, w)
    return {"map": att[idx].mean(0), "method": method, "words": [words[i] for i in idx]}


def most_attended_slices(heat: Any, n: int = 1) -> list[int]:
    """The ``n`` axial slices (axis 0 of (D, H, W)) with the largest share of the map's mass, in slice
    order; ties go to the lower slice. A map with no mass gives the middle slice(s)."""
    h = np.clip(np.asarray(heat, dtype=np.float64), 0, None)
    n = max(1, min(int(n), h.shape[0]))
    mass = h.reshape(h.shape[0], -1).sum(1)  # (D,) map mass per axial slice
    if not np.isfinite(mass).all() or mass.sum() <= 0:
        lo = max(0, h.shape[0] // 2 - n // 2)
        return list(range(lo, lo + n))
    order = np.argsort(-mass, kind="stable")  # stable: equal masses keep slice order
    return sorted(int(z) for z in order[:n])


def overlay_png(image: Any, grid_map: Any, *, sequences: Sequence[str] | None, orientation: str = "RAS",
                n_slices: int = 1, mask: Any = None, title: str = "") -> tuple[bytes, list[int]]:
    """PNG bytes of the map (on the local grid, or already on the image grid) upsampled to the image grid
    over its most attended axial slice(s), drawn by :func:`attention_overlay_png` (one row per slice, one
    column per sequence; ``mask`` outlined); and the slices shown."""
    img = np.asarray(image, dtype=np.float32)  # (C, D, H, W)
    g = np.asarray(grid_map, dtype=np.float64)
    heat = g if g.shape == img.shape[1:] else upsample_map(g, img.shape[1:])  # (D, H, W)
    slices = most_attended_slices(heat, n_slices)
    with tempfile.TemporaryDirectory(prefix="medalign-overlay-") as td:
        p = Path(td) / "overlay.png"
        attention_overlay_png(img, heat, mask, p, sequences=sequences, title=title, slices=slices,
                              orientation=orientation)
        return p.read_bytes(), slices


def _font(size: int) -> Any:
    """Matplotlib's DejaVu Sans at ``size`` pixels (always installed with matplotlib), else PIL's default."""
    from PIL import ImageFont

    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except (OSError, ValueError, ImportError):
        return ImageFont.load_default()


def _wrap(text: str, font: Any, max_px: int, max_lines: int = 4) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``max_px`` wide; the last line ends in '…' if cut."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(lines[-1] + " " + word) <= max_px:
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " …"
    return lines


def stack_png_rows(pngs: Sequence[bytes], titles: Sequence[str] | None = None, *, gap: int = 8,
                   font_px: int = 13) -> bytes:
    """One PNG with the given PNGs under one another (left-aligned on white, ``gap`` pixels apart), each
    below its title (wrapped to the image width, at most 4 lines)."""
    from PIL import Image, ImageDraw

    if not pngs:
        raise ValueError("no image to stack")
    if titles is not None and len(titles) != len(pngs):
        raise ValueError(f"{len(titles)} titles for {len(pngs)} images")
    rows = [Image.open(io.BytesIO(b)).convert("RGB") for b in pngs]
    width = max(r.width for r in rows)
    font = _font(font_px)
    line_h = int(font_px * 1.35)
    wrapped = [_wrap(t, font, width - 8) if t else [] for t in (titles or [""] * len(rows))]
    height = sum(r.height + line_h * len(w) + (4 if w else 0) for r, w in zip(rows, wrapped)) + gap * (len(rows) - 1)
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    y = 0
    for r, lines in zip(rows, wrapped):
        for ln in lines:
            draw.text((4, y), ln, fill=(20, 20, 20), font=font)
            y += line_h
        y += 4 if lines else 0
        out.paste(r, (0, y))
        y += r.height + gap
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()
