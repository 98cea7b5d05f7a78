"""GLoRIA local loss: word <-> image sub-region alignment (METHODS.md section 2).

For every (image i, report t) pair and every word w of report t:

    a_{itw r} = softmax_r( temp1 * <q_tw, v_ir> )           attention over the R regions of image i
    c_{itw}   = sum_r a_{itw r} v_ir                         word-specific image context vector
    s_{it}    = log sum_w exp( temp2 * cos(q_tw, c_{itw}) )  pair score (log-sum-exp over real words)
    logits    = temp3 * s                                    (I, T); symmetric cross-entropy as CLIP

Following the reference implementation (GLoRIA ``local_loss`` / ``attention_fn``) the word
vectors are L2-normalised before the attention while the region vectors are used as they are
(their norm acts as a learned sharpness); ``normalise_regions=True`` normalises them as well.
The reference code additionally applies a softmax over the *words* before the region softmax
(inherited from AttnGAN/SCAN); the paper's equation does not, and neither do we by default
(``word_softmax=True`` reproduces the code).

Everything is vectorised over all I x T pairs (the reference loops over reports); memory is
O(I * T * W * R), fine for the batch sizes of 3D MRI (8) at the intermediate level.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GloriaLocalLoss", "word_region_attention", "local_similarity", "symmetric_ce"]


def _check(image_local: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> None:
    if image_local.dim() != 3:
        raise ValueError(f"image_local must be (B, R, E), got shape {tuple(image_local.shape)}")
    if words.dim() != 3:
        raise ValueError(f"word_embed must be (B, W, E), got shape {tuple(words.shape)}")
    if image_local.shape[-1] != words.shape[-1]:
        raise ValueError(
            f"embedding sizes differ: image_local E={image_local.shape[-1]}, word_embed E={words.shape[-1]}"
        )
    if word_mask.shape != words.shape[:2]:
        raise ValueError(f"word_mask must be (B, W) = {tuple(words.shape[:2])}, got {tuple(word_mask.shape)}")


def word_region_attention(
    image_local: torch.Tensor,
    words: torch.Tensor,
    *,
    temp1: float = 4.0,
    normalise_regions: bool = False,
    word_softmax: bool = False,
    word_mask: torch.Tensor | None = None,
    region_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of every word of every report over the regions of every image.

    image_local (I, R, E), words (T, W, E) -> attention (I, T, W, R), rows sum to 1 over R.
    Words are L2-normalised here; regions only if ``normalise_regions``. ``region_mask`` (I, R)
    bool restricts the attention to the True regions (e.g. those inside the head); an image
    with no True region attends to all of its regions.
    """
    q = F.normalize(words, dim=-1)                                   # (T, W, E)
    v = F.normalize(image_local, dim=-1) if normalise_regions else image_local  # (I, R, E)
    logits = torch.einsum("twe,ire->itwr", q, v)                     # (I, T, W, R)
    if word_softmax:
        # Reference-code quirk: normalise over the (real) words of each report first.
        if word_mask is not None:
            logits = logits.masked_fill(~word_mask[None, :, :, None], float("-inf"))  # (I, T, W, R)
        logits = torch.softmax(logits, dim=2)                        # (I, T, W, R)
        logits = torch.nan_to_num(logits, nan=0.0)                    # reports with no words
    logits = temp1 * logits                                          # (I, T, W, R)
    if region_mask is not None:
        region_mask = _region_mask(region_mask, image_local)
        logits = logits.masked_fill(~region_mask[:, None, None, :], float("-inf"))  # (I, T, W, R)
    return torch.softmax(logits, dim=-1)                             # (I, T, W, R)


def _region_mask(region_mask: torch.Tensor, image_local: torch.Tensor) -> torch.Tensor:
    """Validated (I, R) bool mask; images without any True region keep all regions."""
    if region_mask.shape != image_local.shape[:2]:
        raise ValueError(f"region_mask must be (I, R) = {tuple(image_local.shape[:2])}, got {tuple(region_mask.shape)}")
    region_mask = region_mask.bool().to(image_local.device)
    return region_mask | ~region_mask.any(-1, keepdim=True)         # (I, R)


