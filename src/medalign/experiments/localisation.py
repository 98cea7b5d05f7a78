"""GLoRIA experiment drivers: the word-attention overlay of one study and the localisation run.

:func:`localise_run` evaluates a GLoRIA run on one split: retrieval (global / local / combined
similarity), zero-shot with two prompt sets (the prompts.yaml set of ``medalign evaluate`` and
generated severity x subtype x location prompts, mean-pooled per class), and localisation of the
lesion word's attention against the lesion masks, with bootstrap CIs; ``clip_run`` adds a CLIP
run (global retrieval, zero-shot with the same prompts, Grad-CAM maps) to one comparison table.
The global-embedding figures (GLoRIA global, CLIP) are ``medalign evaluate``'s own computation
(``eval.run.split_metrics``), so both commands report the same numbers for the same model, split
and prompt set; every other figure names its protocol. Outputs: RUN/eval/localisation_<split>.json
and the report section RUN/report_extras/gloria.json (gloria_<split>.json for other splits) +
gallery PNGs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from medalign import api
from medalign.data.schema import CLASSES
from medalign.errors import CohortError, MedAlignError
from medalign.eval.bootstrap import format_ci
from medalign.eval.evaluate import class_cis, rank_cis
from medalign.eval.gloria_prompts import CLASS_WORDS, LESION_CLASSES, find_class_word, generate_prompts
from medalign.eval.localisation import (attention_overlay_png, breakdown, gradcam_map, head_uniform_scores,
                                        localisation_scores, size_bucket, summarise, uniform_scores, upsample_map)
from medalign.eval.normative import grounded_map, run_prior
from medalign.eval.retrieval import cosine_similarity, match_ranks, rank_summary
from medalign.eval.run import split_metrics
from medalign.eval.zeroshot import DEFAULT_POOL, classification_metrics, load_prompts, pool_scores
from medalign.utils import atomic_write_json

RETRIEVAL_CI_KS: tuple[int, ...] = (1, 5)  # R@K given CIs (the comparison table shows R@1, R@5, MRR)


# ------------------------------------------------------------------------------------------ helpers
def _load_gloria(run: str | Path, checkpoint: str) -> Any:
    """The run's model via ``medalign.api``; a recipe without word attention is a one-line error."""
    model = api.load(run, checkpoint=checkpoint)
    if not hasattr(model.recipe, "word_attention"):
        name = (model.config.get("recipe") or {}).get("name")
        raise MedAlignError(f"run {run} uses recipe '{name}', which has no word attention (train with recipe: gloria)")
    return model


def _resolve(model: Any, manifest: str | None, cache: str | None) -> tuple[Path, Path]:
    """(manifest, cache dir): the given ones, else the run's config."""
    from medalign.eval.run import resolve_data

    return resolve_data(model.run_dir, model.config, manifest, cache)


def _word_grid(recipe: Any, image: torch.Tensor, seq_mask: torch.Tensor, text: str,
               word: str) -> tuple[np.ndarray, str, str]:
    """Attention (d, h, w) on the local grid of ``word`` (or a synonym of that class) in ``text``.

    Falls back to the text "<word>" when the word is not in ``text``. Returns (map, text, word used).
    """
    def locate(t: str) -> tuple[dict, int | None]:
        res = recipe.word_attention(image, seq_mask, t)
        words = [w.lower() for w in res["words"]]
        idx = words.index(word.lower()) if word.lower() in words else None
        if idx is None and word.lower() in CLASS_WORDS:
            idx = find_class_word(res["words"], word.lower())
        return res, idx

    res, idx = locate(text) if text else (None, None)
    if idx is None:
        text = word
        res, idx = locate(text)
        if idx is None:  # the tokenizer split the word; take its first piece-word
            idx = 0
    return res["attention"][idx], text, res["words"][idx]


def run_data(model: Any) -> tuple[Path, Path]:
    """(manifest, cache) the run was trained on (where its normative prior is fitted)."""
    return _resolve(model, None, None)


