"""The map of a free-text query: content words, most attended slices, method by capability, row stacking."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from medalign.eval.query_attention import (GRADCAM, WORD_ATTENTION, content_words, map_method, most_attended_slices,
                                           overlay_png, query_map, stack_png_rows)


def test_content_words_drop_stopwords_punctuation_and_negation():
    words = ["Acute", "infarct", "in", "the", "left", "MCA", ".", "No", "haemorrhage", "."]
    assert content_words(words) == [0, 1, 4, 5]
    # the recipe's mask (e.g. drop_stopwords) is respected as well
    assert content_words(words, [True, False] + [True] * 8) == [0, 4, 5]
    # nothing left: every scored word, then every word
    assert content_words(["no", "haemorrhage"]) == [0, 1]
    assert content_words([".", "the"], [False, False]) == [0, 1]


def test_most_attended_slices_known_values():
    h = np.zeros((5, 2, 2))
    h[1] = 1.0
    h[3] = 3.0
    h[4, 0, 0] = 5.0  # masses per slice: 0, 4, 0, 12, 5
    assert most_attended_slices(h, 1) == [3]
    assert most_attended_slices(h, 2) == [3, 4]  # slice order, largest masses
    assert most_attended_slices(h, 9) == [0, 1, 2, 3, 4]
    assert most_attended_slices(np.zeros((5, 2, 2)), 1) == [2]  # no mass: the middle


class _Words(torch.nn.Module):
    """A recipe with word attention: word w attends to slice w of a (W, 3, 2, 2) grid."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def word_attention(self, image, sequence_mask, text):
        words = text.split()
        att = np.zeros((len(words), 3, 2, 2), np.float32)
        for i in range(len(words)):
            att[i, i % 3] = 0.25  # each word's map sums to 1
        return {"attention": att, "words": words, "word_mask": np.ones(len(words), bool), "grid": (3, 2, 2)}


def test_query_map_averages_content_words_of_word_attention():
    r = _Words()
    assert map_method(r) == WORD_ATTENTION and map_method(None) is None and map_method(object()) is None
    out = query_map(r, np.zeros((1, 6, 4, 4)), np.ones(1, bool), "the infarct left")  # "the" is a stop word
    assert out["method"] == WORD_ATTENTION and out["words"] == ["infarct", "left"]
    want = np.zeros((3, 2, 2))
    want[1] = want[2] = 0.125
    np.testing.assert_allclose(out["map"], want)
    assert out["map"].sum() == pytest.approx(1.0)


def test_grad_cam_for_a_clip_recipe(tmp_path):
    from medalign.recipes import build_recipe

    torch.manual_seed(0)
    clip = build_recipe({"recipe": {"name": "clip", "sequences": ["dwi", "flair"], "embed_dim": 8,
                                    "image_encoder": {"name": "unet3d_cpu", "channels": [4, 8], "local_level": 1,
                                                      "out_dim": 16},
                                    "text_encoder": {"cache_dir": str(tmp_path / "text")}},
                         "data": {"shape": [4, 16, 16]}}).eval()
    assert map_method(clip) == GRADCAM
    img = torch.randn(2, 4, 16, 16)
    out = query_map(clip, img, torch.ones(2, dtype=torch.bool), "acute infarct")
    assert out["method"] == GRADCAM and out["map"].ndim == 3 and (out["map"] >= 0).all()
    png, slices = overlay_png(img.numpy(), out["map"], sequences=["dwi", "flair"], n_slices=2)
    assert png[:4] == b"\x89PNG" and len(slices) == 2


def test_stack_rows_with_titles():
    from PIL import Image

    def solid(w, h, c):
        buf = io.BytesIO()
        Image.new("RGB", (w, h), c).save(buf, format="PNG")
        return buf.getvalue()

    out = Image.open(io.BytesIO(stack_png_rows([solid(40, 10, "red"), solid(60, 20, "blue")], gap=5)))
    assert out.size == (60, 35)
    a = np.asarray(out.convert("RGB"))
    assert tuple(a[0, 0]) == (255, 0, 0) and tuple(a[15, 0]) == (0, 0, 255) and tuple(a[0, 50]) == (255, 255, 255)
    titled = Image.open(io.BytesIO(stack_png_rows([solid(200, 10, "red")], ["1. Acute infarct."])))
    assert titled.size[1] > 10  # the title strip is on top
    with pytest.raises(ValueError, match="titles"):
        stack_png_rows([solid(4, 4, "red")], ["a", "b"])
