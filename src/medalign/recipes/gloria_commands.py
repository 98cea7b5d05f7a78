"""CLI for the GLoRIA recipe: ``medalign attend`` (word attention overlay) and ``medalign localise``.

``localise`` evaluates a GLoRIA run on one split: retrieval (global / local / combined
similarity), zero-shot with generated severity x subtype x location prompts (mean-pooled per
class), and localisation of the lesion word's attention against the lesion masks, with
bootstrap CIs; ``--clip RUN`` adds a CLIP run (global retrieval, zero-shot with the same
prompts, Grad-CAM maps) to one comparison table. Outputs: RUN/eval/localisation_<split>.json and the
report section RUN/report_extras/gloria.json (gloria_<split>.json for other splits) + gallery PNGs.
"""
from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer, synth: typer.Typer | None = None) -> None:
    @app.command("attend")
    def attend(
        run: str = typer.Argument(..., help="GLoRIA run directory"),
        study: str = typer.Option(..., "--study", help="study id in the run's cache"),
        word: str = typer.Option("infarct", "--word", help="word whose attention is shown"),
        text: Optional[str] = typer.Option(None, "--text", help="text containing the word (default: the study's report)"),
        out: Optional[str] = typer.Option(None, "--out", help="PNG path (default RUN/attention/<study>_<word>.png)"),
        slices: int = typer.Option(3, help="axial slices around the lesion centre"),
        manifest: Optional[str] = typer.Option(None, help="manifest (default: the run's data.manifest)"),
        cache: Optional[str] = typer.Option(None, help="cache dir (default: the run's data.cache_dir)"),
        checkpoint: str = typer.Option("best", help="best or last"),
    ) -> None:
        """Overlay the upsampled attention of WORD on the mid-lesion slices of each sequence."""
        res = attend_study(run, study, word, text=text, out=out, n_slices=slices, manifest=manifest, cache=cache,
                           checkpoint=checkpoint)
        typer.echo(f"{res['png']}  (word '{res['word']}' in: {res['text'][:80]!r})")
        if res.get("scores"):
            s = res["scores"]
            typer.echo(f"pointing {s['pointing']:.2f}  mass {s['mass']:.3f}  auroc {s['auroc']:.3f}  "
                       f"(uniform mass {res['uniform']['mass']:.3f})")

    @app.command("localise")
    def localise(
        run: str = typer.Argument(..., help="GLoRIA run directory"),
        split: str = typer.Option("test", help="split to evaluate"),
        clip: Optional[str] = typer.Option(None, "--clip", help="a CLIP run to compare with (Grad-CAM maps)"),
        manifest: Optional[str] = typer.Option(None, help="manifest (default: the run's data.manifest)"),
        cache: Optional[str] = typer.Option(None, help="cache dir (default: the run's data.cache_dir)"),
        n_prompts: int = typer.Option(20, help="generated prompts per class for zero-shot"),
        gallery: int = typer.Option(6, help="studies in the attention gallery"),
        n_boot: int = typer.Option(1000, help="bootstrap resamples for the 95% CIs"),
        seed: int = typer.Option(0, help="seed for prompts and bootstrap"),
        checkpoint: str = typer.Option("best", help="best or last"),
    ) -> None:
        """Localisation (pointing game, mass, voxel AUROC) + retrieval + zero-shot, GLoRIA vs CLIP."""
        res = localise_run(run, split=split, clip_run=clip, manifest=manifest, cache=cache, n_prompts=n_prompts,
                           n_gallery=gallery, n_boot=n_boot, seed=seed, checkpoint=checkpoint)
        for row in res["table_rows"]:
            typer.echo(f"{row[0]:34s} " + "  ".join(f"{str(c):26s}" for c in row[1:]))
        typer.echo(f"wrote {res['json']} and {res['extra']}")


# ------------------------------------------------------------------------------------------ helpers
def _load_gloria(run, checkpoint):
    from medalign import api
    from medalign.errors import MedAlignError

    model = api.load(run, checkpoint=checkpoint)
    if not hasattr(model.recipe, "word_attention"):
        name = (model.config.get("recipe") or {}).get("name")
        raise MedAlignError(f"run {run} uses recipe '{name}', which has no word attention (train with recipe: gloria)")
    return model


def _resolve(model, manifest, cache):
    from medalign.eval.run import resolve_data

    return resolve_data(model.run_dir, model.config, manifest, cache)


def _word_map(recipe, image, seq_mask, text: str, word: str, shape) -> tuple[object, str, str]:
    """Upsampled (D, H, W) attention of ``word`` (or a synonym of that class) in ``text``.

    Falls back to the text "<word>" when the word is not in ``text``. Returns (map, text, word used).
    """
    from medalign.eval.gloria_prompts import CLASS_WORDS, find_class_word
    from medalign.eval.localisation import upsample_map

    def locate(t: str):
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
    return upsample_map(res["attention"][idx], shape), text, res["words"][idx]


