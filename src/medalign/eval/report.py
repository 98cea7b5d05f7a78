"""The experiment report: one self-contained HTML page (images base64-inlined) + Markdown.

``build_report([run, ...], out)`` reads each run's ``eval/metrics.json`` (recomputing it from
saved embeddings when missing), its plots, and any ``report_extras/*.json`` written by recipes
(CONTRACTS.md), and renders the sections listed in SECTIONS. Given several runs it opens
with one comparison table (headline figures with 95% bootstrap CIs, baselines included).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

# md_to_html is re-exported: it was defined here and callers import it from this module
from medalign.eval.report_doc import CSS, Doc, esc, md_to_html  # noqa: F401
from medalign.utils import atomic_write_text

# Section headings, in page order (tests check every one is present).
SECTIONS: tuple[str, ...] = (
    "Summary",
    "Training curves",
    "Batch similarity matrix",
    "Rank vs. similarity by class",
    "Retrieval",
    "Top-5 reports for a query report",
    "Rank-1 matches per query",
    "Embedding map",
    "Zero-shot classification",
    "Probes and label efficiency",
    "Baselines",
)
COMPARISON = "Comparison across runs"


# ----------------------------------------------------------------------------- data access
def load_run_metrics(run_dir: str | Path, *, split: str = "test") -> dict:
    """RUN/eval/metrics.json, recomputed from saved embeddings when it or a plot is missing."""
    from medalign.eval.run import evaluate_saved

    run_dir = Path(run_dir)
    p = run_dir / "eval" / "metrics.json"
    if p.is_file():
        m = json.loads(p.read_text(encoding="utf-8"))
        plots_ok = all((run_dir / "eval" / v).is_file() for v in (m.get("plots") or {}).values())
        have_emb = (run_dir / "eval" / f"embeddings_{m.get('split', split)}.npz").is_file()
        if (plots_ok and m.get("plots")) or not have_emb:
            return m
    return evaluate_saved(run_dir, split=split)


def make_thumbnail_fn(cache_dir: str | None) -> Callable[[str], bytes | None]:
    """study_id -> PNG bytes of mid-axial slices from the run's cache; None when unavailable."""
    from medalign.eval.plots import mid_axial_png

    cache = None
    if cache_dir and Path(cache_dir).is_dir():
        try:
            from medalign.data.cache import CohortCache

            cache = CohortCache(cache_dir)
        except Exception:  # helper A's cache missing or unreadable: report without thumbnails
            cache = None
    memo: dict[str, bytes | None] = {}

    def fn(study_id: str) -> bytes | None:
        if cache is None:
            return None
        if study_id not in memo:
            try:
                memo[study_id] = mid_axial_png(np.asarray(cache.load(study_id)["image"]),
                                               orientation=cache.config.canonical,
                                               sequences=list(cache.config.sequences))
            except Exception:
                memo[study_id] = None
        return memo[study_id]

    return fn


def _reports_by_id(run_dir: Path, split: str) -> dict[str, str]:
    p = run_dir / "eval" / f"embeddings_{split}.npz"
    if not p.is_file():
        return {}
    with np.load(p, allow_pickle=False) as z:
        if "report" not in z.files:
            return {}
        return dict(zip(z["study_id"].astype(str), z["report"].astype(str)))


def read_extras(run_dir: Path) -> list[dict]:
    """report_extras/*.json of a run (CONTRACTS.md), sorted by file name; bad files reported, not fatal."""
    out = []
    d = run_dir / "report_extras"
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            x = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(x, dict):
                raise ValueError("top level is not an object")
            x.setdefault("title", p.stem)
            out.append(x)
        except (ValueError, OSError) as e:
            out.append({"title": p.stem, "markdown": f"(could not read {p}: {e})"})
    return out


# ----------------------------------------------------------------------------- sections
def _summary_rows(name: str, m: dict) -> list[list]:
    from medalign.eval.evaluate import headline_cis

    rows = [[name] + list(headline_cis(m).values())]
    for bname, b in (m.get("baselines") or {}).items():
        if isinstance(b, dict) and not b.get("skipped"):
            rows.append([f"{name} · baseline: {bname}"] + list(headline_cis(b).values()))
    return rows


