"""Query coalescing: concurrent calls run as one batch, a lone caller runs at once, failures and departures.

No timing: every test that needs a batch to form holds the running batch until the wanted number of callers
has queued (``wait_until_queued``), so the batches asserted on are the only ones possible.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.app.store import coalesce
from service.app.store import embedder as embedder_module
from service.app.store.coalesce import BatchCoalescer, BatchRunError
from service.app.store.embedder import FastEmbedEmbedder, padded_groups
from tests.service.support import make_settings, running_app
from tests.service.test_embedder import WORDS

WAIT = 30.0  # generous bound for a helper thread to reach the queue; never reached when things work


class Recorder:
    """A batch function that records its batches; ``hold(n)`` makes the next run wait for n queued callers,
    ``gate`` (when set) makes the first run wait until the test opens it."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.coalescer: BatchCoalescer[str, str] | None = None
        self._hold: int | None = None
        self._fail_on = fail_on
        self.running = threading.Event()  # set once the first run has started
        self.gate: threading.Event | None = None

    def wait_running(self) -> None:
        assert self.running.wait(WAIT), "the leader never started its run"

    def hold(self, queued: int) -> None:
        self._hold = queued

    def __call__(self, items: list[str]) -> list[str]:
        self.running.set()
        if self.gate is not None:
            gate, self.gate = self.gate, None
            assert gate.wait(WAIT), "the test never opened the gate"
        if self._hold is not None:
            wanted, self._hold = self._hold, None
            assert self.coalescer is not None
            assert self.coalescer.wait_until_queued(wanted, WAIT), "helper threads never queued"
        self.batches.append(list(items))
        if self._fail_on is not None and self._fail_on in items:
            raise ValueError(f"bad item {self._fail_on}")
        return [item.upper() for item in items]


def make(max_batch: int = 16, fail_on: str | None = None) -> tuple[BatchCoalescer[str, str], Recorder]:
    recorder = Recorder(fail_on)
    coalescer = BatchCoalescer(recorder, max_batch=max_batch)
    recorder.coalescer = coalescer
    return coalescer, recorder


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def test_a_lone_caller_runs_at_once_and_never_touches_a_waiting_primitive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    coalescer, recorder = make()

    def no_waiting(*args: object, **kwargs: object) -> None:
        raise AssertionError("a lone caller created a waiting primitive")

    monkeypatch.setattr(coalesce, "_new_event", no_waiting)

    assert [coalescer.submit(text) for text in ("a", "b", "c")] == ["A", "B", "C"]
    assert recorder.batches == [["a"], ["b"], ["c"]]
    assert (coalescer.runs, coalescer.calls, coalescer.waits) == (3, 3, 0)


def test_callers_arriving_during_a_run_share_the_next_run() -> None:
    coalescer, recorder = make()
    recorder.hold(7)  # the first run lasts until seven more callers have queued behind it
    texts = [f"t{i}" for i in range(8)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(coalescer.submit, texts))

    assert results == [t.upper() for t in texts]
    assert [len(batch) for batch in recorder.batches] == [1, 7]
    assert sorted(t for batch in recorder.batches for t in batch) == sorted(texts)
    assert (coalescer.runs, coalescer.calls, coalescer.waits) == (2, 8, 7)


def test_a_batch_takes_at_most_max_batch_callers_in_arrival_order() -> None:
    coalescer, recorder = make(max_batch=4)
    recorder.hold(10)
    leader, _ = in_thread(lambda: coalescer.submit("lead"))
    recorder.wait_running()
    threads = []
    for index in range(10):
        # one at a time, so the queue order is known
        threads.append(in_thread(lambda index=index: coalescer.submit(f"q{index}")))  # type: ignore[misc]
        assert coalescer.wait_until_waited(index + 1, WAIT)
    for thread, _ in [(leader, None), *threads]:
        thread.join(WAIT)

    assert recorder.batches == [
        ["lead"],
        ["q0", "q1", "q2", "q3"],
        ["q4", "q5", "q6", "q7"],
        ["q8", "q9"],
    ]
    assert [outcome["result"] for _, outcome in threads] == [f"Q{i}" for i in range(10)]