def attend_study(run, study: str, word: str, *, text: str | None = None, out: str | None = None, n_slices: int = 3,
                 manifest: str | None = None, cache: str | None = None, checkpoint: str = "best") -> dict:
    """Write the attention overlay PNG of ``word`` for one study; returns paths and (with a mask) scores."""
    from pathlib import Path

    import numpy as np
    import torch

    from medalign.data.cache import CohortCache
    from medalign.errors import CohortError
    from medalign.eval.localisation import attention_overlay_png, localisation_scores, uniform_scores

    model = _load_gloria(run, checkpoint)
    manifest_p, cache_p = _resolve(model, manifest, cache)
    cc = CohortCache(cache_p)
    if study not in cc:
        raise CohortError(f"not in the cohort cache {cache_p}", study_id=study)
    arr = cc.load(study)
    image = torch.from_numpy(np.array(arr["image"], dtype=np.float32))  # (C, D, H, W)
    seq = torch.from_numpy(np.asarray(arr["sequence_mask"], dtype=bool))
    mask = None if arr["mask"] is None else np.array(arr["mask"])
    if text is None:
        from medalign.data.manifest import load_manifest

        df = load_manifest(manifest_p, check_files=False)
        row = df[df["study_id"].astype(str) == study]
        text = str(row["report"].iloc[0]) if len(row) and "report" in df.columns and isinstance(row["report"].iloc[0], str) else ""
        text = model.recipe.report_texts([text])[0] if text else text  # the section it was trained on
    heat, used_text, used_word = _word_map(model.recipe, image, seq, text, word, image.shape[1:])
    out_p = Path(out) if out else Path(run) / "attention" / f"{study}_{word}.png"
    attention_overlay_png(image.numpy(), heat, mask, out_p, sequences=model.sequences, n_slices=n_slices,
                          title=f"{study}: attention of '{used_word}'")
    res = {"png": str(out_p), "text": used_text, "word": used_word}
    if mask is not None and mask.any():
        res["scores"] = localisation_scores(heat, mask)
        res["uniform"] = uniform_scores(mask)
    return res


def _batches(ds, bs: int = 4):
    from medalign.data.datasets import collate

    for i in range(0, len(ds), bs):
        yield collate([ds[j] for j in range(i, min(len(ds), i + bs))])


def _retrieval(sim_ti, ids, n_boot, seed) -> dict:
    """Text -> image and image -> text summaries with CIs from a (T, I) similarity."""
    import numpy as np

    from medalign.eval.bootstrap import bootstrap_ci
    from medalign.eval.retrieval import match_ranks, rank_summary

    out = {}
    for name, s in (("text_to_image", sim_ti), ("image_to_text", sim_ti.T)):
        r, _ = match_ranks(s, ids, ids)
        d = rank_summary(r, pool_size=s.shape[1])
        d["ci"] = {f"R@{k}": bootstrap_ci(lambda x, k=k: float(np.mean(x <= k)), r, n=n_boot, seed=seed) for k in (1, 5)}
        d["ci"]["MRR"] = bootstrap_ci(lambda x: float(np.mean(1.0 / x)), r, n=n_boot, seed=seed)
        out[name] = d
    return out


def _zero_shot(sim_ip, prompt_class, y, n_classes, n_boot, seed, pool="mean", with_ci=True) -> dict:
    """Class scores = mean (or max) over a class's prompts of the image/prompt similarity."""
    import numpy as np

    from medalign.eval.evaluate import _cls_cis
    from medalign.eval.zeroshot import classification_metrics

    s = np.stack([(sim_ip[:, prompt_class == c].mean(1) if pool == "mean" else sim_ip[:, prompt_class == c].max(1))
                  for c in range(n_classes)], 1)  # (N, C)
    lab = y >= 0
    m = classification_metrics(y[lab], s[lab], n_classes=n_classes)
    if with_ci:
        m["ci"] = _cls_cis(y[lab], s[lab], n_boot, seed)
    m["pool"] = pool
    return m