def study_inputs(model: Any, study: str, manifest: str | None = None, cache: str | None = None,
                 *, with_report: bool = True) -> dict:
    """One study of a run's cohort: image (C, D, H, W) and sequence_mask (C,) tensors, mask (D, H, W) numpy
    or None, the cache's orientation code and (``with_report``) its whole report from the manifest ('' if none)."""
    from medalign.data.cache import CohortCache

    manifest_p, cache_p = _resolve(model, manifest, cache)
    cc = CohortCache(cache_p)
    if study not in cc:
        raise CohortError(f"not in the cohort cache {cache_p}", study_id=study)
    arr = cc.load(study)
    out = {"image": torch.from_numpy(np.array(arr["image"], dtype=np.float32)),  # (C, D, H, W)
           "sequence_mask": torch.from_numpy(np.asarray(arr["sequence_mask"], dtype=bool)),  # (C,)
           "mask": None if arr["mask"] is None else np.array(arr["mask"]), "orientation": cc.config.canonical,
           "report": ""}
    if with_report:
        from medalign.data.manifest import load_manifest

        df = load_manifest(manifest_p, check_files=False)
        row = df[df["study_id"].astype(str) == study]
        if len(row) and "report" in df.columns and isinstance(row["report"].iloc[0], str):
            out["report"] = str(row["report"].iloc[0])
    return out


def attend_study(run: str | Path, study: str, word: str, *, text: str | None = None, out: str | None = None,
                 n_slices: int = 3, manifest: str | None = None, cache: str | None = None,
                 checkpoint: str = "best", prior: bool = True) -> dict:
    """Write the attention overlay PNG of ``word`` for one study (x the run's normative prior unless
    ``prior`` is False or none can be fitted); returns paths and (with a mask) scores."""
    model = _load_gloria(run, checkpoint)
    s = study_inputs(model, study, manifest, cache, with_report=text is None)
    image, seq, mask = s["image"], s["sequence_mask"], s["mask"]
    if text is None:
        text = model.recipe.report_texts([s["report"]])[0] if s["report"] else ""  # the section it was trained on
    att, used_text, used_word = _word_grid(model.recipe, image, seq, text, word)
    norm = None
    if prior:
        try:
            norm = run_prior(run, *_resolve(model, None, None))
            att = grounded_map(att, norm.anomaly(image.numpy(), seq.numpy()))
        except MedAlignError:  # too few normal training studies: the attention alone
            norm = None
    heat = upsample_map(att, image.shape[1:])
    out_p = Path(out) if out else Path(run) / "attention" / f"{study}_{word}.png"
    attention_overlay_png(image.numpy(), heat, mask, out_p, sequences=model.sequences, n_slices=n_slices,
                          title=f"{study}: attention of '{used_word}'{' x normative prior' if norm else ''}",
                          orientation=s["orientation"])
    res = {"png": str(out_p), "text": used_text, "word": used_word, "prior": norm is not None}
    if mask is not None and mask.any():
        res["scores"] = localisation_scores(heat, mask)
        res["uniform"] = uniform_scores(mask)
    return res


def _canonical(ds: Any) -> str:
    """The orientation code of a dataset's cache (RAS, the preprocessing default, when unknown)."""
    cache = getattr(ds, "cache", None)
    return str(getattr(getattr(cache, "config", None), "canonical", "RAS"))


def _batches(ds: Any, bs: int = 4) -> Iterator[dict]:
    """Collated batches of ``bs`` studies, in dataset order."""
    from medalign.data.datasets import collate

    for i in range(0, len(ds), bs):
        yield collate([ds[j] for j in range(i, min(len(ds), i + bs))])


def _retrieval(sim_ti: np.ndarray, ids: np.ndarray, n_boot: int, seed: int) -> dict:
    """Text -> image and image -> text summaries with CIs from a (T, I) similarity.

    Same ranks (eval.retrieval.match_ranks), summary and bootstrap statistics as
    ``evaluate_embeddings``; the protocol differs in that the similarity is given rather than
    the cosine of two embeddings (GLoRIA's local and combined scores have no embedding), CIs
    cover R@1, R@5 and MRR only, and no per-query ranks, class precision or per-class
    breakdown are stored. Global embeddings (GLoRIA global, CLIP) go through ``split_metrics``
    instead: ``medalign evaluate``'s computation.
    """
    out = {}
    for name, s in (("text_to_image", sim_ti), ("image_to_text", sim_ti.T)):
        r, _ = match_ranks(s, ids, ids)
        d = rank_summary(r, pool_size=s.shape[1])
        d["ci"] = rank_cis(r, RETRIEVAL_CI_KS, n_boot=n_boot, seed=seed)
        out[name] = d
    return out


