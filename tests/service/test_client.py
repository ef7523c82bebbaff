"""`python -m service.client ingest DIR`: against a real server process with a low ingest rate limit, every
file ends up stored (text in bulk batches, PDFs uploaded), 429s are waited out for their Retry-After, and a
file the service refuses is reported with its reason and a non-zero exit."""

from __future__ import annotations

import codecs
import io
import json
import os
import random
import re
import signal
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from service import client as ingest_client
from tests.service.prod_support import API_KEYS, KEY_A, bearer
from tests.service.support import make_pdf
from tests.support.processes import _stop, api_process, start_api
from tests.support.servers import _wait_until


def make_folder(root: Path) -> None:
    (root / "hr").mkdir(parents=True)
    for i in range(7):
        (root / "hr" / f"policy {i}.md").write_text(f"# Policy {i}\n\nRule number {i} about river fishing.\n")
    (root / "page.html").write_text("<html><body><p>Opening hours are nine to five.</p></body></html>")
    (root / "latin1.txt").write_bytes("Caf\xe9 menu: cr\xeapes".encode("latin-1"))
    (root / "report.pdf").write_bytes(make_pdf(["Quarterly report: revenue grew."]))
    (root / "empty.txt").write_text("   \n")
    (root / "hr" / "zero.md").write_bytes(b"")  # in a batch with good files: it failed the whole batch
    (root / "ignored.bin").write_bytes(b"\x00\x01")
    # A binary file under a text name (an export in a shared drive): no charset decodes it.
    (root / "misnamed.txt").write_bytes(random.Random(7).randbytes(20_000))
    # Hidden files and folders are not documents (EYES4 E5: `.hidden/secret.md` became searchable).
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.md").write_text("the root password is hunter2")
    (root / "hr" / ".notes.txt").write_text("draft: do not publish")