def test_a_failed_batch_fails_every_caller_in_it_and_the_next_batch_works() -> None:
    coalescer, recorder = make(fail_on="poison")
    recorder.hold(2)
    leader, led = in_thread(lambda: coalescer.submit("first"))
    recorder.wait_running()
    poison, poisoned = in_thread(lambda: coalescer.submit("poison"))
    assert coalescer.wait_until_waited(1, WAIT)
    neighbour, neighboured = in_thread(lambda: coalescer.submit("neighbour"))
    for thread in (leader, poison, neighbour):
        thread.join(WAIT)

    assert recorder.batches == [["first"], ["poison", "neighbour"]]
    assert led == {"result": "FIRST"}
    # the leader of the failed batch raises what the batch raised; its follower a BatchRunError caused by it
    assert isinstance(poisoned["error"], ValueError)
    error = neighboured["error"]
    assert isinstance(error, BatchRunError)
    assert error.__cause__ is poisoned["error"]
    assert "batch of 2" in str(error)
    # nothing is left stuck: the next callers run normally, alone
    assert coalescer.submit("after") == "AFTER"
    assert (coalescer.queued, coalescer.runs) == (0, 3)


def test_a_caller_that_times_out_in_the_queue_leaves_it_without_breaking_the_batch() -> None:
    coalescer, recorder = make()
    recorder.gate = gate = threading.Event()
    leader, led = in_thread(lambda: coalescer.submit("lead"))
    recorder.wait_running()
    patient, waited = in_thread(lambda: coalescer.submit("patient"))
    assert coalescer.wait_until_waited(1, WAIT)

    # timeout 0: queued behind the held run, it gives up at once and leaves the queue...
    with pytest.raises(TimeoutError):
        coalescer.submit("impatient", timeout=0)
    assert coalescer.queued == 1
    # ...and a caller arriving after it is batched with the one that stayed
    late, came_late = in_thread(lambda: coalescer.submit("late"))
    assert coalescer.wait_until_waited(3, WAIT)
    gate.set()
    for thread in (leader, patient, late):
        thread.join(WAIT)

    assert recorder.batches == [["lead"], ["patient", "late"]]
    assert (led, waited, came_late) == ({"result": "LEAD"}, {"result": "PATIENT"}, {"result": "LATE"})


class Interrupted(BaseException):
    """Stands in for an exception delivered to a waiting thread (KeyboardInterrupt, a cancellation)."""


def test_a_promoted_caller_interrupted_before_it_runs_hands_its_batch_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    coalescer, recorder = make()
    recorder.hold(3)
    leader, led = in_thread(lambda: coalescer.submit("lead"))
    recorder.wait_running()

    real_event = threading.Event
    created: list[threading.Event] = []

    class InterruptedOnWake(real_event):  # type: ignore[misc,valid-type]
        """The first queued caller's event: the caller is interrupted right after it is woken (promoted)."""

        def wait(self, timeout: float | None = None) -> bool:
            super().wait(timeout)
            raise Interrupted

    def event_factory() -> threading.Event:
        event = InterruptedOnWake() if not created else real_event()
        created.append(event)
        return event

    monkeypatch.setattr(coalesce, "_new_event", event_factory)
    callers = []
    for index, text in enumerate(("first", "second", "third")):
        callers.append(in_thread(lambda text=text: coalescer.submit(text)))  # type: ignore[misc]
        assert coalescer.wait_until_waited(index + 1, WAIT)
    for thread in [leader, *(thread for thread, _ in callers)]:
        thread.join(WAIT)

    # "first" was promoted to lead the second batch, was interrupted, and passed the batch to "second"
    assert isinstance(callers[0][1]["error"], Interrupted)
    assert recorder.batches == [["lead"], ["second", "third"]]
    assert [outcome for _, outcome in callers[1:]] == [{"result": "SECOND"}, {"result": "THIRD"}]
    assert led == {"result": "LEAD"}
    assert coalescer.submit("after") == "AFTER"  # the run slot was not leaked


