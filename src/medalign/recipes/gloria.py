"""GLoRIA: global + local (word <-> sub-region) image-report alignment (METHODS.md section 2).

The brain-CLIP recipe plus a local branch:

- image: the encoder's ``local`` map (an intermediate U-Net level, one vector per voxel of that
  map) -> 1x1x1 projection -> ``image_local`` (B, R, E), R = d*h*w;
- text: the frozen encoder's word vectors (sub-word pieces already merged into words by
  :class:`~medalign.models.text.TextEncoder`; [CLS]/[SEP]/[PAD] are never words there) ->
  projection -> ``word_embed`` (B, W, E). As GLoRIA's ``\\w+`` tokenizer does, words without
  a letter or digit (punctuation) are masked out; stop words are kept, as in the paper
  (``drop_stopwords=True`` masks a small English list too);
- loss = ``global_weight`` * ClipLoss(global) + ``local_weight`` * GloriaLocalLoss(local).
  GLoRIA's global loss uses a fixed scale temp3 = 10, so ``logit_scale_init=10`` and
  ``learn_logit_scale=False`` are this recipe's defaults.

Similarities for retrieval/zero-shot (:meth:`GloriaRecipe.pair_similarity`): global cosine,
local pair score, and their aggregate = mean of the two after z-scoring each matrix.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from medalign.data.schema import PAPER_SEQUENCES
from medalign.losses.clip import ClipLoss
from medalign.losses.gloria import GloriaLocalLoss
from medalign.models.heads import ProjectionHead
from medalign.data.masking import mask_sequences
from medalign.recipes import RECIPES
from medalign.recipes.clip import ClipRecipe

_WORDLIKE = re.compile(r"\w")
STOPWORDS: frozenset[str] = frozenset(
    "a an the of in on at to for with and or but is are was were be been by as from this that these those "
    "there it its which who into than then also".split()
)


# Negation cues and scope ends for :func:`negated_words` (NegEx-style, kept deliberately small: the
# impressions say "No acute infarct.", "Negative for acute infarct or haemorrhage.", "no restricted
# diffusion", "No evidence of an underlying tumor, although ...").
NEGATION_CUES: frozenset[str] = frozenset("no not without negative neither nor absent".split())
SCOPE_ENDS: frozenset[str] = frozenset(". ; : although but however except apart".split())


def negated_words(words: Sequence[str]) -> list[bool]:
    """True for each word inside a negation scope: from a cue ("no", "negative", "without", ...)
    up to the end of the sentence or a contrast word ("although", "but"). The cue itself counts as
    negated. Example: "Left glioma . No acute infarct ." -> the last four entries are True except ".".
    """
    out, neg = [], False
    for w in words:
        lw = w.lower()
        if lw in SCOPE_ENDS:
            neg = False
        elif lw in NEGATION_CUES:
            neg = True
        out.append(neg)
    return out


def center_regions(v: torch.Tensor, region_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, R, E) region vectors minus each image's mean over its allowed regions (``region_mask``
    (B, R) bool; all regions where None or where an image has no True region)."""
    if region_mask is None:
        return v - v.mean(1, keepdim=True)  # (B, R, E)
    w = region_mask.to(v.dtype)  # (B, R)
    w = torch.where(w.sum(1, keepdim=True) > 0, w, torch.ones_like(w))  # (B, R)
    mean = (w[..., None] * v).sum(1, keepdim=True) / w.sum(1)[:, None, None]  # (B, 1, E)
    return v - mean  # (B, R, E)


