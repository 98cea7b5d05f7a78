"""``make demo``: synthetic cohort -> preprocess -> inspect -> train -> embed -> evaluate -> report -> index.

Every stage is the CLI command a user would type (printed before it runs), so the demo is
also the tour. Re-running resumes: finished stages are skipped, training resumes from its
last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from medalign.cli import main as cli_main
from medalign.errors import MedAlignError

EXAMPLE_QUERY = "Acute infarct in the left MCA territory with restricted diffusion."
# the FLAIR-heavy cohort its preset (configs/brain_clip_cpu_flair.yaml) was confirmed on (issue 20, stops 70, 73, 75):
# 600 more training studies acquired as FLAIR alone, territorial infarcts across their time from onset, half of them
# wedges and half ellipsoids, but every one a wedge in the FLAIR-alone studies (a round infarct without a DWI has
# nothing to tell it from a glioma), half the necrotic gliomas with a large core; the FLAIR-alone studies mostly
# normal brains and white-matter disease, as the protocol that acquires a FLAIR alone sees them (stop 75)
DEMO_COHORT = ("--flair-alone", "600", "--infarct-territory", "0.5", "--flair-alone-territory", "1", "--infarct-onset",
               "1", "--glioma-cores", "0.5",
               "--flair-alone-class-weights", "others=1.5,normal=1.5,infarct=0.5,hemorrhage=0.5")


def _stage(title: str, argv: list[str], *, skip_if: Path | None = None) -> None:
    print(f"\n=== {title}\n$ medalign {shlex.join(argv)}", flush=True)
    if skip_if is not None and skip_if.exists():
        print(f"(already done: {skip_if} exists)", flush=True)
        return
    t0 = time.perf_counter()
    rc = cli_main(argv)
    if rc != 0:
        raise MedAlignError(f"demo stage '{title}' failed (exit {rc})")
    print(f"--- {title}: {time.perf_counter() - t0:.0f} s", flush=True)


def run(out: Path, *, n: int = 262, seed: int = 0, config: str = "configs/brain_clip_cpu_flair.yaml",
        cohort_args: tuple[str, ...] | list[str] = DEMO_COHORT, overrides: list[str] | None = None,
        evaluate_args: list[str] | None = None) -> None:
    out = out.resolve()
    cohort, cache, run_dir = out / "cohort", out / "cache", out / "runs" / "brain_clip_cpu"
    manifest = cohort / "manifest.csv"
    t0 = time.perf_counter()
    _stage("1/8 synthesise the brain cohort", ["synth", "brain", "--n", str(n), "--out", str(cohort), "--seed", str(seed),
                                                *cohort_args], skip_if=manifest)
    _stage("2/8 preprocess (orient, co-register, resample, normalise -> cache)",
           ["preprocess", str(manifest), "--cache", str(cache), "--workers", "2", "--keep-going"])
    _stage("3/8 inspection sheet", ["inspect", str(manifest), "--cache", str(cache), "--out", str(out / "inspect.png")],
           skip_if=out / "inspect.png")
    resume = ["--resume"] if (run_dir / "checkpoints").exists() else []
    _stage("4/8 train brain-CLIP (CPU preset)",
           ["train", config, f"data.manifest={manifest}", f"data.cache_dir={cache}", *(overrides or []),
            "--run-dir", str(run_dir), *resume],
           skip_if=run_dir / "DONE")
    (run_dir / "DONE").touch()
    _stage("5/8 embed the test split", ["embed", str(run_dir), "--split", "test"])
    _stage("6/8 evaluate (retrieval, zero-shot, probes, baselines, CIs)", ["evaluate", str(run_dir), "--split", "test", *(evaluate_args or [])])
    # over the split stage 5 embedded (RUN/embeddings/test.npz): the whole cohort would be embedded again
    _stage("7/8 example text query (the test split)", ["search", str(run_dir), "--text", EXAMPLE_QUERY, "--k", "5",
                                                       "--split", "test"])
    _stage("8/8 HTML report", ["report", str(run_dir), "--out", str(out / "report.html"), "--overwrite"])
    # from the cache of stage 2 (the run's own inputs), not the NIfTI files: preprocessing every study
    # again (registration included) was most of this stage's 96 s
    _stage("index for the retrieval service", ["index", "build", str(run_dir), "--manifest", str(manifest),
                                                "--cache", str(cache), "--out", str(out / "index")])
    metrics = run_dir / "eval" / "metrics.json"
    if metrics.exists():
        from medalign.eval.bootstrap import format_ci

        m = json.loads(metrics.read_text(encoding="utf-8"))
        print("\nHeadline figures, test split (95% bootstrap CI):")
        for name, ci in (m.get("headline") or {}).items():
            print(f"  {name:<40} {format_ci(ci)}")
    print(f"\nDone in {(time.perf_counter() - t0) / 60:.1f} min.")
    print(f"  inspection sheet: {out / 'inspect.png'}")
    print(f"  report:           {out / 'report.html'}")
    print(f"  serve the demo index:  .venv/bin/medalign serve {out / 'index'}   then open http://127.0.0.1:8000")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    p.add_argument("--n", type=int, default=262)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="configs/brain_clip_cpu_flair.yaml")
    p.add_argument("--cohort-args", default=shlex.join(DEMO_COHORT),
                   help="extra `synth brain` options (default: the FLAIR-heavy cohort; '' for the plain one, with "
                        "--config configs/brain_clip_cpu.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="training config override, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--evaluate-args", default="", help="extra arguments for `medalign evaluate`, e.g. '--n-boot 200'")
    a = p.parse_args(argv)
    try:
        run(a.out, n=a.n, seed=a.seed, config=a.config, cohort_args=shlex.split(a.cohort_args), overrides=a.overrides,
            evaluate_args=shlex.split(a.evaluate_args))
    except MedAlignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