def test_two_coalescers_never_mix_their_batches() -> None:
    one, one_recorder = make()
    two, two_recorder = make()
    one_recorder.hold(3)
    two_recorder.hold(3)

    with ThreadPoolExecutor(8) as pool:
        ones = pool.map(one.submit, [f"one-{i}" for i in range(4)])
        twos = pool.map(two.submit, [f"two-{i}" for i in range(4)])
        assert list(ones) == [f"ONE-{i}" for i in range(4)]
        assert list(twos) == [f"TWO-{i}" for i in range(4)]

    assert all(text.startswith("one-") for batch in one_recorder.batches for text in batch)
    assert all(text.startswith("two-") for batch in two_recorder.batches for text in batch)
    assert [len(batch) for batch in one_recorder.batches] == [1, 3]
    assert [len(batch) for batch in two_recorder.batches] == [1, 3]


def test_many_threads_each_get_their_own_result() -> None:
    # Free-running (no holds): whatever batches form, every caller gets the result for its own item.
    seen_batches: list[int] = []

    def run(items: list[int]) -> list[int]:
        seen_batches.append(len(items))
        return [item * 2 for item in items]

    coalescer: BatchCoalescer[int, int] = BatchCoalescer(run, max_batch=5)

    def caller(offset: int) -> list[tuple[int, int]]:
        return [(item, coalescer.submit(item)) for item in range(offset, offset + 300)]

    with ThreadPoolExecutor(16) as pool:
        pairs = [pair for chunk in pool.map(caller, range(0, 16 * 300, 300)) for pair in chunk]

    assert all(result == item * 2 for item, result in pairs)
    assert len(pairs) == 16 * 300
    assert sum(seen_batches) == 16 * 300
    assert max(seen_batches) <= 5
    assert (coalescer.queued, coalescer._running) == (0, 0)


def test_a_batch_function_returning_the_wrong_count_fails_the_batch() -> None:
    coalescer: BatchCoalescer[str, str] = BatchCoalescer(lambda items: [])

    with pytest.raises(RuntimeError, match="a batch of 1 items gave 0 results"):
        coalescer.submit("x")
    with pytest.raises(ValueError, match="at least 1"):
        BatchCoalescer(lambda items: items, max_batch=0)


# --- the embedder's query path, on the real model ------------------------------------------------------------


def held_embedder_queries(
    monkeypatch: pytest.MonkeyPatch, embedder: FastEmbedEmbedder, queued: int
) -> list[list[str]]:
    """Give ``embedder`` a fresh query coalescer whose first run waits for ``queued`` callers; returns its batches."""
    batches: list[list[str]] = []
    held = {"pending": True}

    def run(texts: list[str]) -> Sequence[np.ndarray]:
        if held.pop("pending", False):
            assert coalescer.wait_until_queued(queued, WAIT), "helper threads never queued"
        batches.append(list(texts))
        return embedder._embed_query_batch(texts)

    coalescer: BatchCoalescer[str, np.ndarray] = BatchCoalescer(
        run, max_batch=embedder_module.QUERY_BATCH_MAX
    )
    monkeypatch.setattr(embedder, "_queries", coalescer)
    return batches


