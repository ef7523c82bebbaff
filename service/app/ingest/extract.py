"""Text extraction from uploaded bytes: plain text, Markdown, HTML and PDF.

`extract_text(data, content_type)` is pure (no I/O besides parsing) so the HTTP route and the async job worker
share it. Markdown is kept as text: its markup is light and carries meaning (headings, lists) the embedder
handles well. HTML is parsed and segmented by selectolax (lexbor, C; docs/benchmarks.md has its speed)
and loses script/style/noscript/template elements and keeps headings, paragraphs, list items
and table cells as paragraphs of their own. PDF text comes from pypdf page by page. Problems are domain errors:
an unknown type is UnsupportedMediaType (415), unreadable or empty content is InvalidInput (422). The routes do
not call these directly: service.app.ingest.sandbox runs them within per-document CPU and memory budgets.
"""

from __future__ import annotations

import codecs
import io
import itertools
import logging
import re
from collections.abc import Iterable
from pathlib import PurePath
from typing import Any

from selectolax.lexbor import LexborHTMLParser, SelectolaxError

from service.app.core.errors import InvalidInput, UnsupportedMediaType

logger = logging.getLogger(__name__)

SUPPORTED_TYPES = ("text/plain", "text/markdown", "text/html", "application/pdf")
EXTENSION_TYPES = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}
# Content types that say nothing about the content: fall back to the file extension.
GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream", "application/x-www-form-urlencoded"}
TYPE_ALIASES = {"text/x-markdown": "text/markdown", "application/xhtml+xml": "text/html"}

DROPPED_TAGS = ("script", "style", "noscript", "template", "head", "svg", "iframe", "object")
BLOCK_TAGS = {
    "address", "article", "aside", "blockquote", "caption", "dd", "details", "div", "dl", "dt", "fieldset",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main",
    "nav", "ol", "p", "pre", "section", "summary", "table", "tr", "ul", "br",
}  # fmt: skip
# Table cells are not blocks: a row is one paragraph, its cells joined by CELL_SEPARATOR ("Team | 50 users"),
# so a row's facts stay together in one chunk (they were paragraphs of their own: "Team", "50 users").
CELL_TAGS = ("td", "th")
CELL_SEPARATOR = " | "
# Page furniture, not content (EYES4 E2: answers quoted "Accept all cookies." and the footer). `nav` always; a
# page-level `footer` (the ARIA contentinfo rule: not inside article, aside, main, nav or section, where it is
# that part's byline); a page-level `header` that holds navigation or no heading (one holding the article's h1,
# byline and date is content: EYES5 F3); elements whose role says navigation/banner/contentinfo/search; cookie
# and consent banners by an id or class token that names one (`cookie-banner`, `onetrust-consent-sdk`, not
# `cookie-recipe` or a WordPress `tag-gdpr`: EYES5 F1); and a closed `dialog`. Content the page merely hides
# (`hidden`: the other tabs of tabbed docs, EYES5 F2) and asides beside `<main>` (EYES5 F6) are kept.
FURNITURE_TAGS = ("nav",)
SECTIONING_TAGS = frozenset({"article", "aside", "main", "nav", "section"})
HEADING_TAGS = ("h1", "h2", "h3", "h4", "h5", "h6")
FURNITURE_ROLES = frozenset({"navigation", "banner", "contentinfo", "search"})
# The elements whose attributes are read (a Python call each): the containers pages put banners and landmarks
# on. Reading every element's would cost ~1.5x the whole extraction on a text-heavy page.
LANDMARK_TAGS = ("div", "section", "aside", "form", "ul", "ol", "span", "table")
_BANNER_WORDS = (
    "banner|notice|bar|popup|pop-up|modal|dialog|overlay|wall|box|law|message|alert|sdk|prompt|manager"
)
_BANNER_NAME = re.compile(
    rf"(?:^|[-_])(?:cookies?|consent|gdpr)[-_]?(?:{_BANNER_WORDS})(?:$|[-_])"
    rf"|(?:^|[-_])(?:{_BANNER_WORDS})[-_]?(?:cookies?|consent|gdpr)(?:$|[-_])"
    r"|(?:^|[-_])cookies?[-_]?consent|^cybotcookiebot|^cc-(?:banner|window)$",
    re.IGNORECASE,
)
_BLOCK_TAG_ORDER = sorted(BLOCK_TAGS)  # a fixed order: set iteration order varies with hash seeds
_PRIVATE_USE = (
    range(0xE000, 0xF900),
    range(0xF0000, 0xFFFFE),
    range(0x100000, 0x10FFFE),
)  # 137,468 characters
_MARK = "\ue000"  # the first private-use character: the block marker, unless the document's text holds it
_CELL_MARK = "\ue001"  # the second: the table-cell marker, likewise
_PRE_MARK = "\ue002"  # the third: starts a preformatted block (its line breaks are kept), likewise


