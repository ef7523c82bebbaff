"""Text extraction from uploads: plain/Markdown kept, HTML reduced to visible text, PDF via pypdf, clear errors."""

from __future__ import annotations

import codecs

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


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
def test_utf16_and_utf32_are_read_by_their_bom_or_declared_charset(codec: str) -> None:
    text = "Crème brûlée, 東京 and 😀.\nSecond line."
    bom = {"le": codecs.BOM_UTF16_LE, "be": codecs.BOM_UTF16_BE}
    if codec.startswith("utf-32"):
        bom = {"le": codecs.BOM_UTF32_LE, "be": codecs.BOM_UTF32_BE}
    data = text.encode(codec)  # "utf-16"/"utf-32" write a BOM; the -le/-be codecs do not
    if codec.endswith(("le", "be")):
        assert extract_text(data, f"text/plain; charset={codec}") == text
        data = bom[codec[-2:]] + data
    assert extract_text(data, "text/plain") == text
    assert extract_text(data, "text/markdown; charset=utf-8") == text  # the BOM wins, as in WHATWG sniffing
    html = f"<p>{text}</p>".encode(codec)
    assert "Crème brûlée" in extract_text(
        html if codec in ("utf-16", "utf-32") else bom[codec[-2:]] + html, "text/html"
    )


def test_utf16_without_bom_or_charset_and_nul_characters_are_refused_with_a_reason() -> None:
    with pytest.raises(InvalidInput, match="needs a byte order mark or a declared charset"):
        extract_text("hello".encode("utf-16-le"), "text/plain")
    with pytest.raises(InvalidInput, match="NUL characters once decoded as UTF-16"):
        extract_text(codecs.BOM_UTF16_LE + "a\x00b".encode("utf-16-le"), "text/plain")
    with pytest.raises(InvalidInput, match="not valid UTF-16"):
        extract_text(codecs.BOM_UTF16_LE + b"abc", "text/plain")  # odd length


def test_invalid_utf8_and_binary_are_rejected_with_a_reason() -> None:
    with pytest.raises(InvalidInput, match="not valid UTF-8"):
        # (not at the start: FF FE there is the UTF-16 byte order mark)
        extract_text(b"ok \xff\xfe\xfa broken", "text/plain")
    with pytest.raises(InvalidInput, match="NUL"):
        extract_text(b"PK\x03\x04\x00\x00binary", "text/plain")


