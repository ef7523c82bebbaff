"""`ragops reindex` against the real service (`python -m service` on a free loopback port: SQLite, embedded Qdrant
in local mode, the offline model, API keys and an ADMIN_API_KEY): start with a progress bar until the switch,
status, rollback, and every refusal as one readable line with exit status 1 (2 for usage). The stack outputs come
from the fake Pulumi backend, as after `ragops up`.

A second model cannot be downloaded here, so the re-index changes the chunking (200 -> 64 tokens): another
collection and other chunks, the same path as a model change (the service's generation carries its own embedder).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from infra.workflows import reindex as reindex_mod
from infra.workflows.cli import app
from infra.workflows.stacks import Context
from tests.support.processes import api_process
from tests.support.servers import free_port, json_server
from tests.workflows.fake_pulumi import FakeBackend

runner = CliRunner()
# How long a command here follows a real re-index (three documents: seconds) before it fails saying where it
# stopped; the default (an hour) would leave a wait that never ends to pytest-timeout's stack dump.
FOLLOW = "300"
KEY = "tenant-key-0123456789abcdef0123"
ADMIN = "admin-key-0123456789abcdef0123456"
DOCS = {
    "volcano": "Volcanoes erupt molten rock and ash from deep below the crust of the planet. " * 6,
    "bread": "Sourdough bread rises slowly because wild yeast ferments the dough overnight. " * 6,
    "violin": "The violin has four strings tuned in perfect fifths and is played with a bow. " * 6,
}


def _invoke(ctx: Context, *args: str):
    return runner.invoke(app, list(args), obj=ctx)


def _flat(text: str) -> str:
    return " ".join(text.split())


@contextlib.contextmanager
def service_process(data: Path, **overrides: str) -> Iterator[str]:
    """`python -m service` on a free loopback port over `data` (SQLite + local-mode Qdrant there), API keys and
    an admin key on, 200-token chunks; ``overrides`` are settings (e.g. a DATABASE_URL several replicas share)."""
    settings = {
        "data_dir": str(data),
        "vector_store": "local",
        "api_keys": json.dumps({KEY: "default"}),
        "admin_api_key": ADMIN,
        "environment": "development",
        "log_level": "WARNING",
        "rate_limit_enabled": "false",
        "chunk_size": "200",
        "chunk_overlap": "32",
    }
    settings.update({name.lower(): value for name, value in overrides.items()})
    with api_process(data, ready_path="/readyz", **settings) as url:
        yield url


def _ingest(url: str, docs: dict[str, str]) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    for document_id, text in docs.items():
        response = httpx.put(
            f"{url}/v1/documents/{document_id}", json={"text": text}, headers=auth, timeout=60
        )
        assert response.status_code in (200, 201), response.text


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real service with documents in it; re-indexing needs a store that holds two collections (local mode)."""
    with service_process(tmp_path_factory.mktemp("reindex-service")) as url:
        _ingest(url, DOCS)
        yield url


