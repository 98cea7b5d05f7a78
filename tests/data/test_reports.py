"""extract_impression / text_section: which part of a report the CLIP text encoder sees."""
from __future__ import annotations

import pytest

from medalign.data.reports import extract_impression, select_report_section


def test_impression_header_variants():
    assert extract_impression("Indication: headache. Normal MRI brain. IMPRESSION: No acute intracranial abnormality.") \
        == "No acute intracranial abnormality."
    assert extract_impression("Mass in the right frontal lobe. Conclusion: Right glioma.") == "Right glioma."
    assert extract_impression("Chronic infarct.\nNo hemorrhagic transformation. Summary: Right chronic infarct.") \
        == "Right chronic infarct."
    assert extract_impression("Findings... impression:   marked atrophy") == "marked atrophy"


def test_last_header_wins_and_trailing_boilerplate_dropped():
    text = ("Impression: see below. Well-defined extra-axial mass. Impression: Meningioma. "
            "Report verified by consultant radiologist.")
    assert extract_impression(text) == "Meningioma."
    assert extract_impression("Impression: Acute hemorrhage. Page 1 of 1") == "Acute hemorrhage."
    assert extract_impression("Conclusion: Marked atrophy. -- end of report --") == "Marked atrophy."


def test_no_header_keeps_findings_without_boilerplate():
    text = ("EXAM: MRI brain. Multiplanar multisequence MRI of the brain. Left MCA territory acute infarct, "
            "measuring 4.3 x 4.0 cm. No intracranial haemorrhage. Dictated, not read.")
    assert extract_impression(text) == ("Left MCA territory acute infarct, measuring 4.3 x 4.0 cm. "
                                        "No intracranial haemorrhage.")
    # a title in front of the findings goes, the finding stays
    assert extract_impression("MR HEAD: Acute haematoma in the left basal ganglia.") \
        == "Acute haematoma in the left basal ganglia."
    assert extract_impression("Sequences: axial DWI/ADC, GRE, FLAIR, T1, T2. Normal appearances of the brain.") \
        == "Normal appearances of the brain."


def test_degenerate_inputs():
    assert extract_impression("") == ""
    assert extract_impression(None) == ""  # type: ignore[arg-type]
    # only boilerplate: fall back to the stripped original rather than an empty text
    assert extract_impression("  Dictated, not read.  ") == "Dictated, not read."
    # a header with nothing after it: the original text
    assert extract_impression("Acute infarct. Impression:") == "Acute infarct. Impression:"


def test_select_report_section():
    r = "No acute infarct or haemorrhage. Impression: Normal MRI brain."
    assert select_report_section(r, "full") == r
    assert select_report_section(r, "impression") == "Normal MRI brain."
    with pytest.raises(ValueError, match="unknown report section 'abstract'"):
        select_report_section(r, "abstract")


class _FakeText:
    """Stands in for the frozen text encoder: a feature per text = its length (records what it saw)."""

    dim = 384  # MiniLM's size: the recipe sized its text projection from the real (bundled) encoder
    device = None

    def __init__(self):
        self.seen: list[str] = []

    def sentence(self, texts):
        import torch

        self.seen.extend(texts)
        return torch.tensor([[float(len(t))] + [1.0] * (self.dim - 1) for t in texts])  # (B, 384)


def _recipe(section: str):
    from medalign.recipes.clip import ClipRecipe

    rec = ClipRecipe(sequences=("flair",), input_shape=(8, 16, 16), text_section=section, embed_dim=8,
                     image_encoder={"name": "unet3d_cpu", "channels": (4, 8), "stem_stride": (1, 2, 2), "local_level": 1,
                                    "global_pool": "avg"}, text_encoder={"device": "cpu"}, gather=False)
    fake = _FakeText()
    rec._text[:] = [fake]
    return rec, fake


def test_recipe_applies_section_to_reports_only():
    import torch

    rec, fake = _recipe("impression")
    report = "Indication: headache. No acute infarct. Impression: Normal MRI brain."
    batch = {"image": torch.randn(1, 1, 8, 16, 16), "text": [report]}  # (B, C, D, H, W)
    rec.train()
    rec.training_step(batch)
    assert fake.seen == ["Normal MRI brain."]
    fake.seen.clear()
    rec.encode_report([report])
    assert fake.seen == ["Normal MRI brain."]
    fake.seen.clear()
    rec.encode_text(["Impression: a free-text query"])  # queries are never cut
    assert fake.seen == ["Impression: a free-text query"]

    full, fake_full = _recipe("full")
    full.encode_report([report])
    assert fake_full.seen == [report]