def test_html_drops_scripts_styles_and_keeps_headings_as_paragraphs() -> None:
    html = """<!doctype html><html><head><title>Ignored</title><style>p {color: red}</style></head>
    <body><h1>Volcanoes</h1><p>Magma rises <b>through</b> the crust.</p>
    <script>alert("no")</script><noscript>enable js</noscript><template><p>hidden</p></template>
    <!-- a comment --><h2>Types</h2><ul><li>Shield</li><li>Stratovolcano</li></ul>tail text</body></html>"""
    assert html_to_text(html).split("\n\n") == [
        "Ignored",  # the page's <title> (kept since EYES4 E2: it was dropped with the head)
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


# EYES4 E2: the navigation, the cookie banner and the footer of a web page were stored as content (an answer
# about single sign-on quoted "Accept all cookies."), the <title> was dropped, and a table's cells became
# paragraphs of their own ("Team", "50 users"), so the row's fact was split across blocks.
WEB_PAGE = """<!doctype html><html><head><title>Team plan - Example Corp</title></head><body>
<header><a href="/">Home</a> <nav><ul><li><a>Pricing</a></li><li><a>Careers</a></li></ul></nav>
<a href="/login">Log in</a></header>
<div id="cookie-consent" class="banner">We use cookies to improve the site. <button>Accept all cookies.</button></div>
<div role="navigation"><a>Docs</a></div>
<dialog><p>Subscribe to our newsletter</p></dialog>
<main>
  <article><header><h1>Plans</h1><p>Updated 2026-01-01</p></header>
  <p>Single sign-on supports SAML 2.0.</p>
  <table><caption>Limits</caption><tr><th>Plan</th><th>Users</th></tr>
  <tr><td>Free</td><td>3 users</td></tr><tr><td> Team </td><td></td><td>50 <b>users</b></td></tr></table>
  <footer>Written by the sales team.</footer></article>
</main>
<aside><p>Related: enterprise plans.</p></aside>
<footer><p>&copy; 2026 Example Corp.</p><p>Privacy policy.</p></footer>
</body></html>"""


def test_a_web_page_keeps_its_title_and_content_and_drops_its_furniture() -> None:
    assert html_to_text(WEB_PAGE).split("\n\n") == [
        "Team plan - Example Corp",
        "Plans",
        "Updated 2026-01-01",  # an article's own header is its heading, not the page's banner
        "Single sign-on supports SAML 2.0.",
        "Limits",
        "Plan | Users",
        "Free | 3 users",
        "Team | 50 users",  # one row, one paragraph; the empty cell leaves no "| |"
        "Written by the sales team.",
        "Related: enterprise plans.",  # an aside beside <main> is content (EYES5 F6)
    ]


def test_without_main_the_body_is_kept_less_its_furniture() -> None:
    page = WEB_PAGE.replace("<main>", "").replace("</main>", "")
    blocks = html_to_text(page).split("\n\n")
    assert blocks[0] == "Team plan - Example Corp"
    assert "Related: enterprise plans." in blocks  # the aside is content when no <main> says otherwise
    for furniture in ("Home", "Pricing", "Log in", "Accept all cookies.", "Docs", "Privacy policy."):
        assert not any(furniture in block for block in blocks), furniture
    assert "Subscribe to our newsletter" not in blocks


def test_a_repeated_title_is_said_once_and_an_icons_title_is_not_the_pages() -> None:
    page = "<title>Otters</title><main></main><h1>Otters</h1><p>Otters hold hands.</p>"
    assert html_to_text(page) == "Otters\n\nOtters hold hands."
    assert html_to_text("<title> </title><p>x</p>") == "x"
    # EYES5 F11: on a page without a <title>, an inline SVG icon's <title> became the page's title.
    icon = "<body><svg><title>Search icon</title></svg><p>Widgets ship in May.</p></body>"
    assert html_to_text(icon) == "Widgets ship in May."


# EYES5: the first furniture rules dropped real content.
@pytest.mark.parametrize(
    ("html", "kept"),
    [
        # F1: a WordPress post tagged gdpr, a recipe card, a section about the GDPR, a consent warning.
        (
            '<article class="post tag-gdpr"><p>Data requests take 30 days.</p></article>',
            "Data requests take 30 days.",
        ),
        (
            '<div class="cookie-recipe"><p>Bake at 180 C for 12 minutes.</p></div>',
            "Bake at 180 C for 12 minutes.",
        ),
        ('<section id="gdpr"><p>We keep logs for 14 days.</p></section>', "We keep logs for 14 days."),
        ('<div class="consent-warning"><p>Minors need a parent.</p></div>', "Minors need a parent."),
        # F2: the other tabs of tabbed docs are hidden until clicked.
        ('<div role="tabpanel" hidden><p>conda install widgets</p></div>', "conda install widgets"),
        # F3: a page-level header holding the article's title, byline and date.
        (
            "<header><h1>Widget Server 7.3</h1><p>Released 2026-05-04</p></header><p>Notes.</p>",
            "Released 2026-05-04",
        ),
    ],
)
def test_content_that_looks_like_furniture_is_kept(html: str, kept: str) -> None:
    assert kept in html_to_text(html).split("\n\n")


@pytest.mark.parametrize(
    "banner",
    [
        '<div class="cookie-banner">We use cookies.</div>',
        '<div id="cookie-consent" class="banner">We use cookies.</div>',
        '<div id="onetrust-consent-sdk"><p>We use cookies.</p></div>',
        '<div id="CybotCookiebotDialog"><p>We use cookies.</p></div>',
        '<div class="cc-window cc-banner">We use cookies.</div>',
        '<section class="gdpr-notice">We use cookies.</section>',
        '<header><a href="/">Home</a><nav><a>Docs</a></nav><h1>Widgets</h1></header>',  # a site bar with a nav
    ],
)
def test_banners_are_left_out(banner: str) -> None:
    text = html_to_text(f"{banner}<p>Widgets ship in May.</p>")
    assert text == "Widgets ship in May."


def test_a_row_whose_cells_hold_blocks_or_a_table_stays_one_paragraph() -> None:
    # EYES5 F7: a <p> in a cell, or a nested table, split the row across paragraphs.
    html = (
        "<table><tr><th>Plan</th><th>Price</th><th>Limits</th></tr>"
        "<tr><td><p>Team</p></td><td><div>$49</div><div>per month</div></td>"
        "<td><table><tr><td>50 users</td><td>10 GB</td></tr></table></td></tr></table><p>After.</p>"
    )
    assert html_to_text(html).split("\n\n") == [
        "Plan | Price | Limits",
        "Team | $49 per month | 50 users | 10 GB",
        "After.",
    ]