def _search(url: str, query: str) -> list[str]:
    response = httpx.post(
        f"{url}/v1/search",
        json={"query": query, "top_k": 3},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return [hit["document_id"] for hit in response.json()["results"]]


def test_start_follows_to_the_switch_then_rolls_back_through_the_stack_outputs(
    ctx: Context, backend: FakeBackend, service: str
) -> None:
    backend.add_stack("dev", outputs={"serviceUrl": service, "adminApiKey": ADMIN, "tlsIssuer": "selfSigned"})

    before = _invoke(ctx, "reindex", "status", "-s", "dev")
    assert before.exit_code == 0, before.output
    assert "idle: serving documents__" in before.output
    assert "chunk 200/32" in before.output

    started = _invoke(
        ctx,
        "reindex",
        "start",
        "-s",
        "dev",
        "--chunk-size",
        "64",
        "--chunk-overlap",
        "8",
        "--interval",
        "0.05",
        "--timeout",
        FOLLOW,
    )
    assert started.exit_code == 0, started.output
    out = _flat(started.output)
    assert "re-index stack dev" in out  # the progress bar's title
    assert "switched: serving documents__" in out
    assert "chunk 64/8" in out
    assert "documents 3/3" in out
    # Search serves the new index: smaller chunks (the same three documents, each in more pieces).
    assert _search(service, "yeast ferments the dough")[0] == "bread"
    status = httpx.get(
        f"{service}/v1/admin/reindex", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
    ).json()
    assert status["serving"]["chunk_size"] == 64
    assert status["standby"]["chunk_size"] == 200

    again = _invoke(ctx, "reindex", "start", "-s", "dev", "--chunk-size", "64", "--chunk-overlap", "8")
    assert again.exit_code == 1
    assert _flat(again.output).startswith(
        "re-index failed: POST /v1/admin/reindex: HTTP 422: the index is already"
    )

    back = _invoke(ctx, "reindex", "rollback", "-s", "dev")
    assert back.exit_code == 0, back.output
    assert "rolled_back: serving" in back.output
    assert "chunk 200/32" in back.output
    assert _search(service, "strings tuned in fifths")[0] == "violin"

    # A write after the rollback lands in the served index; roll forward again and it is there too.
    auth = {"Authorization": f"Bearer {KEY}"}
    put = httpx.put(
        f"{service}/v1/documents/glacier",
        json={"text": "Glaciers carve deep valleys as the ice slowly flows downhill. " * 6},
        headers=auth,
        timeout=60,
    )
    assert put.status_code == 201, put.text
    forward = _invoke(
        ctx,
        "reindex",
        "start",
        "--url",
        service,
        "--key",
        ADMIN,
        "--chunk-size",
        "64",
        "--chunk-overlap",
        "8",
        "--timeout",
        FOLLOW,
    )
    # The same config as the standby: built again from the kept texts (4 documents now), then switched.
    assert forward.exit_code == 0, forward.output
    assert "documents 4/4" in _flat(forward.output)
    assert _search(service, "ice flows downhill")[0] == "glacier"
    final = _invoke(ctx, "reindex", "rollback", "--url", service, "--key", ADMIN)
    assert final.exit_code == 0, final.output


def test_refusals_are_one_line_and_exit_1(ctx: Context, backend: FakeBackend, service: str) -> None:
    backend.add_stack("dev", outputs={"serviceUrl": service, "adminApiKey": "not-the-admin-key-0123456789"})
    wrong = _invoke(ctx, "reindex", "status", "-s", "dev")
    assert wrong.exit_code == 1
    assert "HTTP 401: invalid admin key (the admin key is missing or wrong" in _flat(wrong.output)

    tenant = _invoke(ctx, "reindex", "start", "--url", service, "--key", KEY, "--chunk-size", "64")
    assert tenant.exit_code == 1  # a tenant's key is not the admin key
    assert "HTTP 401" in tenant.output

    unknown = _invoke(ctx, "reindex", "start", "--url", service, "--key", ADMIN, "--model", "no/such-model")
    assert unknown.exit_code == 1
    assert "HTTP 422" in unknown.output
    assert "no/such-model" in unknown.output

    # Without settings it rebuilds the current ones, which the service refuses when nothing would change.
    nothing = _invoke(ctx, "reindex", "start", "--url", service, "--key", ADMIN)
    assert nothing.exit_code == 1
    assert "HTTP 422: the index is already built with this model and chunking" in _flat(nothing.output)
    both = _invoke(ctx, "reindex", "status", "-s", "dev", "--url", service)
    assert both.exit_code == 2
    assert "exactly one of --stack" in _flat(both.output)
    neither = _invoke(ctx, "reindex", "status")
    assert neither.exit_code == 2

    backend.add_stack("old", outputs={"serviceUrl": service})
    no_key = _invoke(ctx, "reindex", "status", "-s", "old")
    assert no_key.exit_code == 1
    assert "exports no adminApiKey output" in _flat(no_key.output)

    gone = _invoke(ctx, "reindex", "status", "--url", f"http://127.0.0.1:{free_port()}", "--key", ADMIN)
    assert gone.exit_code == 1
    assert "cannot reach http://127.0.0.1:" in _flat(gone.output)


def test_the_admin_key_comes_from_the_environment(ctx: Context, service: str, monkeypatch) -> None:
    monkeypatch.setenv("ADMIN_API_KEY", ADMIN)
    result = _invoke(ctx, "reindex", "status", "--url", service)
    assert result.exit_code == 0, result.output
    assert "serving documents__" in result.output


# --- following a re-index across replicas: a scripted admin API on a real loopback server --------------------
REPEATS = 50


@pytest.fixture
def scripted() -> Iterator[ThreadingHTTPServer]:
    """A loopback admin API answering each GET with the next of `server.statuses`, and each POST with the next of
    `server.posts` ((status, body); 405 when none is left), recorded in `server.posted`.

    The last status repeats, REPEATS times at most: a follow that polls on past the script's end (the state it
    waits for never comes) then gets an error and fails at once, instead of spinning until its deadline."""

    def answer(path: str) -> tuple[int, dict]:
        statuses = server.statuses  # type: ignore[attr-defined]
        if len(statuses) > 1:
            return 200, statuses.pop(0)
        seen, count = server.repeats  # type: ignore[attr-defined]
        count = count + 1 if seen is statuses else 1
        server.repeats = (statuses, count)  # type: ignore[attr-defined]
        if count > REPEATS:
            return 500, {"error": {"message": f"polled {REPEATS} times past the scripted statuses"}}
        return 200, statuses[0]

    def post(path: str, body: dict) -> tuple[int, dict]:
        server.posted.append((path, body))  # type: ignore[attr-defined]
        posts = server.posts  # type: ignore[attr-defined]
        return posts.pop(0) if posts else (405, {"error": {"message": "no POST scripted"}})

    with json_server(answer, post) as server:
        server.repeats = (None, 0)  # type: ignore[attr-defined]
        server.posts = []  # type: ignore[attr-defined]
        server.posted = []  # type: ignore[attr-defined]
        yield server


OLD = {"model": "m", "chunk_size": 200, "chunk_overlap": 32}
NEW = {"model": "m", "chunk_size": 64, "chunk_overlap": 8}


def _status(
    state: str,
    serving: dict,
    target: dict | None = None,
    error: str | None = None,
    done: int = 0,
    collection: str = "c",
) -> dict:
    return {
        "state": state,
        "current": {"collection": "c-old", **OLD},
        "standby": None,
        "target": target,
        "serving": {"collection": collection, **serving},
        "documents_total": 10,
        "documents_done": done,
        "documents_replayed": 0,
        "documents_without_text": 0,
        "without_text": [],
        "error": error,
    }


def _client(server: ThreadingHTTPServer) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{server.server_address[1]}")


def test_follow_judges_completion_by_the_pointer_every_replica_shares(scripted: ThreadingHTTPServer) -> None:
    # Polls land on different replicas: one building, one idle (not running it), then one that lost the
    # compare-and-set (failed) after the other switched: the pointer names the new config, so it is done.
    scripted.statuses = [  # type: ignore[attr-defined]
        _status("building", OLD, NEW, done=4),
        _status("idle", OLD),
        _status(
            "switched", OLD, {"model": "m", "chunk_size": 300, "chunk_overlap": 0}
        ),  # an earlier one's end
        _status("building", OLD, NEW, done=9),
        _status("switching", NEW, NEW, done=10),  # the pointer moved; its last catch-up still runs
        _status("failed", NEW, NEW, error="conflict: the index pointer moved"),
    ]
    seen: list[str] = []
    with _client(scripted) as client:
        last = reindex_mod.follow(
            client, NEW, on_status=lambda s: seen.append(s["state"]), sleep=lambda _s: None
        )
    assert seen == ["building", "idle", "switched", "building", "switching", "failed"]
    assert reindex_mod.serving_config(last) == NEW


def test_follow_fails_on_a_failed_build_and_after_its_deadline(scripted: ThreadingHTTPServer) -> None:
    scripted.statuses = [_status("building", OLD, NEW), _status("failed", OLD, NEW, error="model gone")]  # type: ignore[attr-defined]
    with _client(scripted) as client, pytest.raises(reindex_mod.ReindexFailure, match="failed: model gone"):
        reindex_mod.follow(client, NEW, sleep=lambda _s: None)

    scripted.statuses = [_status("idle", OLD)]  # type: ignore[attr-defined]
    ticks = iter(range(100))
    with _client(scripted) as client, pytest.raises(reindex_mod.ReindexFailure, match="did not switch"):
        reindex_mod.follow(
            client, NEW, timeout_seconds=5, sleep=lambda _s: None, clock=lambda: float(next(ticks))
        )


def test_follow_is_not_ended_by_a_replicas_failure_of_an_earlier_build(scripted: ThreadingHTTPServer) -> None:
    # `ragops reindex start` after a failed build towards the same settings: a replica still shows the earlier
    # failure (started before this build's start answered): it says nothing of this build.
    since = "2026-11-27T07:00:00+00:00"
    stale = {**_status("failed", OLD, NEW, error="model gone"), "started_at": "2026-11-27T06:10:00+00:00"}
    scripted.statuses = [  # type: ignore[attr-defined]
        stale,
        {**_status("building", OLD, NEW, done=5), "started_at": since},
        stale,
        _status("switched", NEW, NEW, done=10, collection="c-new"),
    ]
    with _client(scripted) as client:
        last = reindex_mod.follow(client, NEW, sleep=lambda _s: None, from_collection="c", since=since)
    assert last["serving"]["collection"] == "c-new"

    # This build's own failure still fails it.
    scripted.statuses = [  # type: ignore[attr-defined]
        stale,
        {**_status("failed", OLD, NEW, error="disk full"), "started_at": since},
    ]
    with _client(scripted) as client, pytest.raises(reindex_mod.ReindexFailure, match="failed: disk full"):
        reindex_mod.follow(client, NEW, sleep=lambda _s: None, since=since)


def test_converge_caught_in_the_switch_ends_when_it_has_switched(scripted: ThreadingHTTPServer) -> None:
    # `ragops up` reads the status after the rollout while the new pods' start-up re-index is in its final
    # catch-up: the pointer already names the new collection. It must not wait for the pointer to leave it (it
    # waited an hour in CI: the pointer never moves again).
    scripted.statuses = [  # type: ignore[attr-defined]
        _status("switching", NEW, NEW, done=10, collection="c-new"),
        _status("switching", NEW, NEW, done=10, collection="c-new"),
        _status("switched", NEW, NEW, done=10, collection="c-new"),
    ]
    ticks = iter(range(100))
    seen: list[str] = []
    with _client(scripted) as client:
        last = reindex_mod.converge(
            client,
            NEW,
            on_status=lambda s: seen.append(s["state"]),
            timeout_seconds=50,
            sleep=lambda _s: None,
            clock=lambda: float(next(ticks)),
        )
    assert seen == ["switching", "switched"]
    assert last["serving"]["collection"] == "c-new"

    # Caught before the switch, it still waits for the pointer to leave the old collection.
    scripted.statuses = [  # type: ignore[attr-defined]
        _status("building", OLD, NEW, done=3, collection="c-old"),
        _status("switched", NEW, NEW, done=10, collection="c-new"),
    ]
    with _client(scripted) as client:
        last = reindex_mod.converge(client, NEW, sleep=lambda _s: None)
    assert last["serving"]["collection"] == "c-new"


ALREADY = (
    422,
    {
        "error": {
            "message": "the index is already built with this model and chunking (and this release's chunker)"
        }
    },
)


def test_converge_that_finds_the_reindex_done_between_its_read_and_its_start_ends(
    scripted: ThreadingHTTPServer,
) -> None:
    # The read reaches a replica that is not building (idle, the old pointer); before the start, the re-index the
    # new pods started switches, and the start is refused: the index already has these settings. That is done,
    # not a failure.
    scripted.statuses = [  # type: ignore[attr-defined]
        _status("idle", OLD, collection="c-old"),
        _status("switched", NEW, NEW, done=10, collection="c-new"),
    ]
    scripted.posts = [ALREADY]  # type: ignore[attr-defined]
    with _client(scripted) as client:
        last = reindex_mod.converge(client, NEW, sleep=lambda _s: None)
    assert last["serving"]["collection"] == "c-new"
    assert scripted.posted == [("/v1/admin/reindex", {"allow_missing": False, **NEW})]  # type: ignore[attr-defined]

    # Refused while the pointer still names the old config (a model this image lacks): that is the failure.
    scripted.statuses = [_status("idle", OLD, collection="c-old")]  # type: ignore[attr-defined]
    scripted.posts = [(422, {"error": {"message": "cannot load model m"}})]  # type: ignore[attr-defined]
    with (
        _client(scripted) as client,
        pytest.raises(reindex_mod.ReindexFailure, match="HTTP 422: cannot load model m"),
    ):
        reindex_mod.converge(client, NEW, sleep=lambda _s: None)

    # Refused as running (409) by a replica that is in the switch's final catch-up: the pointer names the new
    # collection already, which it keeps; done once that replica has finished.
    scripted.statuses = [  # type: ignore[attr-defined]
        _status("idle", OLD, collection="c-old"),
        _status("switching", NEW, NEW, done=10, collection="c-new"),
        _status("switched", NEW, NEW, done=10, collection="c-new"),
    ]
    scripted.posts = [(409, {"error": {"message": "a re-index is already running"}})]  # type: ignore[attr-defined]
    with _client(scripted) as client:
        last = reindex_mod.converge(client, NEW, sleep=lambda _s: None)
    assert (last["state"], last["serving"]["collection"]) == ("switched", "c-new")


# --- ragops up / promote with a changed index config ---------------------------------------------------------
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BGE = "BAAI/bge-small-en-v1.5"


def _embedding(
    chunk_size: int, chunk_overlap: int, model: str = MINILM, image: list[str] | None = None
) -> dict:
    return {
        "model": model,
        "chunkSize": chunk_size,
        "chunkOverlap": chunk_overlap,
        "imageModels": image or [model],
    }


def test_up_follows_the_reindex_the_new_pods_started_at_start_up(
    ctx: Context, backend: FakeBackend, tmp_path: Path
) -> None:
    # The deployed pods (chunk 200/32) hold documents; the update rolls out pods with chunk 96/16, which keep
    # serving the old index and re-index at start-up (REINDEX_ON_CONFIG_CHANGE, the default).
    data = tmp_path / "data"
    data.mkdir()
    with service_process(data) as url:
        _ingest(url, DOCS)
    with service_process(data, CHUNK_SIZE="96", CHUNK_OVERLAP="16") as url:
        backend.add_stack("dev", outputs={"serviceUrl": url, "embedding": _embedding(200, 32)})
        backend.script("dev").up_outputs = {
            "serviceUrl": url,
            "adminApiKey": ADMIN,
            "embedding": _embedding(96, 16),
        }
        result = _invoke(ctx, "up", "-s", "dev", "-q", "--reindex-timeout", FOLLOW)
        assert result.exit_code == 0, result.output
        out = _flat(result.output)
        assert f"dev: index config changed {MINILM} (chunk 200/32) -> {MINILM} (chunk 96/16)" in out
        assert "chunk 96/16" in out.split("->")[-1]
        status = httpx.get(f"{url}/v1/admin/reindex", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        assert status["serving"]["chunk_size"] == 96
        assert _search(url, "yeast ferments the dough")[0] == "bread"


def test_up_refuses_a_model_change_whose_image_drops_the_served_model(
    ctx: Context, backend: FakeBackend, work_dir: Path
) -> None:
    (work_dir / "Pulumi.yaml").write_text(
        "name: rag\nruntime: python\nmain: infra/\nconfig:\n  embedding:\n    default:\n"
        f"      model: {BGE}\n      extraModels: []\n"
    )
    backend.add_stack(
        "dev",
        config={"rag:embedding": {"model": MINILM}},
        outputs={"serviceUrl": "http://127.0.0.1:9", "embedding": _embedding(200, 32, model=BGE)},
    )
    result = _invoke(ctx, "up", "-s", "dev", "-q")
    assert result.exit_code == 1
    out = _flat(result.output)
    assert out.startswith(
        "refused: rag:embedding.extraModels in Pulumi.dev.yaml: stack 'dev' serves an index"
    )
    assert f"built with {BGE}, but the image it would run holds only {MINILM}" in out
    assert not backend.commands("up")  # nothing was deployed

    # Listing the served model keeps it in the image: the update goes ahead (and nothing changed: no re-index).
    backend.stacks["dev"].set_config("rag:embedding", {"model": MINILM, "extraModels": [BGE]})
    backend.script("dev").up_outputs = {"embedding": _embedding(200, 32, model=BGE)}
    result = _invoke(ctx, "up", "-s", "dev", "-q")
    assert result.exit_code == 0, result.output
    assert "index config changed" not in result.output


def test_promote_refuses_an_image_without_the_targets_model(ctx: Context, backend: FakeBackend) -> None:
    from tests.workflows.fake_pulumi import DIGEST

    backend.add_stack("dev", outputs={"imageDigest": DIGEST, "embedding": _embedding(200, 32)})
    backend.add_stack("staging", outputs={"embedding": _embedding(200, 32, model=BGE)})
    result = _invoke(ctx, "promote", "--from", "dev", "--to", "staging", "-q")
    assert result.exit_code == 1
    out = _flat(result.output)
    assert "Cannot promote dev -> staging" in out
    assert f"serves an index built with {BGE}, but the image it would run holds only {MINILM}" in out
    assert not backend.commands("up")
    assert not [c for c in backend.commands("config") if "set-all" in c]


def test_promote_copies_the_model_records_the_image_models_and_follows_the_reindex(
    ctx: Context, backend: FakeBackend, service: str
) -> None:
    from tests.workflows.fake_pulumi import DIGEST

    served = httpx.get(f"{service}/v1/admin/reindex", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    old = served["serving"]
    backend.add_stack(
        "dev", outputs={"imageDigest": DIGEST, "embedding": _embedding(48, 8, image=[MINILM, BGE])}
    )
    backend.add_stack(
        "staging",
        outputs={"serviceUrl": service, "embedding": _embedding(old["chunk_size"], old["chunk_overlap"])},
    )
    backend.script("staging").up_outputs = {
        "serviceUrl": service,
        "adminApiKey": ADMIN,
        "embedding": _embedding(48, 8, image=[MINILM, BGE]),
    }
    result = _invoke(ctx, "promote", "--from", "dev", "--to", "staging", "-q", "--reindex-timeout", FOLLOW)
    assert result.exit_code == 0, result.output
    out = _flat(result.output)
    assert "staging: index config changed" in out
    assert "switched: serving documents__" in out
    staging = backend.stacks["staging"]
    assert staging.config_value("rag:embedding") == {"model": MINILM, "extraModels": [BGE]}
    assert staging.config_value("rag:promotion")["models"] == [MINILM, BGE]
    status = httpx.get(f"{service}/v1/admin/reindex", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert (status["serving"]["chunk_size"], status["serving"]["chunk_overlap"]) == (48, 8)
    shown = _invoke(ctx, "status", "-s", "staging")
    assert shown.exit_code == 0, shown.output
    assert f"index:     {MINILM} (chunk 48/8); the image holds {MINILM}, {BGE}" in shown.output


def test_a_reindex_of_the_same_config_is_done_only_once_the_pointer_moved(
    scripted: ThreadingHTTPServer,
) -> None:
    # Rebuilding the served config (e.g. to add vectors): the pointer names it all along; only a new collection
    # says it switched, and a failure of that build is a failure, not a success.
    scripted.statuses = [  # type: ignore[attr-defined]
        _status("idle", NEW, collection="c1"),
        _status("building", NEW, NEW, collection="c1"),
        _status("failed", NEW, NEW, error="disk full", collection="c1"),
    ]
    with _client(scripted) as client, pytest.raises(reindex_mod.ReindexFailure, match="disk full"):
        reindex_mod.follow(client, NEW, sleep=lambda _s: None, from_collection="c1")
    scripted.statuses = [  # type: ignore[attr-defined]
        _status("building", NEW, NEW, collection="c1"),
        _status("switched", NEW, NEW, collection="c2"),
    ]
    with _client(scripted) as client:
        last = reindex_mod.follow(client, NEW, sleep=lambda _s: None, from_collection="c1")
    assert last["serving"]["collection"] == "c2"


def test_follow_reports_a_resumed_build_and_fails_on_an_interrupted_one(
    scripted: ThreadingHTTPServer,
) -> None:
    resumed = {**_status("building", OLD, NEW, done=3), "attempt": 2, "resumed_from": "pod-a:1:abc"}
    interrupted = _status(
        "interrupted", OLD, NEW, error="the re-index to c-new by pod-a:1:abc stopped before it switched"
    )
    scripted.statuses = [resumed, _status("waiting", OLD, NEW), interrupted]  # type: ignore[attr-defined]
    lines: list[str] = []
    with (
        _client(scripted) as client,
        pytest.raises(
            reindex_mod.ReindexFailure, match="interrupted: the re-index to c-new by pod-a"
        ) as failure,
    ):
        reindex_mod.follow(
            client, NEW, on_status=lambda s: lines.append(reindex_mod.summary(s)), sleep=lambda _s: None
        )
    assert "`ragops reindex start` with the same settings resumes it" in str(failure.value)
    assert "resumes the build pod-a:1:abc left when it died (attempt 2)" in lines[0]


def test_preview_is_refused_like_up_for_a_model_change_whose_image_drops_the_served_model(
    ctx: Context, backend: FakeBackend, work_dir: Path, tmp_path: Path
) -> None:
    """EYES8 L13: `ragops preview` (a PR's check) ran without `up`'s model check, so the PR comment was green and
    the merge's `up` was refused."""
    (work_dir / "Pulumi.yaml").write_text(
        "name: rag\nruntime: python\nmain: infra/\nconfig:\n  embedding:\n    default:\n"
        f"      model: {BGE}\n      extraModels: []\n"
    )
    backend.add_stack(
        "dev",
        config={"rag:embedding": {"model": MINILM}},
        outputs={"serviceUrl": "http://127.0.0.1:9", "embedding": _embedding(200, 32, model=BGE)},
    )
    comment = tmp_path / "comment.md"
    result = _invoke(ctx, "preview", "-s", "dev", "-q", "--comment-file", str(comment))
    assert result.exit_code == 1, result.output
    out = _flat(result.output)
    assert "rag:embedding.extraModels in Pulumi.dev.yaml: stack 'dev' serves an index" in out, out
    text = " ".join(comment.read_text(encoding="utf-8").split())
    assert "**Preview failed.**" in text, text
    assert "rag:embedding.extraModels in Pulumi.dev.yaml: stack 'dev' serves an index" in text, text
    assert not backend.commands("preview")  # refused before the engine ran

    backend.stacks["dev"].set_config("rag:embedding", {"model": MINILM, "extraModels": [BGE]})
    result = _invoke(ctx, "preview", "-s", "dev", "-q", "--comment-file", str(comment))
    assert result.exit_code == 0, result.output
    assert backend.commands("preview")