def _comparison(doc: Doc, runs: list[tuple[str, dict]], unevaluated: Sequence[tuple[str, Path]] = ()) -> None:
    """Every run given gets a row: one that was not evaluated says so (and how), rather than vanish."""
    from medalign.eval.evaluate import HEADLINE

    doc.heading(2, COMPARISON, "comparison")
    cols = ["run"] + [n for _, n in HEADLINE]
    rows = [r for name, m in runs for r in _summary_rows(name, m)]
    rows += [[(f"{name}: not evaluated (run `medalign evaluate {rd}`); its own results are in its section"
               if (rd / "config.yaml").is_file() and (rd / "checkpoints").is_dir() else
               f"{name}: an experiment without image-text embeddings; its results are in its section")]
             + [None] * len(HEADLINE) for name, rd in unevaluated]
    zs = {str((m.get("zero_shot") or {}).get("n_prompts")) + " " + str((m.get("zero_shot") or {}).get("pool"))
          for _, m in runs if m.get("zero_shot")}
    doc.table(cols, rows, caption="value [95% bootstrap CI]; test studies resampled with replacement. Protocol: "
                                  "`medalign evaluate` for every run (global embeddings; zero-shot with the "
                                  "prompts.yaml set, " + (", ".join(sorted(zs)).replace(" ", " prompts, ")
                                                           + "-pooled" if zs else "no zero-shot") + ")")


# ----------------------------------------------------------------------------- per-run sections
@dataclass
class _Run:
    """What every per-run section reads: the metrics plus lookups derived from them once."""

    run_dir: Path
    name: str
    m: dict
    thumb: Callable[[str], bytes | None]
    plots: dict[str, Path] = field(init=False)
    ret: dict = field(init=False)
    classes: list[str] = field(init=False)

    def __post_init__(self) -> None:
        ev = self.run_dir / "eval"
        self.plots = {k: ev / v for k, v in (self.m.get("plots") or {}).items()}
        self.ret = self.m.get("retrieval", {})
        self.classes = self.m.get("classes", [])


def _summary_section(doc: Doc, run: _Run) -> None:
    from medalign.eval.evaluate import HEADLINE

    m = run.m
    doc.heading(3, "Summary")
    doc.para(f"run {run.run_dir} · recipe {m.get('recipe') or '?'} · model {m.get('model_id') or '?'} · split "
             f"{m.get('split', '?')} (n={m.get('n_test')}) · train n={m.get('n_train', '—')} · bootstrap "
             f"n={m.get('n_boot')} seed={m.get('seed')}")
    doc.table(["run"] + [n for _, n in HEADLINE], _summary_rows(run.name, m)[:1],
              caption="value [95% bootstrap CI]")


def _figure_sections(doc: Doc, run: _Run) -> None:
    """Training curves, batch similarity matrix, and rank vs. similarity (with its per-class table)."""
    doc.heading(3, "Training curves")
    doc.image(run.plots.get("training_curves"), f"{run.name}: loss per epoch (train, val) and learning rate")

    doc.heading(3, "Batch similarity matrix")
    doc.image(run.plots.get("similarity_matrix"),
              f"{run.name}: cosine similarity of test reports (rows) and images (columns); diagonal = true pairs")

    doc.heading(3, "Rank vs. similarity by class")
    doc.image(run.plots.get("rank_vs_similarity"),
              f"{run.name}: report → image rank of the right study vs its similarity, by class")
    bc = (run.ret.get("text_to_image") or {}).get("by_class") or {}
    if bc:
        doc.table(["class", "n", "median rank", "R@1"],
                  [[c, bc[c]["n"], bc[c]["median_rank"], bc[c]["R@1"]] for c in run.classes if c in bc])