def test_folder_ingest_waits_out_429s_and_reports_failures(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    make_folder(folder)
    output = io.StringIO()
    with api_process(
        tmp_path,
        api_keys=API_KEYS,
        environment="test",
        data_dir=str(tmp_path / "data"),
        rate_limit_enabled="true",
        rate_limit_ingest="4/second",
        cache_enabled="false",
    ) as url:
        code = ingest_client.main(
            ["ingest", str(folder), "--url", url, "--key", KEY_A, "--batch-size", "3"],
            console=Console(file=output, width=200),
        )
        again = io.StringIO()
        rerun = ingest_client.main(
            ["ingest", str(folder), "--url", url, "--key", KEY_A], console=Console(file=again, width=200)
        )
        wrong = io.StringIO()
        refused = ingest_client.main(
            ["ingest", str(folder / "hr"), "--url", url, "--key", "nope"],
            console=Console(file=wrong, width=200),
        )
        listed = httpx.get(f"{url}/v1/documents?limit=100", headers=bearer(KEY_A)).json()["documents"]
        secret = httpx.post(
            f"{url}/v1/search", json={"query": "root password", "top_k": 20}, headers=bearer(KEY_A)
        ).json()["results"]
        hits = httpx.post(
            f"{url}/v1/search", json={"query": "when is it open?", "top_k": 1}, headers=bearer(KEY_A)
        ).json()["results"]
    text = output.getvalue()
    assert code == 1, text  # three files were refused
    ids = {d["document_id"] for d in listed}
    assert ids == {
        ingest_client.document_id_for(folder / "hr" / f"policy {i}.md", folder) for i in range(7)
    } | {
        "page.html",
        "report.pdf",
        "latin1.txt",  # not UTF-8: uploaded with its charset declared (it failed as "not valid UTF-8")
    }, text
    assert hits[0]["document_id"] == "page.html"
    assert not [h for h in secret if "hunter2" in h["text"]]
    assert "13 files: 10 created, 3 failed" in text
    # The file of a type it does not send is named, not silently left out (a run looked like the whole folder).
    assert re.search(r"^1 file skipped \(not \.htm/\.html/.*\): ignored\.bin$", text, re.M), text
    assert (
        "2 hidden or dependency files and folders left out (--include-hidden sends them): .hidden/, hr/.notes.txt"
        in text
    ), text
    assert "failed hr/zero.md: 422 invalid_input: the document contains no text" in text
    assert "failed empty.txt: 422 invalid_input: text is empty" in text
    # The binary file did not stop the run (it was a UnicodeDecodeError traceback before anything was sent):
    # it went up on its own and the service's reason is listed.
    assert "failed misnamed.txt: 422 invalid_input: the text contains NUL bytes; is it a binary file?" in text
    # 9 bulk items + 2 uploads against 4 per second: the client met 429s and waited them out.
    waits = int(text.split(" rate-limit waits")[0].rsplit("; ", 1)[1])
    assert waits >= 1, text
    # The same folder again replaces the same ids: nothing changed, nothing embedded.
    assert rerun == 1
    assert "13 files: 3 failed, 10 unchanged" in again.getvalue()
    # A refused key stops the run at the first answer (it was sent again for every batch and upload).
    assert refused == 2
    assert (
        "refused the API key (401 unauthorized: invalid API key); nothing more was sent" in wrong.getvalue()
    )


def test_a_file_that_cannot_be_read_fails_alone(tmp_path: Path) -> None:
    """A file gone (or unreadable) between the listing and the read is that file's failure, not a traceback."""
    (tmp_path / "gone.txt").write_text("here a moment ago")
    (tmp_path / "gone.txt").unlink()
    item = ingest_client.prepare(tmp_path / "gone.txt", tmp_path, 256_000)
    assert item.document is None
    assert item.error is not None
    assert item.error.startswith("could not read it: No such file")
    report = ingest_client.Report()
    ingest_client.upload(None, tmp_path, item, report)  # type: ignore[arg-type]  # fails before any request
    assert report.failures == [("gone.txt", "could not read it: No such file or directory")]


def test_a_batch_refused_for_one_item_stores_the_others(tmp_path: Path) -> None:
    """A bulk refused whole for one item's shape ("documents[1]...": nothing stored) fails that file with the
    reason and sends the rest again; it failed every file of the batch under that one file's reason."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(4):
        (folder / f"note{i}.md").write_text(f"Note {i} about the harbour.")
    bulks: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        ids = [d["document_id"] for d in json.loads(request.content)["documents"]]
        bulks.append(ids)
        if "note1.md" in ids:
            index = ids.index("note1.md")
            error = {"code": "invalid_input", "message": f"documents[{index}].metadata is not an object"}
            return httpx.Response(422, json={"error": error})
        items = [
            {"index": i, "document_id": d, "status_code": 201, "result": {"status": "created"}}
            for i, d in enumerate(ids)
        ]
        return httpx.Response(200, json={"succeeded": len(ids), "failed": 0, "items": items})

    report = ingest_client.Report()
    client = ingest_client.IngestClient("http://service", None, report, sleep=lambda _s: None, timeout=7)
    client._http = httpx.Client(base_url="http://service", transport=httpx.MockTransport(handler))
    done: list[int] = []
    ingest_client.ingest_folder(
        client, folder, report, batch_size=3, max_batch_bytes=100_000, advance=done.append
    )
    assert bulks == [["note0.md", "note1.md", "note2.md"], ["note0.md", "note2.md", "note3.md"]]
    assert report.outcomes == {"created": 3, "failed": 1}
    assert report.failures == [("note1.md", "422 invalid_input: documents[1].metadata is not an object")]
    assert sum(done) == 4


def test_retry_after_is_honoured_exactly() -> None:
    """The wait is the server's Retry-After (recorded, not slept), and the request is sent again as it was."""
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        if len(seen) < 3:
            return httpx.Response(429, headers={"Retry-After": str(len(seen) * 7)})
        return httpx.Response(200, json={"ok": True})

    slept: list[float] = []
    report = ingest_client.Report()
    client = ingest_client.IngestClient("http://service", "k", report, sleep=slept.append)
    client._http = httpx.Client(base_url="http://service", transport=httpx.MockTransport(handler))
    response = client.send("POST", "/v1/documents:bulk", json={"documents": [1]})
    assert response.status_code == 200
    assert slept == [7.0, 14.0]
    assert report.rate_limited == 2
    assert len(set(seen)) == 1


def test_a_batch_without_an_answer_in_time_goes_again_in_halves_and_the_run_keeps_them(
    tmp_path: Path,
) -> None:
    """EYES7 M6: on a busy host a batch outlasted the client's timeout and its files were reported failed ("run
    the same command again"). The service stops a bulk whose client left after its current item: the client
    asks which files the service holds with this content (not sent again: their rate limit was paid once), waits
    a bounded time for the one being stored, and sends the others again in halves; later batches stay small,
    and only a single file without an answer fails (with what to do). Here the service answers batches of at
    most 2 files in time, and never the file "note-5.md"; an abandoned batch stores its first file."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(8):
        (folder / f"note-{i}.md").write_text(f"Note {i} about the harbour.")
    (folder / "report.pdf").write_bytes(make_pdf(["Quarterly report."]))
    bulks: list[list[str]] = []
    uploads: list[str] = []
    stored: set[str] = set()
    hashes = {
        f"note-{i}.md": ingest_client.content_hash_of(
            ingest_client.prepare(folder / f"note-{i}.md", folder, 100_000)
        )
        for i in range(8)
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/documents:bulk":
            ids = [d["document_id"] for d in json.loads(request.content)["documents"]]
            bulks.append(ids)
            if len(ids) > 2 or "note-5.md" in ids:
                stored.update(
                    i for i in ids[:1] if i != "note-5.md"
                )  # what it finished before the client left
                raise httpx.ReadTimeout("timed out", request=request)
            items = [
                {"index": i, "document_id": d, "status_code": 201, "result": {"status": "created"}}
                for i, d in enumerate(ids)
            ]
            stored.update(ids)
            return httpx.Response(200, json={"succeeded": len(ids), "failed": 0, "items": items})
        if request.method == "GET":
            document_id = request.url.path.rsplit("/", 1)[1]
            if document_id in stored:
                return httpx.Response(
                    200, json={"document_id": document_id, "content_hash": hashes[document_id]}
                )
            error = {"code": "not_found", "message": "no such document", "document_id": document_id}
            return httpx.Response(404, json={"error": error})
        uploads.append(request.url.path)
        return httpx.Response(201, json={"status": "created"})

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    waits: list[str] = []
    report = ingest_client.Report()
    client = ingest_client.IngestClient(
        "http://service", None, report, sleep=sleep, clock=lambda: now[0], timeout=7, on_wait=waits.append
    )
    client._http = httpx.Client(base_url="http://service", transport=httpx.MockTransport(handler))
    done: list[int] = []
    ingest_client.ingest_folder(
        client, folder, report, batch_size=8, max_batch_bytes=100_000, advance=done.append
    )
    names = [f"note-{i}.md" for i in range(8)]
    # 8 (stores note-0) -> the 4 after it (stores note-1) -> 2 at a time: answered.
    assert bulks[:3] == [names, names[1:5], names[2:4]], bulks
    assert all(len(ids) <= 2 for ids in bulks[2:]), bulks  # the rest of the run keeps batches of 2
    for index, ids in enumerate(bulks):  # a file the service held was never sent again
        held_before = {d for earlier in bulks[:index] for d in earlier[:1] if d != "note-5.md"}
        assert not held_before & set(ids), (index, bulks)
    assert uploads == ["/v1/documents"]
    assert sum(done) == 9
    assert report.outcomes == {"created": 5, "stored": 3, "failed": 1}, report.outcomes
    ((name, reason),) = report.failures
    assert name == "note-5.md"
    assert "no answer within 7 s" in reason
    assert "run the same command again" in reason
    assert "no answer within 7 s; sending 4 files per batch" in waits
    assert now[0] <= 3 * 7 + 1  # each wait for a file being stored is bounded by the timeout


def test_the_default_batch_fits_the_timeout_at_the_documented_rate() -> None:
    """At the slowest documented rate (10 chunks/s on a core, ~1 kB of text a chunk), a full default batch is
    embedded well within the default timeout (5 MB was ~500 s)."""
    seconds_at_slowest = ingest_client.DEFAULT_MAX_BATCH_BYTES / 1000 / 10
    assert seconds_at_slowest * 4 < ingest_client.DEFAULT_TIMEOUT  # room for a machine 4x as busy


def test_a_bad_timeout_is_a_usage_error(tmp_path: Path) -> None:
    output = io.StringIO()
    code = ingest_client.main(
        ["ingest", str(tmp_path), "--url", "http://127.0.0.1:9", "--timeout", "0"],
        console=Console(file=output, width=200),
    )
    assert code == 2
    assert "--timeout must be a positive number of seconds" in output.getvalue()


def test_document_ids_follow_the_relative_path() -> None:
    root = Path("/r")
    derived = ingest_client.document_id_for(Path("/r/hr/Leave Policy (v2).md"), root)
    assert re.fullmatch(r"hr:Leave-Policy-v2-[0-9a-f]{8}\.md", derived), derived
    assert ingest_client.document_id_for(Path("/r/hr/Leave Policy (v2).md"), root) == derived  # stable
    assert ingest_client.document_id_for(Path("/r/a.txt"), root) == "a.txt"
    assert ingest_client.document_id_for(Path("/r/hr/a.txt"), root) == "hr:a.txt"
    # Names the old rule folded into one id ("md", "a-b.txt") stay apart.
    assert ingest_client.document_id_for(Path("/r/日本.md"), root) != ingest_client.document_id_for(
        Path("/r/中国.md"), root
    )
    assert ingest_client.document_id_for(Path("/r/a b.txt"), root) != ingest_client.document_id_for(
        Path("/r/a?b.txt"), root
    )


def test_files_sharing_an_id_are_reported_and_the_rest_stored(tmp_path: Path) -> None:
    """`a:b.txt` and `a/b.txt` are both the id `a:b.txt`: both are skipped with a reason naming the other, and
    the other files of what would have been their batch (refused whole by the service) are stored."""
    folder = tmp_path / "docs"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "b.txt").write_text("Nested file about tides.\n")
    (folder / "a:b.txt").write_text("Flat file about tides.\n")
    for name in ("日本.md", "中国.md", "a b.txt", "a?b.txt", "ok.txt"):
        (folder / name).write_text(f"The text of {name}.\n")
    output = io.StringIO()
    with api_process(tmp_path, api_keys=API_KEYS, environment="test", data_dir=str(tmp_path / "data")) as url:
        code = ingest_client.main(
            ["ingest", str(folder), "--url", url, "--key", KEY_A], console=Console(file=output, width=300)
        )
        listed = httpx.get(f"{url}/v1/documents?limit=100", headers=bearer(KEY_A)).json()["documents"]
    text = output.getvalue()
    assert code == 1, text
    assert "7 files: 5 created, 2 failed" in text
    assert "failed a/b.txt: skipped: its document id 'a:b.txt' is also the id of a:b.txt; rename one" in text
    assert "failed a:b.txt: skipped: its document id 'a:b.txt' is also the id of a/b.txt; rename one" in text
    stored = {d["document_id"] for d in listed}
    expected = {
        ingest_client.document_id_for(folder / n, folder)
        for n in ("日本.md", "中国.md", "a b.txt", "a?b.txt")
    }
    assert stored == expected | {"ok.txt"}


def test_a_refused_key_stops_the_run_at_the_first_answer(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(30):
        (folder / f"note{i}.txt").write_text(f"Note {i}.\n")
    (folder / "scan.pdf").write_bytes(make_pdf(["A scanned page."]))
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(401, json={"error": {"code": "unauthorized", "message": "invalid API key"}})

    report = ingest_client.Report()
    client = ingest_client.IngestClient("http://service", "wrong", report, sleep=lambda _s: None)
    client._http = httpx.Client(base_url="http://service", transport=httpx.MockTransport(handler))
    with pytest.raises(ingest_client.KeyRefused, match="401 unauthorized: invalid API key"):
        ingest_client.ingest_folder(
            client, folder, report, batch_size=5, max_batch_bytes=1_000_000, advance=lambda _n: None
        )
    assert len(seen) == 1  # was: one request per upload and per batch, each refused the same way


def test_a_text_file_too_big_for_a_batch_is_uploaded_with_its_own_type(tmp_path: Path) -> None:
    """Files over --max-batch-bytes go through POST /v1/documents one by one; an .html one was sent as text/plain,
    so the service stored its markup (and script bodies) instead of extracting the text."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "page.html").write_text(
        "<html><script>var x = 1;</script><p>" + "Body text. " * 200 + "</p></html>"
    )
    (folder / "notes.md").write_text("# Notes\n\n" + "Line of notes. " * 200)
    parts: dict[str, str] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/documents"
        body = request.read().decode("utf-8", "replace")
        name = re.search(r'filename="([^"]+)"', body).group(1)  # type: ignore[union-attr]
        parts[name] = re.search(r"Content-Type: ([^\r\n]+)", body.split("filename=", 1)[1]).group(1)  # type: ignore[union-attr]
        return httpx.Response(201, json={"status": "created"})

    report = ingest_client.Report()
    client = ingest_client.IngestClient("http://service", "key", report, sleep=lambda _s: None)
    client._http = httpx.Client(base_url="http://service", transport=httpx.MockTransport(handler))
    ingest_client.ingest_folder(
        client, folder, report, batch_size=5, max_batch_bytes=100, advance=lambda _n: None
    )
    assert parts == {"page.html": "text/html", "notes.md": "text/markdown"}