def localise_run(run, *, split: str = "test", clip_run: str | None = None, manifest: str | None = None,
                 cache: str | None = None, n_prompts: int = 20, n_gallery: int = 6, n_boot: int = 1000, seed: int = 0,
                 checkpoint: str = "best", pool: str = "mean") -> dict:
    """Everything ``medalign localise`` computes; returns the results dict (+ table rows, output paths)."""
    from pathlib import Path

    import numpy as np
    import torch

    from medalign import api
    from medalign.data.datasets import CohortDataset
    from medalign.data.schema import CLASSES
    from medalign.errors import MedAlignError
    from medalign.eval.bootstrap import format_ci
    from medalign.eval.gloria_prompts import LESION_CLASSES, generate_prompts
    from medalign.eval.localisation import (attention_overlay_png, gradcam_map, head_uniform_scores,
                                            localisation_scores, summarise, uniform_scores, upsample_map)
    from medalign.eval.retrieval import cosine_similarity
    from medalign.utils import atomic_write_json

    run = Path(run)
    model = _load_gloria(run, checkpoint)
    rec = model.recipe
    manifest_p, cache_p = _resolve(model, manifest, cache)
    ds = CohortDataset(manifest_p, cache_p, split=split)
    if len(ds) == 0:
        raise MedAlignError(f"{manifest_p}: split '{split}' has no studies")
    ids = np.asarray(ds.study_ids)
    y = np.asarray(ds.labels)
    reports = list(ds.texts)
    # what the recipe was trained on (text_section, e.g. the impression): retrieval and word maps
    texts = rec.report_texts(reports) if hasattr(rec, "report_texts") else reports

    # ---- GLoRIA features of every study (small splits: kept in memory)
    img_parts, loc_parts, rm_parts = [], [], []
    with torch.no_grad():
        for b in _batches(ds):
            f = rec.image_features(b["image"].to(model.device), b["sequence_mask"].to(model.device))
            img_parts.append(f["image_embed"].cpu()), loc_parts.append(f["image_local"].cpu())
            if f.get("region_mask") is not None:  # attention restricted to head sub-regions
                rm_parts.append(f["region_mask"].cpu())
        rec.cpu()
        im = {"image_embed": torch.cat(img_parts), "image_local": torch.cat(loc_parts),
              "region_mask": torch.cat(rm_parts) if rm_parts else None}
        tx = rec.text_word_features(texts)
        sims = {k: v.numpy().astype(np.float64) for k, v in rec.pair_similarity(im, tx).items()}  # (I, T)
        prompts = generate_prompts(CLASSES, n_per_class=n_prompts, seed=seed)
        p_texts = [t for c in CLASSES for t in prompts[c]["presence"]]
        p_class = np.asarray([i for i, c in enumerate(CLASSES) for _ in prompts[c]["presence"]])
        ptx = rec.text_word_features(p_texts)
        psims = {k: v.numpy().astype(np.float64) for k, v in rec.pair_similarity(im, ptx).items()}  # (I, P)
    rec.to(model.device)
    res: dict = {"split": split, "checkpoint": checkpoint, "n": int(len(ids)), "pool": pool, "n_prompts_per_class": n_prompts,
                 "prompts": prompts, "gloria": {"retrieval": {}, "zero_shot": {}}}
    for k in ("global", "local", "combined"):
        res["gloria"]["retrieval"][k] = _retrieval(sims[k].T, ids, n_boot, seed)
        res["gloria"]["zero_shot"][k] = _zero_shot(psims[k], p_class, y, len(CLASSES), n_boot, seed, pool,
                                                   with_ci=k != "local")

    # ---- CLIP comparison run
    clip = api.load(clip_run, checkpoint=checkpoint) if clip_run else None
    if clip is not None:
        with torch.no_grad():
            ci = np.concatenate([clip.recipe.encode_image(b["image"].to(clip.device), b["sequence_mask"].to(clip.device))
                                 .float().cpu().numpy() for b in _batches(ds)])
        ct = clip.encode_report(reports)
        cp = clip.encode_text(p_texts)
        res["clip"] = {"run": str(clip_run),
                       "retrieval": _retrieval(cosine_similarity(ct, ci), ids, n_boot, seed),
                       "zero_shot": _zero_shot(cosine_similarity(ci, cp), p_class, y, len(CLASSES), n_boot, seed, pool)}

    # ---- localisation on lesion classes with a mask
    per: dict[str, list] = {"gloria": [], "uniform": [], "uniform_head": [], "clip_gradcam": []}
    rows_meta = []
    gallery_dir = run / "report_extras" / f"gloria_gallery_{split}"
    images_rel = []
    for i in range(len(ds)):
        label = CLASSES[y[i]] if y[i] >= 0 else ""
        if label not in LESION_CLASSES:
            continue
        s = ds[i]
        m = s.get("mask")
        if m is None or not bool(m.any()):
            continue
        m = m.numpy()
        heat, used_text, used_word = _word_map(rec, s["image"], s["sequence_mask"], texts[i], label, m.shape)
        g = localisation_scores(heat, m)
        per["gloria"].append(g)
        per["uniform"].append(uniform_scores(m))
        per["uniform_head"].append(head_uniform_scores(s["image"].numpy(), m))
        row = {"study_id": ids[i], "label": label, "word": used_word, "from_report": used_text == texts[i],
               "lesion_fraction": float((m > 0).mean()), "gloria": g}
        if clip is not None:
            cam = upsample_map(gradcam_map(clip.recipe, s["image"].to(clip.device), s["sequence_mask"].to(clip.device),
                                           used_text), m.shape)
            c = localisation_scores(cam, m)
            per["clip_gradcam"].append(c)
            row["clip_gradcam"] = c
        rows_meta.append(row)
        if len(images_rel) < n_gallery:
            p = gallery_dir / f"{ids[i]}_{used_word}.png"
            attention_overlay_png(s["image"].numpy(), heat, m, p, sequences=model.sequences, n_slices=1,
                                  title=f"{ids[i]} ({label}): '{used_word}' pointing={g['pointing']:.0f}")
            images_rel.append(str(p.relative_to(run)))
    res["localisation"] = {"per_study": rows_meta, "n": len(rows_meta),
                           **{k: summarise(v, n_boot=n_boot, seed=seed) for k, v in per.items() if v}}

    # ---- comparison table
    def ci(d, *path):
        for p in path:
            d = (d or {}).get(p) if isinstance(d, dict) else None
        return format_ci(d) if d else "—"

    G, C, L = res["gloria"], res.get("clip"), res["localisation"]
    cols = ["metric", "GLoRIA (global+local)", "GLoRIA global only", "CLIP" + (" (Grad-CAM)" if C else " (not given)"),
            "uniform / chance", "uniform in head"]
    n = len(ids)
    rows = []
    for d in ("text_to_image", "image_to_text"):
        for k in ("R@1", "R@5", "MRR"):
            chance = f"{min(int(k[2:]), n) / n:.3f}" if k.startswith("R@") else f"{np.mean(1.0 / np.arange(1, n + 1)):.3f}"
            rows.append([f"{d.replace('_', ' ')} {k}", ci(G, "retrieval", "combined", d, "ci", k),
                         ci(G, "retrieval", "global", d, "ci", k), ci(C, "retrieval", d, "ci", k) if C else "—", chance,
                         "—"])
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro"):
        rows.append([f"zero-shot {k} ({pool} of prompts)", ci(G, "zero_shot", "combined", "ci", k),
                     ci(G, "zero_shot", "global", "ci", k), ci(C, "zero_shot", "ci", k) if C else "—",
                     "0.500" if k == "auroc_macro" else (f"{1 / len(CLASSES):.3f}" if k != "accuracy" else "—"), "—"])
    for k, name in (("pointing", "pointing game"), ("mass", "attention mass in lesion"), ("auroc", "voxel AUROC")):
        rows.append([f"{name} (n={L['n']})", ci(L, "gloria", k), "—", ci(L, "clip_gradcam", k) if C else "—",
                     ci(L, "uniform", k), ci(L, "uniform_head", k)])
    res["table"] = {"caption": f"GLoRIA vs CLIP on split '{split}' (n={n}, checkpoint '{checkpoint}'); "
                               "95% bootstrap CIs over studies",
                    "columns": cols, "rows": rows}
    lg, lu = (L.get("gloria") or {}).get("pointing", {}), (L.get("uniform") or {}).get("pointing", {})
    lh = (L.get("uniform_head") or {}).get("pointing", {})
    md = [
        f"GLoRIA run `{run}` on split **{split}** ({n} studies; {L['n']} lesion studies with masks).",
        "Retrieval/zero-shot similarity: *global+local* = mean of the z-scored global cosine and local "
        "(word-region) score; zero-shot pools each class's generated severity x subtype x location prompts by "
        f"the **{pool}**. Localisation: attention of the lesion word (from the report, else the class name) "
        "upsampled to the voxel grid; the uniform baseline is closed form (pointing = mass = lesion fraction, "
        "AUROC = 0.5); *uniform in head* spreads it evenly over the head only (a map that merely finds the "
        "head scores this). CLIP maps are Grad-CAM on the same encoder level.",
    ]
    if lg.get("value") is not None and lu.get("value") is not None:
        verdict = "above" if (lg.get("lo") or 0) > (lu.get("hi") or 1) else "not clearly above"
        md.append(f"Pointing game {format_ci(lg)} vs uniform {format_ci(lu)} (uniform in head {format_ci(lh)}): "
                  f"{verdict} the uniform baseline.")
    res["markdown"] = "\n\n".join(md)
    json_p = run / "eval" / f"localisation_{split}.json"
    atomic_write_json(json_p, res)
    extra_p = run / "report_extras" / ("gloria.json" if split == "test" else f"gloria_{split}.json")
    atomic_write_json(extra_p, {"title": f"GLoRIA: retrieval, zero-shot and localisation ({split})", "markdown": res["markdown"],
                                "images": images_rel, "tables": [res["table"]]})
    return {**res, "table_rows": [cols] + rows, "json": str(json_p), "extra": str(extra_p)}
