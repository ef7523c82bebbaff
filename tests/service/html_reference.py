"""The tree walk `html_to_text` used before its block segmentation moved into lexbor, kept as the oracle, and
the benchmark page.

It visits every node in Python (an explicit stack: a block element flushes the text gathered so far when it
starts and when it ends), which is what made it slow and what makes it obviously right: the service's
extraction must give exactly its text on every page (tests/service/test_html_equivalence.py), and
bench/extract_html.py runs it side by side with the service's.
"""

from __future__ import annotations

import re
from typing import Any

from selectolax.lexbor import LexborHTMLParser

from service.app.ingest.extract import (
    BLOCK_TAGS,
    CELL_SEPARATOR,
    CELL_TAGS,
    DROPPED_TAGS,
    page_title,
    pre_text,
    prune_page,
    with_title,
)

_SPACES = re.compile(r"\s+")
_FLUSH = object()
_CELL = object()
_SPACE = object()
_LEAVE_CELL = object()
_PRE = object()  # first piece of a preformatted block: its lines are kept
_NEWLINE = object()
_LEAVE_PRE = object()


def _preformatted(node: Any, cell_depth: int, pre_depth: int) -> bool:
    """A <pre> outside table cells and other <pre>s that holds no table cell keeps its line breaks."""
    if node.tag != "pre" or cell_depth or pre_depth:
        return False
    return not any(child.tag in CELL_TAGS for child in node.traverse(include_text=False))


def walk_html_to_text(html: str) -> str:
    """Visible text of an HTML document, blocks as paragraphs, by walking lexbor's tree node by node.

    The page-level choices (the title first, the furniture pruned, `<main>` as the root) are the service's own
    functions: the oracle checks the segmentation of what they leave, node by node.
    """
    tree = LexborHTMLParser(html)
    if tree.root is None:
        return ""
    title = page_title(tree)
    root = prune_page(tree)
    blocks: list[str] = []
    current: list[Any] = []

    def flush() -> None:
        if current and current[0] is _PRE:
            line = pre_text("".join(current[1:]))
            if line.strip():
                blocks.append(line)
            current.clear()
            return
        cells: list[str] = [""]
        for piece in current:
            if piece is _CELL:
                cells.append("")
            else:
                cells[-1] += piece
        line = CELL_SEPARATOR.join(filter(None, (_SPACES.sub(" ", c).strip() for c in cells)))
        if line:
            blocks.append(line)
        current.clear()

    stack: list[Any] = [root]
    cell_depth = pre_depth = 0
    in_pre = False  # inside a preformatted <pre>
    while stack:
        node = stack.pop()
        if node is _FLUSH:
            flush()
            continue
        if node is _SPACE:
            current.append(" ")
            continue
        if node is _NEWLINE:
            current.append("\n")
            continue
        if node is _LEAVE_CELL:
            cell_depth -= 1
            continue
        if node is _LEAVE_PRE:
            pre_depth -= 1
            in_pre = in_pre and pre_depth > 0  # a preformatted <pre> has no <pre> around it: depth 1
            continue
        tag = node.tag
        if tag == "-text":
            current.append(node.text_content or "")
            continue
        if tag.startswith("-") or tag in DROPPED_TAGS:  # comments, doctype; invisible elements
            continue
        if not in_pre and _preformatted(node, cell_depth, pre_depth):
            flush()
            current.append(_PRE)
            stack.append(_FLUSH)
            in_pre = True
        elif in_pre and tag in BLOCK_TAGS:
            current.append("\n")  # a line break inside a preformatted block (a <br> only before itself)
            if tag != "br":
                stack.append(_NEWLINE)
        elif tag in BLOCK_TAGS and cell_depth:
            current.append(" ")  # a block inside a table cell is set off by spaces, not split
            stack.append(_SPACE)
        elif tag in BLOCK_TAGS:
            flush()
            stack.append(_FLUSH)
        elif tag in CELL_TAGS:
            current.append(_CELL)
            cell_depth += 1
            stack.append(_LEAVE_CELL)
        if tag == "pre":
            pre_depth += 1
            stack.append(_LEAVE_PRE)
        children = []
        child = node.child
        while child is not None:
            children.append(child)
            child = child.next
        stack.extend(reversed(children))
    flush()
    return "\n\n".join(with_title(title, blocks))


def benchmark_page(sections: int) -> str:
    """The page bench/extract_html.py measures: per section a heading, 20 paragraphs with inline markup, a list
    and a table (about 2.3 KB a section), and a style and a script in the head."""
    para = (
        "<p>Basalt columns form when <b>thick</b> lava flows cool slowly and <a href='#'>contract</a>.</p>\n"
    )
    body = "".join(
        f"<section><h2>Section {i}</h2>{para * 20}<ul>{'<li>item &amp; more</li>' * 10}</ul>"
        "<table><tr><td>cell</td><td>cell</td></tr></table></section>"
        for i in range(sections)
    )
    return f"<html><head><style>p{{}}</style><script>var x=1;</script></head><body>{body}</body></html>"