class HtmlParseError(InvalidInput):
    """lexbor gave up on the document; it only does when an allocation fails (a worker's memory budget)."""


def normalize_content_type(content_type: str | None) -> str:
    """``Text/HTML; charset=utf-8`` -> ``text/html`` (aliases folded)."""
    base = (content_type or "").split(";", 1)[0].strip().lower()
    return TYPE_ALIASES.get(base, base)


def charset_of(content_type: str | None) -> str | None:
    """The charset parameter of a content type, if any."""
    match = re.search(r"charset\s*=\s*\"?([A-Za-z0-9._-]+)", content_type or "", re.IGNORECASE)
    return match.group(1) if match else None


def detect_content_type(content_type: str | None, filename: str | None) -> str:
    """The supported type of an upload: its declared type unless generic, else from the file extension."""
    declared = normalize_content_type(content_type)
    if declared in SUPPORTED_TYPES:
        return declared
    suffix = PurePath(filename or "").suffix.lower()
    if declared in GENERIC_TYPES and suffix in EXTENSION_TYPES:
        return EXTENSION_TYPES[suffix]
    raise UnsupportedMediaType(
        f"unsupported content type {declared or 'unknown'!r} for {filename or 'the upload'!r}; "
        f"supported: {', '.join(SUPPORTED_TYPES)} (or a .txt/.md/.html/.pdf file name)",
        supported=list(SUPPORTED_TYPES),
    )


# Byte order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one). A BOM decides the
# encoding over a declared charset, as in the WHATWG encoding standard's BOM sniffing.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16"),
)


def decode_text(data: bytes, charset: str | None = None) -> str:
    """Bytes of a text document as str: by its BOM (UTF-8, UTF-16 or UTF-32), else the declared charset, else
    UTF-8."""
    marked = next(((bom, encoding, name) for bom, encoding, name in _BOMS if data.startswith(bom)), None)
    if marked:
        bom, encoding, name = marked
        data, skipped, label = data[len(bom) :], len(bom), f"{name} (by its byte order mark)"
    else:
        if charset is None and b"\x00" in data:
            raise InvalidInput(
                "the text contains NUL bytes; is it a binary file? (UTF-16 or UTF-32 text needs a byte order "
                "mark or a declared charset, e.g. charset=utf-16le)"
            )
        encoding, skipped, label = charset or "utf-8", 0, charset or "UTF-8"
    try:
        text = data.decode(encoding)
    except LookupError as exc:
        raise InvalidInput(f"unknown charset {charset!r}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"the text is not valid {label} (byte {exc.start + skipped}); send UTF-8 or declare the charset"
        ) from exc
    if "\x00" in text:
        raise InvalidInput(f"the text contains NUL characters once decoded as {label}; is it a binary file?")
    return text