def _retrieval_section(doc: Doc, run: _Run) -> None:
    ret = run.ret
    doc.heading(3, "Retrieval")
    ks = [k for k in ("R@1", "R@5", "R@10") if k in (ret.get("text_to_image") or {})]
    cols = ["direction", "pool", "queries"] + ks + ["MRR", "median rank", "mean rank", "P@1", "P@5", "chance R@1"]
    rows = []
    for d, label in (("text_to_image", "report → image"), ("image_to_text", "image → report"),
                     ("case_to_case", "case → case (same class, self excluded)")):
        r = ret.get(d)
        if not r:
            continue
        ci = r.get("ci") or {}
        rows.append([label, r.get("pool_size"), r.get("n_queries")] + [ci.get(k) or r.get(k) for k in ks]
                    + [ci.get("MRR") or r.get("MRR"), r.get("median_rank"), r.get("mean_rank"),
                       ci.get("P@1") or r.get("P@1"), ci.get("P@5") or r.get("P@5"),
                       r.get("chance_R@1", r.get("chance_P@1"))])
    doc.table(cols, rows, caption="matched by study id; ranks are pessimistic under ties; case→case R@K = a "
                                  "same-class study in the top K, chance column = expected P@1")
    t2i = ret.get("text_to_image")
    if t2i:
        hits = sum(1 for r in t2i["ranks"] if r == 1)
        doc.para(f"{hits} of {t2i['n_queries']} test reports ranked their own image first (pool "
                 f"{t2i['pool_size']}, chance {1 / t2i['pool_size']:.3f}). The brain-CLIP paper reports 0 of 27.")
    elif run.m.get("retrieval_note"):
        doc.para(run.m["retrieval_note"], muted=True)


def _top5_section(doc: Doc, run: _Run) -> None:
    """Table 2: for each example query report, its top-5 images with thumbnails and their reports."""
    reports = _reports_by_id(run.run_dir, run.m.get("split", "test"))
    doc.heading(3, "Top-5 reports for a query report")
    for q in (run.m.get("tables") or {}).get("top5", []):
        qt_h, qt_m = doc.thumb(run.thumb(q["query"]), q["query"])
        doc.para(f"Query {q['query']} ({q['query_class'] or 'no label'}): “{q['query_report']}”")
        rows, hrows, rc = [], [], []
        for i, h in enumerate(q["hits"], 1):
            rep = reports.get(h["study_id"], "")
            t_h, t_m = doc.thumb(run.thumb(h["study_id"]), h["study_id"])
            rows.append([i, h["study_id"], h["class"], h["similarity"], "✓" if h["correct"] else "", t_m, rep])
            hrows.append([str(i), esc(h["study_id"]), esc(h["class"]), f"{h['similarity']:.3f}",
                          "✓" if h["correct"] else "", t_h, f'<div class="report">{esc(rep)}</div>'])
            rc.append("ok" if h["correct"] else "")
        doc.table(["#", "study", "class", "similarity", "right study", "slices", "its report"], rows,
                  html_rows=hrows, row_classes=rc,
                  caption=f"the 5 images ranked first for the report of {q['query']} (slices: mid-axial, radiological "
                          "view, R/L marked; green = the right study)")
        if qt_m or "no image" not in qt_h:
            doc.html.append(f"<p>query study slices: {qt_h}</p>")
            doc.md.append(f"query study slices: {qt_m}\n")


def _rank1_section(doc: Doc, run: _Run) -> None:
    """Table 3: the top image for every test report (green = the right study)."""
    doc.heading(3, "Rank-1 matches per query")
    rows, hrows, rc = [], [], []
    for r in (run.m.get("tables") or {}).get("rank1", []):
        ok = r["query"] == r["match"]
        same = r["query_class"] == r["match_class"] and bool(r["query_class"])
        qh, qm = doc.thumb(run.thumb(r["query"]), r["query"])
        mh, mm = doc.thumb(run.thumb(r["match"]), r["match"])
        rows.append([r["query"], r["query_class"], qm, r["match"], r["match_class"], mm, r["similarity"],
                     r["rank_of_right_image"], "yes" if same else "no"])
        hrows.append([esc(r["query"]), esc(r["query_class"]), qh, esc(r["match"]), esc(r["match_class"]), mh,
                      f"{r['similarity']:.3f}", str(r["rank_of_right_image"]), "yes" if same else "no"])
        rc.append("ok" if ok else "")
    doc.table(["query report of", "class", "slices", "rank-1 image", "its class", "slices", "similarity",
               "rank of right image", "same class"], rows, html_rows=hrows, row_classes=rc,
              caption="the top image for every test report (green = the right study)")


