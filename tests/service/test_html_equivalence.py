"""`html_to_text` (block segmentation inside lexbor) gives exactly the text of the node-by-node tree walk it
replaced (tests/service/html_reference.py) on the project's own HTML, on generated hostile markup, and on pages
nested deeper than Python could recurse; the private-use marker it splits on never leaks or eats real text.
"""

from __future__ import annotations

import itertools
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app.core.errors import InvalidInput
from service.app.ingest.extract import BLOCK_TAGS, DROPPED_TAGS, _unused_character, html_to_text
from tests.service.html_reference import benchmark_page, walk_html_to_text

# The HTML the service's own tests ingest (test_extract, test_api_documents, test_hostile_input, test_client,
# test_extraction_budget) and the benchmark's page: chunk boundaries come from exactly this block structure.
PROJECT_PAGES = [
    """<!doctype html><html><head><title>Ignored</title><style>p {color: red}</style></head>
    <body><h1>Volcanoes</h1><p>Magma rises <b>through</b> the crust.</p>
    <script>alert("no")</script><noscript>enable js</noscript><template><p>hidden</p></template>
    <!-- a comment --><h2>Types</h2><ul><li>Shield</li><li>Stratovolcano</li></ul>tail text</body></html>""",
    "<h1>Sourdough</h1><p>Wild yeast leavens the bread.</p><script>var secret = 1;</script>",
    "<h2>Tides</h2><p>Spring tides are strong.</p><style>p{}</style>",
    "<html><body><h1>Kept</h1><p>The text <b>that was chunked</b> is kept.</p></body></html>",
    "<html><body><p>Opening hours are nine to five.</p></body></html>",
    "<!doctype html><html><body>Otters</body></html>",
    "<html><script>only()</script></html>",
    "<div>" * 3000 + "deep basalt columns" + "</div>" * 3000,
    "<h1>Basalt</h1><p>Basalt columns form when thick lava flows cool slowly.</p>"
    f"<script>{'var x = 1;' * 2000}</script>",
    "<p>tiny</p>",
]


@pytest.mark.parametrize("html", [*PROJECT_PAGES, benchmark_page(30)])
def test_the_project_pages_give_the_tree_walks_text(html: str) -> None:
    assert html_to_text(html) == walk_html_to_text(html)


# Tags the generator draws from: every block and dropped tag, inline ones, tables (foster parenting), lists,
# foreign content (svg, MathML and their integration points), raw-text and RCDATA elements, custom elements.
TAGS = sorted(
    BLOCK_TAGS
    | set(DROPPED_TAGS)
    | {"b", "i", "a", "span", "em", "code", "small", "label", "select", "option", "textarea", "xmp", "title"}
    | {"math", "mi", "mtext", "annotation-xml", "desc", "foreignObject", "my-widget", "body", "html"}
    | {"frameset"}
)
TEXTS = st.sampled_from(
    [
        "word",
        "Basalt columns",
        " ",
        "\n",
        "\t \r\n",
        "\xa0",
        "\u2003\u3000",
        "\x0c\x1c",
        "&amp;",
        "&nbsp;",
        "&lt;p&gt;",
        "&#xE000;",
        "\ue000",
        "\ue001x",
        "<!-- note -->",
        "<!doctype html>",
        "<br>",
        "<hr/>",
        "<img alt='pic'>",
        "</p>",
        "</div>",
        "</td>",
        "</li>",
        "<",
        "&",
    ]
)


@st.composite
def elements(draw: st.DrawFn, children: st.SearchStrategy[str]) -> str:
    tag = draw(st.sampled_from(TAGS))
    attribute = draw(
        st.sampled_from(["", " class='c'", ' title="<p>x</p>"', " hidden", " encoding='text/html'"])
    )
    inner = "".join(draw(st.lists(children, max_size=4)))
    closing = draw(st.sampled_from([f"</{tag}>", f"</{tag}>", ""]))  # an unclosed tag now and then
    return f"<{tag}{attribute}>{inner}{closing}"


MARKUP = st.recursive(
    TEXTS | st.text(alphabet=string.ascii_letters + " ", max_size=8),
    lambda children: elements(children),
    max_leaves=40,
)


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MARKUP, max_size=6).map("".join))
def test_generated_markup_gives_the_tree_walks_text(html: str) -> None:
    assert html_to_text(html) == walk_html_to_text(html)


def test_text_holding_the_marker_character_keeps_it_and_its_blocks() -> None:
    # Icon fonts put private-use characters into text; the first of them is the preferred block marker.
    html = "<p>\ue000 home</p><p>next \ue001&#xE002;</p>inline<b>\ue000</b>tail"
    assert html_to_text(html) == "\ue000 home\n\nnext \ue001\ue002\n\ninline\ue000tail"
    assert html_to_text(html) == walk_html_to_text(html)


def test_nesting_far_deeper_than_python_recursion_is_extracted() -> None:
    depth = 50_000
    html = "<span>" * depth + "<p>deep</p>tail" + "</span>" * depth
    assert html_to_text(html) == "deep\n\ntail"


@pytest.mark.parametrize("dropped", DROPPED_TAGS)
def test_invisible_elements_nested_in_each_other_are_dropped_whole(dropped: str) -> None:
    # A dropped element inside another one is detached from an already detached tree: no crash, no leak.
    html = f"<p>a</p><{dropped}><{dropped}><p>in</p></{dropped}><p>in too</p></{dropped}><p>b</p>"
    text = html_to_text(html)
    assert text == walk_html_to_text(html)
    assert text.startswith("a\n\n")
    assert text.endswith("\n\nb")
    assert "\ue000" not in text


def test_the_marker_is_a_character_the_text_does_not_use() -> None:
    assert _unused_character("plain") == "\ue000"
    assert _unused_character("icons \ue000\ue001 here") == "\ue002"
    assert _unused_character("".join(map(chr, range(0xE000, 0xF900)))) == "\U000f0000"
    every = "".join(
        map(chr, itertools.chain(range(0xE000, 0xF900), range(0xF0000, 0xFFFFE), range(0x100000, 0x10FFFE)))
    )
    with pytest.raises(InvalidInput, match="every private-use character"):
        _unused_character(every)
