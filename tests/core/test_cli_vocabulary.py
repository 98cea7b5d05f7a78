"""Issue 21, finding 5: one CLI vocabulary. Every option of every command has a help line, the shared
options are spelled one way (old spellings only as extra names), `medalign --version` works, and
the README's vocabulary table lists the shared options."""
from __future__ import annotations

from pathlib import Path

import typer

from medalign.cli import app, main

ROOT = Path(__file__).resolve().parents[2]
OLD = {"--cache-dir": "--cache", "--test-splits": "--split", "--set": None}  # old spelling -> the one now used


def _commands():
    def walk(c, path):
        if hasattr(c, "commands"):  # typer vendors click: a group is whatever has sub-commands
            for n, sub in c.commands.items():
                yield from walk(sub, path + [n])
        else:
            yield " ".join(path), c

    return list(walk(typer.main.get_command(app), []))


def test_every_option_has_help() -> None:
    missing = [f"{name} {p.opts or p.name}" for name, c in _commands() for p in c.params
               if p.name != "help" and not getattr(p, "hidden", False) and not getattr(p, "help", None)]
    assert missing == []


def test_shared_options_are_spelled_one_way() -> None:
    for name, c in _commands():
        for p in c.params:
            opts = list(getattr(p, "opts", []))
            for old, new in OLD.items():
                if old in opts:  # an old spelling is only ever a second name (or hidden)
                    assert getattr(p, "hidden", False) or (new and opts[0] == new), (name, opts)
    by_name = dict(_commands())
    out_args = [n for n, c in by_name.items() if any(p.name in ("out", "out_dir") and not p.opts[0].startswith("--")
                                                      and not getattr(p, "hidden", False) for p in c.params)]
    assert out_args == []  # `synth omics DIR` became `synth omics --out DIR`
    assert "--out" in by_name["synth omics"].params[0].opts


def test_version_and_readme_table(capsys) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("medalign ")
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("### One command-line vocabulary"):]
    for opt in ("`--out PATH`", "`--cache DIR`", "`--split NAME`", "`key=value ...`", "`--k N`", "`--version`"):
        assert opt in table, opt


def test_old_spellings_still_work(tmp_path: Path) -> None:
    from medalign.data.synth.omics import generate_omics_cohort  # noqa: F401 - the command imports it

    assert main(["synth", "omics", str(tmp_path / "o"), "--n", "8", "--bag-min", "4", "--bag-max", "8",
                 "--n-genes", "16", "--n-gene-groups", "4", "--feat-dim", "4"]) == 0
    assert (tmp_path / "o" / "manifest.csv").is_file()


def test_one_default_k_for_cli_api_and_page():
    """A search returns DEFAULT_TOP_K studies by default whichever door it comes through (issue 21, finding 5)."""
    import inspect
    import re
    from pathlib import Path

    from medalign.data.schema import DEFAULT_TOP_K
    from medalign.serve.schemas import TextQuery
    from medalign.train.commands import search

    assert inspect.signature(search).parameters["k"].default.default == DEFAULT_TOP_K
    assert TextQuery(text="x").k == DEFAULT_TOP_K
    static = Path(__file__).resolve().parents[2] / "src" / "medalign" / "serve" / "static"
    assert re.search(r'id="k"[^>]*value="(\d+)"', (static / "index.html").read_text()).group(1) == str(DEFAULT_TOP_K)
    assert f'|| {DEFAULT_TOP_K})' in (static / "app.js").read_text()
