"""The experiment report: one self-contained HTML page (images base64-inlined) + Markdown.

``build_report([run, ...], out)`` reads each run's ``eval/metrics.json`` (recomputing it from
saved embeddings when missing), its plots, and any ``report_extras/*.json`` written by recipes
(CONTRACTS.md), and renders the sections listed in SECTIONS. Given several runs it opens
with one comparison table (headline figures with 95% bootstrap CIs, baselines included).
"""
from __future__ import annotations

import base64
import html
import json
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medalign.eval.bootstrap import format_ci
from medalign.utils import atomic_write_bytes, atomic_write_text

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

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #ccc;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;vertical-align:top}
th{background:#f2f2f2}tr.ok td{background:#eef8ee}img.fig{max-width:100%;border:1px solid #ddd}
img.thumb{height:64px;image-rendering:pixelated}.report{max-width:420px;font-size:12px}.muted{color:#777}
code{background:#f4f4f4;padding:0 3px}
"""


# ----------------------------------------------------------------------------- small renderers
def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, dict):
        return format_ci(v, digits)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def md_to_html(md: str) -> str:
    """Minimal Markdown: headings, '- ' lists, paragraphs, **bold**, `code` (text is escaped)."""
    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    out, para, items = [], [], []

    def flush():
        if para:
            out.append("<p>" + inline(" ".join(para)) + "</p>")
            para.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in (md or "").splitlines():
        s = line.strip()
        if not s:
            flush()
        elif s.startswith("#"):
            flush()
            level = min(6, len(s) - len(s.lstrip("#")) + 2)  # nested under the section's h2
            out.append(f"<h{level}>{inline(s.lstrip('#').strip())}</h{level}>")
        elif s.startswith(("- ", "* ")):
            if para:
                flush()
            items.append(s[2:])
        else:
            if items:
                flush()
            para.append(s)
    flush()
    return "\n".join(out)


class Doc:
    """Builds the HTML and Markdown versions side by side."""

    def __init__(self, md_dir: Path, files_dir: Path) -> None:
        self.html: list[str] = []
        self.md: list[str] = []
        self.md_dir, self.files_dir = md_dir, files_dir
        self._n = 0
        self._thumbs: dict[str, str] = {}

    def heading(self, level: int, text: str, anchor: str | None = None) -> None:
        a = f' id="{_e(anchor)}"' if anchor else ""
        self.html.append(f"<h{level}{a}>{_e(text)}</h{level}>")
        self.md.append(f"\n{'#' * level} {text}\n")

    def para(self, text: str, *, muted: bool = False) -> None:
        cls = ' class="muted"' if muted else ""
        self.html.append(f"<p{cls}>{_e(text)}</p>")
        self.md.append(f"{'_' if muted else ''}{text}{'_' if muted else ''}\n")

    def markdown(self, md: str) -> None:
        self.html.append(md_to_html(md))
        self.md.append(md + "\n")

    def image(self, path: Path | None, caption: str = "") -> None:
        if path is None or not Path(path).is_file():
            self.para(f"(figure not available: {caption or path})", muted=True)
            return
        png = Path(path).read_bytes()
        self.html.append(f'<figure><img class="fig" src="{_data_uri(png)}" alt="{_e(caption)}">'
                         f"<figcaption>{_e(caption)}</figcaption></figure>")
        self.md.append(f"![{caption}]({os.path.relpath(path, self.md_dir)})\n")

    def thumb(self, png: bytes | None, name: str) -> tuple[str, str]:
        """(html, md) cells for a thumbnail; the Markdown copy is written beside the .md file."""
        if not png:
            return '<span class="muted">no image</span>', ""
        if name not in self._thumbs:  # one file per study, however often it appears
            self._n += 1
            p = self.files_dir / f"thumb_{self._n}_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
            atomic_write_bytes(p, png)
            self._thumbs[name] = str(p)
        p = Path(self._thumbs[name])
        return f'<img class="thumb" src="{_data_uri(png)}" alt="{_e(name)}">', f"![{name}]({os.path.relpath(p, self.md_dir)})"

    def table(self, columns: Sequence[str], rows: Sequence[Sequence], *, caption: str = "",
              html_rows: Sequence[Sequence[str]] | None = None, row_classes: Sequence[str] | None = None) -> None:
        """``rows`` are plain values (escaped); ``html_rows`` (same shape) are pre-rendered HTML cells."""
        h = ["<table>"]
        if caption:
            h.append(f"<caption>{_e(caption)}</caption>")
        h.append("<tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>")
        for i, r in enumerate(rows):
            cells = html_rows[i] if html_rows is not None else [_e(_fmt(v)) for v in r]
            cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
            h.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        h.append("</table>")
        self.html.append("\n".join(h))
        if caption:
            self.md.append(f"*{caption}*\n")
        md_cell = lambda v: _fmt(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        self.md.append("| " + " | ".join(columns) + " |")
        self.md.append("|" + "---|" * len(columns))
        for r in rows:
            self.md.append("| " + " | ".join(md_cell(v) for v in r) + " |")
        self.md.append("")


# ----------------------------------------------------------------------------- data access
def load_run_metrics(run_dir: str | Path, *, split: str = "test") -> dict:
    """RUN/eval/metrics.json, recomputed from saved embeddings when it or a plot is missing."""
    from medalign.eval.evaluate import evaluate_saved

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
                memo[study_id] = mid_axial_png(np.asarray(cache.load(study_id)["image"]))
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


def _comparison(doc: Doc, runs: list[tuple[str, dict]]) -> None:
    from medalign.eval.evaluate import HEADLINE

    doc.heading(2, COMPARISON, "comparison")
    cols = ["run"] + [n for _, n in HEADLINE]
    rows = [r for name, m in runs for r in _summary_rows(name, m)]
    doc.table(cols, rows, caption="value [95% bootstrap CI]; test studies resampled with replacement")


def _run_sections(doc: Doc, run_dir: Path, name: str, m: dict, *, thumb: Callable[[str], bytes | None]) -> None:
    from medalign.eval.evaluate import HEADLINE

    ev = run_dir / "eval"
    plots = {k: ev / v for k, v in (m.get("plots") or {}).items()}
    ret = m.get("retrieval", {})
    classes = m.get("classes", [])
    reports = _reports_by_id(run_dir, m.get("split", "test"))

    doc.heading(2, f"Run: {name}", f"run-{name}")
    doc.heading(3, "Summary")
    doc.para(f"run {run_dir} · recipe {m.get('recipe') or '?'} · model {m.get('model_id') or '?'} · split "
             f"{m.get('split', '?')} (n={m.get('n_test')}) · train n={m.get('n_train', '—')} · bootstrap "
             f"n={m.get('n_boot')} seed={m.get('seed')}")
    doc.table(["run"] + [n for _, n in HEADLINE], _summary_rows(name, m)[:1],
              caption="value [95% bootstrap CI]")

    doc.heading(3, "Training curves")
    doc.image(plots.get("training_curves"), "Fig. 5 — loss per epoch (train, val) and learning rate")

    doc.heading(3, "Batch similarity matrix")
    doc.image(plots.get("similarity_matrix"), "Fig. 6 — cosine similarity, report rows × image columns; diagonal = pairs")

    doc.heading(3, "Rank vs. similarity by class")
    doc.image(plots.get("rank_vs_similarity"), "Fig. 7 — report → image rank of the right study vs its similarity")
    bc = (ret.get("text_to_image") or {}).get("by_class") or {}
    if bc:
        doc.table(["class", "n", "median rank", "R@1"],
                  [[c, bc[c]["n"], bc[c]["median_rank"], bc[c]["R@1"]] for c in classes if c in bc])

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
    elif m.get("retrieval_note"):
        doc.para(m["retrieval_note"], muted=True)

    tables = m.get("tables") or {}
    doc.heading(3, "Top-5 reports for a query report")
    for q in tables.get("top5", []):
        qt_h, qt_m = doc.thumb(thumb(q["query"]), q["query"])
        doc.para(f"Query {q['query']} ({q['query_class'] or 'no label'}): “{q['query_report']}”")
        rows, hrows, rc = [], [], []
        for i, h in enumerate(q["hits"], 1):
            rep = reports.get(h["study_id"], "")
            t_h, t_m = doc.thumb(thumb(h["study_id"]), h["study_id"])
            rows.append([i, h["study_id"], h["class"], h["similarity"], "✓" if h["correct"] else "", t_m, rep])
            hrows.append([str(i), _e(h["study_id"]), _e(h["class"]), f"{h['similarity']:.3f}",
                          "✓" if h["correct"] else "", t_h, f'<div class="report">{_e(rep)}</div>'])
            rc.append("ok" if h["correct"] else "")
        doc.table(["#", "study", "class", "similarity", "right study", "slices", "its report"], rows,
                  html_rows=hrows, row_classes=rc, caption=f"Table 2 — images ranked for query {q['query']}")
        if qt_m or "no image" not in qt_h:
            doc.html.append(f"<p>query study slices: {qt_h}</p>")
            doc.md.append(f"query study slices: {qt_m}\n")

    doc.heading(3, "Rank-1 matches per query")
    rows, hrows, rc = [], [], []
    for r in tables.get("rank1", []):
        ok = r["query"] == r["match"]
        same = r["query_class"] == r["match_class"] and bool(r["query_class"])
        qh, qm = doc.thumb(thumb(r["query"]), r["query"])
        mh, mm = doc.thumb(thumb(r["match"]), r["match"])
        rows.append([r["query"], r["query_class"], qm, r["match"], r["match_class"], mm, r["similarity"],
                     r["rank_of_right_image"], "yes" if same else "no"])
        hrows.append([_e(r["query"]), _e(r["query_class"]), qh, _e(r["match"]), _e(r["match_class"]), mh,
                      f"{r['similarity']:.3f}", str(r["rank_of_right_image"]), "yes" if same else "no"])
        rc.append("ok" if ok else "")
    doc.table(["query report of", "class", "slices", "rank-1 image", "its class", "slices", "similarity",
               "rank of right image", "same class"], rows, html_rows=hrows, row_classes=rc,
              caption="Table 3 — the top image for every test report (green = the right study)")

    doc.heading(3, "Embedding map")
    doc.image(plots.get("embedding_map"), "t-SNE of test image embeddings, coloured by class")

    doc.heading(3, "Zero-shot classification")
    zs = m.get("zero_shot")
    if zs:
        one = zs.get("one_prompt_per_class") or {}
        ci, oci = zs.get("ci") or {}, one.get("ci") or {}
        keys = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro")
        doc.table(["prompts", *keys],
                  [[f"{zs['n_prompts']} prompts, {zs['pool']}-pooled (absence: {zs['absence']})",
                    *[ci.get(k) or zs.get(k) for k in keys]],
                   ["one prompt per class", *[oci.get(k) or one.get(k) for k in keys]]])
        doc.table(["class", "AUROC (one vs rest)"], [[c, (zs.get("auroc") or {}).get(c)] for c in classes])
        doc.image(plots.get("confusion_zero_shot"), "zero-shot confusion matrix (rows = true class)")
    else:
        doc.para("no zero-shot result (no labels or no prompt bank)", muted=True)

    doc.heading(3, "Probes and label efficiency")
    pr = m.get("probe")
    if pr:
        rows = []
        for probe in pr["probes"]:
            for f in pr["fractions"]:
                r = pr[probe][str(float(f))]
                rows.append([probe, f"{f:.0%}", r["n_train"], r.get("accuracy_ci") or r["accuracy"],
                             r.get("balanced_accuracy_ci") or r["balanced_accuracy"], r["macro_f1"], r["auroc_macro"]])
        doc.table(["probe", "labels", "n train", "accuracy", "balanced acc", "macro-F1", "AUROC"], rows,
                  caption="frozen image embeddings only (no report at inference); stratified label subsets, seeded")
        doc.image(plots.get("label_efficiency"), "label efficiency: balanced accuracy vs fraction of labels")
        doc.image(plots.get("confusion_probe"), "logreg probe confusion matrix (all labels)")
    else:
        doc.para("no probe result (no labelled training embeddings)", muted=True)

    doc.heading(3, "Baselines")
    bl = m.get("baselines") or {}
    if bl:
        rows = []
        for bname, b in bl.items():
            if not isinstance(b, dict):
                continue
            if b.get("skipped"):
                rows.append([bname, "skipped: " + str(b["skipped"])] + [None] * 5)
                continue
            cls = b.get("classifier") or {}
            t2i = (b.get("retrieval") or {}).get("text_to_image") or {}
            zs = b.get("zero_shot") or {}
            pl = ((b.get("probe") or {}).get("logreg") or {}).get("1.0") or {}
            rows.append([bname, b.get("description", ""),
                         (t2i.get("ci") or {}).get("R@1") or t2i.get("R@1"),
                         (zs.get("ci") or {}).get("balanced_accuracy") or zs.get("balanced_accuracy"),
                         pl.get("balanced_accuracy_ci") or pl.get("balanced_accuracy"),
                         (cls.get("ci") or {}).get("balanced_accuracy") or cls.get("balanced_accuracy"),
                         (cls.get("ci") or {}).get("auroc_macro") or cls.get("auroc_macro")])
        zs = m.get("zero_shot") or {}
        pl = ((m.get("probe") or {}).get("logreg") or {}).get("1.0") or {}
        t2i = ret.get("text_to_image") or {}
        rows.insert(0, [f"{name} (this run)", m.get("recipe") or "", (t2i.get("ci") or {}).get("R@1"),
                        (zs.get("ci") or {}).get("balanced_accuracy"), pl.get("balanced_accuracy_ci"), None, None])
        doc.table(["model", "what", "report→image R@1", "zero-shot bal. acc", "logreg probe bal. acc (100%)",
                   "own head / text-only bal. acc", "own head / text-only AUROC"], rows,
                  caption="same evaluation code and test studies; own head = the supervised CNN's classifier; "
                          "text-only reads the reports (an upper bound: labels come from reports)")
    else:
        doc.para("baselines not computed (run `medalign evaluate RUN --baselines`)", muted=True)

    _extras_sections(doc, run_dir)


def _extras_sections(doc: Doc, run_dir: Path) -> None:
    """One section per RUN/report_extras/*.json (GLoRIA, SSL, GiMP results)."""
    for x in read_extras(run_dir):
        doc.heading(3, str(x.get("title")))
        if x.get("markdown"):
            doc.markdown(str(x["markdown"]))
        for img in x.get("images") or []:
            doc.image(run_dir / img, Path(img).name)
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
    if runs:  # runs with only report extras (GiMP, SSL experiments) have no headline figures
        _comparison(doc, [(n, m) for n, _, m in runs])
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
