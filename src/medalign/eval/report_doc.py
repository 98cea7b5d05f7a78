"""HTML + Markdown rendering for the experiment report: :class:`Doc` builds both side by side.

report.py decides what goes into the report (sections, tables, figures); this module how it is drawn.
"""
from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path
from typing import Sequence

from medalign.eval.bootstrap import format_ci
from medalign.utils import atomic_write_bytes

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
.tw{overflow-x:auto;max-width:100%}caption{text-align:left;font-size:13px;padding:2px 0}figcaption{font-size:13px}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #ccc;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;vertical-align:top}
th{background:#f2f2f2}tr.ok td{background:#eef8ee}img.fig{max-width:100%;border:1px solid #ddd}
img.thumb{height:64px;image-rendering:pixelated}.report{max-width:420px;font-size:12px}.muted{color:#777}
code{background:#f4f4f4;padding:0 3px}
"""


# ----------------------------------------------------------------------------- small renderers
def esc(x) -> str:
    """HTML-escaped text of ``x`` (None -> empty)."""
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
    """Minimal Markdown: headings, '- ' lists, paragraphs, **bold**, *italic*, `code` (text is escaped)."""
    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", s)  # not 2*3*4, not **
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
    """Builds the HTML and Markdown versions side by side.

    Figures and captioned tables are numbered here, once, in page order ("Fig. 1", "Table 1"):
    sections give captions without numbers. Tables sit in a horizontally scrolling box, so a wide
    table never widens the page (readable at 1280 px)."""

    def __init__(self, md_dir: Path, files_dir: Path) -> None:
        self.html: list[str] = []
        self.md: list[str] = []
        self.md_dir, self.files_dir = md_dir, files_dir
        self.n_figures = self.n_tables = 0
        self._n = 0
        self._thumbs: dict[str, str] = {}

    def heading(self, level: int, text: str, anchor: str | None = None) -> None:
        a = f' id="{esc(anchor)}"' if anchor else ""
        self.html.append(f"<h{level}{a}>{esc(text)}</h{level}>")
        self.md.append(f"\n{'#' * level} {text}\n")

    def para(self, text: str, *, muted: bool = False) -> None:
        cls = ' class="muted"' if muted else ""
        self.html.append(f"<p{cls}>{esc(text)}</p>")
        self.md.append(f"{'_' if muted else ''}{text}{'_' if muted else ''}\n")

    def markdown(self, md: str) -> None:
        self.html.append(md_to_html(md))
        self.md.append(md + "\n")

    def image(self, path: Path | None, caption: str = "") -> None:
        if path is None or not Path(path).is_file():
            self.para(f"(figure not available: {caption or path})", muted=True)
            return
        png = Path(path).read_bytes()
        self.n_figures += 1
        caption = f"Fig. {self.n_figures} — {caption}" if caption else f"Fig. {self.n_figures}"
        self.html.append(f'<figure><img class="fig" src="{_data_uri(png)}" alt="{esc(caption)}">'
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
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
        return f'<img class="thumb" src="{_data_uri(png)}" alt="{esc(name)}">', f"![{name}]({os.path.relpath(p, self.md_dir)})"

    def table(self, columns: Sequence[str], rows: Sequence[Sequence], *, caption: str = "",
              html_rows: Sequence[Sequence[str]] | None = None, row_classes: Sequence[str] | None = None) -> None:
        """``rows`` are plain values (escaped); ``html_rows`` (same shape) are pre-rendered HTML cells."""
        h = ['<div class="tw"><table>']
        if caption:
            self.n_tables += 1
            caption = f"Table {self.n_tables} — {caption}"
            h.append(f"<caption>{esc(caption)}</caption>")
        h.append("<tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>")
        for i, r in enumerate(rows):
            cells = html_rows[i] if html_rows is not None else [esc(_fmt(v)) for v in r]
            cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
            h.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        h.append("</table></div>")
        self.html.append("\n".join(h))
        if caption:
            self.md.append(f"*{caption}*\n")
        md_cell = lambda v: _fmt(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        self.md.append("| " + " | ".join(columns) + " |")
        self.md.append("|" + "---|" * len(columns))
        for r in rows:
            self.md.append("| " + " | ".join(md_cell(v) for v in r) + " |")
        self.md.append("")
