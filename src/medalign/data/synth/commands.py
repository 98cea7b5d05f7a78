"""CLI: ``medalign synth brain`` and ``medalign label-reports``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medalign.errors import MedAlignError


def parse_range(text: str, option: str, zero_ok: bool = False) -> tuple[float, float] | None:
    """``"1.0,1.6"`` -> ``(1.0, 1.6)`` (0 < lo <= hi; 0 <= lo with ``zero_ok``); ``""`` -> None."""
    if not text.strip():
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise MedAlignError(f"{option}: expected LO,HI, got '{text}'") from None
    if not ((0 <= lo if zero_ok else 0 < lo) and lo <= hi < float("inf")):
        raise MedAlignError(f"{option}: need {'0 <=' if zero_ok else '0 <'} LO <= HI, got '{text}'")
    return lo, hi


def parse_names(text: str) -> tuple[str, ...] | None:
    """A comma-separated list of names ("" = not given, None)."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    return names or None


def parse_class_weights(text: str, option: str = "--class-weights") -> dict[str, float] | None:
    """``"others=2,normal=0.5"`` -> ``{"others": 2.0, "normal": 0.5}``; ``""`` -> None; errors name ``option``."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:  # also "others" alone: float("") fails
            raise MedAlignError(f"{option}: expected CLASS=WEIGHT, got '{part}'") from None
    if out:
        from medalign.data.synth.brain import weighted_class_counts  # lazily: the CLI starts fast

        weighted_class_counts(1, out, option)  # validates names and values
    return out or None


def register(app: typer.Typer, synth: typer.Typer) -> None:
    _register_brain(synth)
    _register_reports(app)


def _register_brain(synth: typer.Typer) -> None:
    """``synth brain``: one option per generator setting, so the signature is long."""

    @synth.command("brain")
    def synth_brain(
        out: Path = typer.Option(..., "--out", help="Output folder (manifest.csv + one folder per study)."),
        n: int = typer.Option(262, "--n", help="Number of studies (20..10000)."),
        seed: int = typer.Option(0, "--seed", help="Random seed; same seed -> same cohort."),
        shape_mode: str = typer.Option("clinical", "--shape-mode", help="clinical (real-size grids) or small (32x32x8, for tests)."),
        label_noise: float = typer.Option(0.0, "--label-noise", help="Fraction of manifest labels flipped (truth kept in ground_truth.json)."),
        studies_per_patient: str = typer.Option("1", "--studies-per-patient", help="K or A-B studies per patient (follow-ups share the class)."),
        heldout_phrasing: bool = typer.Option(False, "--heldout-phrasing", help="Test-split reports use the held-out phrasing family."),
        workers: int = typer.Option(2, "--workers", help="Worker processes."),
        randomise: bool = typer.Option(True, "--randomise/--no-randomise",
                                       help="Domain randomisation (contrast, grids, coverage, skull stripping, bias, noise, "
                                            "artefacts, lesion shapes), recorded in ground_truth.json; off = the unrandomised cohort."),
        paraphrases: int = typer.Option(4, "--paraphrases", min=0, max=20,  # = brain.DEFAULT_PARAPHRASES (tested)
                                        help="K > 0: also write up to K other reports of each study's truth (training phrasing "
                                             "families only, never the held-out one) as the manifest column report_paraphrases, "
                                             "for the CLIP recipe's text_views: paraphrases (the CPU presets). Every other output is unchanged. 0 = none."),
        twins: float = typer.Option(0.0, "--twins", min=0.0, max=1.0,
                                    help="Fraction f of the abnormal training studies that also get a lesion-free twin (same "
                                         "patient, scanner and atrophy, no findings, a normal report), added after the n "
                                         "studies: paired counterfactuals that tie each report to its lesions. 0 = none."),
        twin_classes: str = typer.Option("", "--twin-classes",
                                         help="Comma-separated classes whose studies may get twins (default: every abnormal class)."),
        class_weights: str = typer.Option("", "--class-weights",
                                          help="CLASS=W,... relative share of each class in the training split (1 for a class "
                                               "not named; val and test stay balanced), e.g. others=2. Default: balanced."),
        wm_conspicuity: str = typer.Option("", "--wm-conspicuity", help="LO,HI: each study's white-matter lesions (small "
                                           "vessel disease, MS plaques) also get a conspicuity factor from this range. Default: off."),
        wm_shine: str = typer.Option("", "--wm-shine", help="LO,HI: the same on DWI, ADC and T2* only (0 = invisible there, "
                                     "1 = as drawn). Default: off."),
        comorbid_svd: float = typer.Option(0.0, "--comorbid-svd", min=0.0, max=1.0,
                                           help="P: infarct, tumour and haemorrhage patients of 50 or older also get "
                                                "background small vessel disease with probability P, drawn and named in the "
                                                "report (the class and lesion mask stay the main finding's). Default: off."),
        clinical_noise: Optional[float] = typer.Option(None, "--clinical-noise", min=0.0, max=1.0,
                                                       help="P: a share P of the FLAIRs get clinical-grade noise (the top "
                                                            "of the noise range, x 0.9-1.5: the real clinical FLAIRs' "
                                                            "SNR); 0 = off. Default: 0.2 with randomisation."),
        sharpen: Optional[float] = typer.Option(None, "--sharpen", min=0.0, max=1.0, help="P: a share P of the studies get an "
                                                "edge-enhancing reconstruction (in-plane unsharp mask, as scanners apply); 0 = off. Default: 0.45."),
        sharpen_sequences: str = typer.Option("", "--sharpen-sequences", help="SEQ,... or all: the series it applies to. Default: flair."),
        skull_strip: Optional[float] = typer.Option(None, "--skull-strip", min=0.0, max=1.0,
                                                    help="P: a share P of the studies are stored skull-stripped (as BraTS "
                                                         "and many research FLAIRs are). Default: 0.4 with randomisation."),
        infarct_territory: Optional[float] = typer.Option(None, "--infarct-territory", min=0.0, max=1.0, help="P: a share P of "
                                                          "the territorial infarcts are the wedge of their arterial territory, "
                                                          "cortex included, instead of an ellipsoid. Default: off."),
        infarct_watershed: Optional[float] = typer.Option(None, "--infarct-watershed", min=0.0, max=1.0, help="P: a share P "
                                                          "of the territorial infarcts are border-zone (watershed) infarcts "
                                                          "instead: a cortical ACA-MCA or MCA-PCA wedge, or a chain of small "
                                                          "foci in the corona radiata. Default: off."),
        glioma_cores: Optional[float] = typer.Option(None, "--glioma-cores", min=0.0, max=1.0, help="P: a share P of "
                                                     "the necrotic gliomas have a large core (0.65-0.95 of the solid "
                                                     "radius) whose FLAIR signal is drawn from CSF-dark to oedema-bright, "
                                                     "as real high-grade gliomas show. Default: off."),
        infarct_mismatch: Optional[float] = typer.Option(None, "--infarct-mismatch", min=0.0, max=1.0, help="P: a share P "
                                                         "of the studies with an acute territorial or lacunar infarct are "
                                                         "hyperacute: bright on DWI, not yet on FLAIR (DWI-FLAIR mismatch), "
                                                         "and the report says so. Default: off."),
        others_svd: Optional[float] = typer.Option(None, "--others-svd", min=0.0, max=1.0, help="P: a share P of the "
                                                   "\"others\" patients planned with atrophy, MS or sinus disease get small "
                                                   "vessel disease instead (graded, drawn and reported as such); the class "
                                                   "balance is unchanged. Default: off."),
        glioma_bright: Optional[float] = typer.Option(None, "--glioma-bright", min=0.0, max=1.0, help="P: a share P of "
                                                      "the gliomas have a solid part brighter than their oedema on FLAIR "
                                                      "(1.00-1.30; oedema 0.98), as some real high-grade gliomas show; "
                                                      "reports unchanged. Default: off."),
        infarct_onset: Optional[float] = typer.Option(None, "--infarct-onset", min=0.0, max=1.0, help="P: a share P of "
                                                      "the studies with an acute territorial or lacunar infarct get its time "
                                                      "from onset drawn, as its FLAIR signal: from not yet visible (reported "
                                                      "as a DWI-FLAIR mismatch) to as bright as a glioma's oedema. Default: off."),
        lesion_flair_spread: Optional[float] = typer.Option(None, "--lesion-flair-spread", min=0.0, max=1.0, help="P: a "
                                                            "share P of the studies get how far each lesion component "
                                                            "stands out on FLAIR drawn apart (x 0.5-1.5 on its conspicuity "
                                                            "exponent), so brightness alone does not tell the finding. "
                                                            "Default: off."),
        glioma_sites: Optional[float] = typer.Option(None, "--glioma-sites", min=0.0, max=1.0, help="P: a share P of the "
                                                     "patients have their gliomas centred anywhere in the white matter of "
                                                     "their side instead of at one of four lobe centres; the report names "
                                                     "the nearest lobe. Default: 1 (on; 0 gives the earlier plan)."),
        metastases: Optional[float] = typer.Option(None, "--metastases", min=0.0, max=1.0, help="P: a share P of the "
                                                   "tumour patients have 2-6 metastases (grey-white junction, cerebellum; "
                                                   "necrotic from 12 mm) instead of one tumour; reported so. Default: off."),
        flair_alone: int = typer.Option(0, "--flair-alone", min=0, max=10_000, help="N: also N training studies of new "
                                        "patients acquired as FLAIR alone (their other image cells empty), added after "
                                        "the n studies and their twins; each costs about a third of a full study's CPU. Default: 0."),
        flair_alone_territory: Optional[float] = typer.Option(None, "--flair-alone-territory", min=0.0, max=1.0, help="P: "
                                                              "the FLAIR-alone studies' own --infarct-territory (a share P "
                                                              "of their territorial infarcts drawn as wedges). Default: "
                                                              "--infarct-territory's."),
        flair_alone_class_weights: str = typer.Option("", "--flair-alone-class-weights", help="CLASS=W,...: the "
                                                      "FLAIR-alone studies' own --class-weights. Default: the cohort's."),
    ) -> None:
        """Generate the synthetic brain-pathology cohort (NIfTI + masks + reports + ground truth)."""
        import json
        import time

        from medalign.data.synth.brain import generate_brain_cohort
        from medalign.data.synth.randomise import DomainOptions

        domain = DomainOptions(wm_conspicuity=parse_range(wm_conspicuity, "--wm-conspicuity"),
                               wm_shine=parse_range(wm_shine, "--wm-shine", zero_ok=True),
                               sharpen_sequences=parse_names(sharpen_sequences),
                               # the probability options are parameters of the same names (test_domain_options checks)
                               **{k: v for k, v in locals().items() if k in DomainOptions.PROBABILITIES})
        t0 = time.perf_counter()
        manifest = generate_brain_cohort(out, n=n, seed=seed, shape_mode=shape_mode, label_noise=label_noise,
                                         studies_per_patient=studies_per_patient, heldout_phrasing=heldout_phrasing,
                                         workers=workers, progress=True, randomise=randomise, paraphrases=paraphrases,
                                         twins=twins, twin_classes=parse_names(twin_classes),
                                         class_weights=parse_class_weights(class_weights), domain=domain,
                                         flair_alone=flair_alone, flair_alone_weights=parse_class_weights(
                                             flair_alone_class_weights, "--flair-alone-class-weights"))
        dt = time.perf_counter() - t0
        info = json.loads((manifest.parent / "cohort.json").read_text(encoding="utf-8"))
        n += info.get("twins", {}).get("n", 0) + info.get("flair_alone", 0)
        typer.echo(f"wrote {n} studies to {manifest.parent} in {dt:.1f} s ({n / dt * 60:.0f} studies/min); manifest: {manifest}")


def _register_reports(app: typer.Typer) -> None:
    """``label-reports``."""

    @app.command("label-reports")
    def label_reports_cmd(
        manifest: Path = typer.Argument(..., help="Manifest (CSV or Parquet) with a 'report' column."),
        out: Optional[Path] = typer.Option(None, "--out", help="Write study_id,predicted_label[,truth] CSV here."),
    ) -> None:
        """Label reports (medspaCy target matcher + ConText); print accuracy + confusion matrix when labels are known."""
        import pandas as pd

        from medalign.data.manifest import study_ground_truths
        from medalign.data.reports import analyse_reports, confusion_matrix, format_confusion
        from medalign.errors import CohortError
        from medalign.utils import atomic_write_text

        if not manifest.exists():
            raise CohortError("manifest not found", path=str(manifest))
        try:
            df = pd.read_parquet(manifest) if manifest.suffix == ".parquet" else pd.read_csv(manifest, dtype=str, keep_default_na=False)
        except Exception as e:  # noqa: BLE001 - report any parse failure as one line
            raise CohortError(f"cannot read manifest ({type(e).__name__}: {e})", path=str(manifest)) from None
        for col in ("study_id", "report"):
            if col not in df.columns:
                raise CohortError(f"manifest has no '{col}' column", path=str(manifest), column=col)
        res = analyse_reports([str(r) if r is not None else "" for r in df["report"]])
        pred = [r.label for r in res]
        # every finding that counted, with its class and hedge: "tumor:meningioma?; others:atrophy"
        found = ["; ".join(f"{m.cls}:{m.text}{'?' if m.uncertain else ''}" for m in r.findings) for r in res]
        table = pd.DataFrame({"study_id": df["study_id"].astype(str), "predicted_label": pred,
                              "uncertain_only": [r.uncertain_only for r in res], "findings": found})
        truths = [t.get("label") if t else None for t in study_ground_truths(df, manifest.parent)]
        if "label" in df.columns:
            lab = [str(v) for v in df["label"]]
            ok = [(a, b) for a, b in zip(lab, pred) if a and a != "nan"]
            if ok:
                acc = sum(a == b for a, b in ok) / len(ok)
                typer.echo(f"accuracy vs manifest label (may include label noise): {acc:.4f} (n={len(ok)})")
            table["manifest_label"] = lab
        if any(t is not None for t in truths):
            pairs = [(t, p) for t, p in zip(truths, pred) if t is not None]
            acc = sum(t == p for t, p in pairs) / len(pairs)
            typer.echo(f"accuracy vs ground truth (ground_truth.json): {acc:.4f} (n={len(pairs)})")
            typer.echo(format_confusion(confusion_matrix([t for t, _ in pairs], [p for _, p in pairs])))
            table["true_label"] = [t or "" for t in truths]
        elif "label" in df.columns:
            ok = [(a, b) for a, b in zip(df["label"].astype(str), pred) if a and a != "nan"]
            typer.echo(format_confusion(confusion_matrix([a for a, _ in ok], [b for _, b in ok])))
        counts = table["predicted_label"].value_counts().to_dict()
        typer.echo("predicted: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        if out is not None:
            atomic_write_text(out, table.to_csv(index=False))
            typer.echo(f"wrote {out}")