def _zero_shot(sim_ip: np.ndarray, prompt_class: np.ndarray, y: np.ndarray, n_classes: int, n_boot: int, seed: int,
               pool: str = "mean", with_ci: bool = True) -> dict:
    """Class scores = mean (or max) over a class's prompts of the image/prompt similarity.

    Metrics and CIs as in ``evaluate_embeddings`` (eval.zeroshot.classification_metrics, one
    bootstrap pass); the protocol differs in that the (I, P) similarity is given (GLoRIA local /
    combined scores are not cosines of embeddings), prompts are the generated presence prompts
    only (no absence subtraction, no one-prompt-per-class variant) and classes are not named.
    With the prompts.yaml presence prompts it is ``medalign evaluate``'s statistic (absence
    ``ignore``) on another similarity; the global-embedding figures themselves come from
    ``split_metrics``, so they equal ``medalign evaluate``'s exactly.
    """
    # the prompt ensemble averages prompt *embeddings*; a given (I, P) score matrix (GLoRIA local /
    # combined, generated prompts) has none, so its nearest counterpart, the mean of the scores, is used
    pool = "mean" if pool == "ensemble" else pool
    s = np.stack([pool_scores(sim_ip[:, prompt_class == c], pool) for c in range(n_classes)], 1)  # (N, C)
    lab = y >= 0
    m = classification_metrics(y[lab], s[lab], n_classes=n_classes)
    if with_ci:
        m["ci"] = class_cis(y[lab], s[lab], n_boot, seed)
    m["pool"] = pool
    return m


# ------------------------------------------------------------------------------------------ localise_run steps
@dataclass
class _Split:
    """One split of a GLoRIA run: the model, the dataset and its per-study arrays."""

    run: Path
    split: str
    manifest: Path
    cache: Path
    model: Any
    ds: Any
    ids: np.ndarray  # (N,) study ids
    y: np.ndarray  # (N,) class index, -1 = unlabelled
    reports: list[str]
    texts: list[str]  # the report section the recipe was trained on (e.g. the impression)


def _load_split(run: Path, split: str, manifest: str | None, cache: str | None, checkpoint: str) -> _Split:
    """Load the GLoRIA model and the split's dataset."""
    from medalign.data.datasets import CohortDataset

    model = _load_gloria(run, checkpoint)
    rec = model.recipe
    manifest_p, cache_p = _resolve(model, manifest, cache)
    ds = CohortDataset(manifest_p, cache_p, split=split)
    if len(ds) == 0:
        raise MedAlignError(f"{manifest_p}: split '{split}' has no studies")
    reports = list(ds.texts)
    # what the recipe was trained on (text_section, e.g. the impression): retrieval and word maps
    texts = rec.report_texts(reports) if hasattr(rec, "report_texts") else reports
    return _Split(run, split, manifest_p, cache_p, model, ds, np.asarray(ds.study_ids), np.asarray(ds.labels),
                  reports, texts)