def zscore(s: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(S - mean) / std over all entries of a similarity matrix."""
    return (s - s.mean()) / s.std(unbiased=False).clamp_min(eps)


@RECIPES.register("gloria")
class GloriaRecipe(ClipRecipe):
    """GLoRIA on 3D MRI. Arguments of :class:`ClipRecipe`, plus:

    Args:
        temp1, temp2, temp3: attention sharpness, word aggregation and pair-score scale [4, 5, 10].
        agg: ``"sum"`` (log-sum-exp over words, paper) or ``"mean"``.
        local_weight, global_weight: loss weights (GLoRIA: 1, 1).
        local_projection: ``"linear"`` (= GLoRIA's 1x1 conv) or ``"mlp"`` for both local heads.
        normalise_regions: L2-normalise region vectors before the attention (reference: no).
        word_softmax: softmax over the report's words before the softmax over regions, as the
            reference code does (AttnGAN heritage) but the paper's equation does not. Each region
            is then shared out among the words, so a word's attention goes to regions that suit
            *it* more than the other words, not to regions that every word likes.
        drop_stopwords: mask stop words out of the local loss (reference: keep them).
        drop_negated: mask words inside a negation ("No acute infarct.", see :func:`negated_words`)
            out of the local loss (not in the paper). Why: a negated finding has no region to attend
            to, yet in the loss "infarct" of "Left glioma. No acute infarct." must match the *tumour*
            image, which teaches the class word to attend to whatever every image has.
        head_regions: ``None`` (paper) lets every word attend to every sub-region. A number f in
            (0, 1] restricts the attention (loss, similarities and maps) to sub-regions whose
            voxels are at least a fraction f inside the head (any input channel non-zero; the
            background is exactly 0 after preprocessing). Why: with free attention on MRI volumes
            the lesion words learned to attend to fixed *background* cells at the volume border
            (the same cell for every image; zero padding makes them position-coded "slots" whose
            receptive field still sees the head), which discriminates the pairs but localises nothing.
        center_regions: subtract each image's mean region vector (over its allowed regions) from its
            region vectors (not in the paper). Why: level-2 cells see most of the head, so the
            image's class can be coded in *every* cell and any attention then matches the word;
            after centring, a word's context vector only aligns with it where a region differs
            from the rest of its own image (e.g. a lesion); uniform attention gives a zero context.
        sequence_dropout, single_sequence: as :class:`ClipRecipe`.
        text_section, jitter, flip_lr: as :class:`ClipRecipe`; the section applies to the global *and* the
            word branch (training batches and ``localise`` reports), and so do the mirrored sides.
    """

    def __init__(self, *, sequences: Sequence[str] = PAPER_SEQUENCES, input_shape: Sequence[int] | None = (16, 112, 112),
                 image_encoder: dict | None = None, text_encoder: dict | None = None, embed_dim: int = 256,
                 projection: str = "linear", logit_scale_init: float = 10.0, logit_scale_max: float = 100.0,
                 learn_logit_scale: bool = False, sequence_dropout: float = 0.0, single_sequence: float = 0.0,
                 gather: bool = True, temp1: float = 4.0, temp2: float = 5.0, temp3: float = 10.0, agg: str = "sum",
                 local_weight: float = 1.0, global_weight: float = 1.0, local_projection: str = "linear",
                 normalise_regions: bool = False, drop_stopwords: bool = False, text_section: str = "full",
                 jitter: dict | None = None, flip_lr: float = 0.0, head_regions: float | None = None,
                 drop_negated: bool = False, center_regions: bool = False, word_softmax: bool = False) -> None:
        super().__init__(sequences=sequences, input_shape=input_shape, image_encoder=image_encoder,
                         text_encoder=text_encoder, embed_dim=embed_dim, projection=projection,
                         logit_scale_init=logit_scale_init, logit_scale_max=logit_scale_max,
                         learn_logit_scale=learn_logit_scale, sequence_dropout=sequence_dropout,
                         single_sequence=single_sequence, gather=gather, text_section=text_section, jitter=jitter,
                         flip_lr=flip_lr)
        local_dim = getattr(self.image_encoder, "local_dim", None)
        if local_dim is None:
            raise ValueError(f"image encoder {type(self.image_encoder).__name__} has no local features (local_dim)")
        self.image_local_proj = ProjectionHead(int(local_dim), embed_dim, local_projection)
        self.word_proj = ProjectionHead(self.text_encoder.dim, embed_dim, local_projection)
        self.local_loss = GloriaLocalLoss(temp1=temp1, temp2=temp2, temp3=temp3, agg=agg,
                                          normalise_regions=normalise_regions, word_softmax=word_softmax)
        self.local_weight, self.global_weight = float(local_weight), float(global_weight)
        self.drop_stopwords = bool(drop_stopwords)
        self.drop_negated = bool(drop_negated)
        self.center_regions = bool(center_regions)
        if head_regions is not None and not 0.0 < float(head_regions) <= 1.0:
            raise ValueError(f"head_regions must be in (0, 1] or null, got {head_regions}")
        self.head_regions = None if head_regions is None else float(head_regions)

    # ------------------------------------------------------------------ features
    def image_features(self, image: torch.Tensor, sequence_mask: torch.Tensor | None = None) -> dict[str, Any]:
        """-> image_embed (B, E) normalised, image_local (B, R, E), local_grid (d, h, w), and
        region_mask (B, R) bool (sub-regions the words may attend to; None = all)."""
        x = mask_sequences(image, sequence_mask)
        out = self.image_encoder(x, sequence_mask)
        g = F.normalize(self.image_proj(out["global"]), dim=-1)  # (B, E)
        loc = out["local"]  # (B, C_l, d, h, w)
        grid = tuple(loc.shape[2:])
        loc = loc.flatten(2).transpose(1, 2)  # (B, R, C_l)
        rm = self.head_region_mask(x, grid)
        v = self.image_local_proj(loc)  # (B, R, E)
        if self.center_regions:
            v = center_regions(v, rm)
        return {"image_embed": g, "image_local": v, "local_grid": grid, "region_mask": rm}

    def head_region_mask(self, image: torch.Tensor, grid: Sequence[int]) -> torch.Tensor | None:
        """(B, C, *spatial) input -> (B, R) bool: local-grid cells at least ``head_regions`` inside
        the head (any channel non-zero); None when ``head_regions`` is off."""
        if self.head_regions is None:
            return None
        head = (image != 0).any(1, keepdim=True).to(image.dtype)  # (B, 1, *spatial)
        pool = F.adaptive_avg_pool3d if head.dim() == 5 else F.adaptive_avg_pool2d
        frac = pool(head, tuple(int(g) for g in grid))  # (B, 1, *grid)
        return (frac.flatten(1) >= self.head_regions - 1e-6)  # (B, R)

    def keep_word(self, word: str) -> bool:
        """Words that take part in the local loss: not punctuation (and not stop words if asked)."""
        if not _WORDLIKE.search(word):
            return False
        return not (self.drop_stopwords and word.lower() in STOPWORDS)

    def text_word_features(self, texts: list[str]) -> dict[str, Any]:
        """-> text_embed (B, E) normalised, word_embed (B, W, E), word_mask (B, W), word_lists."""
        enc = self.text_encoder.encode(list(texts))
        dev = self._device()
        sent = F.normalize(self.text_proj(enc["sentence"].to(dev)), dim=-1)  # (B, E)
        words = self.word_proj(enc["words"].to(dev))  # (B, W, E)
        mask = enc["word_mask"].clone()  # (B, W)
        for b, wl in enumerate(enc["word_lists"]):
            neg = negated_words(wl) if self.drop_negated else [False] * len(wl)
            for w, word in enumerate(wl):
                if not self.keep_word(word) or neg[w]:
                    mask[b, w] = False
        return {"text_embed": sent, "word_embed": words, "word_mask": mask.to(dev), "word_lists": enc["word_lists"]}

    def forward(self, batch: dict) -> dict[str, Any]:
        image, mask, _ = self.image_inputs(batch)
        # batch["text"] holds manifest reports: both branches see the configured ``text_section``
        # (as ClipRecipe.encode_report does); without this a "text_section: impression" was ignored.
        texts = self.report_texts(batch["text"])
        image, texts, _ = self.mirror(image, texts)  # training with flip_lr only
        return {**self.image_features(image, mask), **self.text_word_features(texts),
                "logit_scale": self.logit_scale()}

    # ------------------------------------------------------------------ steps
    def _losses(self, f: dict, gather: bool) -> dict[str, torch.Tensor]:
        g = (self.loss if gather else ClipLoss(gather=False))(f["image_embed"], f["text_embed"], f["logit_scale"])
        loc = self.local_loss(f["image_local"], f["word_embed"], f["word_mask"], f.get("region_mask"))
        return {"global_loss": self.global_weight * g["contrastive_loss"],
                "local_loss": self.local_weight * loc["local_loss"]}

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        f = self(batch)
        out = self._losses(f, gather=True)
        out["logit_scale"] = f["logit_scale"].detach()
        return out

    @torch.no_grad()
    def validation_step(self, batch: dict) -> dict[str, Any]:
        f = self(batch)
        out: dict[str, Any] = dict(self._losses(f, gather=False))
        out["image_embed"] = f["image_embed"].float().cpu()
        out["text_embed"] = f["text_embed"].float().cpu()
        return out

    # ------------------------------------------------------------------ similarities
    @torch.no_grad()
    def pair_similarity(self, image: dict, text: dict, *, chunk: int = 8) -> dict[str, torch.Tensor]:
        """(I, T) similarity matrices from :meth:`image_features` / :meth:`text_word_features` dicts.

        ``global`` = cosine of the global embeddings; ``local`` = the local pair score
        (log-sum-exp over words of word/context cosine x temp2); ``combined`` = mean of the two
        after z-scoring each over the whole matrix. Images are processed ``chunk`` at a time
        (the local score costs O(I * T * W * R) memory).
        """
        glob = image["image_embed"] @ text["text_embed"].T  # (I, T)
        parts = []
        rm = image.get("region_mask")
        for i in range(0, image["image_local"].shape[0], chunk):
            s, _ = self.local_loss.scores(image["image_local"][i:i + chunk], text["word_embed"], text["word_mask"],
                                          region_mask=None if rm is None else rm[i:i + chunk])
            parts.append(s)  # (chunk, T)
        loc = torch.cat(parts)  # (I, T)
        return {"global": glob, "local": loc, "combined": 0.5 * (zscore(glob) + zscore(loc))}

    @torch.no_grad()
    def word_attention(self, image: torch.Tensor, sequence_mask: torch.Tensor | None, text: str) -> dict[str, Any]:
        """Attention of each word of ``text`` over the local grid of one image.

        image (C, D, H, W) or (1, C, D, H, W) -> dict(attention (W, d, h, w) numpy, words list,
        word_mask (W,) numpy bool, grid (d, h, w)).
        """
        from medalign.losses.gloria import word_region_attention

        x = image[None] if image.dim() == 4 else image  # (1, C, D, H, W)
        sm = None if sequence_mask is None else sequence_mask.reshape(1, -1)
        im = self.image_features(x.to(self._device()), None if sm is None else sm.to(self._device()))
        tx = self.text_word_features([text])
        attn = word_region_attention(im["image_local"], tx["word_embed"], temp1=self.local_loss.temp1,
                                     normalise_regions=self.local_loss.normalise_regions,
                                     word_softmax=self.local_loss.word_softmax, word_mask=tx["word_mask"],
                                     region_mask=im["region_mask"])  # (1, 1, W, R)
        grid = im["local_grid"]
        a = attn[0, 0].reshape(attn.shape[2], *grid)  # (W, d, h, w)
        return {"attention": a.float().cpu().numpy(), "words": tx["word_lists"][0],
                "word_mask": tx["word_mask"][0].cpu().numpy(), "grid": grid}
