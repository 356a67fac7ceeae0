"""Render a report's sections twice: ``index.md`` (renders on a code-hosting site, figures linked
as PNG files) and ``index.html`` (self-contained: figures embedded as base64, no scripts, no
external resources, readable straight from disk)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)  # plain text; `code` spans allowed
    figures: list[tuple[str, str]] = field(default_factory=list)  # (png file name, caption)
    table: pd.DataFrame | None = None
    row_classes: list[str] | None = None  # one CSS class per table row: gain / loss / ""
    bullets: list[str] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


@dataclass
class Page:
    title: str
    answer: list[str]  # the lines the page opens with
    facts: list[tuple[str, str]]  # (label, value) shown under the answer: command, wall time, machine
    sections: list[Section]


_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
# A link target the report may hold: a file beside it or a section (reports/x/cells.csv, #method),
# or a web page. Anything with another scheme (javascript:, data:, file:) is text, not a link:
# study paths, class folder names and recorded commands reach the page and can hold anything.
_SAFE_HREF = re.compile(r"(https?://[^\s\"'<>]+|#[\w-]+|(?![a-zA-Z][\w+.\-]*:)[\w./-]+)")


def _link_or_text(m: re.Match[str], render: Callable[[str, str], str]) -> str:
    text, href = m.group(1), m.group(2)
    return render(text, href) if _SAFE_HREF.fullmatch(href) else f"{text} ({href})"


def _md_text(text: str) -> str:
    """Text for index.md: raw HTML shown as text (a class folder may be named <img onerror=...>):
    outside `code` spans, where markdown reads it, a "<" that could open a tag is written &lt;;
    links are kept only where their target is safe."""
    parts = re.split(r"(`[^`]*`)", text)  # odd parts: code spans, shown as they are
    escaped = "".join(p if i % 2 else re.sub(r"<(?=[A-Za-z/!?])", "&lt;", p) for i, p in enumerate(parts))
    return _LINK.sub(lambda m: _link_or_text(m, lambda t, h: f"[{t}]({h})"), escaped)


def render_md(page: Page) -> str:
    out = [f"# {_md_text(page.title)}", "", *[f"> {_md_text(line)}  " for line in page.answer], ""]
    out += [f"- **{_md_text(k)}:** {_md_text(v)}" for k, v in page.facts] + [""]
    for s in page.sections:
        out += [f"## {_md_text(s.title)}", ""]
        for p in s.paragraphs:
            out += [_md_text(p), ""]
        for name, caption in s.figures:
            out += [f"![{_md_text(caption)}]({name})", "", f"*{_md_text(caption)}*", ""]
        if s.bullets:
            out += [f"- {_md_text(b)}" for b in s.bullets] + [""]
        if s.table is not None and len(s.table):
            cells = s.table.map(lambda v: _md_text(_fmt(v))).rename(columns=lambda c: _md_text(str(c)))
            out += [cells.to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escape text for HTML, then turn `code` spans, **bold** and [text](href) links with a safe
    target into elements."""
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return _LINK.sub(lambda m: _link_or_text(m, lambda t, h: f'<a href="{h}">{t}</a>'), out)


def _table_html(df: pd.DataFrame, row_classes: list[str] | None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for i, (_, r) in enumerate(df.iterrows()):
        cls = (row_classes or [""] * len(df))[i]
        cells = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r)
        rows.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _fmt(v: object) -> str:
    """One number format for every table: thousands separators (5,000), no -0, n/a for missing."""
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    if isinstance(v, float | np.floating):
        v = float(v)
        return "0" if v == 0 else f"{v:,.10g}" if abs(v) >= 1000 else f"{v:g}"
    return str(v)


def render_html(page: Page, folder: Path) -> str:
    """The page as one HTML document; figures are read from ``folder`` and embedded."""
    toc = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in page.sections)
    body = []
    for s in page.sections:
        body.append(f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>')
        body += [f"<p>{_inline(p)}</p>" for p in s.paragraphs]
        for name, caption in s.figures:
            data = base64.b64encode((folder / name).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{_inline(caption)}</figcaption></figure>")
        if s.bullets:
            body.append("<ul>" + "".join(f"<li>{_inline(b)}</li>" for b in s.bullets) + "</ul>")
        if s.table is not None and len(s.table):
            body.append(f'<div class="table-wrap">{_table_html(s.table, s.row_classes)}</div>')
        body.append("</section>")
    answer = "".join(f'<p class="answer-line">{_inline(line)}</p>' for line in page.answer)
    facts = "".join(f"<dt>{html.escape(k)}</dt><dd>{_inline(v)}</dd>" for k, v in page.facts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(page.title)}</title>
<style>{CSS}</style></head><body><main>
<h1>{html.escape(page.title)}</h1>
<div class="answer" role="note">{answer}</div>
<dl class="facts">{facts}</dl>
<nav><strong>Contents</strong><ol>{toc}</ol></nav>
{"".join(body)}
</main></body></html>
"""


CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --accent: #3b6ea5;
        --gain: #e6f4ea; --loss: #fbe9e7; }
body { font: 16px/1.55 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
       margin: 0; background: #fafbfc; }
main { max-width: 1040px; margin: 0 auto; padding: 1.5rem 1.25rem 4rem; background: #fff;
       box-shadow: 0 0 0 1px var(--line); min-height: 100vh; }
h1 { font-size: 1.7rem; margin: .2rem 0 1rem; }
h2 { font-size: 1.3rem; margin-top: 2.2rem; padding-bottom: .3rem; border-bottom: 1px solid var(--line); }
.answer { background: #f1f6fc; border-left: 5px solid var(--accent); padding: .7rem 1.1rem;
          border-radius: 4px; font-size: 1.05rem; }
.answer p { margin: .35rem 0; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; color: var(--muted);
         font-size: .92rem; margin: 1rem 0; }
.facts dt { font-weight: 600; } .facts dd { margin: 0; }
nav { font-size: .92rem; color: var(--muted); } nav ol { margin: .3rem 0; columns: 2; }
nav a { color: var(--accent); text-decoration: none; }
code { background: #f3f4f6; padding: .05rem .3rem; border-radius: 3px; font-size: .9em; }
figure { margin: 1rem 0; } img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: .9rem; margin-top: .3rem; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: .88rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: .3rem .55rem; text-align: right; white-space: nowrap; }
th { background: #eef1f5; position: sticky; top: 0; }
tr.gain td { background: var(--gain); } tr.loss td { background: var(--loss); }
"""