def _embed(sp: _Split, n_prompts: int, seed: int, prompt_set: str | None = None) -> dict:
    """GLoRIA similarities of every study (small splits: kept in memory) to the reports and to the prompts.

    Returns {"sims": {kind: (I, T)}, "psims": {kind: (I, P)}, "prompts", "p_texts", "p_class" (P,),
    "ysims": {kind: (I, Y)}, "y_texts", "y_class" (Y,)} with kind in global / local / combined;
    p = the generated prompts, y = the presence prompts of ``prompt_set`` (prompts.yaml by default).
    """
    model, rec = sp.model, sp.model.recipe
    img_parts, loc_parts, rm_parts = [], [], []
    with torch.no_grad():
        for b in _batches(sp.ds):
            f = rec.image_features(b["image"].to(model.device), b["sequence_mask"].to(model.device))
            img_parts.append(f["image_embed"].cpu()), loc_parts.append(f["image_local"].cpu())
            if f.get("region_mask") is not None:  # attention restricted to head sub-regions
                rm_parts.append(f["region_mask"].cpu())
        rec.cpu()  # the text side and the pairwise scores run on the CPU copies of the image features
        im = {"image_embed": torch.cat(img_parts), "image_local": torch.cat(loc_parts),
              "region_mask": torch.cat(rm_parts) if rm_parts else None}
        tx = rec.text_word_features(sp.texts)
        sims = {k: v.numpy().astype(np.float64) for k, v in rec.pair_similarity(im, tx).items()}  # (I, T)
        prompts = generate_prompts(CLASSES, n_per_class=n_prompts, seed=seed)
        p_texts = [t for c in CLASSES for t in prompts[c]["presence"]]
        p_class = np.asarray([i for i, c in enumerate(CLASSES) for _ in prompts[c]["presence"]])
        ptx = rec.text_word_features(p_texts)
        psims = {k: v.numpy().astype(np.float64) for k, v in rec.pair_similarity(im, ptx).items()}  # (I, P)
        yaml_prompts = load_prompts(prompt_set)
        y_texts = [t for c in CLASSES for t in yaml_prompts[c]["presence"]]
        y_class = np.asarray([i for i, c in enumerate(CLASSES) for _ in yaml_prompts[c]["presence"]])
        ysims = {k: v.numpy().astype(np.float64)
                 for k, v in rec.pair_similarity(im, rec.text_word_features(y_texts)).items()}  # (I, Y)
    rec.to(model.device)
    return {"sims": sims, "psims": psims, "prompts": prompts, "p_texts": p_texts, "p_class": p_class,
            "ysims": ysims, "y_texts": y_texts, "y_class": y_class}


def _as_evaluate(model: Any, sp: _Split, prompt_set: str | None, n_boot: int, seed: int,
                 pool: str) -> tuple[dict, np.ndarray]:
    """``medalign evaluate``'s retrieval and prompts.yaml zero-shot of ``model`` on this split
    (eval.run.split_metrics) -> ({text_to_image, image_to_text}, zero_shot), and the image
    embeddings (I, E) in the split's dataset order, for the generated-prompt zero-shot."""
    test, m = split_metrics(model, sp.manifest, sp.cache, sp.split, prompts=prompt_set, pool=pool,
                            n_boot=n_boot, seed=seed)
    row = {str(s): i for i, s in enumerate(test["study_id"])}
    order = np.asarray([row[str(s)] for s in sp.ids])  # embed_manifest and the dataset both follow the manifest
    ret = {d: m["retrieval"][d] for d in ("text_to_image", "image_to_text") if d in m.get("retrieval", {})}
    return {"retrieval": ret, "zero_shot": m.get("zero_shot")}, np.asarray(test["image_embed"])[order]


def _similarity_metrics(sp: _Split, emb: dict, clip: Any, clip_run: str | None, n_boot: int, seed: int,
                       pool: str, prompt_set: str | None = None) -> dict:
    """Retrieval and zero-shot of GLoRIA (global / local / combined) and, when given, of CLIP.

    ``zero_shot`` uses the generated prompts (this command's protocol); ``zero_shot_prompts_yaml``
    the prompts.yaml set. Global-embedding retrieval and prompts.yaml zero-shot are ``medalign
    evaluate``'s numbers (:func:`_as_evaluate`)."""
    p_class, y_class, n_cls = emb["p_class"], emb["y_class"], len(CLASSES)
    ev, _ = _as_evaluate(sp.model, sp, prompt_set, n_boot, seed, pool)
    g: dict = {"retrieval": {"global": ev["retrieval"]}, "zero_shot": {},
               "zero_shot_prompts_yaml": {"global": ev["zero_shot"]}}
    for k in ("local", "combined"):
        g["retrieval"][k] = _retrieval(emb["sims"][k].T, sp.ids, n_boot, seed)
        g["zero_shot_prompts_yaml"][k] = _zero_shot(emb["ysims"][k], y_class, sp.y, n_cls, n_boot, seed, pool,
                                                    with_ci=k != "local")
    for k in ("global", "local", "combined"):
        g["zero_shot"][k] = _zero_shot(emb["psims"][k], p_class, sp.y, n_cls, n_boot, seed, pool,
                                       with_ci=k != "local")
    out: dict = {"gloria": g}
    if clip is not None:
        cev, ci = _as_evaluate(clip, sp, prompt_set, n_boot, seed, pool)
        cp = clip.encode_text(emb["p_texts"])  # (P, E)
        out["clip"] = {"run": str(clip_run), "retrieval": cev["retrieval"],
                       "zero_shot": _zero_shot(cosine_similarity(ci, cp), p_class, sp.y, n_cls, n_boot, seed, pool),
                       "zero_shot_prompts_yaml": cev["zero_shot"]}
    return out