# Text in legacy charsets, as editors on Windows and old exports write it (the client failed every one of them:
# "422 the text is not valid UTF-8", with no way to declare the charset).
LATIN1_TEXT = (
    "Le caf\xe9 de la gare ouvre \xe0 huit heures. Cr\xeapes, g\xe2teaux et th\xe9 glac\xe9 en \xe9t\xe9."
)
CP1252_TEXT = "\u201cSmart quotes\u201d cost 5 \u20ac \u2014 na\xefve caf\xe9 \u2026 d\xe9j\xe0 vu, cr\xe8me br\xfbl\xe9e."
CP1252_HTML = (
    "<html><head><meta http-equiv='Content-Type' content='text/html; charset=windows-1252'></head>"
    "<body><p>Prix du menu: 7 \u20ac \u2013 cr\xe8me br\xfbl\xe9e \u201cmaison\u201d.</p></body></html>"
)
CP1251_TEXT = "\u041f\u0440\u0438\u0432\u0435\u0442, \u044d\u0442\u043e \u0442\u0435\u0441\u0442\u043e\u0432\u044b\u0439 \u0434\u043e\u043a\u0443\u043c\u0435\u043d\u0442 \u043e \u043f\u043e\u0433\u043e\u0434\u0435 \u0432 \u041c\u043e\u0441\u043a\u0432\u0435."


