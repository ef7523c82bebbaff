"""`<pre>` code blocks keep their line breaks and indentation (EYES7 M4: a C sample was stored as one line), from
an HTML upload through the HTTP API to the stored chunks and the search results; elsewhere whitespace still
collapses, and a `<pre>` inside a table cell stays part of its row."""

from __future__ import annotations

from pathlib import Path

from service.app.ingest.extract import html_to_text
from service.app.store.embedder import FastEmbedEmbedder
from tests.service.html_reference import walk_html_to_text
from tests.service.support import make_settings, running_app

CODE = '#include <stdio.h>\n#include <ffi.h>\n\n/* Acts like puts with the file given at time of enclosure. */\nint main() {\n    puts("hi");\n    return 0;\n}'
PAGE = (
    "<html><head><title>Closure Example</title></head><body><h1>Closure Example</h1>"
    "<p>Here is   an example\n of a closure.</p>"
    f"<pre class='example'>\n{CODE.replace('<', '&lt;').replace('>', '&gt;')}   \n\n</pre>"
    "<p>After the   sample.</p></body></html>"
)


def test_a_pre_block_keeps_its_lines_and_the_rest_still_collapses() -> None:
    text = html_to_text(PAGE)
    assert text == f"Closure Example\n\nHere is an example of a closure.\n\n{CODE}\n\nAfter the sample."
    assert text == walk_html_to_text(PAGE)


def test_breaks_inside_pre_are_lines_and_a_pre_in_a_cell_stays_in_its_row() -> None:
    html = (
        "<pre>one<br>two<div>three</div>four</pre><table><tr><td><pre>a\nb</pre></td><td>c</td></tr></table>"
    )
    assert html_to_text(html) == "one\ntwo\nthree\nfour\n\na b | c"
    assert html_to_text(html) == walk_html_to_text(html)


def test_an_uploaded_pages_code_sample_keeps_its_lines_in_chunks_and_search(
    tmp_path: Path, embedder: FastEmbedEmbedder
) -> None:
    settings = make_settings(tmp_path, chunk_size=128, chunk_overlap=8)
    with running_app(settings, embedder=embedder) as client:
        stored = client.post(
            "/v1/documents",
            files={"file": ("Closure-Example.html", PAGE.encode(), "text/html")},
            data={"document_id": "closure"},
        )
        assert stored.status_code == 201, stored.text
        chunks = client.get("/v1/documents/closure/chunks").json()["chunks"]
        joined = "\n".join(chunk["text"] for chunk in chunks)
        assert "#include <stdio.h>\n#include <ffi.h>" in joined
        assert 'int main() {\n    puts("hi");' in joined
        hits = client.post("/v1/search", json={"query": "include stdio ffi closure", "top_k": 5}).json()[
            "results"
        ]
        assert any("#include <stdio.h>\n#include <ffi.h>" in hit["text"] for hit in hits), hits