def html_to_text(html: str) -> str:
    """Visible text of an HTML document; headings and other blocks become their own paragraphs.

    The page's `<title>` comes first (unless its first block already says it), and page furniture is left out
    (`prune_page`).
    Parsed by lexbor (selectolax, C, an HTML5-conformant parser), and the segmentation stays in C too: invisible
    elements are detached, a marker character (one the text does not contain) is inserted as a text node before
    and after each block element (and another before each table cell), and one ``text()`` call concatenates the
    text nodes, which the markers then split into blocks (and cells). Python touches each block element twice,
    not each node (text, inline element) once: faster than walking the tree, with the same text
    (docs/benchmarks.md, tests/service/test_html_equivalence.py). No step recurses in Python or in C (lexbor
    walks trees iteratively), so nesting depth is no RecursionError.
    """
    # Elements are found by tag name (lexbor collects them in C), not by a CSS selector list: selectolax's CSS
    # match callback turns a MemoryError into a SystemError, and a worker must recognise its memory budget.
    try:
        tree = LexborHTMLParser(html)
        if tree.root is None:
            return ""
        title = page_title(tree)
        root = prune_page(tree)
        for tag in DROPPED_TAGS:
            for node in tree.tags(tag):
                # Detached, not destroyed: one inside another is detached from an already detached tree.
                node.decompose(recursive=False)
        visible = root.text()
        mark = _unused_character(visible)
        cell = _unused_character(visible, _CELL_MARK, taken=mark)
        # A block inside a table cell (a <p> or <div> in a cell, a nested table) does not split the row: it is
        # set off by spaces, so the row stays one paragraph (EYES5 F7: "Team | $49" and "50 users" apart).
        cells = [node for tag in CELL_TAGS for node in tree.tags(tag)]
        in_cells = {
            node.mem_id
            for each in cells
            for node in each.traverse(include_text=False)
            if node.tag in BLOCK_TAGS
        }
        preformatted, in_pre = preformatted_blocks(tree, in_cells)
        for tag in _BLOCK_TAG_ORDER:
            for node in tree.tags(tag):
                if (
                    node.mem_id in in_pre
                ):  # inside a preformatted block, a <br> is one line break, a <div> ends one
                    node.insert_before("\n")
                    if tag != "br":
                        node.insert_after("\n")
                    continue
                separator = " " if node.mem_id in in_cells else mark
                node.insert_before(separator)
                node.insert_after(separator)
        for node in cells:
            node.insert_before(cell)
        pre = _unused_character(visible, _PRE_MARK, taken=mark + cell) if preformatted else ""
        for node in preformatted:
            node.insert_before(pre)  # right after the block's mark: the block starts with it
        text = root.text()
    except SelectolaxError as exc:  # an allocation failed (a worker's memory budget)
        raise HtmlParseError("the HTML cannot be parsed") from exc
    # Whitespace runs within a block collapse to one space (str.split and the old regex \s agree on what
    # whitespace is); blocks that hold no text vanish; a row's cells are joined by CELL_SEPARATOR; a
    # preformatted block keeps its lines and their indentation (EYES7 M4: code samples lost their structure).
    blocks = [
        pre_text(block[1:])
        if pre and block.startswith(pre)
        else join_cells(block.split(cell))
        if cell in block
        else " ".join(block.split())
        for block in text.split(mark)
    ]
    return "\n\n".join(with_title(title, list(filter(None, blocks))))


def preformatted_blocks(tree: LexborHTMLParser, in_cells: set[int]) -> tuple[list[Any], set[int]]:
    """The `<pre>` elements whose line breaks are kept, and the block elements inside them.

    A `<pre>` is preformatted unless it is inside a table cell (the row stays one line), inside another `<pre>`
    (it is part of that one) or holds a table cell. Each subtree is walked once: an inner `<pre>` is skipped,
    its subtree was its outer one's."""
    preformatted: list[Any] = []
    in_pre: set[int] = set()
    nested: set[int] = set()
    for node in tree.tags("pre"):  # document order: an outer <pre> before the ones inside it
        if node.mem_id in nested:
            continue
        inner = [child for child in node.traverse(include_text=False) if child.mem_id != node.mem_id]
        nested.update(child.mem_id for child in inner if child.tag == "pre")
        if node.mem_id in in_cells or any(child.tag in CELL_TAGS for child in inner):
            continue
        preformatted.append(node)
        in_pre.update(child.mem_id for child in inner if child.tag in BLOCK_TAGS)
    return preformatted, in_pre


def pre_text(block: str) -> str:
    """A preformatted block's text: its lines with trailing whitespace removed, no blank lines around them."""
    return "\n".join(line.rstrip() for line in block.split("\n")).strip("\n")


def join_cells(cells: list[str]) -> str:
    """The text of a block whose table cells were split apart: each cell's whitespace collapsed, empty cells
    dropped, the rest joined by CELL_SEPARATOR (a block without cells is one part)."""
    return CELL_SEPARATOR.join(filter(None, (" ".join(part.split()) for part in cells)))


def page_title(tree: LexborHTMLParser) -> str:
    """The document's `<title>` (the first one outside inline SVG and MathML, whose `<title>` elements are an
    icon's tooltip: EYES5 F11), whitespace collapsed; '' when it has none."""
    for node in tree.tags("title"):
        if not _inside(node, ("svg", "math")):
            return " ".join((node.text() or "").split())
    return ""


def with_title(title: str, blocks: list[str]) -> list[str]:
    """The blocks with the title first, unless the first block already is it (a page whose h1 repeats it)."""
    if not title or (blocks and blocks[0].casefold() == title.casefold()):
        return blocks
    return [title, *blocks]