def _embedding_map_section(doc: Doc, run: _Run) -> None:
    doc.heading(3, "Embedding map")
    doc.image(run.plots.get("embedding_map"), f"{run.name}: t-SNE of the test image embeddings, coloured by class")


def _zero_shot_section(doc: Doc, run: _Run) -> None:
    doc.heading(3, "Zero-shot classification")
    zs = run.m.get("zero_shot")
    if not zs:
        doc.para("no zero-shot result (no labels or no prompt bank)", muted=True)
        return
    one = zs.get("one_prompt_per_class") or {}
    ci, oci = zs.get("ci") or {}, one.get("ci") or {}
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro")
    doc.table(["prompts", *keys],
              [[f"{zs['n_prompts']} prompts, {zs['pool']}-pooled (absence: {zs['absence']})",
                *[ci.get(k) or zs.get(k) for k in keys]],
               ["one prompt per class", *[oci.get(k) or one.get(k) for k in keys]],
               _constant_row(zs)],
              caption="zero-shot with the prompts.yaml set (`medalign evaluate`); the last row is the best "
                      "constant guess, which every accuracy here must beat")
    doc.table(["class", "AUROC (one vs rest)"], [[c, (zs.get("auroc") or {}).get(c)] for c in run.classes])
    doc.image(run.plots.get("confusion_zero_shot"),
              f"{run.name}: zero-shot confusion matrix (rows = true class; prompts from prompts.yaml)")


def _constant_row(zs: dict) -> list:
    """Always answering the most frequent test class: its accuracy (an upper bound for any constant
    guess), balanced accuracy 1/classes, AUROC 0.5."""
    cm = np.asarray(zs.get("confusion") or [[0]])  # (C, C), rows = true class
    support = cm.sum(axis=1)
    present = int((support > 0).sum())
    if not present:
        return ["constant (most frequent class)", None, None, None, None]
    names = zs.get("classes") or []
    top = int(support.argmax())
    return [f"constant: always '{names[top] if top < len(names) else top}'", float(support.max() / support.sum()),
            1.0 / present, None, 0.5]


def _probe_section(doc: Doc, run: _Run) -> None:
    doc.heading(3, "Probes and label efficiency")
    pr = run.m.get("probe")
    if not pr:
        doc.para("no probe result (no labelled training embeddings)", muted=True)
        return
    rows = []
    for probe in pr["probes"]:
        for f in pr["fractions"]:
            r = pr[probe][str(float(f))]
            rows.append([probe, f"{f:.0%}", r["n_train"], r.get("accuracy_ci") or r["accuracy"],
                         r.get("balanced_accuracy_ci") or r["balanced_accuracy"], r["macro_f1"], r["auroc_macro"]])
    doc.table(["probe", "labels", "n train", "accuracy", "balanced acc", "macro-F1", "AUROC"], rows,
              caption="frozen image embeddings only (no report at inference); stratified label subsets, seeded")
    doc.image(run.plots.get("label_efficiency"), f"{run.name}: probe balanced accuracy vs fraction of training labels")
    doc.image(run.plots.get("confusion_probe"), f"{run.name}: logistic-regression probe confusion matrix (all labels)")