def local_similarity(
    image_local: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    *,
    temp1: float = 4.0,
    temp2: float = 5.0,
    agg: str = "sum",
    normalise_regions: bool = False,
    word_softmax: bool = False,
    return_attention: bool = False,
    region_mask: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pair scores s (I, T) (before temp3) and optionally the attention (I, T, W, R).

    ``agg="sum"`` is the paper's log-sum-exp over words; ``"mean"`` uses log-mean-exp
    (the reference code's other option). Padded words (``word_mask`` False) are ignored.
    A report with no real word gets score 0 against every image. ``region_mask`` (I, R): see
    :func:`word_region_attention`.
    """
    _check(image_local, words, word_mask)
    if agg not in ("sum", "mean"):
        raise ValueError(f"agg must be 'sum' or 'mean', got '{agg}'")
    word_mask = word_mask.bool()
    attn = word_region_attention(
        image_local, words, temp1=temp1, normalise_regions=normalise_regions,
        word_softmax=word_softmax, word_mask=word_mask, region_mask=region_mask,
    )                                                                # (I, T, W, R)
    context = torch.einsum("itwr,ire->itwe", attn, image_local)       # (I, T, W, E)
    q = words[None]                                                  # (1, T, W, E)
    cos = (q * context).sum(-1) / (q.norm(dim=-1) * context.norm(dim=-1)).clamp_min(eps)  # (I, T, W)
    z = (temp2 * cos).masked_fill(~word_mask[None], float("-inf"))   # (I, T, W)
    score = torch.logsumexp(z, dim=-1)                               # (I, T)
    if agg == "mean":
        n = word_mask.sum(-1).clamp_min(1).to(score.dtype)           # (T,)
        score = score - n.log()[None]                                # (I, T)
    # Reports without words: logsumexp(-inf...) = -inf -> 0 so CE stays finite.
    empty = ~word_mask.any(-1)                                       # (T,)
    if empty.any():
        score = score.masked_fill(empty[None], 0.0)
    return score, (attn if return_attention else None)


def symmetric_ce(logits: torch.Tensor) -> torch.Tensor:
    """(CE(logits, arange) + CE(logits.T, arange)) / 2 for square (B, B) logits (rows = images)."""
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"logits must be square (B, B), got {tuple(logits.shape)}")
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class GloriaLocalLoss(nn.Module):
    """Local (word <-> region) contrastive loss of GLoRIA; returns ``{"local_loss": ...}``.

    forward(image_local (B, R, E), word_embed (B, W, E), word_mask (B, W)) where row b of the
    images is paired with report b. ``weight`` scales the loss (GLoRIA: 1.0).
    """

    def __init__(self, *, temp1: float = 4.0, temp2: float = 5.0, temp3: float = 10.0, agg: str = "sum",
                 normalise_regions: bool = False, word_softmax: bool = False, weight: float = 1.0) -> None:
        super().__init__()
        if agg not in ("sum", "mean"):
            raise ValueError(f"agg must be 'sum' or 'mean', got '{agg}'")
        self.temp1, self.temp2, self.temp3 = float(temp1), float(temp2), float(temp3)
        self.agg, self.normalise_regions, self.word_softmax = agg, normalise_regions, word_softmax
        self.weight = float(weight)

    def scores(self, image_local: torch.Tensor, word_embed: torch.Tensor, word_mask: torch.Tensor,
               *, return_attention: bool = False,
               region_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pair scores (I, T) before temp3, and the attention (I, T, W, R) when asked."""
        return local_similarity(
            image_local, word_embed, word_mask, temp1=self.temp1, temp2=self.temp2, agg=self.agg,
            normalise_regions=self.normalise_regions, word_softmax=self.word_softmax,
            return_attention=return_attention, region_mask=region_mask,
        )

    def forward(self, image_local: torch.Tensor, word_embed: torch.Tensor,
                word_mask: torch.Tensor, region_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if image_local.shape[0] != word_embed.shape[0]:
            raise ValueError(
                f"batch sizes differ: image_local {image_local.shape[0]}, word_embed {word_embed.shape[0]}"
            )
        s, _ = self.scores(image_local, word_embed, word_mask, region_mask=region_mask)  # (B, B)
        return {"local_loss": self.weight * symmetric_ce(self.temp3 * s)}