@pytest.mark.parametrize(
    ("data", "suffix", "encoding", "expected"),
    [
        (b"plain ascii", ".txt", None, None),
        ("d\xe9j\xe0 UTF-8".encode(), ".txt", None, None),
        (
            codecs.BOM_UTF16_LE + "BOM text".encode("utf-16-le"),
            ".txt",
            None,
            None,
        ),  # the service reads the BOM
        (
            LATIN1_TEXT.encode("latin-1"),
            ".txt",
            None,
            "cp1252",
        ),  # it tied with cp1250 and lost ("cr\u0119pes")
        (CP1252_TEXT.encode("cp1252"), ".md", None, "cp1252"),
        (CP1251_TEXT.encode("cp1251"), ".txt", None, "cp1251"),
        (CP1252_HTML.encode("cp1252"), ".html", None, "cp1252"),  # its <meta> declaration
        (LATIN1_TEXT.encode("latin-1"), ".txt", "iso8859-15", "iso8859-15"),  # --encoding wins
    ],
)
def test_the_charset_declared_for_a_text_file(
    data: bytes, suffix: str, encoding: str | None, expected: str | None
) -> None:
    assert ingest_client.text_charset(data, suffix, encoding) == expected


def _chunk_texts(url: str, query: str) -> dict[str, str]:
    response = httpx.post(
        f"{url}/v1/search", json={"query": query, "top_k": 20, "mode": "sparse"}, timeout=60
    )
    assert response.status_code == 200, response.text
    return {hit["document_id"]: hit["text"] for hit in response.json()["results"]}