def _localise(sp: _Split, clip: Any, split: str, n_gallery: int, n_boot: int, seed: int,
              prior: Any = None) -> tuple[dict, list[str]]:
    """Lesion-word attention (with ``prior``, a :class:`~medalign.eval.normative.NormativePrior`, also the
    attention x normative prior) and CLIP Grad-CAM vs the masks of lesion-class studies, with the uniform
    and uniform-in-head baselines; writes the gallery PNGs (of the grounded map when there is a prior).
    Returns (localisation results, gallery paths relative to the run)."""
    per: dict[str, list] = {"gloria": [], "gloria_prior": [], "uniform": [], "uniform_head": [], "clip_gradcam": []}
    rows_meta = []
    gallery_dir = sp.run / "report_extras" / f"gloria_gallery_{split}"
    images_rel: list[str] = []
    for i in range(len(sp.ds)):
        label = CLASSES[sp.y[i]] if sp.y[i] >= 0 else ""
        if label not in LESION_CLASSES:
            continue
        s = sp.ds[i]
        m = s.get("mask")
        if m is None or not bool(m.any()):
            continue
        m = m.numpy()
        att, used_text, used_word = _word_grid(sp.model.recipe, s["image"], s["sequence_mask"], sp.texts[i], label)
        heat = upsample_map(att, m.shape)
        g = localisation_scores(heat, m)
        per["gloria"].append(g)
        per["uniform"].append(uniform_scores(m))
        per["uniform_head"].append(head_uniform_scores(s["image"].numpy(), m))
        row = {"study_id": sp.ids[i], "label": label, "word": used_word, "from_report": used_text == sp.texts[i],
               "lesion_fraction": float((m > 0).mean()), "gloria": g}
        if prior is not None:
            heat = upsample_map(grounded_map(att, prior.anomaly(s["image"].numpy(), s["sequence_mask"].numpy())), m.shape)
            g = row["gloria_prior"] = localisation_scores(heat, m)
            per["gloria_prior"].append(g)
        if clip is not None:
            cam = upsample_map(gradcam_map(clip.recipe, s["image"].to(clip.device), s["sequence_mask"].to(clip.device),
                                           used_text), m.shape)
            c = localisation_scores(cam, m)
            per["clip_gradcam"].append(c)
            row["clip_gradcam"] = c
        rows_meta.append(row)
        if len(images_rel) < n_gallery:
            p = gallery_dir / f"{sp.ids[i]}_{used_word}.png"
            attention_overlay_png(s["image"].numpy(), heat, m, p, sequences=sp.model.sequences, n_slices=1,
                                  title=f"{sp.ids[i]} ({label}): attention of '{used_word}'"
                                        f"{' x normative prior' if prior is not None else ''} (cyan: lesion mask), "
                                        f"pointing {'hit' if g['pointing'] else 'miss'}",
                                  orientation=_canonical(sp.ds))
            images_rel.append(str(p.relative_to(sp.run)))
    loc = {"per_study": rows_meta, "n": len(rows_meta),
           **{k: summarise(v, n_boot=n_boot, seed=seed) for k, v in per.items() if v},
           "by_class": breakdown(rows_meta, lambda r: r["label"], n_boot=n_boot, seed=seed),
           "by_size": breakdown(rows_meta, size_bucket, n_boot=n_boot, seed=seed)}
    return loc, images_rel


def _ci(d: dict | None, *path: str) -> str:
    """format_ci of d[path[0]][path[1]]...; '—' where any step is missing."""
    for p in path:
        d = (d or {}).get(p) if isinstance(d, dict) else None
    return format_ci(d) if d else "—"


