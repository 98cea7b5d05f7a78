"""TextEncoder: real MiniLM on a few sentences, word merging, cache, a second locally-built HF model."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medalign.models.text import TextEncoder

SENTS = ["Acute infarct in the left MCA territory, hyperintense on DWI.", "Normal study."]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> TextEncoder:
    return TextEncoder(cache_dir=tmp_path_factory.mktemp("textcache"))


def test_minilm_sentence_and_words(minilm: TextEncoder) -> None:
    out = minilm.encode(SENTS)
    assert minilm.dim == 384
    assert out["sentence"].shape == (2, 384)
    assert out["word_lists"][0] == ["Acute", "infarct", "in", "the", "left", "MCA", "territory", ",",
                                    "hyperintense", "on", "DWI", "."]
    assert out["word_lists"][1] == ["Normal", "study", "."]
    assert out["words"].shape == (2, 12, 384)
    assert out["word_mask"].sum(1).tolist() == [12, 3]
    assert torch.all(out["words"][1, 3:] == 0)  # padding rows are zero
    # Mean pooling over all tokens (incl. [CLS]/[SEP]) differs from the mean of merged words, but
    # a sub-word word equals the mean of its pieces: check 'hyperintense' against a manual run.
    tok = minilm.tokenizer
    enc = tok([SENTS[0]], return_tensors="pt")
    with torch.no_grad():
        hidden = minilm._model(**enc).last_hidden_state[0]  # (T, 384)
    ids = enc.word_ids(0)
    pieces = [t for t, w in enumerate(ids) if w == 8]
    assert len(pieces) > 1, "expected 'hyperintense' to be split into sub-word pieces"
    torch.testing.assert_close(out["words"][0, 8], hidden[pieces].mean(0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["sentence"][0], hidden.mean(0), atol=1e-5, rtol=1e-4)


def test_semantics(minilm: TextEncoder) -> None:
    s = minilm.encode(["acute ischemic stroke", "acute infarct", "normal brain MRI"])["sentence"]
    s = torch.nn.functional.normalize(s, dim=-1)
    assert s[0] @ s[1] > s[0] @ s[2]


def test_disk_cache_hit(minilm: TextEncoder, tmp_path: Path) -> None:
    a = minilm.encode(["cached sentence one"])["sentence"]
    files = list(minilm.cache_dir.glob("*.pt"))
    assert files and (minilm.cache_dir / "settings.json").is_file()
    fresh = TextEncoder(cache_dir=minilm.cache_dir.parent)
    fresh._encode_uncached = None  # type: ignore[assignment]  # must be served from disk
    torch.testing.assert_close(fresh.encode(["cached sentence one"])["sentence"], a)
    assert fresh._model is None  # the transformer was never loaded


def test_settings_change_cache_key(tmp_path: Path) -> None:
    a = TextEncoder(cache_dir=tmp_path, pooling="mean")
    b = TextEncoder(cache_dir=tmp_path, pooling="cls")
    c = TextEncoder(cache_dir=tmp_path, max_length=128)
    assert len({a.cache_dir, b.cache_dir, c.cache_dir}) == 3
    with pytest.raises(ValueError, match="pooling"):
        TextEncoder(pooling="max")
    with pytest.raises(TypeError, match="list of texts"):
        a.encode("one string")


def test_truncation_at_max_length(tmp_path: Path) -> None:
    enc = TextEncoder(cache_dir=False, max_length=16)
    out = enc.encode(["word " * 100])
    assert out["word_mask"].sum() == 14  # 16 tokens minus [CLS] and [SEP]


def test_second_local_hf_model(tmp_path: Path, minilm: TextEncoder) -> None:
    """A tiny random BERT saved locally goes through the same code path (cls pooling here)."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=37, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(tmp_path / "tiny")
    minilm.tokenizer.save_pretrained(tmp_path / "tiny")
    enc = TextEncoder(str(tmp_path / "tiny"), pooling="cls", max_length=64, cache_dir=tmp_path / "cache")
    assert enc.dim == 32
    out = enc.encode(SENTS)
    assert out["sentence"].shape == (2, 32) and out["words"].shape == (2, 12, 32)
    assert out["word_lists"][1] == ["Normal", "study", "."]
    assert enc.cache_dir != minilm.cache_dir


def test_not_a_model_folder_is_one_line_error(tmp_path: Path) -> None:
    """A local path that is not a model fails at construction with a one-line error naming it."""
    from medalign.errors import MedAlignError

    (tmp_path / "empty").mkdir()
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text("{}")
    cases = {str(tmp_path / "missing"): "no such folder", str(tmp_path / "empty"): "not a model folder",
             str(tmp_path / "noweights"): "no weights"}
    for path, msg in cases.items():
        with pytest.raises(MedAlignError, match=msg) as e:
            TextEncoder(path, cache_dir=False)
        assert path in str(e.value) and "\n" not in str(e.value)


def test_sentence_transformers_folder(tmp_path: Path, minilm: TextEncoder, caplog) -> None:
    """A sentence-transformers layout (modules.json, 1_Pooling) of a 768-d model loads by path;
    a pooling that disagrees with its config, or a module not applied here, is warned about."""
    from transformers import BertConfig, BertModel

    from medalign.models.text import sentence_transformers_pooling

    cfg = BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=768, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    d = tmp_path / "st"
    BertModel(cfg).save_pretrained(d)
    minilm.tokenizer.save_pretrained(d)
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}')
    (d / "modules.json").write_text('[{"path": "", "type": "sentence_transformers.models.Transformer"},'
                                    ' {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},'
                                    ' {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]')
    assert sentence_transformers_pooling(d) == ("cls", ["Dense"])
    assert sentence_transformers_pooling(tmp_path) == (None, [])
    with caplog.at_level("WARNING", logger="medalign.models.text"):
        TextEncoder(str(d), pooling="cls", cache_dir=False)
        assert "not applied" in caplog.text and "trained with" not in caplog.text
        enc = TextEncoder(str(d), pooling="mean", max_length=512, cache_dir=tmp_path / "cache")
        assert "trained with cls pooling" in caplog.text
    assert enc.dim == 768
    out = enc.encode(SENTS + ["word " * 600])  # longer than max_length: truncated, no index error
    assert out["sentence"].shape == (3, 768) and out["word_mask"][2].sum() == 510
