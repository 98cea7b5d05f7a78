"""The README is executed (issue 21, finding 2): every `medalign ...` command of "A 5-minute tour"
and "Other recipes and experiments" runs, exactly as written apart from short settings appended
or substituted below (fewer studies, one epoch, small grids, few bootstrap resamples), in one
folder, in README order. A README command that no longer works fails this test.

Commands that read real data from ``../shared/data`` (PneumoniaMNIST, TCGA) are skipped, and
listed, when it is absent. ``medalign serve`` runs in a subprocess until it answers.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("## A 5-minute tour", "## Other recipes and experiments")
SHARED = Path(os.environ.get("MEDALIGN_SHARED_DATA", ROOT.parent / "shared" / "data"))

SMALL_BRAIN = ["data.shape=[8,32,32]", "train.epochs=1", "train.batch_size=4", "train.warmup_steps=1",
               "train.progress=false", "train.log_every=1"]
# (command words) -> [(option, value or None for a flag)]: an option already in the README command
# gets its value replaced, any other is appended; strings without a leading "--" are appended as
# positional overrides.
SHORT: dict[str, list] = {
    "synth brain": [("--n", "30"), ("--shape-mode", "small"), ("--workers", "1")],
    "label-reports": [],
    "inspect": [("--max-studies", "4")],
    "preprocess": [("--shape", "8,32,32"), ("--no-register", None), ("--workers", "1"), ("--no-progress", None)],
    "train": SMALL_BRAIN,
    "train configs/hlss_cpu.yaml": SMALL_BRAIN + ["recipe.n_slabs=2"],  # 8 slices: 2 slabs of 4
    # its 2x4x4 stem + 4 levels need >= 16 slices; 8 slices: keep every slice in the stem
    "train configs/brain_clip_study_cpu.yaml": SMALL_BRAIN + ["recipe.image_encoder.stem_stride=[1,4,4]"],
    "evaluate": [("--n-boot", "20"), ("--supervised-epochs", "1")],
    "report": [],
    "classify": [],
    "compare": [("--n-boot", "20")],
    "search": [],
    "index build": [],
    "serve": [],  # port added at run time
    "localise": [("--n-boot", "20"), ("--n-prompts", "2"), ("--gallery", "2")],
    "attend": [("--slices", "1")],
    "ssl label-efficiency": [("--limit", "48"), ("--pretrain-epochs", "1"), ("--finetune-steps", "2"),
                             ("--n-boot", "10"), ("--batch-size", "16"), ("--channels", "4,8"),
                             ("--fractions", "0.5,1.0")],
    "ssl hlss-knn": [("--n-boot", "10")],
    "synth omics": [("--n", "24"), ("--bag-min", "16"), ("--bag-max", "48"), ("--n-genes", "64"),
                    ("--feat-dim", "16"), ("--n-gene-groups", "8")],
    "gimp ablation": ["train.pretrain_epochs=1", "train.finetune_epochs=1", "train.gene_epochs=1", "train.n_boot=10",
                      "train.mpm_length=16"],
    "gimp tcga": [("--epochs", "1"), ("--n-boot", "10"), ("--n-fragments", "8"), ("--n-groups", "2")],
}
NEEDS_SHARED = {"ssl label-efficiency": SHARED / "pneumoniamnist", "gimp tcga": SHARED / "tcga"}


def readme_commands() -> list[list[str]]:
    """Every `medalign` command (argv after the program name) of the two README sections, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    cmds = []
    for head in SECTIONS:
        start = text.index(head)
        nxt = re.search(r"\n#{2,3} ", text[start + len(head):])  # the section ends at the next heading
        section = text[start: start + len(head) + nxt.start() if nxt else None]
        for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
            for line in block.splitlines():
                words = shlex.split(line, comments=True)
                while words:
                    cut = words.index("&&") if "&&" in words else len(words)
                    part, words = words[:cut], words[cut + 1:]
                    if part and part[0] == "medalign":
                        cmds.append(part[1:])
    return cmds


def key_of(argv: list[str]) -> str:
    """The longest of the command's first two words that has short settings."""
    two = " ".join(argv[:2])
    return two if two in SHORT else argv[0]


def shorten(argv: list[str]) -> list[str]:
    """The README command with the short settings applied (and nothing else changed)."""
    out = list(argv)
    for item in SHORT[key_of(argv)]:
        if isinstance(item, str):
            out.append(item)
            continue
        opt, val = item
        if opt in out and val is not None:
            out[out.index(opt) + 1] = val
        elif opt not in out:
            out += [opt] + ([val] if val is not None else [])
    return out


def test_every_readme_command_has_short_settings() -> None:
    """A new README command must be given short settings here, or the execution test cannot run it."""
    cmds = readme_commands()
    assert len(cmds) >= 20
    assert [c for c in cmds if key_of(c) not in SHORT] == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(argv: list[str], cwd: Path) -> None:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medalign.cli", *argv, "--port", str(port)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=5) as r:
                    assert r.status == 200
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                    pytest.fail(f"`medalign {' '.join(argv)}` did not answer: {out[-2000:]}")
                time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_readme_runs_as_written(tmp_path: Path, monkeypatch, capsys) -> None:
    from medalign.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the README runs in a clone's root
    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path / ".medalign_cache"))
    skipped, timings = [], []
    for argv in readme_commands():
        key = key_of(argv)
        if key in NEEDS_SHARED and not NEEDS_SHARED[key].exists():
            skipped.append(" ".join(argv))
            continue
        run = shorten(argv)
        t0 = time.time()
        if key == "serve":
            _serve(run, tmp_path)
        else:
            rc = main(run)
            out = capsys.readouterr()
            assert rc == 0, f"README command `medalign {' '.join(argv)}` (run as {run}) exited {rc}:\n" \
                            f"{out.out[-1500:]}\n{out.err[-1500:]}"
        timings.append((round(time.time() - t0, 1), " ".join(argv[:2])))
    with capsys.disabled():
        print(f"\nREADME commands: {len(timings)} run, {len(skipped)} skipped (no ../shared/data): {skipped}")
        print("slowest:", sorted(timings, reverse=True)[:6])
    # what the tour promises exists
    for p in ("sheet.png", "report.html", "report.md", "report_all.html", "attn.png", "index", "runs/clip/eval",
              "runs/clip/eval_external/manifest/metrics.json"):
        assert (tmp_path / p).exists(), p
    # one evaluation path (finding 4): localise's global-embedding retrieval is evaluate's computation,
    # and the page names the zero-shot protocols where they differ
    ev = json.loads((tmp_path / "runs/gloria/eval/metrics.json").read_text())
    loc = json.loads((tmp_path / "runs/gloria/eval/localisation_test.json").read_text())
    for d in ("text_to_image", "image_to_text"):
        for k in ("R@1", "R@5", "MRR"):
            assert loc["gloria"]["retrieval"]["global"][d][k] == pytest.approx(ev["retrieval"][d][k]), (d, k)
    page = (tmp_path / "report_all.html").read_text(encoding="utf-8")
    assert "generated prompts" in page and "prompts.yaml" in page and "runs/gimp" in page
