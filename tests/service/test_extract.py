"""Text extraction from uploads: plain/Markdown kept, HTML reduced to visible text, PDF via pypdf, clear errors."""

from __future__ import annotations

import pytest

from service.app.core.errors import InvalidInput, UnsupportedMediaType
from service.app.ingest.extract import detect_content_type, extract_text, html_to_text
from tests.service.support import encrypt_pdf, make_pdf


def test_plain_text_and_markdown_are_kept_as_text() -> None:
    assert extract_text(b"Line one\r\nLine two\n", "text/plain") == "Line one\nLine two"
    markdown = "# Title\n\n- item *one*\n- item two"
    assert extract_text(markdown.encode(), "text/markdown; charset=utf-8") == markdown


def test_declared_charset_and_utf8_bom_are_honoured() -> None:
    assert extract_text("café".encode("latin-1"), "text/plain; charset=latin-1") == "café"
    assert extract_text("\ufeffhello".encode(), "text/plain") == "hello"


def test_invalid_utf8_and_binary_are_rejected_with_a_reason() -> None:
    with pytest.raises(InvalidInput, match="not valid UTF-8"):
        extract_text(b"\xff\xfe\xfa broken", "text/plain")
    with pytest.raises(InvalidInput, match="NUL"):
        extract_text(b"PK\x03\x04\x00\x00binary", "text/plain")


def test_html_drops_scripts_styles_and_keeps_headings_as_paragraphs() -> None:
    html = """<!doctype html><html><head><title>Ignored</title><style>p {color: red}</style></head>
    <body><h1>Volcanoes</h1><p>Magma rises <b>through</b> the crust.</p>
    <script>alert("no")</script><noscript>enable js</noscript><template><p>hidden</p></template>
    <!-- a comment --><h2>Types</h2><ul><li>Shield</li><li>Stratovolcano</li></ul>tail text</body></html>"""
    assert html_to_text(html).split("\n\n") == [
        "Volcanoes",
        "Magma rises through the crust.",
        "Types",
        "Shield",
        "Stratovolcano",
        "tail text",
    ]
    assert extract_text(html.encode(), "text/html") == html_to_text(html)


def test_pdf_text_is_extracted_page_by_page() -> None:
    data = make_pdf(["Photosynthesis makes sugar (glucose).", "Chlorophyll absorbs light."])
    assert extract_text(data, "application/pdf") == (
        "Photosynthesis makes sugar (glucose).\n\nChlorophyll absorbs light."
    )


def test_encrypted_and_corrupt_pdfs_are_invalid_input_with_a_reason() -> None:
    data = make_pdf(["Secret page"])
    with pytest.raises(InvalidInput, match="encrypted"):
        extract_text(encrypt_pdf(data), "application/pdf")
    with pytest.raises(InvalidInput, match="cannot be read"):
        extract_text(data[: len(data) // 3], "application/pdf")
    with pytest.raises(InvalidInput, match="not a PDF"):
        extract_text(b"this is not a pdf at all", "application/pdf")


def test_documents_without_text_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="no text"):
        extract_text(b"  \n\n ", "text/plain")
    with pytest.raises(InvalidInput, match="no text"):
        extract_text(b"<html><script>only()</script></html>", "text/html")
    with pytest.raises(InvalidInput, match="no text"):
        extract_text(make_pdf([""]), "application/pdf")


def test_unsupported_types_are_415() -> None:
    with pytest.raises(UnsupportedMediaType, match="image/png"):
        extract_text(b"\x89PNG", "image/png")


@pytest.mark.parametrize(
    ("declared", "filename", "expected"),
    [
        ("text/plain", "notes.bin", "text/plain"),
        ("text/html; charset=utf-8", None, "text/html"),
        ("application/octet-stream", "report.PDF", "application/pdf"),
        (None, "readme.md", "text/markdown"),
        ("", "page.htm", "text/html"),
        ("text/x-markdown", "x", "text/markdown"),
    ],
)
def test_upload_type_comes_from_the_declared_type_or_the_extension(
    declared: str | None, filename: str | None, expected: str
) -> None:
    assert detect_content_type(declared, filename) == expected


@pytest.mark.parametrize(
    ("declared", "filename"),
    [("image/png", "cat.png"), ("application/octet-stream", "data.docx"), (None, None)],
)
def test_unknown_upload_types_are_415(declared: str | None, filename: str | None) -> None:
    with pytest.raises(UnsupportedMediaType):
        detect_content_type(declared, filename)