def _baseline_row(bname: str, b: dict) -> list:
    """One baselines-table row: R@1, zero-shot / probe / own-head figures (CI when there is one)."""
    if b.get("skipped"):
        return [bname, "skipped: " + str(b["skipped"])] + [None] * 5
    cls = b.get("classifier") or {}
    t2i = (b.get("retrieval") or {}).get("text_to_image") or {}
    zs = b.get("zero_shot") or {}
    pl = ((b.get("probe") or {}).get("logreg") or {}).get("1.0") or {}
    return [bname, b.get("description", ""),
            (t2i.get("ci") or {}).get("R@1") or t2i.get("R@1"),
            (zs.get("ci") or {}).get("balanced_accuracy") or zs.get("balanced_accuracy"),
            pl.get("balanced_accuracy_ci") or pl.get("balanced_accuracy"),
            (cls.get("ci") or {}).get("balanced_accuracy") or cls.get("balanced_accuracy"),
            (cls.get("ci") or {}).get("auroc_macro") or cls.get("auroc_macro")]


def _baselines_section(doc: Doc, run: _Run) -> None:
    m = run.m
    doc.heading(3, "Baselines")
    bl = m.get("baselines") or {}
    if not bl:
        doc.para("baselines not computed (run `medalign evaluate RUN --baselines`)", muted=True)
        return
    rows = [_baseline_row(bname, b) for bname, b in bl.items() if isinstance(b, dict)]
    zs = m.get("zero_shot") or {}
    pl = ((m.get("probe") or {}).get("logreg") or {}).get("1.0") or {}
    t2i = run.ret.get("text_to_image") or {}
    rows.insert(0, [f"{run.name} (this run)", m.get("recipe") or "", (t2i.get("ci") or {}).get("R@1"),
                    (zs.get("ci") or {}).get("balanced_accuracy"), pl.get("balanced_accuracy_ci"), None, None])
    doc.table(["model", "what", "report→image R@1", "zero-shot bal. acc", "logreg probe bal. acc (100%)",
               "own head / text-only bal. acc", "own head / text-only AUROC"], rows,
              caption="same evaluation code and test studies; own head = the supervised CNN's classifier; "
                      "text-only reads the reports (an upper bound: labels come from reports)")


# Page order of the per-run sections; together they render every heading in SECTIONS.
_RUN_SECTIONS: tuple[Callable[[Doc, _Run], None], ...] = (
    _summary_section, _figure_sections, _retrieval_section, _top5_section, _rank1_section,
    _embedding_map_section, _zero_shot_section, _probe_section, _baselines_section,
)


def _run_sections(doc: Doc, run_dir: Path, name: str, m: dict, *, thumb: Callable[[str], bytes | None]) -> None:
    """Every section of one run, then its report extras."""
    run = _Run(run_dir, name, m, thumb)
    doc.heading(2, f"Run: {name}", f"run-{name}")
    for section in _RUN_SECTIONS:
        section(doc, run)
    _realism_section(doc, run)
    _extras_sections(doc, run_dir)


# ---- realism of the training cohort (issue 20): `medalign inspect --compare REAL --out RUN/realism`
REALISM = "Realism: synthetic vs real cases"


