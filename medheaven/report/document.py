"""A tiny document model (headings, paragraphs, tables, images, bullet lists) rendered to Markdown or HTML.

The report builds its content once as blocks, so the Markdown and the HTML version can never say different
things. Inline markup is limited to `code`, **strong** and *emphasis*, which both renderers understand.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    file: str
    alt: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class OutlineItem:
    text: str
    children: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outline:
    """A bullet list two levels deep."""

    items: tuple[OutlineItem, ...]


Block = Heading | Paragraph | Table | Image | Bullets | Outline


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += [f"{'#' * block.level} {block.text}", ""]
        elif isinstance(block, Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
            lines.append("|" + "|".join("---" for _ in block.headers) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, Image):
            lines += [f"![{block.alt}]({block.file})", ""]
        elif isinstance(block, Outline):
            for item in block.items:
                lines += [f"- {item.text}", *(f"  - {child}" for child in item.children)]
            lines.append("")
        else:
            lines += [f"- {item}" for item in block.items]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*|\*([^*]+)\*")


def _inline_html(text: str) -> str:
    out, position = [], 0
    for match in _INLINE.finditer(text):
        out.append(html.escape(text[position : match.start()]))
        code, strong, emphasis = match.groups()
        if code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        elif strong is not None:
            out.append(f"<strong>{_inline_html(strong)}</strong>")  # `code` may stand inside
        else:
            out.append(f"<em>{_inline_html(emphasis)}</em>")
        position = match.end()
    out.append(html.escape(text[position:]))
    return "".join(out)


def _outline_item_html(item: OutlineItem) -> str:
    children = "".join(f"<li>{_inline_html(child)}</li>" for child in item.children)
    return f"<li>{_inline_html(item.text)}" + (f"<ul>{children}</ul>" if children else "") + "</li>"


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    "th{background:#f3f3f3}img{max-width:100%;margin:0.5em 0}code{background:#f3f3f3;padding:0 3px}"
)


def to_html(blocks: list[Block], *, title: str) -> str:
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{_STYLE}</style></head><body>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{_inline_html(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in block.headers)
            body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, Image):
            parts.append(f'<img src="{html.escape(block.file)}" alt="{html.escape(block.alt)}">')
        elif isinstance(block, Outline):
            parts.append("<ul>" + "".join(_outline_item_html(item) for item in block.items) + "</ul>")
        else:
            parts.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in block.items) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