def test_non_utf8_files_and_a_service_with_lower_bulk_limits(tmp_path: Path) -> None:
    """Against a real service whose BULK_MAX_DOCUMENTS (3) is below the client's batch size (20) and whose
    BULK_MAX_BYTES (3000) is below one file: every file is stored (it failed every file with "413 ... 6 documents
    in one request; BULK_MAX_DOCUMENTS is 3"), and legacy-charset files are stored with their real characters."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(7):
        (folder / f"note{i}.txt").write_text(f"Note {i} about glacier walking.\n")
    (folder / "big.md").write_text("# Big\n\n" + "Glacier walking needs crampons. " * 120)  # ~3.8 KB
    (folder / "latin1.txt").write_bytes(LATIN1_TEXT.encode("latin-1"))
    (folder / "prices.md").write_bytes(CP1252_TEXT.encode("cp1252"))
    (folder / "menu.html").write_bytes(CP1252_HTML.encode("cp1252"))
    (folder / "meteo.txt").write_bytes(CP1251_TEXT.encode("cp1251"))
    output = io.StringIO()
    with api_process(
        tmp_path,
        environment="test",
        auth_disabled="true",
        data_dir=str(tmp_path / "data"),
        bulk_max_documents="3",
        bulk_max_bytes="3000",
        cache_enabled="false",
    ) as url:
        code = ingest_client.main(
            ["ingest", str(folder), "--url", url], console=Console(file=output, width=200)
        )
        listed = httpx.get(f"{url}/v1/documents?limit=100").json()["documents"]
        french = _chunk_texts(url, "caf\xe9 cr\xeapes cr\xe8me br\xfbl\xe9e")
        russian = _chunk_texts(url, "\u041f\u0440\u0438\u0432\u0435\u0442")
    text = output.getvalue()
    assert code == 0, text
    assert "12 files: 12 created" in text
    assert {d["document_id"] for d in listed} == {f"note{i}.txt" for i in range(7)} | {
        "big.md",
        "latin1.txt",
        "prices.md",
        "menu.html",
        "meteo.txt",
    }
    assert french["latin1.txt"] == LATIN1_TEXT
    assert french["prices.md"] == CP1252_TEXT
    assert french["menu.html"] == "Prix du menu: 7 \u20ac \u2013 cr\xe8me br\xfbl\xe9e \u201cmaison\u201d."
    assert russian["meteo.txt"] == CP1251_TEXT


def test_hidden_files_are_sent_only_when_asked(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "README.md").write_text("ci notes")
    (root / "a.md").write_text("a")
    (root / ".env.txt").write_text("KEY=1")
    # EYES5 F8: dependency folders were sent too.
    (root / "web" / "node_modules" / "pkg").mkdir(parents=True)
    (root / "web" / "node_modules" / "pkg" / "README.md").write_text("a package")
    (root / "env" / "lib").mkdir(parents=True)
    (root / "env" / "pyvenv.cfg").write_text("home = /usr/bin")
    (root / "env" / "lib" / "LICENSE.txt").write_text("a licence")
    assert ingest_client.collect(root) == [root / "a.md"]
    files, hidden = ingest_client.walk(root)
    assert files == [root / "a.md"]
    assert hidden == [root / ".env.txt", root / ".github", root / "env", root / "web" / "node_modules"]
    assert ingest_client.collect(root, include_hidden=True) == [
        root / ".env.txt",
        root / ".github" / "README.md",
        root / "a.md",
        root / "env" / "lib" / "LICENSE.txt",
        root / "web" / "node_modules" / "pkg" / "README.md",
    ]


def test_a_url_that_is_not_the_service_stops_at_the_first_answer(tmp_path: Path) -> None:
    # EYES4 E13: `--url http://host/v1` printed one "404 not_found" per file and went on sending.
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    requests: list[str] = []

    class NotFound(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            requests.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"error": {"code": "not_found", "message": "Not Found"}}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    root = tmp_path / "docs"
    root.mkdir()
    for i in range(5):
        (root / f"{i}.md").write_text(f"note {i}")
    (root / "big.pdf").write_bytes(make_pdf(["a pdf"]))
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    output = io.StringIO()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        code = ingest_client.main(
            ["ingest", str(root), "--url", url, "--batch-size", "2"], console=Console(file=output, width=300)
        )
    finally:
        server.shutdown()
    text = output.getvalue()
    assert code == 2, text
    assert len(requests) == 1, requests
    assert (
        "answered 404 not_found: Not Found; nothing more was sent: --url must be the service's base URL"
        in text
    )
    assert "failed" not in text


def test_a_url_that_can_never_work_is_not_retried() -> None:
    # EYES5 F10: a URL without http:// was retried for 30 s as if the service were down.
    output = io.StringIO()
    slept: list[float] = []
    report = ingest_client.Report()
    client = ingest_client.IngestClient("127.0.0.1:9", None, report, sleep=slept.append)
    with pytest.raises(httpx.UnsupportedProtocol):
        client.send("POST", "/v1/documents:bulk", json={"documents": []})
    client.close()
    assert slept == []
    assert report.retried == 0
    assert output.getvalue() == ""


def test_a_service_that_cannot_be_reached_says_a_rerun_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # EYES9 L5: the give-up line must tell the operator that running the same command again is safe and resumes.
    (tmp_path / "a.md").write_text("# A\n\nsome text\n", encoding="utf-8")
    real = ingest_client.IngestClient
    monkeypatch.setattr(
        ingest_client, "IngestClient", lambda *a, **kw: real(*a, **{**kw, "sleep": lambda _s: None})
    )
    output = io.StringIO()
    code = ingest_client.main(
        ["ingest", str(tmp_path), "--url", "http://127.0.0.1:9"], console=Console(file=output, width=400)
    )
    text = " ".join(output.getvalue().split())
    assert code == 2, text
    assert "cannot reach http://127.0.0.1:9" in text
    assert "run the same command again: what was already stored is skipped" in text


def test_folder_metadata_from_the_command_line_and_sidecars_reaches_the_filters(tmp_path: Path) -> None:
    # EYES7 M3: every bulk-loaded document had {} metadata, so the README's filters could not select them.
    folder = tmp_path / "docs"
    (folder / "hr").mkdir(parents=True)
    (folder / "hr" / "leave.md").write_text("# Leave\n\nEmployees get thirty days of paid leave a year.\n")
    (folder / "hr" / "leave.md.meta.json").write_text(json.dumps({"year": 2023, "owner": "ana"}))
    (folder / "travel.txt").write_text("Travel is booked through the portal two weeks ahead.\n")
    (folder / "report.pdf").write_bytes(make_pdf(["Quarterly report: paid leave costs grew."]))
    (folder / "report.pdf.meta.json").write_text(json.dumps({"team": "finance"}))
    (folder / "broken.txt").write_text("A file whose sidecar is not an object.\n")
    (folder / "broken.txt.meta.json").write_text("[1, 2]")
    output = io.StringIO()
    with api_process(
        tmp_path,
        api_keys=API_KEYS,
        environment="test",
        data_dir=str(tmp_path / "data"),
        cache_enabled="false",
    ) as url:
        code = ingest_client.main(
            [
                "ingest",
                str(folder),
                "--url",
                url,
                "--key",
                KEY_A,
                "--metadata",
                "team=hr",
                "--metadata",
                "year=2024",
            ],
            console=Console(file=output, width=200),
        )
        listed = httpx.get(f"{url}/v1/documents?limit=100", headers=bearer(KEY_A)).json()["documents"]
        filtered = httpx.post(
            f"{url}/v1/search",
            json={"query": "paid leave", "top_k": 10, "filter": {"team": "hr", "year": {"gte": 2024}}},
            headers=bearer(KEY_A),
        ).json()["results"]
    text = output.getvalue()
    assert code == 1, text  # the broken sidecar's file failed
    assert (
        "failed broken.txt: its metadata file broken.txt.meta.json must hold a JSON object, not list" in text
    )
    metadata = {d["document_id"]: d["metadata"] for d in listed}
    assert metadata == {
        "hr:leave.md": {"team": "hr", "year": 2023, "owner": "ana"},  # the sidecar's keys win
        "travel.txt": {"team": "hr", "year": 2024},  # numbers stay numbers
        "report.pdf": {"team": "finance", "year": 2024},  # an upload carries them too
    }, text
    assert {hit["document_id"] for hit in filtered} == {"travel.txt"}


def test_a_metadata_option_without_a_key_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ingest_client.main(["ingest", str(tmp_path), "--url", "http://127.0.0.1:9", "--metadata", "year"])
    assert exit_info.value.code == 2


def test_a_batch_the_real_service_was_still_storing_is_not_sent_again_for_what_it_stored(
    tmp_path: Path,
) -> None:
    """Against a real service: the process stops itself (SIGSTOP) before committing the batch's first file, so
    the client's read times out for sure; it is resumed once the client gave up. The client waits for the file
    the service was storing and does not send it again (the resend overlapped it, and paid its rate limit a
    second time); the others go again and every file ends stored once."""
    folder = tmp_path / "docs"
    folder.mkdir()
    names = [f"note-{i}.md" for i in range(4)]
    for i, name in enumerate(names):
        (folder / name).write_text(f"Note {i} about the harbour and its tides.")
    started = start_api(
        tmp_path,
        data_dir=str(tmp_path / "data"),
        api_keys=API_KEYS,
        environment="test",
        rag_fault_stop_at="before_activate",
    )
    try:
        bulks: list[list[str]] = []

        def record(request: httpx.Request) -> None:
            if request.url.path == "/v1/documents:bulk":
                bulks.append([d["document_id"] for d in json.loads(request.content)["documents"]])

        def resume(message: str) -> None:
            if "asking which files the service stored" in message:
                os.kill(started.proc.pid, signal.SIGCONT)  # the client gave up: the service goes on

        report = ingest_client.Report()
        client = ingest_client.IngestClient(started.url, KEY_A, report, timeout=20, on_wait=resume)
        client._http.event_hooks["request"] = [record]
        try:
            ingest_client.ingest_folder(
                client, folder, report, batch_size=4, max_batch_bytes=100_000, advance=lambda _n: None
            )
        finally:
            client.close()
        assert bulks[0] == names, bulks
        assert all("note-0.md" not in ids for ids in bulks[1:]), bulks  # stored by the abandoned batch
        assert report.outcomes["stored"] >= 1, report.outcomes
        assert sum(report.outcomes.values()) == 4, report.outcomes
        assert not report.failures, report.failures
        for name in names:
            got = httpx.get(f"{started.url}/v1/documents/{name}", headers=bearer(KEY_A), timeout=60)
            assert got.status_code == 200, got.text
        assert any("its client left after 1 of 4 items" in line for line in started.log_lines()), (
            started.log_lines()[-20:]
        )
    finally:
        if started.proc.poll() is None:
            os.kill(started.proc.pid, signal.SIGCONT)
        _stop(started.proc)


@pytest.mark.parametrize(
    ("failure", "requests_per_question"),
    [(httpx.ReadTimeout, 1), (httpx.ConnectError, 1 + ingest_client.TRANSIENT_RETRIES)],
)
def test_a_service_that_does_not_answer_the_questions_after_an_abandoned_batch_is_asked_once(
    tmp_path: Path, failure: type[httpx.TransportError], requests_per_question: int
) -> None:
    """After a batch without an answer the client asks which files the service holds. A service that does not
    answer that either (still stopped, or gone) was asked once per file of the batch, each a full --timeout (or
    ~30 s of connection retries), then polled for the first one: hours for a large batch before anything was sent
    again. The first question without an answer ends the asking, and every file goes again."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(6):
        (folder / f"note-{i}.md").write_text(f"Note {i}.")
    batch = [ingest_client.prepare(folder / f"note-{i}.md", folder, 100_000) for i in range(6)]
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        raise failure("no answer", request=request)

    waits: list[str] = []
    now = [0.0]
    client = ingest_client.IngestClient(
        "http://service",
        None,
        ingest_client.Report(),
        sleep=lambda seconds: now.__setitem__(0, now[0] + seconds),
        clock=lambda: now[0],
        timeout=7,
        on_wait=waits.append,
    )
    client._http = httpx.Client(base_url="http://service", transport=httpx.MockTransport(handler))
    assert client.settle_abandoned(batch) == batch  # nothing confirmed: every file goes again
    assert asked == ["/v1/documents/note-0.md"] * requests_per_question, asked
    assert "the service does not answer; sending the files not confirmed stored again" in waits