def _realism_section(doc: Doc, run: _Run) -> None:
    """The realism figure + verdict table when RUN/realism/ or CACHE/realism/ (the run's cache)
    holds realism.json + realism.png; nothing otherwise (it needs real cases the user may lack)."""
    places = [run.run_dir / "realism"] + ([Path(run.m["cache_dir"]) / "realism"] if run.m.get("cache_dir") else [])
    found = next((p for p in places if (p / "realism.json").is_file()), None)
    if found is None:
        return
    doc.heading(3, REALISM)
    try:
        r = json.loads((found / "realism.json").read_text(encoding="utf-8"))
        verdicts, syn, real = r["verdicts"], r["synthetic"], r["real"]
    except (ValueError, OSError, KeyError, TypeError) as e:
        doc.para(f"(could not read {found / 'realism.json'}: {e})", muted=True)
        return
    other = run.m.get("cache_dir") and Path(str(syn.get("cache"))).resolve() != Path(run.m["cache_dir"]).resolve()
    doc.para(f"{found} · synthetic {syn.get('n_studies')} studies ({syn.get('cache')}"
             + (", not the cache this run trained on" if other else "")
             + f") vs real {real.get('n_studies')} studies · "
             f"coverage = real values inside the synthetic [p{r.get('coverage_percentiles', [1, 99])[0]:g}, "
             f"p{r.get('coverage_percentiles', [1, 99])[1]:g}] range, per sequence (lesion metrics also per class)")
    doc.image(found / "realism.png", f"{run.name}: intensity histograms inside the head, lesion contrast, lesion "
              "volume and SNR per sequence, synthetic vs real, on the preprocessed arrays")
    rows = [[v.get("sequence"), v.get("metric"), v.get("class", "all"),
             "—" if not v.get("synthetic_range") else "[{:.3g}, {:.3g}]".format(*v["synthetic_range"]),
             f"{v.get('inside')}/{v.get('n_real')}", v.get("verdict")] for v in verdicts]
    doc.table(["sequence", "metric", "class", "synthetic [p1, p99]", "real inside", "verdict"], rows,
              caption="does the synthetic cohort cover the real cases?")


def _extras_sections(doc: Doc, run_dir: Path) -> None:
    """One section per RUN/report_extras/*.json (GLoRIA, SSL, GiMP results)."""
    for x in read_extras(run_dir):
        doc.heading(3, str(x.get("title")))
        if x.get("markdown"):
            doc.markdown(str(x["markdown"]))
        captions = x.get("captions") or {}
        for img in x.get("images") or []:
            # a caption that says what the image is; the file name only as the last resort
            doc.image(run_dir / img, str(captions.get(img) or f"{x.get('title')}: {Path(img).stem.replace('_', ' ')}"))
        for t in x.get("tables") or []:
            doc.table([str(c) for c in t.get("columns", [])], t.get("rows", []), caption=t.get("caption", ""))


def build_report(run_dirs: Sequence[str | Path], out: str | Path = "report.html", *,
                 split: str = "test", thumbnails: bool = True) -> tuple[Path, Path]:
    """Write ``out`` (self-contained HTML) and ``out`` with .md; returns both paths."""
    from medalign.errors import MedAlignError

    if not run_dirs:
        raise MedAlignError("report: give at least one run directory")
    out = Path(out)
    md_path = out.with_suffix(".md")
    doc = Doc(md_path.parent, out.parent / f"{out.stem}_files")
    runs: list[tuple[str, Path, dict]] = []
    extras_only: list[tuple[str, Path]] = []  # runs with report extras but no embedding evaluation (GiMP, SSL)
    names: set[str] = set()
    for rd in run_dirs:
        rd = Path(rd)
        if not rd.is_dir():
            raise MedAlignError(f"report: run directory not found: {rd}")
        name = rd.name if rd.name not in names else str(rd)
        names.add(name)
        try:
            runs.append((name, rd, load_run_metrics(rd, split=split)))
        except MedAlignError:
            if not read_extras(rd):
                raise
            extras_only.append((name, rd))

    doc.heading(1, "medalign evaluation report")
    doc.para("runs: " + ", ".join(f"{n} ({rd})" for n, rd in [(n, rd) for n, rd, _ in runs] + extras_only))
    if len(runs) + len(extras_only) > 1 or runs:  # one table naming every run given
        _comparison(doc, [(n, m) for n, _, m in runs], extras_only)
    for name, rd, m in runs:
        thumb = make_thumbnail_fn(m.get("cache_dir")) if thumbnails else (lambda s: None)
        _run_sections(doc, rd, name, m, thumb=thumb)
    for name, rd in extras_only:
        doc.heading(2, f"Run: {name}", f"run-{name}")
        _extras_sections(doc, rd)

    page = ("<!doctype html><html><head><meta charset='utf-8'><title>medalign evaluation report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(doc.html) + "\n</body></html>\n")
    atomic_write_text(out, page)
    atomic_write_text(md_path, "\n".join(doc.md) + "\n")
    return out, md_path
