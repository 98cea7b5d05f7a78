"""Zero-shot class of the real cases in ../shared/data with one or more trained runs, per case.

    python benchmarks/real_cases.py RUN [RUN ...] [--shared ../shared/data] [--checkpoint best|last] [--adapt-bn]
        [--neighbours W [--k 20]] [--pool EARLIER.json ...] [--out results.json]
    python benchmarks/real_cases.py --compare NAME=OUT.json[,OUT.json...] NAME=... [--out compare.json]

Cases: the 6 BraTS 2015 gliomas (FLAIR + T1c; class tumor), and ``real_dev/``: three clinical
FLAIRs with white-matter hyperintensities (class others) and a volunteer DWI (class normal).
Each run sees every sequence of the case that it reads (an early-fusion dwi/t2s/flair model sees
the FLAIR alone of a BraTS case; a study-level model reads FLAIR and T1c). The protocol is
``medalign classify``'s default (shipped prompts, ensemble pooling), fixed before these cases
were looked at. They are few: read them as a check of direction, not as an accuracy.

``--adapt-bn``: test-time adaptation (AdaBN, Li et al. 2016): each run's BatchNorm statistics are
estimated afresh from the real cases it reads (one pass, no labels; transductive) before they are
classified, so the real scans are normalised by their own feature statistics instead of the synthetic
cohort's (issue 20, stop 64, the preset's 8 runs: real tumours 25/48 and WMH 5/24 against 39/48 and 5/24 unadapted).

``--neighbours W [--k K]``: the cases are read as ``medalign classify --neighbours W --k K`` reads them, the zero-shot
probabilities blended with the vote of the K nearest training studies with the same sequences (the run's own
training split; issue 20, stop 70); without them, as ``classify`` reads the run by default (its ``readout``). A run
read with the vote is counted under its own name, ``RUN (neighbours W, k K)``, so it pools and compares as another
arm of the same run.

One run is not a measurement here, so the command ends with the calls pooled over every run it read:
per class the right calls with their Wilson 95 % interval and the mean p(true), per case the calls
counted. ``--pool`` adds the runs of earlier outputs of this command (the RUN arguments may then be
left out), so that runs trained and read in batches are summed by the same code; ``--out`` then
holds them all. A run counted twice, or outputs read with and without ``--adapt-bn``, is an error.

``--compare NAME=OUT.json[,OUT.json...] NAME=...`` sets arms (configurations, each trained over several
seeds and read by this command) side by side: per case and per class each arm's right calls, and a
permutation test that the arms share one rate (``medalign.eval.bootstrap.homogeneity_test``; a small p
says the arm, not the training seed, moves that case's calls).
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

DEFAULT_SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def real_cases(shared: Path) -> list[dict]:
    """[{case, class, files {sequence: path}}] for every real case found under ``shared``."""
    cases = []
    for d in sorted(p for p in (shared / "brats2015").glob("*/*") if (p / "Flair_subtrMeanDivStd.nii.gz").is_file()):
        cases.append({"case": f"brats/{d.name}", "class": "tumor",
                      "files": {"flair": str(d / "Flair_subtrMeanDivStd.nii.gz"), "t1c": str(d / "T1c_subtrMeanDivStd.nii.gz")}})
    meta = shared / "real_dev" / "cases.json"
    if meta.is_file():
        for c in json.loads(meta.read_text(encoding="utf-8")):
            files = {k: str(shared / "real_dev" / c["case"] / v) for k, v in c["files"].items() if k != "mask"}
            files = {k: v for k, v in files.items() if k in ("dwi", "adc", "t2s", "flair", "t1", "t1c", "t2")}
            cases.append({"case": f"real_dev/{c['case']}", "class": c["class"], "files": files})
    return cases


def adapt_batchnorm(model, images: list, masks: list, batch_size: int = 16):
    """A copy of ``model`` (``medalign.load``'s) whose BatchNorm running statistics are the cumulative mean
    and variance of their inputs over ``images`` (C, D, H, W) with ``masks`` (C,); ``model`` is unchanged."""
    import copy

    import torch

    adapted = copy.copy(model)
    adapted.recipe = copy.deepcopy(model.recipe)
    norms = [m for m in adapted.recipe.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise SystemExit(f"--adapt-bn: run {model.run_dir} has no BatchNorm layer to adapt")
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over every batch of the pass
        bn.train()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            batch = torch.stack(images[i:i + batch_size]).to(adapted.device)  # (b, C, D, H, W), on the run's device
            adapted.recipe.encode_image(batch, torch.stack(masks[i:i + batch_size]).to(adapted.device))
    for bn in norms:
        bn.eval()
    return adapted


def summarise(runs: dict[str, dict]) -> dict:
    """Pool the rows of ``runs`` ({run: {"rows": [...]}}, this command's output): per class the right calls
    with their Wilson 95 % CI and mean p(true); per case its class, right calls, calls counted, mean p(true)."""
    from medalign.eval.bootstrap import wilson_ci

    rows = [r for run in runs.values() for r in run["rows"]]
    per_class = {}
    for cls in sorted({r["true"] for r in rows}):
        of = [r for r in rows if r["true"] == cls]
        per_class[cls] = {**wilson_ci(sum(r["predicted"] == cls for r in of), len(of)),
                          "mean_p_true": round(sum(r["p_true"] for r in of) / len(of), 3)}
    per_case = {}
    for case in dict.fromkeys(r["case"] for r in rows):  # first-seen order: the cases' own order
        of = [r for r in rows if r["case"] == case]
        per_case[case] = {"true": of[0]["true"], "right": sum(r["predicted"] == r["true"] for r in of), "n": len(of),
                          "calls": dict(Counter(r["predicted"] for r in of).most_common()),
                          "mean_p_true": round(sum(r["p_true"] for r in of) / len(of), 3)}
    return {"n_runs": len(runs), "per_class": per_class, "per_case": per_case}


def print_summary(summary: dict) -> None:
    """Print :func:`summarise`'s figures: a line per class, then a line per case."""
    from medalign.eval.bootstrap import format_ci

    print(f"pooled over {summary['n_runs']} run(s): right per class, Wilson 95 % CI, mean p(true)")
    for cls, c in summary["per_class"].items():
        print(f"  {cls:<10} {c['k']:>3}/{c['n']:<3} {format_ci(c)}  mean p(true) {c['mean_p_true']:.3f}")
    for case, c in summary["per_case"].items():
        calls = ", ".join(f"{k} {v}" for k, v in c["calls"].items())
        print(f"  {case:<34} {c['true']:<7} {c['right']:>3}/{c['n']:<3} ({calls})  mean p(true) {c['mean_p_true']:.2f}")


def load_pooled(paths: list[Path], adapt_bn: bool | None, flag: str = "--pool"
                ) -> tuple[dict[str, dict], list[str], bool | None]:
    """The runs, cases and ``--adapt-bn`` setting of earlier outputs of this command; one-line errors, naming
    ``flag`` and the file, for a run met twice or a mix of settings (``adapt_bn`` None: take the first file's)."""
    runs: dict[str, dict] = {}
    cases: list[str] = []
    for path in paths:
        try:
            out = json.loads(Path(path).read_text(encoding="utf-8"))
            file_runs, file_bn = out["runs"], bool(out["adapt_bn"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"{flag} {path}: not an output of real_cases.py ({type(e).__name__}: {e})") from None
        adapt_bn = file_bn if adapt_bn is None else adapt_bn
        if file_bn != adapt_bn:
            raise SystemExit(f"{flag} {path}: read with adapt_bn={file_bn}, the others with {adapt_bn}; pool one setting")
        for run, r in file_runs.items():
            if run in runs:
                raise SystemExit(f"{flag} {path}: run {run} is already counted (pool each run once)")
            runs[run] = r
        cases += [c for c in out.get("cases", []) if c not in cases]
    return runs, cases, adapt_bn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*")
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--checkpoint", default="best", help="best (validation-selected, as classify loads) or last")
    ap.add_argument("--adapt-bn", action="store_true", help="re-estimate each run's BatchNorm statistics on the real "
                    "cases it reads before classifying them (AdaBN; transductive, no labels)")
    ap.add_argument("--neighbours", type=float, default=None, help="weight of the nearest training studies' vote "
                    "against zero-shot, as classify --neighbours (0: zero-shot alone; default: the run's readout)")
    ap.add_argument("--k", type=int, default=None, help="training studies that vote (default: the run's readout.k)")
    ap.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None, help="test-time left-right "
                    "mirroring, as classify --mirror (default: the run's readout.mirror)")
    ap.add_argument("--pool", nargs="+", type=Path, default=[], metavar="JSON",
                    help="earlier outputs of this command whose runs are pooled with these (give RUNs before it)")
    ap.add_argument("--compare", nargs="+", default=[], metavar="NAME=JSON[,JSON...]",
                    help="arms side by side: per case each arm's right calls and a test of one shared rate")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.compare:
        if a.runs or a.pool:
            ap.error("--compare reads earlier outputs only: give no RUN or --pool with it")
        return compare_arms(parse_arms(a.compare), a.out)
    if not a.runs and not a.pool:
        ap.error("give RUN directories to read, --pool earlier outputs, or both")
    if (a.neighbours or a.mirror) and a.adapt_bn:
        ap.error("--neighbours and --mirror are classify's readout: not with --adapt-bn")
    pooled, pooled_cases, pooled_bn = load_pooled(a.pool, a.adapt_bn if a.runs else None)
    if not a.runs:  # a summary of earlier outputs alone: no model is loaded
        return finish({"cases": pooled_cases, "adapt_bn": pooled_bn, "runs": pooled}, a.out)
    import logging

    import torch

    import medalign

    logging.getLogger("medalign.api").setLevel(logging.ERROR)  # "skipping t1c" is expected for 3-sequence models
    cases = real_cases(a.shared)
    if not cases:
        raise SystemExit(f"no real cases under {a.shared}")
    out: dict = {"cases": pooled_cases + [c["case"] for c in cases if c["case"] not in pooled_cases],
                 "adapt_bn": a.adapt_bn, "runs": dict(pooled)}
    for run in a.runs:
        m = medalign.load(run, checkpoint=a.checkpoint)
        w, k, mirror = m.readout(a.neighbours, a.k, a.mirror)  # classify's own defaults for this run, unless given
        if (w or mirror) and a.adapt_bn:
            raise SystemExit(f"{run} reads with the vote or mirrored: not with --adapt-bn (pass --neighbours 0 "
                             "--no-mirror)")
        key = (f"{run} (neighbours {w:g}, k {k}{', mirrored' if mirror else ''})" if w
               else f"{run} (mirrored)" if mirror else run)
        if key in out["runs"]:
            raise SystemExit(f"run {key} is already counted in --pool (pool each run once)")
        usable = []
        for c in cases:
            if any(s in m.sequences for s in c["files"]):
                usable.append(c)
            else:  # e.g. the volunteer DWI for a FLAIR-only model
                print(f"{Path(run).name:<24} {c['case']:<34} skipped: has {sorted(c['files'])}, the run reads "
                      f"{list(m.sequences)}", flush=True)
        if a.adapt_bn and usable:  # preprocessed once: adapted on, then classified by classify's protocol
            images, masks = map(list, zip(*[m._one(c["files"]) for c in usable]))
            m = adapt_batchnorm(m, images, masks)
            classes, prob = m.zero_shot_probabilities(m.encode_image(torch.stack(images), torch.stack(masks).numpy()))
            res = [{"label": classes[int(q.argmax())], "probabilities": dict(zip(classes, q.tolist()))} for q in prob]
        else:
            res = m.classify([c["files"] for c in usable], neighbours=w, k=k, mirror=mirror) if usable else []
        rows = []
        for c, r in zip(usable, res):
            used = sorted(s for s in c["files"] if s in m.sequences)
            rows.append({"case": c["case"], "true": c["class"], "predicted": r["label"], "sequences": used,
                         "p_true": round(r["probabilities"][c["class"]], 3)})
            print(f"{Path(run).name:<24} {c['case']:<34} {'+'.join(used):<10} true {c['class']:<7} "
                  f"-> {r['label']:<10} p(true) {rows[-1]['p_true']:.2f}", flush=True)
        right = {k: [sum(r["true"] == r["predicted"] for r in rows if r["true"] == k), sum(r["true"] == k for r in rows)]
                 for k in sorted({r["true"] for r in rows})}
        print(f"{Path(run).name:<24} right per class: " + ", ".join(f"{k} {a_}/{n}" for k, (a_, n) in right.items()))
        out["runs"][key] = {"rows": rows, "right": right, "checkpoint": a.checkpoint,
                            **({"neighbours": w, "k": k} if w else {}), **({"mirror": True} if mirror else {})}
    finish(out, a.out)


def parse_arms(specs: list[str]) -> dict[str, list[Path]]:
    """``NAME=A.json,B.json`` arguments as {name: [paths]}; a one-line error for a malformed or repeated arm."""
    arms: dict[str, list[Path]] = {}
    for spec in specs:
        name, sep, files = spec.partition("=")
        paths = [Path(f) for f in files.split(",") if f]
        if not sep or not name or not paths:
            raise SystemExit(f"--compare {spec}: expected NAME=OUT.json[,OUT.json...]")
        if name in arms:
            raise SystemExit(f"--compare {spec}: arm {name} is given twice")
        arms[name] = paths
    if len(arms) < 2:
        raise SystemExit("--compare needs two or more arms")
    return arms


def compare(arms: dict[str, dict[str, dict]]) -> dict:
    """Each arm's pooled summary ({arm: {run: ...}} -> :func:`summarise`), and per case and per class met in
    every arm the arms' right calls with :func:`homogeneity_test` of one shared rate."""
    from medalign.eval.bootstrap import homogeneity_test

    summaries = {arm: summarise(runs) for arm, runs in arms.items()}
    out: dict = {"arms": summaries, "per_case": {}, "per_class": {}}
    for level, right in (("per_case", "right"), ("per_class", "k")):
        for key in next(iter(summaries.values()))[level]:
            if all(key in s[level] for s in summaries.values()):
                k = [s[level][key][right] for s in summaries.values()]
                n = [s[level][key]["n"] for s in summaries.values()]
                out[level][key] = {"arms": dict(zip(summaries, zip(k, n))), **homogeneity_test(k, n)}
    return out


def print_compare(result: dict) -> None:
    """A line per class and per case: every arm's right calls, the chi-square and the permutation p."""
    names = list(result["arms"])
    print("arms: " + ", ".join(f"{a} ({s['n_runs']} runs)" for a, s in result["arms"].items()))
    print(f"  {'':<34} " + " ".join(f"{a[:9]:>9}" for a in names) + "   chi2  p(one rate)")
    for level in ("per_class", "per_case"):
        for key, c in result[level].items():
            print(f"  {key:<34} " + " ".join(f"{f'{k}/{n}':>9}" for k, n in c["arms"].values())
                  + f" {c['statistic']:6.2f}  {'<0.0001' if c['p'] < 1e-4 else format(c['p'], '.4f')}")


def finish(out: dict, path: str | None) -> None:
    """Print the pooled summary and write ``out`` with it (atomically) to ``path``."""
    out["summary"] = summarise(out["runs"])
    print_summary(out["summary"])
    if path:
        from medalign.utils import atomic_write_json

        atomic_write_json(path, out)


def compare_arms(arms: dict[str, list[Path]], out: str | None) -> None:
    """Load each arm's outputs (one ``--adapt-bn`` setting across all, each run in one arm), print
    :func:`compare`'s table and write it (atomically) to ``out``."""
    runs: dict[str, dict[str, dict]] = {arm: {} for arm in arms}
    adapt_bn, owner = None, {}
    for arm, paths in arms.items():
        for path in paths:  # one file at a time, so that an error names it
            file_runs, _, adapt_bn = load_pooled([path], adapt_bn, flag=f"--compare {arm}")
            for run in file_runs:
                if run in owner:
                    raise SystemExit(f"--compare {arm} {path}: run {run} is already in arm {owner[run]} "
                                     "(each run once, in one arm)")
                owner[run] = arm
            runs[arm].update(file_runs)
    result = compare(runs)
    print_compare(result)
    if out:
        from medalign.utils import atomic_write_json

        atomic_write_json(out, {"adapt_bn": adapt_bn, **result})


if __name__ == "__main__":
    main()