def prune_page(tree: LexborHTMLParser) -> Any:
    """Detach the page furniture (see FURNITURE_TAGS and the rules above it) and return the root."""
    doomed: list[Any] = []
    for tag in FURNITURE_TAGS:
        doomed.extend(tree.tags(tag))
    doomed.extend(node for node in tree.tags("footer") if not _inside(node, SECTIONING_TAGS))
    doomed.extend(
        node
        for node in tree.tags("header")
        if not _inside(node, SECTIONING_TAGS) and (_holds(node, ("nav",)) or not _holds(node, HEADING_TAGS))
    )
    doomed.extend(node for node in tree.tags("dialog") if "open" not in node.attributes)
    for node in itertools.chain.from_iterable(tree.tags(tag) for tag in LANDMARK_TAGS):
        attributes = node.attributes
        if not attributes:
            continue
        role = (attributes.get("role") or "").strip().lower()
        names = f"{attributes.get('id') or ''} {attributes.get('class') or ''}".split()
        if role in FURNITURE_ROLES or any(_BANNER_NAME.search(name) for name in names):
            doomed.append(node)
    for node in doomed:
        node.decompose(recursive=False)  # one inside another: detached from an already detached tree
    return tree.root


def _inside(node: Any, tags: Iterable[str]) -> bool:
    """Whether an ancestor of `node` is one of `tags`."""
    wanted = frozenset(tags)
    parent = node.parent
    while parent is not None:
        if parent.tag in wanted:
            return True
        parent = parent.parent
    return False


def _holds(node: Any, tags: Iterable[str]) -> bool:
    """Whether `node` has a descendant that is one of `tags` (or a navigation role)."""
    return any(
        child.tag in tags or (child.attributes or {}).get("role") == "navigation"
        for child in node.traverse(include_text=False)
    )


def _unused_character(text: str, preferred: str = _MARK, taken: str = "") -> str:
    """A private-use character (never whitespace) absent from ``text`` and ``taken``: ``preferred``, unless the
    text has it."""
    if preferred not in text and preferred not in taken:
        return preferred
    used = set(text) | set(
        taken
    )  # icon fonts put private-use characters in text; one pass, never a scan each
    for code in itertools.chain(*_PRIVATE_USE):
        if chr(code) not in used:
            return chr(code)
    raise InvalidInput("the HTML's text uses every private-use character; it cannot be split into paragraphs")


def pdf_to_text(data: bytes) -> str:
    """Text of every page of a PDF, pages separated by blank lines."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    # Readers accept the header anywhere in the first 1024 bytes. Without one (an HTML page or a text file
    # saved as .pdf), pypdf's own error ("Stream has ended unexpectedly") tells the client nothing.
    if b"%PDF-" not in data[:1024]:
        raise InvalidInput("the file is not a PDF (no %PDF- header); upload it with its real type")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise InvalidInput("the PDF is encrypted; upload an unencrypted copy")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (InvalidInput, MemoryError):
        raise  # MemoryError: the worker's memory budget, reported as such by service.app.ingest.sandbox
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise InvalidInput(f"the PDF cannot be read: {exc or type(exc).__name__}") from exc
    except (
        Exception
    ) as exc:  # pypdf raises assorted errors on malformed files; none of them is a server fault
        logger.info("pypdf failed on an upload", exc_info=exc)
        raise InvalidInput(f"the PDF cannot be read: {type(exc).__name__}") from exc
    return "\n\n".join(page.strip() for page in pages if page.strip())


def extract_text(data: bytes, content_type: str) -> str:
    """Plain text of a document of a supported type; InvalidInput when nothing readable remains."""
    kind = normalize_content_type(content_type)
    if kind == "application/pdf":
        text = pdf_to_text(data)
    elif kind in ("text/plain", "text/markdown"):
        text = decode_text(data, charset_of(content_type))
    elif kind == "text/html":
        text = html_to_text(decode_text(data, charset_of(content_type)))
    else:
        raise UnsupportedMediaType(
            f"unsupported content type {kind or 'unknown'!r}; supported: {', '.join(SUPPORTED_TYPES)}",
            supported=list(SUPPORTED_TYPES),
        )
    text = normalize_text(text)
    if not text.strip():
        raise InvalidInput("the document contains no text")
    return text


def normalize_text(text: str) -> str:
    """Unix newlines, no NULs, no trailing whitespace at the ends."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").strip()