def test_concurrent_queries_are_embedded_in_one_batch_with_the_vectors_of_single_runs(
    monkeypatch: pytest.MonkeyPatch, embedder: FastEmbedEmbedder
) -> None:
    # Distinct texts of different lengths (one far longer, which padded_groups runs on its own).
    texts = [f"how do I configure the {word} setting for tenant {i}?" for i, word in enumerate(WORDS[:14])]
    texts += ["rotate keys " * 60, "?"]
    single = {text: embedder.embed_query(text) for text in texts}  # one by one: the lone-caller path
    sizes_before = REGISTRY.get_sample_value("rag_query_embedding_batch_size_count") or 0.0
    batches = held_embedder_queries(monkeypatch, embedder, len(texts) - 1)

    with ThreadPoolExecutor(len(texts)) as pool:
        vectors = dict(zip(texts, pool.map(embedder.embed_query, texts), strict=True))

    assert [len(batch) for batch in batches] == [1, len(texts) - 1]  # they did coalesce
    assert REGISTRY.get_sample_value("rag_query_embedding_batch_size_count") == sizes_before + 2
    for text in texts:
        assert type(vectors[text]) is list
        assert len(vectors[text]) == 384
        # padding with an attention mask changes the float rounding only (measured: below 1e-6)
        assert np.allclose(vectors[text], single[text], rtol=0, atol=1e-6), text
    # ...so rankings are the same: each batched vector ranks a set of passages exactly as its single run does
    passages = np.array(embedder.embed_documents([f"passage {i} about {w}" for i, w in enumerate(WORDS)]))
    for text in texts:
        assert list(np.argsort(-(passages @ vectors[text]))[:5]) == list(
            np.argsort(-(passages @ np.array(single[text])))[:5]
        )


def test_a_lone_query_runs_in_its_callers_thread_without_waiting(
    monkeypatch: pytest.MonkeyPatch, embedder: FastEmbedEmbedder
) -> None:
    def no_waiting(*args: object, **kwargs: object) -> None:
        raise AssertionError("a lone query created a waiting primitive")

    monkeypatch.setattr(coalesce, "_new_event", no_waiting)
    runs_before = embedder.query_coalescer.runs

    vector = embedder.embed_query("a lone question")

    assert len(vector) == 384
    assert embedder.query_coalescer.runs == runs_before + 1


def test_a_failed_query_batch_fails_each_caller_counts_each_failure_and_the_next_batch_works(
    monkeypatch: pytest.MonkeyPatch, embedder: FastEmbedEmbedder
) -> None:
    batches = held_embedder_queries(monkeypatch, embedder, 3)
    real_query_embed = embedder._model.query_embed

    def failing_for_batches(texts: list[str], **kwargs: object) -> object:
        if len(texts) > 1:
            raise RuntimeError("onnxruntime: out of memory")
        return real_query_embed(texts, **kwargs)

    monkeypatch.setattr(embedder._model, "query_embed", failing_for_batches)
    failures_before = REGISTRY.get_sample_value("rag_embedding_failures_total") or 0.0
    texts = ["lead question", "second question", "third question", "fourth question"]

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda text: _outcome(lambda: embedder.embed_query(text)), texts))

    assert [len(batch) for batch in batches] == [1, 3]
    errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert len(errors) == 3  # every caller of the failed batch, and only those
    assert all("out of memory" in str(error) for error in errors)
    assert REGISTRY.get_sample_value("rag_embedding_failures_total") == failures_before + 3
    assert len(embedder.embed_query("after the failure")) == 384


def test_a_text_asked_twice_in_one_batch_is_embedded_once(
    monkeypatch: pytest.MonkeyPatch, embedder: FastEmbedEmbedder
) -> None:
    real_query_embed = embedder._model.query_embed
    seen: list[list[str]] = []

    def recording(texts: list[str], **kwargs: object) -> object:
        seen.append(list(texts))
        return real_query_embed(texts, **kwargs)

    monkeypatch.setattr(embedder._model, "query_embed", recording)

    vectors = embedder._embed_query_batch(["popular question", "other question", "popular question"])

    assert sorted(text for run in seen for text in run) == ["other question", "popular question"]
    assert vectors[0] is vectors[2]
    assert np.allclose(vectors[0], embedder.embed_query("popular question"), rtol=0, atol=1e-6)