def test_recipe_rejects_unknown_section():
    from medalign.recipes.clip import ClipRecipe

    with pytest.raises(ValueError, match="unknown report section"):
        ClipRecipe(sequences=("flair",), input_shape=(8, 16, 16), text_section="findings",
                   image_encoder={"name": "unet3d_cpu", "channels": (4, 8), "local_level": 1, "global_pool": "avg"})


# ---------------------------------------------------------------- jitter (cheap on-tensor augmentation)
def test_jitter_known_values_and_errors():
    import torch

    from medalign.recipes.clip import jitter_batch

    x = torch.arange(2 * 1 * 2 * 3 * 4, dtype=torch.float32).reshape(2, 1, 2, 3, 4)  # (B, C, D, H, W)
    assert torch.equal(jitter_batch(x), x)  # nothing asked, nothing changed
    g = torch.Generator().manual_seed(0)
    y = jitter_batch(x, shift=(0, 0, 1), generator=g)
    for b in range(2):  # each sample is a circular shift of itself by -1, 0 or +1 along W
        assert any(torch.equal(y[b], torch.roll(x[b], s, dims=3)) for s in (-1, 0, 1))
    z = jitter_batch(torch.ones(4, 3, 2, 2, 2), scale=0.2, generator=g)
    gain = z[:, :, 0, 0, 0]  # (B, C) one gain per channel, constant over space
    assert torch.all((gain >= 0.8) & (gain <= 1.2)) and torch.all(z == gain[..., None, None, None])
    with pytest.raises(ValueError, match="one value per spatial axis"):
        jitter_batch(x, shift=(1, 1))


def test_jitter_only_in_training():
    import torch

    rec, _ = _recipe("full")
    rec.jitter = {"shift": (0, 4, 4), "scale": 0.5}
    x = torch.randn(2, 1, 8, 16, 16)  # (B, C, D, H, W)
    rec.eval()
    a, b = rec({"image": x, "text": ["a", "b"]}), rec({"image": x, "text": ["a", "b"]})
    assert torch.equal(a["image_embed"], b["image_embed"])  # evaluation is deterministic


def test_api_encode_report_applies_the_recipes_text_section():
    """medalign.load(...).encode_report embeds manifest reports as training saw them; encode_text
    (free-text queries) is untouched."""
    import numpy as np

    from medalign.api import MedAlignModel

    class _Recipe:
        def report_texts(self, reports):
            return [r.split("IMPRESSION:")[-1].strip() for r in reports]

        def encode_text(self, texts):
            import torch

            return torch.tensor([[float(len(t))] for t in texts])

    m = MedAlignModel.__new__(MedAlignModel)
    m.recipe = _Recipe()
    report = "Findings: long text. IMPRESSION: Acute infarct."
    assert m.encode_report([report])[0, 0] == len("Acute infarct.")
    assert m.encode_text([report])[0, 0] == len(report)
    assert np.asarray(m.encode_report(report)).shape == (1, 1)


def test_recipe_soft_targets_use_the_section_features():
    import torch

    from medalign.losses.clip import ClipLoss

    rec, fake = _recipe("impression")
    rec.loss = ClipLoss(gather=False, target_temperature=0.1)
    # the fake features (length, 1, 1, ...) of these two impressions have cosine 0.93: similar, not identical
    imps = ["Acute haemorrhage.", "Acute haemorrhage in the left frontal lobe, with oedema."]
    reports = [f"Findings: x. Impression: {t}" for t in imps]
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 1, 8, 16, 16, generator=g), "text": reports}  # (B, C, D, H, W)
    rec.eval()  # no dropout/jitter, so forward() reproduces the step's embeddings
    got = rec.training_step(batch)["contrastive_loss"]
    f = rec(batch)
    feats = fake.sentence(imps)
    expect = ClipLoss(gather=False, target_temperature=0.1)(f["image_embed"], f["text_embed"], f["logit_scale"], feats)
    assert got.item() == pytest.approx(expect["contrastive_loss"].item(), abs=1e-6)
    plain = ClipLoss(gather=False)(f["image_embed"], f["text_embed"], f["logit_scale"])["contrastive_loss"]
    assert abs(got.item() - plain.item()) > 1e-4