def test_a_file_the_abandoned_batch_refused_is_not_waited_for_and_the_questions_are_few(
    tmp_path: Path,
) -> None:
    """Against a real service: the abandoned batch's first file is refused by the service at once (its text is
    empty once normalised), the second is the one it was storing (stopped before its commit, resumed once the
    client gave up). The client waited for the first file not held, the refused one: ABANDONED_WAIT_SECONDS of
    questions every POLL_SECONDS (240 reads against the read rate limit), then sent the stored file again. Now
    the refused file is not asked about, the stored one is waited for with few questions and not sent again,
    and the refused one goes again to be reported with its reason. The client's clock is fake; each of its
    pauses waits (bounded) until the service has logged that it stopped the batch, so no poll races it."""
    folder = tmp_path / "docs"
    folder.mkdir()
    names = [f"note-{i}.md" for i in range(4)]
    (folder / names[0]).write_text("  \n\n \t\n")
    for i, name in enumerate(names[1:], start=1):
        (folder / name).write_text(f"Note {i} about the harbour and its tides.")
    started = start_api(
        tmp_path,
        data_dir=str(tmp_path / "data"),
        api_keys=API_KEYS,
        environment="test",
        rag_fault_stop_at="before_activate",
    )
    try:
        bulks: list[list[str]] = []
        reads: list[str] = []

        def record(request: httpx.Request) -> None:
            if request.url.path == "/v1/documents:bulk":
                bulks.append([d["document_id"] for d in json.loads(request.content)["documents"]])
            elif request.method == "GET":
                reads.append(request.url.path.rsplit("/", 1)[1])

        def resume(message: str) -> None:
            if "asking which files the service stored" in message:
                os.kill(started.proc.pid, signal.SIGCONT)  # the client gave up: the service goes on

        def stopped_the_batch() -> bool:
            return any("its client left after" in line for line in started.log_lines())

        now = [0.0]

        def sleep(seconds: float) -> None:
            _wait_until(
                stopped_the_batch, "the service stopping the abandoned batch", started.proc, started.log
            )
            now[0] += seconds

        report = ingest_client.Report()
        client = ingest_client.IngestClient(
            started.url, KEY_A, report, timeout=20, on_wait=resume, sleep=sleep, clock=lambda: now[0]
        )
        client._http.event_hooks["request"] = [record]
        try:
            ingest_client.ingest_folder(
                client, folder, report, batch_size=4, max_batch_bytes=100_000, advance=lambda _n: None
            )
        finally:
            client.close()
        assert bulks[0] == names, bulks
        assert "note-0.md" not in reads, reads  # refused at once: never the one being stored
        assert all("note-1.md" not in ids for ids in bulks[1:]), bulks  # stored by the abandoned batch
        assert any("note-0.md" in ids for ids in bulks[1:]), bulks  # sent again for its reason
        # one question per file that may be held, then the file being stored: at most the spaced-out polls
        assert len(reads) <= 3 + 12, reads
        assert [name for name, _ in report.failures] == ["note-0.md"], report.failures
        assert "text is empty" in report.failures[0][1], report.failures
        for name in names[1:]:
            got = httpx.get(f"{started.url}/v1/documents/{name}", headers=bearer(KEY_A), timeout=60)
            assert got.status_code == 200, got.text
    finally:
        if started.proc.poll() is None:
            os.kill(started.proc.pid, signal.SIGCONT)
        _stop(started.proc)