def _table(res: dict, n: int, split: str, checkpoint: str, pool: str) -> dict:
    """The GLoRIA vs CLIP comparison table (caption, columns, rows) with chance / uniform baselines.

    Columns say which similarity they use; rows say which prompt set (the protocol) they use, so a
    figure that differs from ``medalign evaluate``'s page is never shown without its reason."""
    G, C, L = res["gloria"], res.get("clip"), res["localisation"]
    cols = ["metric", "GLoRIA global+local similarity (this command only)",
            "GLoRIA global embedding (= `medalign evaluate`)",
            "CLIP global embedding (= `medalign evaluate`; Grad-CAM maps)" if C else "CLIP (not given)",
            "uniform / chance", "uniform in head"]
    n_gen, n_yaml = res.get("n_prompts_per_class"), res.get("n_prompts_yaml")
    rows = []
    for d in ("text_to_image", "image_to_text"):
        for k in ("R@1", "R@5", "MRR"):
            chance = f"{min(int(k[2:]), n) / n:.3f}" if k.startswith("R@") else f"{np.mean(1.0 / np.arange(1, n + 1)):.3f}"
            rows.append([f"{d.replace('_', ' ')} {k}", _ci(G, "retrieval", "combined", d, "ci", k),
                         _ci(G, "retrieval", "global", d, "ci", k), _ci(C, "retrieval", d, "ci", k) if C else "—",
                         chance, "—"])
    protocols = (("zero_shot_prompts_yaml", f"prompts.yaml, {n_yaml} presence prompts, {pool}-pooled; "
                                            "= `medalign evaluate`"),
                 ("zero_shot", f"generated prompts, {n_gen}/class, {pool}-pooled; this command only"))
    for key, proto in protocols:
        for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro"):
            chance = "0.500" if k == "auroc_macro" else (f"{1 / len(CLASSES):.3f}" if k != "accuracy" else "—")
            rows.append([f"zero-shot {k} ({proto})", _ci(G, key, "combined", "ci", k), _ci(G, key, "global", "ci", k),
                         _ci(C, key, "ci", k) if C else "—", chance, "—"])
    for k, name in (("pointing", "pointing game"), ("mass", "attention mass in lesion"), ("auroc", "voxel AUROC")):
        rows.append([f"{name} (n={L['n']}; word attention)", _ci(L, "gloria", k), "—",
                     _ci(L, "clip_gradcam", k) if C else "—", _ci(L, "uniform", k), _ci(L, "uniform_head", k)])
        if L.get("gloria_prior"):
            rows.append([f"{name} (word attention x normative prior)", _ci(L, "gloria_prior", k), "—", "—",
                         _ci(L, "uniform", k), _ci(L, "uniform_head", k)])
    return {"caption": f"GLoRIA vs CLIP on split '{split}' (n={n}, checkpoint '{checkpoint}'); 95% bootstrap CIs "
                       "over studies. Protocol: the global-embedding columns (GLoRIA global, CLIP) are computed by "
                       "`medalign evaluate`'s own code and equal its page for the same run, split and prompt set; "
                       "'global+local' is GLoRIA's combined similarity, which `medalign evaluate` does not use. "
                       "Zero-shot rows name their prompt set: prompts.yaml (as `medalign evaluate`) or generated "
                       "prompts (severity x subtype x location, this command only), whose figures differ by design",
            "columns": cols, "rows": rows}


def _markdown(res: dict, run: Path, n: int, split: str, pool: str) -> str:
    """The report section's text: what was measured, and the pointing game against the uniform baseline."""
    L = res["localisation"]
    lg, lu = (L.get("gloria") or {}).get("pointing", {}), (L.get("uniform") or {}).get("pointing", {})
    lh = (L.get("uniform_head") or {}).get("pointing", {})
    md = [
        f"GLoRIA run `{run}` on split **{split}** ({n} studies; {L['n']} lesion studies with masks).",
        "Retrieval/zero-shot similarity: *global+local* = mean of the z-scored global cosine and local "
        "(word-region) score; the *global embedding* columns are `medalign evaluate`'s computation (same "
        "numbers as its page). Zero-shot pools each class's prompts by the "
        f"**{pool}**, with two prompt sets, named on each row: the prompts.yaml set of `medalign evaluate` and "
        "generated severity x subtype x location prompts (this command only). Localisation: attention of the lesion word (from the report, else the class name) "
        "upsampled to the voxel grid; the uniform baseline is closed form (pointing = mass = lesion fraction, "
        "AUROC = 0.5); *uniform in head* spreads it evenly over the head only (a map that merely finds the "
        "head scores this). CLIP maps are Grad-CAM on the same encoder level.",
    ]
    if lg.get("value") is not None and lu.get("value") is not None:
        verdict = "above" if (lg.get("lo") or 0) > (lu.get("hi") or 1) else "not clearly above"
        md.append(f"Pointing game {format_ci(lg)} vs uniform {format_ci(lu)} (uniform in head {format_ci(lh)}): "
                  f"{verdict} the uniform baseline.")
    return "\n\n".join(md)