def test_over_http_every_search_of_a_failed_batch_is_a_503_with_the_reason_and_the_next_search_works(
    monkeypatch: pytest.MonkeyPatch, embedder: FastEmbedEmbedder, tmp_path: Path
) -> None:
    batches = held_embedder_queries(monkeypatch, embedder, 2)
    real_query_embed = embedder._model.query_embed

    def failing_for_batches(texts: list[str], **kwargs: object) -> object:
        if len(texts) > 1:
            raise RuntimeError("onnxruntime: out of memory")
        return real_query_embed(texts, **kwargs)

    monkeypatch.setattr(embedder._model, "query_embed", failing_for_batches)
    settings = make_settings(tmp_path, cache_enabled=False)
    queries = ["lead search text", "second search text", "third search text"]

    with running_app(settings, embedder=embedder) as client, ThreadPoolExecutor(3) as pool:
        responses = list(
            pool.map(lambda query: client.post("/v1/search", json={"query": query, "mode": "dense"}), queries)
        )
        after = client.post("/v1/search", json={"query": "after the failed batch", "mode": "dense"})

    assert [len(batch) for batch in batches] == [1, 2, 1]  # lead, the failed batch, the search after
    assert sorted(response.status_code for response in responses) == [200, 503, 503]
    for response in responses:
        if response.status_code == 503:
            assert response.json()["error"]["message"] == "query embedding failed; retry later"
    assert after.status_code == 200


def test_two_embedders_coalesce_separately(
    monkeypatch: pytest.MonkeyPatch, embedder: FastEmbedEmbedder, model_dir: Path, tmp_path: Path
) -> None:
    # A re-index switch runs two embedders side by side: a batch must never hold the other model's texts.
    other = FastEmbedEmbedder(embedder.model_name, model_path=model_dir, cache_dir=tmp_path, threads=1)
    mine = held_embedder_queries(monkeypatch, embedder, 2)
    theirs = held_embedder_queries(monkeypatch, other, 2)
    texts = [("mine", f"my question {i}") for i in range(3)] + [
        ("theirs", f"their question {i}") for i in range(3)
    ]

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda pair: (embedder if pair[0] == "mine" else other).embed_query(pair[1]), texts))

    assert sorted(t for batch in mine for t in batch) == [f"my question {i}" for i in range(3)]
    assert sorted(t for batch in theirs for t in batch) == [f"their question {i}" for i in range(3)]
    assert [len(batch) for batch in mine] == [len(batch) for batch in theirs] == [1, 2]


def _outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as exc:
        return exc


def test_padded_groups_split_only_where_padding_costs_more_than_a_run() -> None:
    assert padded_groups([17, 15, 19, 16]) == [[1, 3, 0, 2]]  # similar lengths: one run, shortest first
    long_one = [15] * 15 + [250]
    assert padded_groups(long_one) == [list(range(15)), [15]]  # the long query runs alone
    assert padded_groups([5]) == [[0]]
    groups = padded_groups([3, 200, 40, 41, 3, 120, 199])
    assert sorted(i for group in groups for i in group) == list(range(7))


def test_query_runs_fill_the_cpus_without_oversubscribing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedder_module.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert embedder_module.query_runs(None) == 1  # ONNX Runtime's default already uses every core per run
    assert embedder_module.query_runs(1) == 4
    assert embedder_module.query_runs(2) == 2
    assert embedder_module.query_runs(8) == 1


def test_the_embedders_coalescer_runs_as_many_batches_as_its_threads_allow(
    embedder: FastEmbedEmbedder, model_dir: Path, tmp_path: Path
) -> None:
    assert embedder.query_coalescer.max_runs == 1
    one_thread = FastEmbedEmbedder(embedder.model_name, model_path=model_dir, cache_dir=tmp_path, threads=1)
    assert one_thread.query_coalescer.max_runs == embedder_module.query_runs(1)