def _captions(res: dict, images_rel: list[str]) -> dict[str, str]:
    """What each gallery image shows (study, class, word, pointing result), keyed by its path."""
    rows = {f"{r['study_id']}_{r['word']}.png": r for r in res["localisation"].get("per_study", [])}
    out = {}
    for img in images_rel:
        r = rows.get(Path(img).name)
        if r:
            hit = "inside" if r["gloria"].get("pointing") else "outside"
            out[img] = (f"study {r['study_id']} ({r['label']}): GLoRIA attention of the word '{r['word']}' over the "
                        f"mid-lesion axial slice of each sequence (radiological view, R/L marked), lesion mask "
                        f"outlined in cyan; the attention maximum falls {hit} the lesion")
    return out


def _write(res: dict, run: Path, split: str, images_rel: list[str]) -> tuple[Path, Path]:
    """RUN/eval/localisation_<split>.json and the report section; returns both paths."""
    json_p = run / "eval" / f"localisation_{split}.json"
    atomic_write_json(json_p, res)
    extra_p = run / "report_extras" / ("gloria.json" if split == "test" else f"gloria_{split}.json")
    atomic_write_json(extra_p, {"title": f"GLoRIA: retrieval, zero-shot and localisation ({split})",
                                "markdown": res["markdown"], "images": images_rel, "tables": [res["table"]],
                                "captions": _captions(res, images_rel)})
    return json_p, extra_p


def localise_run(run: str | Path, *, split: str = "test", clip_run: str | None = None, manifest: str | None = None,
                 cache: str | None = None, n_prompts: int = 20, n_gallery: int = 6, n_boot: int = 1000, seed: int = 0,
                 checkpoint: str = "best", pool: str = DEFAULT_POOL, prompts: str | None = None, prior: bool = True) -> dict:
    """Everything ``medalign localise`` computes; returns the results dict (+ table rows, output paths).

    ``prompts``: the prompts YAML of the ``medalign evaluate`` protocol (default its prompts.yaml);
    ``n_prompts`` generated prompts per class make the second, localise-only zero-shot protocol.
    ``prior``: also score the word attention x the run's normative prior (:mod:`medalign.eval.normative`,
    fitted once on the run's own training studies labelled normal)."""
    from medalign.eval.zeroshot import PROMPTS_FILE

    run = Path(run)
    sp = _load_split(run, split, manifest, cache, checkpoint)
    emb = _embed(sp, n_prompts, seed, prompts)
    res: dict = {"split": split, "checkpoint": checkpoint, "n": int(len(sp.ids)), "pool": pool,
                 "n_prompts_per_class": n_prompts, "prompts": emb["prompts"],
                 "prompt_set": str(prompts or PROMPTS_FILE), "n_prompts_yaml": len(emb["y_texts"])}
    clip = api.load(clip_run, checkpoint=checkpoint) if clip_run else None
    res.update(_similarity_metrics(sp, emb, clip, clip_run, n_boot, seed, pool, prompts))
    norm = None
    if prior:
        run_manifest, run_cache = _resolve(sp.model, None, None)
        try:
            norm = run_prior(run, run_manifest, run_cache)
            res["normative_prior"] = {"normal_studies": norm.n, "grid": list(norm.grid)}
        except MedAlignError as e:  # e.g. too few normal training studies: the attention alone is still scored
            res["normative_prior"] = {"skipped": str(e)}
    res["localisation"], images_rel = _localise(sp, clip, split, n_gallery, n_boot, seed, prior=norm)
    res["table"] = _table(res, len(sp.ids), split, checkpoint, pool)
    res["markdown"] = _markdown(res, run, len(sp.ids), split, pool)
    json_p, extra_p = _write(res, run, split, images_rel)
    table = res["table"]
    return {**res, "table_rows": [table["columns"]] + table["rows"], "json": str(json_p), "extra": str(extra_p)}
