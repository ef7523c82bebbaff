"""The embedded vector store on qdrant-edge: Qdrant's own segments, HNSW and payload indexes, in-process.

Why this and not qdrant-client's local mode (the embedded default before): local mode is exact search with
Python-side filtering, 1.7 s per search and 42 s to start at 100k chunks; edge runs the server's Rust engine in
the process (docs/benchmarks.md has the side-by-side). It keeps the semantics of server mode:

- One shard per collection at ``EDGE_PATH/<collection>`` (default ``DATA_DIR/edge``), the collection named as in
  service.app.store.vectors (model and dimension in the name, so vector spaces never mix).
- The dense vector is NAMED (``DENSE_VECTOR``), cosine distance; the BM25 sparse vector (``SPARSE_VECTOR``, IDF
  modifier, computed by service.app.store.sparse exactly as for the other adapters) sits beside it, and sparse
  and hybrid search (RRF fusion of both through prefetches) run in the engine. A shard created before sparse
  vectors existed gets the vector at open (``UpdateOperation.create_sparse_vector``) and each point's sparse
  vector from the chunk text its payload keeps, before the store serves (one process owns the shard).
- Payload indexes on ``tenant_id`` (keyword, ``is_tenant``), ``document_id`` (keyword), ``version`` (integer);
  deletes by filter use them (no scan, no in-process point index, so start-up does not grow with the data:
  loading the shard is the whole start-up). And on the first ``METADATA_INDEX_MAX_KEYS`` metadata keys seen on
  ingest (service.app.store.metadata_index): one ``create_field_index`` holds the GIL for 0.3-0.8 s, so a write
  only admits a new key (persisted in ``metadata_indexes.json`` beside the shard's files before it is
  acknowledged) and the ``edge-metadata-index`` thread builds the indexes one at a time, pausing
  ``METADATA_INDEX_PAUSE_RATIO`` times as long as each build took: searches and writes run between two builds,
  and documents are stored, searchable and filterable (unindexed) before their keys' indexes exist. A build
  scans every point, so past one segment's worth of points (``EDGE_SEGMENT_POINTS``) it is left to the next
  consolidation's child process instead (see Consolidation).
- Same point ids and payload as server mode (uuid5 of tenant/document/version/chunk), so versioned writes,
  idempotent retries and the registry-decides-visibility protocol of service.app.ingest.service are unchanged.
- Durability: every update goes through the shard's write-ahead log before it is applied, and the shard
  replays it when it is loaded; a process killed mid-write reopens with every acknowledged write
  (tests/service/test_edge_store.py kills one with SIGKILL). The engine memory-maps its WAL and does not sync it
  per update (``SerdeWal::write``: "does not guarantee durability"); a power loss could then lose the last
  writes. So with ``WRITE_DURABILITY=power_loss`` (the default) an upsert returns only after the WAL segment it
  appended to is fsynced (every WAL file and the directory when a segment was created, retired or removed), which is what a Qdrant server does for a ``wait=true`` update (it flushes
  its WAL before applying it, and flushes segments every few seconds). Not ``EdgeShard.flush()``, the only
  sync the binding exposes: it also syncs every segment (55 fsync/msync calls for a one-segment shard: a median
  of 238 ms on the benchmark machine's disk against 5 ms for the WAL's files; benchmarks.md "Write
  durability"); it stays the fallback when the WAL's files are not where this version keeps them.
  ``process_crash`` skips the fsync.
- Indexing: new points land in an appendable, unindexed segment; a background thread runs the shard's
  optimizers (HNSW build, merges, vacuum of deleted points). qdrant-edge-py 0.9.0 holds the GIL for the whole
  of ``optimize()`` (measured, docs/benchmarks.md): the process answers nothing else, event loop included,
  until it returns, and one call builds everything pending (a 20k-point build froze the process for 14 s).
  So the work per call is bounded instead: a pass starts as soon as ``EDGE_OPTIMIZE_CHUNK_POINTS`` points were
  written since the last one (or once writes pause for ``EDGE_OPTIMIZE_IDLE_SECONDS``), the indexing
  threshold is that many points, and segments are capped at ``EDGE_SEGMENT_POINTS`` so no merge or vacuum
  rebuilds more than that. A stall lasts one bounded build, whatever the size of the store or the ingest.
- Consolidation: a search costs about one HNSW search per segment, so the small segments bounded optimisation
  leaves behind (13 at 100k chunks) make searches several times dearer than a few large ones (measured,
  docs/benchmarks.md). Once writes have paused for ``EDGE_CONSOLIDATE_IDLE_SECONDS``, the optimizer thread
  copies the shard (sparse files kept sparse), merges the copy in a niced child process (its own GIL: this
  process keeps answering) into segments of up to ``EDGE_CONSOLIDATE_SEGMENT_POINTS``, and swaps it in: close
  the served shard, rename the merged copy into its place, load it. Every call into the shard shares a gate the
  swap takes alone, so the only pause is that close + load (about a shard load). Writes go on meanwhile: each
  one acknowledged after the copy was taken is logged (service.app.store.edge_ops entries, in the order they
  reached the shard) and sent to the child once it has merged, which applies it to the merged copy; the last of
  them under the exclusive gate, before the copy is renamed in, so the copy holds every acknowledged write when
  it is swapped in (a trickle of writes no longer keeps a large shard from ever consolidating). Past
  ``EDGE_CONSOLIDATE_REPLAY_MAX_POINTS`` logged points the merge is given up (``rag_edge_consolidations_total{outcome=
  "replay_limit"}``) and the next pause retries. Writes that never pause that long but only trickle (at most
  ``EDGE_CONSOLIDATE_TRICKLE_POINTS``) start a due consolidation anyway after
  ``EDGE_CONSOLIDATE_TRICKLE_WAIT_SECONDS`` (ten times the pause by default). A crash at any point leaves the served shard in place, or a
  merged copy with every acknowledged write replayed (renamed to ``ready`` only then): the next open finishes
  or undoes the swap (``_recover_swap``). The engine's vacuum has no size
  cap, so with consolidation on the serving process never vacuums: the child does (segments with more than 20 %
  deleted points), and deletes past that share make a consolidation due. What a consolidation left (its segment
  count, at which cap, and the points deleted since, which the next one would vacuum) is kept beside the shard
  (``consolidation.json``, replaced atomically), so a restart does not copy a shard that is already as merged as
  the cap allows into a child only to find nothing to merge, nor forget the deletes that make a vacuum due.
  A due consolidation starts no child when the engine's planner (ported: `planned_merges`) would merge nothing,
  or would rewrite a merged segment for a few new points (`merge_worthwhile`: under CONSOLIDATE_LEAVE_SHARE of
  its points, at most CONSOLIDATE_MAX_SEGMENTS segments): a trickle no longer re-merges the whole shard per
  sealed segment. A merged segment so left alone is merged anyway once writes have paused for the trickle wait
  (the optimizer's "settle"; ``left_alone`` in the record), so a shard at rest is searched in its merged layout.
- Searching: a query reads every segment; qdrant-edge does that in the shard's search pool, handing the query
  from the calling thread to the pool's threads and back. With few segments that hand-off costs more than the
  parallel reads buy, so a shard of fewer than ``POOL_MIN_SEGMENTS`` segments is searched on the calling thread
  (a pool of one) and a larger one by one thread per CPU, chosen whenever the shard is opened
  (``search_threads``; EDGE_SEARCH_THREADS fixes it).
- One process owns a shard: an exclusive ``flock`` on ``EDGE_PATH/.lock`` taken before the shard is opened, with
  an error naming the path (the engine's own WAL lock would only say ``WouldBlock``).

Every backend failure is raised as ServiceUnavailable and counted in rag_failures_total{component="vector_store"}.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import functools
import itertools
import json
import logging
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import qdrant_edge as qe

from service.app.core.config import Settings
from service.app.core.errors import DiskFull, RagError, ServiceUnavailable
from service.app.core.faults import faked_free_bytes
from service.app.core.files import make_private_dirs
from service.app.core.metrics import EDGE_CONSOLIDATIONS, FAILURES, METADATA_INDEX_BACKLOG
from service.app.store import edge_ops, hugepages
from service.app.store.group_sync import GroupSync
from service.app.store.metadata_index import (
    IndexKind,
    MetadataKeyBudget,
    read_admitted,
    rebuilt_kind,
    write_admitted,
)
from service.app.store.sparse import SPARSE_VECTOR, SparseVector, default_encoder
from service.app.store.vectors import (
    PREFETCH_MIN,
    RRF_K,
    ChunkPoint,
    MetadataCondition,
    PointVersion,
    SearchMode,
    VectorHit,
    collection_name,
    fused_search,
    numeric_equality,
    point_id,
)

logger = logging.getLogger(__name__)

DENSE_VECTOR = edge_ops.DENSE_VECTOR
UPSERT_BATCH = 256
# The shard's write-ahead log directory (qdrant-edge's WAL_PATH) and its open segments' prefix (the wal crate).
WAL_DIRECTORY = "wal"
# How often a WAL sync lists the directory again when a segment was renamed or removed under it.
WAL_LIST_ATTEMPTS = 3
SCROLL_PAGE = 4096
# Points per scroll call of the orphan collector's scan: a call holds the GIL, ~50 us per point read at 100k
# (the payload is read whole), so this bounds one hold to a few ms (bench/gc_startup.py, docs/benchmarks.md).
VERSIONS_PAGE = 128
LOCK_FILE = ".lock"
# The payload fields a hit is built from (VectorHit.from_payload): a search reads only these. The engine stores
# each point's payload compressed and decompresses it per hit read (about a tenth of a hybrid query's CPU at
# 100k chunks, py-spy, docs/benchmarks.md), so the tenant, content hash and model are left out.
HIT_PAYLOAD = ["document_id", "version", "chunk_index", "text", "metadata"]
# Bounded optimisation (see the module docstring; chosen from bench/optimize_stall.py, docs/benchmarks.md).
OPTIMIZE_CHUNK_POINTS = 4096
SEGMENT_POINTS = 10240
MERGE_SEGMENT_NUMBER = 2
# Consolidation (see the module docstring): the child merges towards one segment per cap, and vacuums segments
# with more than the engine's default share of deleted points (which the serving process no longer does).
CONSOLIDATE_SEGMENT_POINTS = 102400
CONSOLIDATE_DELETED_SHARE = 0.2
CONSOLIDATE_VACUUM_MIN_POINTS = 1000  # the engine's default: fewer deleted points are not worth a rebuild
# Below the cap, the engine's planner merges a merged segment again with every new segment beside it (smallest
# first, while the sum fits): at 60-100k chunks a copy of the whole shard, re-quantized, for every 4,096 points
# written (docs/benchmarks.md, stop 19). So a due consolidation is not started while the merge would rewrite a
# merged segment for new points holding less than CONSOLIDATE_LEAVE_SHARE of its points, nor when it would merge
# nothing at all, unless the shard has more than CONSOLIDATE_MAX_SEGMENTS segments (what a search visits:
# the merged one, the appendable one and at most three the serving process built, each of at most
# EDGE_SEGMENT_POINTS: its own passes merge the ones it sealed up to that size).
# A vacuum, a deferred metadata index or a stale graph still starts one (`merge_worthwhile`, `consolidate`).
CONSOLIDATE_LEAVE_SHARE = 0.25
CONSOLIDATE_MAX_SEGMENTS = 5
# Scalar (int8) quantization of the stored dense vectors (engine-side; the model is unchanged): the HNSW search
# scores candidates on the quantized copy (a quarter of the bytes, kept in RAM), then rescores the best
# ``QUANTIZATION_OVERSAMPLING`` x limit with the original float vectors, so every returned score is the exact
# cosine (what thresholds and fusion see). Measured at 100k chunks: docs/benchmarks.md.
# Quantized candidates are a little less precise, and the graph is built on them: a quantized shard is searched
# with a wider beam (hnsw_ef) than the engine's default (ef_construct, 100), which buys the recall back.
QUANTIZATION_QUANTILE = 0.99
QUANTIZATION_OVERSAMPLING = 2.0
# The HNSW graph and the search beam (docs/benchmarks.md, "Segments x m x hnsw_ef at 100k, stop 17", "One merged
# segment at 100k, stop 18" and "One-segment recall at 100k: the tenant filter, stop 19"). A search costs about one
# HNSW walk per segment, so one merged segment is the cheapest layout. On a near-duplicate-heavy corpus
# (bench/scale.py's: 50 copies of each chunk at ~0.87 cosine) the copies of a text form cliques that fill a point's
# base-layer links (2 x m): with 16 or 32 links a large segment falls apart into islands; with 64 links (128 on the
# base layer) one segment of 100k points holds together, but the engine's filtered walk does not step on a point
# the filter rejects (the tenant filter: the other tenants' 10 %), and in some builds a clique's few links in from
# the rest of the graph all went through rejected points: recall@5 0.90-0.91 in those builds against 0.99 with
# the same filter off, whatever the beam, the oversampling or the reuse of a source graph. ACORN (the engine's
# ACORN-1 filtered walk: a rejected neighbour's own neighbours are visited instead) closes those gaps, so merged
# segments are searched with it at any filter selectivity (ACORN_MAX_SELECTIVITY 1.0; the engine's default, 0.4,
# would leave a 90 % tenant on the plain walk), but only for a tenant holding at least ACORN_MIN_SHARE of the
# shard's points (the engine's estimate, about 2 us): a 10 % tenant scored recall@5 1.000 on the plain walk too,
# where ACORN cost 5-9x its CPU, 2-5x stop 17's layout ("Small tenants on the merged layout, stop 19"); a
# tenant under the engine's full-scan threshold (~6.6k points a segment) is scanned exactly either way.
# ACORN's 2-hop walk still cost ~2x the plain walk's CPU for a 90 % tenant (0.98 against 0.46 ms, stop 20), spent
# on the other tenants' points in its neighbour lists. So since stop 20 the graph has no cross-tenant links at
# all: Qdrant's multitenancy layout, ``m`` 0 (no global graph) and ``payload_m`` HNSW_PAYLOAD_M (64), which
# builds one graph per tenant (per value of the ``is_tenant`` ``tenant_id`` index) over that tenant's points in a
# segment, for every tenant above a quarter of the full-scan threshold (lib/segment hnsw/build.rs: with m 0 no
# block is too large for its own graph). A tenant-filtered walk then meets no rejected neighbour: the plain walk's
# cost, and no unreachable cliques (recall@5 0.981-0.998 in the eight builds measured where the global graph's plain
# walk fell to 0.91: "The tenant graph layout, stop 20" in docs/benchmarks.md). ACORN stays on for merged
# segments (it costs nothing where no neighbour is rejected, and still bridges what a metadata condition or a
# deleted point rejects), for every tenant. The other indexes (document_id, version, metadata.*) are created
# with ``enable_hnsw`` off (`edge_ops.index_params`): with m 0 the engine would build a graph for each of their
# large blocks too (e.g. a metadata value every point holds: a second, cross-tenant graph; 1.6x the merge CPU).
# An unfiltered dense search would walk one tenant's graph only: the store never sends one (every search is
# scoped to its tenant). So shards are built with HNSW_M (0) and HNSW_PAYLOAD_M (new shards, and every
# segment a consolidation merges: the child loads its copy with this graph config, which rebuilds what it merges),
# the cap merges 100k chunks into one segment (+ the appendable one), searched with EDGE_HNSW_EF (400) and ACORN.
# The beam is per segment, and a segment the serving process built (at most EDGE_SEGMENT_POINTS) needs less: a
# shard whose segments hold EDGE_SEGMENT_POINTS points or fewer on average (before its first consolidation, or
# with consolidation off) is searched with min(EDGE_HNSW_EF, SMALL_SEGMENT_EF) and the plain walk (its small
# segments hold few copies of a text: no islands) (`search_beam`, `merged_layout`).
# The serving process loads a shard with the graph config it has stored: a different one would make the engine
# rebuild every segment built otherwise (its config-mismatch optimizer), in this process, holding the GIL; a
# shard built by an earlier release (one global graph of 16-64 links) is served as it is, with ACORN for its
# large tenants only (ACORN_MIN_SHARE, as stop 19 shipped), and takes the tenant graphs at its next consolidation.
HNSW_M = 0
HNSW_PAYLOAD_M = 64
HNSW_EF_CONSTRUCT = 100
HNSW_EF = 400
SMALL_SEGMENT_EF = 250
ACORN_MAX_SELECTIVITY = 1.0
ACORN_MIN_SHARE = 0.2
# The shard's RAM-resident data (the int8 copies of the vectors, the graphs' links: ~55-75 MB at 100k chunks)
# is what every search walks, in a few hundred random reads of a few hundred bytes; on 4 KiB pages nearly each
# one also misses the TLB and walks the page tables, more so after the query embedding's run (which the server
# does just before) has evicted them. So the anonymous memory a load of the shard makes resident (at start-up
# and when a consolidation's merged copy is swapped in) is collapsed into 2 MiB pages (service.app.store.hugepages:
# MADV_COLLAPSE; nothing is done on hosts without THP or MADV_COLLAPSE), on a thread of its own, so neither the
# start-up nor the swap (searches wait for it) waits for the kernel's compaction (0.5 s for 55 MB on a loaded
# host). Measured at 100k: a search's CPU right after the query embedding 0.64-0.82x over four builds, warm
# 0.72-0.89x ("Huge pages for the shard, stop 21" in docs/benchmarks.md). Memory the serving process's own optimisation passes build stays on 4 KiB pages until
# the next consolidation's swap (a bounded segment is small).
SHARD_HUGE_PAGES = True
# Metadata payload indexes (service.app.store.metadata_index): the admitted keys persist beside the shard's own
# files (so they travel with it through a consolidation and go with it when it is dropped), and the builder thread
# idles this many times as long as a build took before the next one: <= 1/(1 + ratio) of the process, like the
# orphan collector's Pacer (service.app.store.gc). A build is 0.3-0.8 s (docs/benchmarks.md).
METADATA_INDEX_FILE = "metadata_indexes.json"
# What the last consolidation left (segments, at which cap), beside the shard's own files: a restart would otherwise
# estimate the settled layout as one segment per cap (+1) and, on a shard the merge planner cannot pack that tightly
# (13 segments of ~7.7k points pair up into 7 under a 20,480 cap at 100k chunks), copy the whole shard into a child
# after every start-up only to find nothing to merge (docs/benchmarks.md, "Segments after a restart").
CONSOLIDATION_FILE = "consolidation.json"
CONSOLIDATION_TEMPORARY = "consolidation.tmp"  # `_write_record` writes it, then renames it over the record
# Writes acknowledged while a consolidation's child merges are logged and replayed onto the merged copy before it
# is swapped in; past this many points (an upsert's points, one per other write) the merge is abandoned instead
# and retried at the next pause. The log holds each point's vectors and payload (~12 KB at 384 dimensions).
REPLAY_MAX_POINTS = 4096
# EDGE_CONSOLIDATE_REPLAY_MAX_POINTS's default. Writes that never pause for EDGE_CONSOLIDATE_IDLE_SECONDS but only
# trickle (at most EDGE_CONSOLIDATE_TRICKLE_POINTS, by default REPLAY_MAX_POINTS / 8, in the last
# EDGE_CONSOLIDATE_IDLE_SECONDS) start a due consolidation anyway after EDGE_CONSOLIDATE_TRICKLE_WAIT_SECONDS,
# by default this many times that wait. All three were chosen, not measured (docs/service.md).
CONSOLIDATE_TRICKLE_POINTS = REPLAY_MAX_POINTS // 8
CONSOLIDATE_TRICKLE_WAIT = 10
# Test hook (never set in service): the consolidation blocks for ever at the named point, after saying so on
# stderr, so a test can kill -9 the process there (points: skipped, merging, merged, replaying, replayed, ready,
# replaced, swapped; see EdgeVectorStore.consolidate).
BLOCK_AT_ENV = "EDGE_TEST_BLOCK_CONSOLIDATION_AT"
METADATA_INDEX_PAUSE_RATIO = 9.0
METADATA_INDEX_MAX_KEYS = 32
_EDGE_KINDS: dict[IndexKind, qe.PayloadSchemaType] = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
}
_KIND_OF_EDGE = {str(schema): kind for kind, schema in _EDGE_KINDS.items()}
# A vacuum threshold no segment can pass (the engine vacuums above deleted/total > threshold, at most 1.0).
NEVER_VACUUM = 1.0


class EmbeddedStoreError(RuntimeError):
    """The embedded store cannot be opened as configured; the message is one line naming the path and the fix."""


class StoreLocked(EmbeddedStoreError):
    """Another process owns the embedded store."""


def legacy_local_store(settings: Settings) -> Path | None:
    """The local-mode Qdrant directory an earlier default left under DATA_DIR, if there is one."""
    path = settings.resolved_qdrant_path
    if str(path) == ":memory:":
        return None
    return path if (path / "meta.json").is_file() or (path / "collection").is_dir() else None


def refuse_legacy_store(settings: Settings) -> None:
    """Raise EmbeddedStoreError when the edge store would silently start empty next to an old local-mode store."""
    legacy = legacy_local_store(settings)
    if legacy is None:
        return
    raise EmbeddedStoreError(
        f"{legacy} holds a local-mode Qdrant store (an earlier version's default, or a run with "
        f"VECTOR_STORE=local), and the embedded default is now "
        f"qdrant-edge at {settings.resolved_edge_path}: run `python -m service.tools.migrate_store` to copy it "
        f"over, or set VECTOR_STORE=local to keep using it"
    )


def edge_store_present(settings: Settings) -> Path | None:
    """EDGE_PATH when it holds a qdrant-edge shard (a collection directory), else None."""
    path = settings.resolved_edge_path
    try:
        shards = [entry for entry in path.iterdir() if entry.is_dir() and not entry.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return None
    return path if shards else None


def refuse_local_beside_edge(settings: Settings) -> None:
    """Raise EmbeddedStoreError when VECTOR_STORE=local would open a second store beside the edge store.

    The registry (DATA_DIR/registry.db by default) records which document versions are stored, not which store
    holds their points: a local-mode process on the same DATA_DIR finds none of the edge store's points (its
    searches come back empty), and each document it writes moves out of the edge store, so the edge service
    stops finding it. One store per registry; this names the way out (EYES4 E1).
    """
    if settings.embedded_vector_store != "local" or str(settings.resolved_qdrant_path) == ":memory:":
        return
    edge = edge_store_present(settings)
    if edge is None:
        return
    raise EmbeddedStoreError(
        f"{edge} holds the qdrant-edge store that this DATA_DIR's documents are indexed in, and VECTOR_STORE=local "
        f"would serve another store ({settings.resolved_qdrant_path}) with the same registry: its searches would "
        "miss every document in the edge store, and documents it writes would disappear from the edge store's "
        "searches; unset VECTOR_STORE (the edge store is the default), or give the local-mode service a DATA_DIR "
        "of its own"
    )


class DiskNearlyFull(DiskFull):
    """A write refused because the store's volume has less free space than READY_MIN_FREE_BYTES."""


# Retry-After of that 503: space comes back only when an operator frees it, so not a tight retry loop.
DISK_FULL_RETRY_SECONDS = 60


class DirectoryLock:
    """An exclusive, non-blocking ``flock`` on ``<directory>/.lock``; released on close or when the process dies."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fd: int | None = None
        # The shards of one EDGE_PATH (the served collection and a re-index's new one) share this lock: each
        # open shard holds one reference, and the flock goes when the last is released.
        self._holders = 0
        self._count_lock = threading.Lock()

    def acquire(self) -> None:
        with self._count_lock:
            if self._fd is None:
                self._acquire()
            self._holders += 1

    def _acquire(self) -> None:
        try:
            make_private_dirs(self.path.parent)  # DATA_DIR and edge/ hold every chunk's text: 0700
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # EDGE_PATH is a file, or this user may not write it
            raise EmbeddedStoreError(
                f"the embedded vector store directory {self.path.parent} cannot be used "
                f"({exc.strerror or exc}): EDGE_PATH (default DATA_DIR/edge) must be a directory this user "
                f"(uid {os.getuid()}) can read and write; fix its permissions or point EDGE_PATH elsewhere"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise StoreLocked(
                f"the embedded vector store at {self.path.parent} is in use by another process{who}; "
                "run one service process per DATA_DIR (WORKERS=1), or use a Qdrant server (QDRANT_URL)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        with self._count_lock:
            self._holders = max(0, self._holders - 1)
            if self._holders == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the names created or renamed in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


P = ParamSpec("P")
R = TypeVar("R")


# With EDGE_SEARCH_THREADS unset (0), a shard of fewer segments than this is searched on the calling thread, a
# larger one by a pool of one thread per CPU (docs/benchmarks.md, "The search path's fixed cost at stop 16").
POOL_MIN_SEGMENTS = 5


def search_threads(configured: int = 0, segments: int | None = None) -> int:
    """Threads of a shard's search pool: ``configured`` (EDGE_SEARCH_THREADS), or with 0 chosen by the shard's
    ``segments`` (None: not known, a pool).

    One thread: qdrant-edge runs the query on the calling thread, so a search makes no hand-off to a pool thread
    and back (two wake-ups, spinning threads). That costs more than it buys while the segments are few: measured
    on 2 CPUs, distinct queries over HTTP (docs/benchmarks.md, "The search path's fixed cost at stop 16"): one
    segment (~300 points) 0.91x the p50 and 0.88x the CPU per search of a 2-thread pool, 2 segments (10k) 0.94x
    and 0.85x, 4 segments (50k) 0.99x and 0.89x; at 7 segments (100k) the pool's parallel per-segment reads win
    (one thread: 1.07-1.08x the p50 in two runs, at 0.87-0.88x the CPU). A pool has one thread per CPU this
    process may run on: qdrant-edge-py 0.9.0 derives 8 on a 2-CPU machine, and per-segment reads then contend for
    the cores with the query embedding of concurrent searches (one per CPU cut the CPU per query from 1.72 to
    1.10 ms, dense top-9 at 10k, with lower latency). The count is taken when the shard is opened: at start-up and
    when a consolidation swaps merged segments in. The default consolidation leaves 2 at 100k chunks (1 merged +
    the appendable one): the calling thread.
    """
    if configured:
        return configured
    if segments is not None and segments < POOL_MIN_SEGMENTS:
        return 1
    return max(1, len(os.sched_getaffinity(0)))


def shard_segments(path: Path) -> int:
    """Segments of the shard at ``path`` as stored (before it is loaded; 0 for a new one)."""
    try:
        return sum(1 for entry in os.scandir(path / "segments") if entry.is_dir())
    except OSError:
        return 0


def search_beam(hnsw_ef: int, *, points: int, segments: int, segment_points: int) -> int:
    """The HNSW beam a shard of ``points`` in ``segments`` (the appendable one included) is searched with:
    ``hnsw_ef`` (EDGE_HNSW_EF) once its segments average more than ``segment_points`` (EDGE_SEGMENT_POINTS: what
    the serving process's bounded passes build) points, i.e. it holds merged segments; else the smaller
    ``SMALL_SEGMENT_EF`` (never more than ``hnsw_ef``). Chosen when the shard is opened (start-up, and a
    consolidation's swap), like the search pool."""
    if merged_layout(points=points, segments=segments, segment_points=segment_points):
        return hnsw_ef
    return min(hnsw_ef, SMALL_SEGMENT_EF)


def merged_layout(*, points: int, segments: int, segment_points: int) -> bool:
    """Whether a shard of ``points`` in ``segments`` (the appendable one included) holds merged segments: its
    segments average more than ``segment_points`` (EDGE_SEGMENT_POINTS, what the serving process's bounded passes
    build). Such a shard is searched with the full beam and ACORN (see HNSW_M's comment)."""
    return points > segment_points * max(1, segments)


def stored_segment_points(path: Path, dimension: int) -> list[int] | None:
    """Points (deleted ones included) of each segment of the shard at ``path``, read from the engine's dense vector
    files without loading it: an indexed segment's ``matrix.dat`` (a small header, then ``dimension`` float32 per
    point), the appendable one's ``vectors/status.dat`` (its length, a little-endian u64). None when any segment
    is not laid out so (another engine version or vector storage): the caller then plans as if nothing were known.
    A segment created or dropped by a pass while this reads also gives None."""
    sizes: list[int] = []
    try:
        for entry in os.scandir(path / "segments"):
            if not entry.is_dir():
                continue
            storage = Path(entry.path) / f"vector_storage-{DENSE_VECTOR}"
            matrix = storage / "matrix.dat"
            if matrix.is_file():
                sizes.append(matrix.stat().st_size // (dimension * 4))
                continue
            status = (storage / "vectors" / "status.dat").read_bytes()
            if len(status) != 8:
                return None
            sizes.append(int.from_bytes(status, "little"))
    except OSError:
        return None
    return sizes


def planned_merges(sizes: Sequence[int], cap: int) -> list[list[int]]:
    """The batches (indexes into ``sizes``) the engine's merge planner would merge among segments of ``sizes``
    points under a cap of ``cap`` points, with ``default_segment_number`` 1 as the consolidation's child runs it:
    a port of ``MergeOptimizer::plan_optimizations`` (qdrant 1.19.0, lib/shard/src/optimizers/merge_optimizer.rs).
    Smallest first, each batch while its sum stays below the cap; a first batch of 2 is only planned with a second
    batch (one of 2 alone would not reduce the segment count). Empty: a child would merge nothing."""
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    plan: list[list[int]] = []
    held: list[int] | None = None
    taken = 0
    last = len(sizes) + 1  # expected segments + 2 - default_segment_number
    while taken < min(last, len(order)):
        batch: list[int] = []
        total = 0
        for index in order[taken : min(last, len(order))]:
            total += sizes[index]
            if total >= cap:
                break
            batch.append(index)
        if len(batch) < 2:
            break
        first = taken == 0
        taken += len(batch)
        last += 1
        if first and len(batch) < 3:
            held = batch
            continue
        if held is not None:
            plan.append(held)
            held = None
        plan.append(batch)
    return plan


def merge_worthwhile(
    sizes: Sequence[int], *, cap: int, segment_points: int, leave_share: float, max_segments: int
) -> bool:
    """Whether a consolidation of segments of ``sizes`` points (the appendable one included) under a cap of ``cap``
    points is worth starting: the engine's planner would merge something (`planned_merges`), and it would not
    rewrite a merged segment (more than ``segment_points``: larger than the serving process builds) for the sake
    of a few new points, i.e. the segments merged into it hold ``leave_share`` of its points or more, or the shard
    has more than ``max_segments`` segments (the bound on what a search visits). A merge rewrites the whole merged
    segment (copied, re-quantized, its graph reused and the new points inserted), so leaving it alone until the
    new points are a sizable share rewrites it once per that share instead of once per sealed segment."""
    plan = planned_merges(sizes, cap)
    if not plan:
        return False
    if len(sizes) > max_segments:
        return True
    for batch in plan:
        merged = [sizes[i] for i in batch if sizes[i] > segment_points]
        if merged and sum(sizes[i] for i in batch) - max(merged) < leave_share * max(merged):
            return False
    return True


def _guarded(func: Callable[P, R]) -> Callable[P, R]:
    """Turn any engine failure into ServiceUnavailable (counted and logged)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except RagError:
            raise
        except Exception as exc:
            FAILURES.labels(component="vector_store").inc()
            logger.error("vector store call %s failed", func.__name__, exc_info=exc)
            raise ServiceUnavailable("vector store unavailable; retry later") from exc

    return wrapper


def _match(key: str, value: Any) -> qe.FieldCondition:
    # qdrant-edge-py 0.9.0 reads a Python bool as the integer 1/0 (bool subclasses int), which then matches no
    # boolean payload; numpy's bool_ is not an int and arrives as a boolean.
    if isinstance(value, bool):
        value = np.bool_(value)
    return qe.FieldCondition(key, match=qe.MatchValue(value))


@functools.lru_cache(maxsize=1024)
def _tenant_filter(tenant_id: str) -> qe.Filter:
    """The tenant filter of a search without metadata conditions, built once per tenant (the engine reads it
    and never changes it; building it cost ~20 us of a cold search's Python)."""
    return qe.Filter(must=[_match("tenant_id", tenant_id)])


def _condition(condition: MetadataCondition) -> qe.FieldCondition | qe.Filter:
    key = f"metadata.{condition.field}"
    if condition.any_of is not None:
        return _any_of(key, condition.any_of)
    if condition.equals is not None:
        return _equals(key, condition.equals)
    return qe.FieldCondition(
        key, range=qe.RangeFloat(gt=condition.gt, gte=condition.gte, lt=condition.lt, lte=condition.lte)
    )


def _equals(key: str, value: str | int | float | bool) -> qe.FieldCondition:
    number = numeric_equality(value)
    if isinstance(number, float):
        # Numeric equality: a float range of one value reads int and float payloads (and a float index).
        return qe.FieldCondition(key, range=qe.RangeFloat(gte=number, lte=number))
    return _match(key, value if number is None else number)


def _any_of(key: str, values: Sequence[str | int]) -> qe.FieldCondition | qe.Filter:
    numbers = [numeric_equality(value) for value in values]
    if all(number is None for number in numbers):
        return qe.FieldCondition(key, match=qe.MatchAny(list(values)))
    ranges: list[qe.FieldCondition | qe.Filter] = [
        qe.FieldCondition(key, range=qe.RangeFloat(gte=number, lte=number))
        for number in numbers
        if isinstance(number, float)
    ]
    exact = [number for number in numbers if isinstance(number, int)]
    if exact:
        ranges.append(qe.FieldCondition(key, match=qe.MatchAny(exact)))
    return ranges[0] if len(ranges) == 1 else qe.Filter(should=ranges)


def unindexed_points(points: int, indexed_vectors: int, *, has_sparse: bool) -> int:
    """Dense vectors not yet in an HNSW segment, from the shard's info (an upper bound, never negative).

    ``indexed_vectors_count`` counts every vector name: each non-empty BM25 vector counts as indexed as soon as
    it is written, and vectors of deleted points count until a vacuum drops them. ``points - indexed`` was then
    negative (logged as a negative backlog) or hid the dense backlog. Counting every point's sparse vector as
    indexed gives the dense backlog exactly when every chunk has BM25 terms, a little more when some have none.
    """
    dense_indexed = indexed_vectors - points if has_sparse else indexed_vectors
    return min(points, max(0, points - dense_indexed))


def _sparse(vector: SparseVector) -> qe.SparseVector:
    return qe.SparseVector(list(vector.indices), list(vector.values))


def _sparse_lists(vector: SparseVector) -> tuple[list[int], list[float]]:
    return list(vector.indices), list(vector.values)


def _dense_of(vector: Any) -> Sequence[float] | None:
    return vector.get(DENSE_VECTOR) if isinstance(vector, dict) else None


class _Gate:
    """Shared by every call into the shard, taken alone by the consolidation's swap (close the shard, move the
    merged copy in, load it): no call ever sees the shard closed, and none waits longer than the swap."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        self.enter_shared()
        try:
            yield
        finally:
            self.exit_shared()

    def enter_shared(self) -> None:
        """`shared` without a generator (a search's path: every call pays it); pair with `exit_shared`."""
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._shared += 1

    def exit_shared(self) -> None:
        with self._cond:
            self._shared -= 1
            if not self._shared:
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True  # new shared holders wait from here on, so the swap cannot starve
            while self._shared:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class _IndexBuilder:
    """Builds the admitted metadata payload indexes in a daemon thread, one at a time, oldest first, pausing
    ``pause_ratio`` times as long as each build took before the next (a build holds the GIL throughout).

    ``built`` is set after each build (tests wait on it); ``before_build`` is called just before each one."""

    def __init__(self, build: Callable[[str, IndexKind], None], *, pause_ratio: float) -> None:
        self._build = build
        self._ratio = pause_ratio
        self._queue: list[tuple[str, IndexKind]] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._building = False
        self.builds = 0
        self.built = threading.Event()
        self.before_build: Callable[[str], None] | None = None
        self._thread = threading.Thread(target=self._run, name="edge-metadata-index", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, keys: Iterable[tuple[str, IndexKind]]) -> None:
        keys = list(keys)
        with self._changed:
            self._queue.extend(keys)
            METADATA_INDEX_BACKLOG.inc(len(keys))  # inc/dec: a re-index's second store shares the gauge
            self._changed.notify()

    @property
    def pending(self) -> list[str]:
        """Keys queued or being built."""
        with self._changed:
            return [key for key, _ in self._queue]

    @property
    def idle(self) -> bool:
        with self._changed:
            return not self._queue

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every queued index was built (or tried); False when ``timeout`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._queue or self._stop.is_set(), timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._stop.is_set():
                    self._changed.wait()  # woken by add (and by stop)
                if self._stop.is_set():
                    return
                key, kind = self._queue[0]
            if self.before_build is not None:
                self.before_build(key)
                if self._stop.is_set():
                    return
            started = time.perf_counter()
            try:
                self._build(key, kind)
            except Exception as exc:  # an index only speeds filters up; retried at the next start-up
                FAILURES.labels(component="vector_store").inc()
                logger.warning("could not build the payload index on metadata.%s: %s", key, exc)
            took = time.perf_counter() - started
            with self._changed:
                self._queue.pop(0)
                METADATA_INDEX_BACKLOG.dec()
                self.builds += 1
                self._changed.notify_all()
            self.built.set()
            if self._stop.wait(max(0.001, took * self._ratio)):
                return

    def stop(self) -> None:
        """Stop after the build in progress, if any (never in the middle of one: the engine call cannot be
        interrupted; what is still queued is built after the next start-up)."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        with self._changed:
            METADATA_INDEX_BACKLOG.dec(len(self._queue))
            self._queue.clear()


class _Optimizer:
    """Runs the shard's optimizers in a daemon thread: after every ``chunk_points`` written points, and once
    writes have paused for ``idle_seconds`` (whatever is left, e.g. a vacuum after deletes); then, once writes
    have paused for ``consolidate_idle`` seconds, one consolidation (``consolidate``). Writes that never pause
    that long but only trickle (at most ``trickle_points`` in the last ``consolidate_idle`` seconds) start one
    anyway once it has been wanted for ``consolidate_wait`` seconds: the writes made during it are replayed
    onto the merged copy, so a trickle no longer keeps a shard from consolidating."""

    def __init__(
        self,
        run_pass: Callable[[], None],
        *,
        idle_seconds: float,
        chunk_points: int,
        consolidate: Callable[[Callable[[], bool]], object] | None = None,
        consolidate_idle: float = 0.0,
        consolidate_wait: float | None = None,
        trickle_points: int = 0,
        settle: Callable[[Callable[[], bool]], object] | None = None,
        settling: bool = False,
    ) -> None:
        self._run_pass = run_pass
        self._idle = idle_seconds
        self._chunk = chunk_points
        self._consolidate = consolidate
        self._consolidate_idle = consolidate_idle
        self._consolidate_wait = math.inf if consolidate_wait is None else consolidate_wait
        self._trickle_points = trickle_points
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (when, points) written
        self._changed = threading.Condition()
        # The start-up pass runs at once (not 0.0: the monotonic clock is the uptime, so on a host up for less
        # than idle_seconds the start-up pass waited for it).
        self._last_write = -math.inf
        self._started = time.monotonic()  # a consolidation waits for a pause after start-up too
        self._pending = True  # a loaded shard may hold unindexed points from before a restart
        self._consolidation_wanted = True  # and may have been left with many small segments
        self._wanted_since = self._started
        # A consolidation left a merged segment alone (``consolidate`` returned True): ``settle`` merges it anyway
        # once writes have paused for ``consolidate_wait`` (a layout left for a trickle is not kept at rest).
        self._settle = settle
        self._settling = settling and settle is not None
        self._written = 0  # points written since the last pass started
        self._stopping = False
        self._running = False
        self.runs = 0
        self.consolidations = 0  # consolidation attempts (whether or not they found anything to merge)
        self.largest_backlog = 0  # most unindexed points any pass started with (what bounds a pass's work)
        self.finished = threading.Event()  # set after each pass (tests wait on it)
        self.consolidated = threading.Event()  # set after each consolidation attempt (tests wait on it)
        self._thread = threading.Thread(target=self._run, name="edge-optimizer", daemon=True)

    def start(self) -> None:
        # Not in __init__: the start-up pass runs at once, and the store's pass reads ``store._optimizer``,
        # which is only set once the constructor has returned (started there, the pass could run first).
        self._thread.start()

    def wrote(self, points: int = 0) -> None:
        with self._changed:
            self._last_write = now = time.monotonic()
            self._pending = True
            if not self._consolidation_wanted:
                self._wanted_since = now
            self._consolidation_wanted = True
            if self._trickle_points:
                self._recent.append((now, max(1, points)))
                self._forget_before(now - self._consolidate_idle)
            self._written += points
            self._changed.notify()

    def _forget_before(self, moment: float) -> None:
        while self._recent and self._recent[0][0] < moment:
            self._recent.popleft()

    def _trickling(self, now: float) -> bool:
        """Whether the writes of the last ``consolidate_idle`` seconds are few enough to replay."""
        self._forget_before(now - self._consolidate_idle)
        return sum(points for _, points in self._recent) <= self._trickle_points

    def _stopped(self) -> bool:
        with self._changed:
            return self._stopping

    def _wait_for_work(self) -> str | None:
        """Block until a pass or a consolidation is due: "pass", "consolidate", or None when stopping."""
        with self._changed:
            while not self._stopping and not self._pending:
                if self._consolidate is None or not self._consolidation_wanted:
                    if self._settling:
                        now = time.monotonic()
                        remaining = max(self._last_write, self._started) + self._consolidate_wait - now
                        if remaining <= 0:
                            self._settling = False
                            self._running = True
                            return "settle"
                        self._changed.wait(remaining)
                        continue
                    self._changed.wait()
                    continue
                now = time.monotonic()
                quiet_since = max(self._last_write, self._started)
                remaining = quiet_since + self._consolidate_idle - now
                overdue = max(self._wanted_since, self._started) + self._consolidate_wait
                if remaining <= 0 or (now >= overdue and self._trickling(now)):
                    self._consolidation_wanted = False
                    self._running = True
                    return "consolidate"
                self._changed.wait(remaining if now >= overdue else min(remaining, overdue - now))
            # Wait until a chunk's worth of points was written, or no write came for idle_seconds (each
            # write moves that deadline): a steady ingest is indexed chunk by chunk, never all at once.
            while not self._stopping and self._written < self._chunk:
                remaining = self._last_write + self._idle - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            if self._stopping:
                return None
            self._pending = False
            self._written = 0
            self._running = True
            return "pass"

    def _run(self) -> None:
        while True:
            work = self._wait_for_work()
            if work is None:
                return
            try:
                if work == "pass":
                    self._run_pass()
                elif work == "settle":
                    assert self._settle is not None
                    self._settle(self._stopped)
                else:
                    assert self._consolidate is not None
                    left = self._consolidate(self._stopped)
                    with self._changed:
                        self._settling = left is True and self._settle is not None
            except DiskNearlyFull as exc:  # refused before it wrote anything: the cause, not a traceback
                logger.error("edge store %s not run: %s", "optimization" if work == "pass" else work, exc)
            except Exception as exc:  # an optimizer failure leaves the data as it was; retry after next write
                FAILURES.labels(component="vector_store").inc()
                logger.error("edge store %s failed", "optimization" if work == "pass" else work, exc_info=exc)
            with self._changed:
                self._running = False
                if work == "pass":
                    self.runs += 1
                else:
                    self.consolidations += 1
            (self.finished if work == "pass" else self.consolidated).set()

    @property
    def idle(self) -> bool:
        """No pass running and none pending (every write so far has been optimized)."""
        with self._changed:
            return not self._pending and not self._running

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify()
        self._thread.join()


def copy_sparse(src: str, dst: str) -> None:
    """Copy a file keeping its holes: the engine's files are mostly preallocated, sparse space (a 100k-chunk
    shard is 1.2 GB apparent, 0.3 GB on disk), and a plain copy would write every zero."""
    with open(src, "rb") as source, open(dst, "wb") as target:
        size = os.fstat(source.fileno()).st_size
        offset = 0
        try:
            while offset < size:
                try:
                    offset = os.lseek(source.fileno(), offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno != errno.ENXIO:  # ENXIO: only a hole is left; anything else: no SEEK_DATA
                        raise
                    break
                end = os.lseek(source.fileno(), offset, os.SEEK_HOLE)
                source.seek(offset)
                target.seek(offset)
                while offset < end:
                    chunk = source.read(min(end - offset, 1 << 20))
                    if not chunk:
                        break
                    target.write(chunk)
                    offset += len(chunk)
        except (AttributeError, OSError):  # no SEEK_DATA on this platform or filesystem: copy every byte
            source.seek(0)
            target.seek(0)
            shutil.copyfileobj(source, target, 1 << 20)
        target.truncate(size)
    shutil.copystat(src, dst)


# The consolidation child: opens the copy with the consolidation's optimizer and HNSW settings (a segment built
# with another graph config is rebuilt with this one: a copy written by an earlier release takes HNSW_M), merges,
# and prints what it
# did; then applies the writes the serving process sends it (JSON lines of service.app.store.edge_ops entries, the
# writes acknowledged during the merge) until "finish", when it flushes, closes the copy and says how many it
# applied. End of input without "finish": the copy is given up. It dies with the thread that started it
# (PR_SET_PDEATHSIG), never outliving the store.
CONSOLIDATE_CHILD = """
import ctypes, json, os, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
except (OSError, AttributeError):
    pass
os.nice(10)
import qdrant_edge as qe
sys.path.insert(0, sys.argv[6])
from service.app.store.edge_ops import index_params, operation
path, name, size, optimizers = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
hnsw = json.loads(sys.argv[7]) if len(sys.argv) > 7 else None
shard = qe.EdgeShard.load(path, qe.EdgeConfig(
    vectors={name: qe.EdgeVectorParams(size=size, distance=qe.Distance.Cosine)},
    optimizers=qe.EdgeOptimizersConfig(**optimizers),
    hnsw_config=qe.HnswIndexConfig(**hnsw) if hnsw else None,
))
indexes = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
kinds = {"PayloadSchemaType.Keyword": "keyword", "PayloadSchemaType.Integer": "integer",
         "PayloadSchemaType.Float": "float", "PayloadSchemaType.Bool": "bool"}
if hnsw and hnsw.get("m") == 0:  # tenant graphs: no other index may build graphs (an earlier release's may)
    for field, info in shard.info().payload_schema.items():
        kind = kinds.get(str(info.data_type))
        if field != "tenant_id" and kind and getattr(info.params, "enable_hnsw", None) is not False:
            shard.update(qe.UpdateOperation.create_field_index(field, index_params(kind)))
before = shard.info().segments_count
changed = shard.optimize()
for key, kind in indexes.items():  # metadata indexes deferred here from the serving process (its own GIL)
    if "metadata." + key not in shard.info().payload_schema:
        shard.update(qe.UpdateOperation.create_field_index("metadata." + key, index_params(kind)))
        changed = True
shard.flush()
after = shard.info().segments_count
print(json.dumps({"changed": changed, "segments_before": before, "segments_after": after}), flush=True)
replayed = 0
for line in sys.stdin:
    entry = json.loads(line)
    if entry["op"] == "finish":
        shard.flush()
        segments = shard.info().segments_count
        shard.close()
        print(json.dumps({"replayed": replayed, "segments": segments}), flush=True)
        sys.exit(0)
    shard.update(operation(entry))
    replayed += 1
shard.close()
"""


def _json_default(value: Any) -> Any:
    """numpy scalars (a vector given as an array) as the Python number they hold."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _block_at(point: str) -> None:
    """The test hook of ``BLOCK_AT_ENV``: block this thread for ever at ``point`` (a test kills the process)."""
    if os.environ.get(BLOCK_AT_ENV) == point:
        print(f"edge consolidation blocked at {point}", file=sys.stderr, flush=True)
        threading.Event().wait()


class EdgeVectorStore:
    """VectorStore on an in-process qdrant-edge shard (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        collection: str,
        dimension: int,
        optimize_idle_seconds: float | None = 2.0,
        optimize_chunk_points: int = OPTIMIZE_CHUNK_POINTS,
        segment_points: int = SEGMENT_POINTS,
        indexing_threads: int = 0,
        search_threads: int = 0,
        consolidate_idle_seconds: float | None = None,
        consolidate_segment_points: int = CONSOLIDATE_SEGMENT_POINTS,
        quantization: bool = False,
        hnsw_ef: int = HNSW_EF,
        metadata_index_max_keys: int = METADATA_INDEX_MAX_KEYS,
        min_free_bytes: int = 0,
        sync_writes: bool = True,
        replay_max_points: int = REPLAY_MAX_POINTS,
        trickle_points: int = CONSOLIDATE_TRICKLE_POINTS,
        trickle_wait_seconds: float | None = None,
    ) -> None:
        if not 0 < optimize_chunk_points <= segment_points:
            raise ValueError("optimize_chunk_points must be between 1 and segment_points")
        if consolidate_idle_seconds and segment_points > consolidate_segment_points:
            raise ValueError("segment_points must not exceed consolidate_segment_points")
        self.path = path
        self.collection = collection
        self.dimension = dimension
        # Writes are refused (503) while the volume has less free space than this (READY_MIN_FREE_BYTES): the
        # engine writes its segments through memory maps, and a page it cannot back on a full filesystem is a
        # SIGBUS that kills the process with no log line (seen on a full tmpfs), not an ENOSPC it could answer.
        self.min_free_bytes = min_free_bytes
        # WRITE_DURABILITY=power_loss: an upsert returns once its WAL records are on disk (see `sync`).
        self.sync_writes = sync_writes
        # Concurrent writers share one WAL sync (group commit); the WAL directory is fsynced only when the names
        # in it changed since its last fsync (a segment created, closed or removed).
        self._wal_sync = GroupSync(self._sync_wal)
        self._wal_names: frozenset[tuple[str, int]] | None = None
        # Set by a failed WAL fsync: writes are refused until a restart (see `_sync_wal`).
        self.write_failure: str | None = None
        self._deferring = (
            threading.local()
        )  # `sync_deferred`: this thread's upserts leave the sync to the caller
        self._segment_points = segment_points
        self.upsert_batch = UPSERT_BATCH
        self._optimize_idle = optimize_idle_seconds
        self._optimize_chunk = optimize_chunk_points
        self._indexing_threads = indexing_threads
        self._search_threads = search_threads
        # The engine sizes segments in KB of vector data; the service thinks in points of this dimension.
        self._indexing_threshold_kb: int | None = max(1, optimize_chunk_points * dimension * 4 // 1024)
        self._max_segment_kb: int | None = max(1, segment_points * dimension * 4 // 1024)
        self._merge_segment_number: int | None = MERGE_SEGMENT_NUMBER
        # 0 or None: no consolidation, and the serving process vacuums (segments stay within the cap then).
        self._consolidate_idle = consolidate_idle_seconds or None
        self._consolidate_points = consolidate_segment_points
        # New shards are created with it; a shard keeps what it was created with (changing it would rebuild
        # every segment in this process, holding the GIL), and is searched as it is stored (_read_search_params).
        self.quantization = quantization
        self.hnsw_ef = hnsw_ef  # EDGE_HNSW_EF: the search beam per merged segment (`search_beam`)
        self._search_params: qe.SearchParams | None = None
        # Whether the open shard's graphs are per tenant (HNSW_M 0; `_read_search_params`).
        self._tenant_graphs = False
        self._gate = _Gate()
        # While a consolidation's child merges its copy: every write acknowledged since the copy, in the order it
        # reached the shard (appended under _replay_lock), for the copy before it is swapped in; and why the copy
        # must be given up instead, if it must (a write that cannot be replayed, or too many).
        self._replay: list[edge_ops.Entry] | None = None
        self._replay_points = 0
        self._replay_broken: str | None = None
        self._replay_lock = threading.Lock()
        self.replay_max_points = replay_max_points
        self.trickle_points = trickle_points
        # None: CONSOLIDATE_TRICKLE_WAIT times the idle wait.
        self.trickle_wait_seconds = trickle_wait_seconds
        self.consolidation_hook: Callable[[str], None] | None = None  # tests: called at each named point
        # Points deleted since the last consolidation (what it would vacuum), kept in the consolidation record.
        self._deleted_points = 0
        self._record_lock = threading.Lock()
        self.vacuum_min_points = CONSOLIDATE_VACUUM_MIN_POINTS
        self._settled_segments: int | None = None  # segments the last consolidation left (or could not merge)
        # A merged segment is left alone while the segments a merge would add to it hold less than this share of
        # its points, unless the shard has more than max_segments segments (`merge_worthwhile`).
        self.leave_share = CONSOLIDATE_LEAVE_SHARE
        self.max_segments = CONSOLIDATE_MAX_SEGMENTS
        self.skipped_consolidations = 0  # due, but not worth a child (`consolidate`): none was started
        # The last due consolidation left a merged segment alone for a few new points (kept in the record: the
        # optimizer merges it anyway once writes have paused for the trickle wait, after a restart too).
        self.left_alone = False
        self._plannable = False
        self.last_consolidation: dict[str, Any] | None = None
        self._lock = DirectoryLock(path.parent)
        self._holds_lock = False
        self._shard: qe.EdgeShard | None = None
        self._optimizer: _Optimizer | None = None
        self.metadata_index_max_keys = metadata_index_max_keys
        self.metadata_index_pause_ratio = METADATA_INDEX_PAUSE_RATIO
        # Larger shards get their metadata indexes from the consolidation's child (see _build_metadata_index):
        # up to one segment's worth of points, a build stalls the process no longer than an optimizer pass may.
        self.metadata_index_inline_points = segment_points
        self._deferred_indexes: dict[str, IndexKind] = {}
        self._unqueued: list[tuple[str, IndexKind]] = []  # admitted by a write still writing
        self._unqueued_lock = threading.Lock()
        self.metadata_budget: MetadataKeyBudget | None = None  # set when the shard is open
        self.indexer: _IndexBuilder | None = None
        self._state = threading.Lock()  # guards open/close, never a search
        self.has_sparse = False  # set when the shard is open (every shard has it then)
        # What the last load's huge-page collapse did (SHARD_HUGE_PAGES), and its thread (tests join it).
        self.huge_pages = hugepages.HugePages()
        self._collapsing: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, model_name: str, dimension: int) -> EdgeVectorStore:
        """The shard for this model at EDGE_PATH; refuses a store an earlier default left behind."""
        refuse_legacy_store(settings)
        name = collection_name(settings.qdrant_collection_prefix, model_name, dimension)
        return cls(
            settings.resolved_edge_path / name,
            collection=name,
            dimension=dimension,
            optimize_idle_seconds=settings.edge_optimize_idle_seconds,
            optimize_chunk_points=settings.edge_optimize_chunk_points,
            segment_points=settings.edge_segment_points,
            indexing_threads=settings.edge_indexing_threads,
            search_threads=settings.edge_search_threads,
            consolidate_idle_seconds=settings.edge_consolidate_idle_seconds,
            consolidate_segment_points=settings.edge_consolidate_segment_points,
            quantization=settings.edge_quantization == "int8",
            hnsw_ef=settings.edge_hnsw_ef,
            metadata_index_max_keys=settings.metadata_index_max_keys,
            min_free_bytes=settings.ready_min_free_bytes,
            sync_writes=settings.write_durability == "power_loss",
            replay_max_points=settings.edge_consolidate_replay_max_points,
            trickle_points=settings.edge_consolidate_trickle_points,
            trickle_wait_seconds=settings.edge_consolidate_trickle_wait_seconds,
        )

    def sibling(self, collection: str, dimension: int) -> EdgeVectorStore:
        """The shard of another collection beside this one (same EDGE_PATH, settings and lock).

        A blue/green re-index builds its new collection through this while this shard keeps serving; the
        directory lock stays held while either is open.
        """
        other = EdgeVectorStore(
            self.path.parent / collection,
            collection=collection,
            dimension=dimension,
            optimize_idle_seconds=self._optimize_idle,
            optimize_chunk_points=self._optimize_chunk,
            segment_points=self._segment_points,
            indexing_threads=self._indexing_threads,
            search_threads=self._search_threads,
            consolidate_idle_seconds=self._consolidate_idle,
            consolidate_segment_points=self._consolidate_points,
            quantization=self.quantization,
            hnsw_ef=self.hnsw_ef,
            metadata_index_max_keys=self.metadata_index_max_keys,
            min_free_bytes=self.min_free_bytes,
            sync_writes=self.sync_writes,
            replay_max_points=self.replay_max_points,
            trickle_points=self.trickle_points,
            trickle_wait_seconds=self.trickle_wait_seconds,
        )
        other._lock = self._lock
        return other

    def set_alias(self, alias: str) -> None:
        """Embedded shards have no aliases: the registry's index pointer alone names the served collection."""

    @property
    def optimize_chunk_points(self) -> int:
        """Points written between two optimisation passes (what bounds the work of one pass)."""
        return self._optimize_chunk

    @property
    def shard(self) -> qe.EdgeShard:
        if self._shard is None:
            raise ServiceUnavailable("vector store is closed")
        return self._shard

    def _config(self) -> qe.EdgeConfig:
        return qe.EdgeConfig(
            vectors=self._dense_params(),
            sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
            hnsw_config=self._hnsw_config(),
            quantization_config=(
                qe.ScalarQuantizationConfig(
                    qe.ScalarType.Int8, quantile=QUANTIZATION_QUANTILE, always_ram=True
                )
                if self.quantization
                else None
            ),
            optimizers=self._optimizers_config(),
            max_search_threads=search_threads(self._search_threads, segments=0),
        )

    def _hnsw_config(self) -> qe.HnswIndexConfig:
        return qe.HnswIndexConfig(
            m=HNSW_M,
            ef_construct=HNSW_EF_CONSTRUCT,
            full_scan_threshold=10_000,
            max_indexing_threads=self._indexing_threads,
            payload_m=HNSW_PAYLOAD_M,
        )

    def _dense_params(self) -> dict[str, qe.EdgeVectorParams]:
        return {DENSE_VECTOR: qe.EdgeVectorParams(size=self.dimension, distance=qe.Distance.Cosine)}

    def _optimizers_config(self) -> qe.EdgeOptimizersConfig:
        # No merge can outgrow max_segment_size, and a segment is indexed once it holds a chunk: each
        # optimize() call (which holds the GIL) rebuilds at most one bounded segment per pending plan. The
        # vacuum has no size cap in the engine, so with consolidation on (segments past the cap exist) it runs
        # only in the consolidation's child.
        return qe.EdgeOptimizersConfig(
            indexing_threshold=self._indexing_threshold_kb,
            max_segment_size=self._max_segment_kb,
            default_segment_number=self._merge_segment_number,
            deleted_threshold=NEVER_VACUUM if self._consolidate_idle else None,
        )

    def _consolidation_optimizers(self) -> dict[str, Any]:
        return {
            "indexing_threshold": self._indexing_threshold_kb,
            "max_segment_size": max(1, self._consolidate_points * self.dimension * 4 // 1024),
            "default_segment_number": 1,
            "deleted_threshold": CONSOLIDATE_DELETED_SHARE,
            "vacuum_min_vector_number": self.vacuum_min_points,
        }

    def ensure_collection(self) -> None:
        """Lock the directory, open (or create) the shard and its payload indexes, start the optimizer."""
        with self._state:
            if self._shard is not None:
                return
            self._lock.acquire()
            self._holds_lock = True
            try:
                free_before = self._free_bytes()
                self._shard = self._open()
                self._read_record()
                self._search_params = self._read_search_params()
                self._ensure_indexes()
                self._ensure_sparse()
                self._refuse_if_opening_filled_the_disk(free_before)
            except BaseException:
                self._close_locked()
                raise
            assert self.indexer is not None
            self.indexer.start()
            if self._optimize_idle is not None:
                self._optimizer = _Optimizer(
                    self._optimize_pass,
                    idle_seconds=self._optimize_idle,
                    chunk_points=self._optimize_chunk,
                    consolidate=self._consolidate_when_idle if self._consolidate_idle else None,
                    consolidate_idle=self._consolidate_idle or 0.0,
                    consolidate_wait=self.trickle_wait_seconds
                    or (self._consolidate_idle or 0.0) * CONSOLIDATE_TRICKLE_WAIT,
                    trickle_points=self.trickle_points,
                    settle=self._settle_when_idle if self._consolidate_idle else None,
                    settling=self.left_alone,
                )
                self._optimizer.start()

    def _refuse_if_opening_filled_the_disk(self, free_before: int) -> None:
        """EmbeddedStoreError when opening took the volume below ``min_free_bytes``. `_open` checks the free space
        before it, but loading a shard makes its preallocated files real and replays its WAL: 600 chunks written
        by one process grew from 11 to 58 MB at the next start (EYES10 S6b), so a start with 64-111 MiB free came
        up refusing every write, its resumed jobs failing. How much a load writes is not known before it (the
        files' holes bound it, but a fresh store's are ~200 MB it never fills), so the check is after it."""
        if not self.min_free_bytes:
            return
        free = self._free_bytes()
        if free >= self.min_free_bytes:
            return
        mib = 1024 * 1024
        raise EmbeddedStoreError(
            f"opening the embedded store at {self.path} wrote {max(0, free_before - free) // mib} MiB (loading its "
            f"segments and replaying its write-ahead log): {free // mib} MiB are free now, below "
            f"READY_MIN_FREE_BYTES ({self.min_free_bytes // mib} MiB), so it would refuse every write; free space "
            "on the volume (or grow it), then start again. The stored data is intact"
        )

    def _optimize_pass(self) -> None:
        """One bounded optimisation pass (the background optimizer's; holds the GIL while it runs)."""
        # An index build writes new segment files through memory maps: on a full volume, a SIGBUS. Refused like
        # a write (the optimizer logs it and tries again after the next write, which needs room too).
        self._check_room()
        with self._engine() as shard:
            info = shard.info()
            backlog = unindexed_points(
                info.points_count, info.indexed_vectors_count, has_sparse=self.has_sparse
            )
            assert self._optimizer is not None
            self._optimizer.largest_backlog = max(self._optimizer.largest_backlog, backlog)
            started = time.perf_counter()
            if shard.optimize():
                logger.info(
                    "edge store optimized in %.2f s (%d of %d points were unindexed)",
                    time.perf_counter() - started,
                    backlog,
                    info.points_count,
                )

    @contextlib.contextmanager
    def _engine(self, *, writes: bool = False) -> Iterator[qe.EdgeShard]:
        """The open shard, held against a consolidation swap for the duration; ``writes`` when the call may
        change the shard's points and is not a logged write (`_writing`): a consolidation merging a copy taken
        before it is then given up."""
        with self._gate.shared():
            if writes and self._replay is not None:
                self._replay_broken = self._replay_broken or "a write that is not replayed"
            yield self.shard

    @contextlib.contextmanager
    def _writing(self, entry: edge_ops.Entry) -> Iterator[qe.EdgeShard]:
        """The open shard for one write, ``entry`` (the caller applies its operation): while a consolidation
        merges, the entry is logged once the write is applied, in the order writes reach the shard (they take
        turns then), to be replayed onto the merged copy. The log starts and is taken under the exclusive gate,
        so no write is ever half in it."""
        with self._gate.shared():
            log = self._replay
            if log is None:
                yield self.shard
                return
            with self._replay_lock:
                try:
                    yield self.shard
                except BaseException:
                    # The served shard may hold part of it: the copy cannot be made equal by replaying.
                    self._replay_broken = self._replay_broken or "a write failed"
                    raise
                self._replay_points += edge_ops.points_of(entry)
                if self._replay_points > self.replay_max_points:
                    if self._replay_broken is None:
                        self._replay_broken = "replay_limit"
                    log.clear()  # the merge is given up: free the log now
                elif self._replay_broken is None:
                    log.append(entry)

    # ------------------------------------------------------------------------------------- consolidation
    def _swap_paths(self) -> tuple[Path, Path, Path]:
        """(building, ready, replaced): the consolidation's copy while the child merges it, once it is complete,
        and the served shard once moved aside; hidden siblings of the shard in EDGE_PATH (one filesystem, so
        each move is an atomic rename)."""
        return tuple(
            self.path.parent / f".{self.path.name}.{stage}" for stage in ("building", "ready", "replaced")
        )  # type: ignore[return-value]

    def _recover_swap(self) -> None:
        """Finish or undo a swap a crash interrupted, then drop the consolidation's leftovers.

        The served shard is only ever moved aside once ``ready`` holds a complete merge with every write
        acknowledged since its copy replayed onto it (under the exclusive gate: no write can follow), so a missing shard directory is replaced by ``ready`` if it exists, else restored from
        ``replaced``."""
        building, ready, replaced = self._swap_paths()
        if not self.path.exists():
            for candidate in (ready, replaced):
                if candidate.is_dir():
                    logger.warning(
                        "edge store %s: finishing an interrupted consolidation from %s", self.path, candidate
                    )
                    candidate.rename(self.path)
                    break
        for leftover in (building, ready, replaced):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)

    def _read_record(self) -> None:
        """What the consolidation record beside the shard says: the segments the last consolidation left, when it
        ran at the current cap (else unknown), and the points deleted since (what the next one would vacuum)."""
        self._settled_segments = None
        self._deleted_points = 0
        self.left_alone = False
        try:
            record = json.loads((self.path / CONSOLIDATION_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # none yet, or unreadable: estimate as for a shard never consolidated
        if not isinstance(record, dict):
            return
        with contextlib.suppress(ValueError, KeyError, TypeError):
            if int(record["segment_points"]) == self._consolidate_points:
                self._settled_segments = int(record["segments"])
        with contextlib.suppress(ValueError, KeyError, TypeError):
            self._deleted_points = max(0, int(record["deleted_points"]))
        self.left_alone = record.get("left_alone") is True

    def _write_record(
        self, directory: Path | None = None, *, segments: int | None = None, deleted: int | None = None
    ) -> None:
        """Write the consolidation record (atomically: a new file renamed over the old one) into ``directory``
        (the shard's by default): ``segments`` and ``deleted`` default to what this store holds now. Losing it
        costs only a futile consolidation attempt, or a vacuum delayed, after the next start-up."""
        directory = directory or self.path
        record: dict[str, int] = {"segment_points": self._consolidate_points}
        settled = self._settled_segments if segments is None else segments
        if settled is not None:
            record["segments"] = settled
        record["deleted_points"] = self._deleted_points if deleted is None else deleted
        if self.left_alone:
            record["left_alone"] = True
        target = directory / CONSOLIDATION_FILE
        temporary = directory / CONSOLIDATION_TEMPORARY
        with self._record_lock:
            try:
                with open(temporary, "w", encoding="utf-8") as handle:
                    json.dump(record, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                temporary.replace(target)
            except OSError as exc:
                logger.warning("could not write the consolidation record %s: %s", target, exc)

    def _write_settled(self, segments: int) -> None:
        """Remember what a consolidation left, for the next start-up."""
        self._settled_segments = segments
        self._write_record()

    def _consolidation_hnsw(self) -> dict[str, int | None]:
        """The graph the consolidation's child builds (the serving process keeps the stored one: `_load`)."""
        config = self._hnsw_config()
        return {
            "m": config.m,
            "ef_construct": config.ef_construct,
            "full_scan_threshold": config.full_scan_threshold,
            "max_indexing_threads": config.max_indexing_threads,
            "payload_m": config.payload_m,
        }

    def _stored_graph(self) -> tuple[int, int | None] | None:
        """(m, payload_m) of the open shard's graph config as stored (None: unreadable): links per point of the
        global graph, and of each tenant's (None: the engine's default, m)."""
        try:
            config = json.loads((self.path / "edge_config.json").read_text(encoding="utf-8"))["hnsw_config"]
            payload_m = config.get("payload_m")
            return int(config["m"]), None if payload_m is None else int(payload_m)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def consolidation_due(self) -> bool:
        """Whether a consolidation may merge or vacuum anything: more segments than the last one left (before
        any, than one per EDGE_CONSOLIDATE_SEGMENT_POINTS plus the appendable one), more points deleted since
        than the share the child vacuums at, or a graph other than ``HNSW_M`` / ``HNSW_PAYLOAD_M`` (a shard an
        earlier release wrote: the child rebuilds it into tenant graphs). (`consolidate` may still find a merge not
        worth starting: `merge_worthwhile`.)"""
        return bool(self._due_reasons()[0])

    def _due_reasons(self) -> tuple[set[str], int]:
        """Why a consolidation is due ("segments", "vacuum", "indexes", "graph"; empty: it is not), and the
        shard's segment count the answer was taken at."""
        with self._engine() as shard:
            info = shard.info()
        settled = self._settled_segments
        if (
            settled is None
        ):  # not consolidated yet in this process: one segment per cap (+ the appendable one)
            settled = math.ceil(info.points_count / self._consolidate_points) + 1
        reasons: set[str] = set()
        if info.segments_count > settled:
            reasons.add("segments")
        if self._deleted_points >= self.vacuum_min_points and self._deleted_points > (
            CONSOLIDATE_DELETED_SHARE * (info.points_count + self._deleted_points)
        ):
            reasons.add("vacuum")
        if self._deferred_indexes:
            reasons.add("indexes")
        if info.points_count > 0 and self._stored_graph() not in (None, (HNSW_M, HNSW_PAYLOAD_M)):
            reasons.add("graph")
        return reasons, info.segments_count

    def _merge_worthwhile(self) -> bool:
        """Whether the child would merge anything worth its cost (`merge_worthwhile`) on the shard as stored;
        True when its segments' sizes cannot be read (then the child's planner alone decides, as before)."""
        # The engine writes the appendable segment's length and drops merged-away segments' directories on a
        # flush (the copy would take one anyway); a count that still differs from the engine's is not trusted.
        with self._engine() as shard:
            shard.flush()
            segments = shard.info().segments_count
        sizes = stored_segment_points(self.path, self.dimension)
        if sizes is None or len(sizes) != segments:
            return True
        cap = max(1, self._consolidate_points * self.dimension * 4 // 1024) * 1024 // (self.dimension * 4)
        self._plannable = bool(planned_merges(sizes, cap))  # False: the child would merge nothing at all
        return merge_worthwhile(
            sizes,
            cap=cap,
            segment_points=self._segment_points,
            leave_share=self.leave_share,
            max_segments=self.max_segments,
        )

    @_guarded
    def consolidate(self, cancelled: Callable[[], bool] = lambda: False, *, settle: bool = False) -> bool:
        """Merge the shard's segments (up to EDGE_CONSOLIDATE_SEGMENT_POINTS each) in a child process and swap
        the result in; True when it did. See the module docstring for why and what it guarantees.

        Writes go on meanwhile: each one acknowledged after the copy was taken is logged and replayed onto the
        merged copy, the last of them under the exclusive gate, before the copy is renamed in, so the swap
        happens with every acknowledged write present in the copy. Discarded (False) when more than
        ``replay_max_points`` were written meanwhile, when a write that cannot be replayed came, when
        ``cancelled()`` turns true, or when there is nothing to merge. The served shard is never touched until
        the swap, which holds every other call to the store off for as long as the last replayed writes, closing
        the old shard and loading the merged one take."""
        reasons, segments = self._due_reasons()
        if settle and self.left_alone:
            reasons.add("settle")  # writes paused long enough: merge what was left alone
        if not reasons:
            return False
        if reasons == {"segments"} and not self._merge_worthwhile():
            # Only a new segment made it due, and merging would merge nothing or rewrite a merged segment for a
            # few new points: no copy, no child; this layout counts as settled until another segment comes.
            EDGE_CONSOLIDATIONS.labels(outcome="skipped").inc()
            self.skipped_consolidations += 1
            self.left_alone = self._plannable  # a merge was put off (not: there was none to make)
            self._write_settled(segments)
            self._checkpoint("skipped")
            return False
        building, ready, replaced = self._swap_paths()
        for leftover in (building, ready, replaced):
            shutil.rmtree(leftover, ignore_errors=True)
        started = time.perf_counter()
        deferred = dict(self._deferred_indexes)  # built in the child's copy (its own GIL), swapped in with it
        # A copy consistent with the WAL: taken after a flush, with no write in flight (they share the gate);
        # every write from here on is logged for the copy.
        with self._engine() as shard:
            shard.flush()  # the bulk of it, without holding searches off
        with self._gate.exclusive():
            self.shard.flush()
            self._replay, self._replay_points, self._replay_broken = [], 0, None
            deleted_at_copy = self._deleted_points
        child: subprocess.Popen[str] | None = None
        errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in the finally below)
        try:
            # Without the record's temporary file: a delete running meanwhile writes the record (`_write_record`)
            # through it and renames it away, so a listed file vanished before its copy (ENOENT gave the
            # consolidation up). The record itself is replaced atomically: the copy gets the old or the new one.
            shutil.copytree(
                self.path,
                building,
                copy_function=copy_sparse,
                ignore=lambda directory, names: (
                    [CONSOLIDATION_TEMPORARY]
                    if Path(directory) == self.path and CONSOLIDATION_TEMPORARY in names
                    else []
                ),
            )
            child = subprocess.Popen(  # noqa: S603 (our own interpreter and script)
                [
                    sys.executable,
                    "-c",
                    CONSOLIDATE_CHILD,
                    str(building),
                    DENSE_VECTOR,
                    str(self.dimension),
                    json.dumps(self._consolidation_optimizers()),
                    json.dumps(deferred),
                    str(Path(edge_ops.__file__).resolve().parents[3]),  # where the service package is
                    json.dumps(self._consolidation_hnsw()),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
            self._checkpoint("merging")
            result = self._merged(child, errors, cancelled)
            if result is None:
                return False
            if not result["changed"]:  # the merge planner found nothing within the cap: keep what is served
                EDGE_CONSOLIDATIONS.labels(outcome="unchanged").inc()
                self.left_alone = False
                self._deleted_points = max(0, self._deleted_points - deleted_at_copy)
                self._write_settled(result["segments_before"])
                return False
            self._checkpoint("merged")
            # Most of the log, while searches and writes go on (a few rounds: a busy writer is not chased); then
            # the rest with every call held off.
            sent = self._send_replay(child, 0, cancelled, rounds=3)
            if sent is None:
                return False
            with self._gate.exclusive():
                sent = self._send_replay(child, sent, cancelled)
                if sent is None:
                    return False
                self._checkpoint("replaying")
                result["replayed"], result["segments_after"] = self._finish_child(child, errors)
                self._checkpoint("replayed")
                deleted_since = max(0, self._deleted_points - deleted_at_copy)
                self.left_alone = False
                # The record goes in with the copy: a crash after the rename leaves it with the shard it describes.
                self._write_record(building, segments=result["segments_after"], deleted=deleted_since)
                self._replay = None
                building.rename(ready)
                self._checkpoint("ready")
                swap_started = time.perf_counter()
                self._swap_in(ready, replaced)
                result["swap_seconds"] = time.perf_counter() - swap_started
                self._deleted_points = deleted_since
                self._settled_segments = result["segments_after"]
            EDGE_CONSOLIDATIONS.labels(outcome="swapped").inc()
            for key in deferred:
                self._deferred_indexes.pop(key, None)
            result["metadata_indexes"] = sorted(deferred)
        finally:
            self._replay = None
            if child is not None:
                if child.poll() is None:
                    child.kill()
                child.wait()
                for stream in (child.stdin, child.stdout):
                    if stream is not None:
                        with contextlib.suppress(OSError):
                            stream.close()
            errors.close()
            for leftover in (building, ready, replaced):
                shutil.rmtree(leftover, ignore_errors=True)
        result["seconds"] = time.perf_counter() - started
        self.last_consolidation = result
        logger.info(
            "edge store %s consolidated from %d to %d segments in %.1f s (%d writes replayed, swap %.2f s)",
            self.path,
            result["segments_before"],
            result["segments_after"],
            result["seconds"],
            result["replayed"],
            result["swap_seconds"],
        )
        return True

    def _checkpoint(self, point: str) -> None:
        """A named point of the consolidation, for tests: ``consolidation_hook`` and ``BLOCK_AT_ENV``."""
        if self.consolidation_hook is not None:
            self.consolidation_hook(point)
        _block_at(point)

    def _given_up(self, cancelled: Callable[[], bool]) -> bool:
        """Whether the merge must be given up now (logged and counted once, when it is)."""
        broken = self._replay_broken
        if broken is None and not cancelled():
            return False
        if broken == "replay_limit":
            EDGE_CONSOLIDATIONS.labels(outcome="replay_limit").inc()
            logger.warning(
                "edge store %s: consolidation abandoned: more than %d points were written during the merge "
                "(the replay log's limit); it is retried once writes pause",
                self.path,
                self.replay_max_points,
            )
        else:
            EDGE_CONSOLIDATIONS.labels(outcome="discarded").inc()
            logger.info("edge store %s: consolidation discarded (%s)", self.path, broken or "cancelled")
        return True

    def _merged(
        self, child: subprocess.Popen[str], errors: Any, cancelled: Callable[[], bool]
    ) -> dict[str, Any] | None:
        """Wait for the child's merge: what it did, or None when the merge was given up meanwhile."""
        assert child.stdout is not None
        while True:
            readable, _, _ = select.select([child.stdout], [], [], 0.2)
            if readable:
                line = child.stdout.readline()
                if not line:
                    raise self._child_failed(child, errors)
                return json.loads(line)
            if self._given_up(cancelled):
                return None

    def _send_replay(
        self, child: subprocess.Popen[str], sent: int, cancelled: Callable[[], bool], *, rounds: int = 0
    ) -> int | None:
        """Send the child the logged writes from ``sent`` on; then those that came meanwhile, ``rounds`` times
        at most (0: until none is left, for under the exclusive gate, where none can come). How many it was sent,
        or None when the merge was given up."""
        assert child.stdin is not None
        for _ in itertools.count() if not rounds else range(rounds):
            if self._given_up(cancelled):
                return None
            with self._replay_lock:
                log = self._replay or []
                entries = log[sent:]
            if not entries:
                return sent
            try:
                child.stdin.write("".join(json.dumps(e, default=_json_default) + "\n" for e in entries))
                child.stdin.flush()
            except BrokenPipeError:
                raise self._child_failed(child, errors=None) from None
            sent += len(entries)
        return sent

    def _finish_child(self, child: subprocess.Popen[str], errors: Any) -> tuple[int, int]:
        """Have the child apply what it was sent, flush and close the copy: the writes it replayed, and the
        copy's segments after them."""
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            child.stdin.write(json.dumps({"op": "finish"}) + "\n")
            child.stdin.close()
        except BrokenPipeError:
            raise self._child_failed(child, errors) from None
        line = child.stdout.readline()
        if child.wait() != 0 or not line:
            raise self._child_failed(child, errors)
        finished = json.loads(line)
        return int(finished["replayed"]), int(finished["segments"])

    @staticmethod
    def _child_failed(child: subprocess.Popen[str], errors: Any) -> RuntimeError:
        child.kill()
        code = child.wait()
        message = ""
        if errors is not None:
            errors.seek(0)
            message = errors.read().strip()[-2000:]
        return RuntimeError(f"consolidation child exited {code}: {message}")

    def _swap_in(self, ready: Path, replaced: Path) -> None:
        """Close the served shard and open the merged one in its place (under the exclusive gate)."""
        shard = self.shard
        shard.close()
        self._shard = None
        self.path.rename(replaced)
        self._checkpoint("replaced")
        try:
            ready.rename(self.path)
            if self.sync_writes:  # the renames too: a power loss must not put the served shard back
                fsync_path(self.path.parent)
            self._checkpoint("swapped")
            self._shard = self._load()
            self._search_params = self._read_search_params()
        except BaseException:
            # The merged copy did not open: put the served shard back as it was.
            if self.path.exists():
                shutil.rmtree(self.path, ignore_errors=True)
            replaced.rename(self.path)
            self._shard = self._load()
            raise

    def _consolidate_when_idle(self, cancelled: Callable[[], bool]) -> bool:
        """One consolidation; True when it left a merged segment alone (the optimizer settles it later)."""
        self.consolidate(cancelled)
        return self.left_alone

    def _settle_when_idle(self, cancelled: Callable[[], bool]) -> None:
        self.consolidate(cancelled, settle=True)

    def _open(self) -> qe.EdgeShard:
        free = self._free_bytes()
        if self.min_free_bytes and free < self.min_free_bytes:
            # Loading (or creating) a shard maps and preallocates its files (32 MiB steps): on a full volume
            # the process died of SIGBUS at start-up without a line.
            raise EmbeddedStoreError(
                f"the embedded store's volume at {self.path} has {free // (1024 * 1024)} MiB free, below "
                f"READY_MIN_FREE_BYTES ({self.min_free_bytes // (1024 * 1024)} MiB): opening the store writes "
                "through memory maps and would crash the process; free space on the volume (or grow it), then "
                "start again. Nothing in the store was changed"
            )
        self._recover_swap()
        config_file = self.path / "edge_config.json"
        if not config_file.is_file():
            return qe.EdgeShard.create(str(self.path), self._config())
        try:
            stored = json.loads(config_file.read_text(encoding="utf-8"))["vectors"][DENSE_VECTOR]["size"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EmbeddedStoreError(
                f"the edge shard at {self.path} has no readable {DENSE_VECTOR!r} vector in edge_config.json "
                f"({exc}); {self._recovery_hint()}"
            ) from None
        if stored != self.dimension:
            raise ServiceUnavailable(
                f"collection {self.collection} has vectors of size {stored}, the model gives {self.dimension}"
            )
        try:
            return self._load()
        except Exception as exc:  # the binding raises a bare Exception with the engine's message
            reason = " ".join(str(exc).split())
            raise EmbeddedStoreError(
                f"the edge shard at {self.path} cannot be loaded ({reason}); {self._recovery_hint()}"
            ) from None

    def _recovery_hint(self) -> str:
        return (
            "the service changed nothing in it: check the directory's permissions and free disk space, then "
            f"restore {self.path} from a backup (or move it aside to start with an empty store, and ingest the "
            "documents again)"
        )

    def _load(self) -> qe.EdgeShard:
        # Stores created with other (or the engine's default) optimizer settings take these on load.
        # (The dense vector is restated because the binding wants one; it is checked against the stored one.)
        # The memory the load makes resident is collapsed into huge pages afterwards, on a thread (SHARD_HUGE_PAGES).
        self.huge_pages = hugepages.HugePages()
        with hugepages.new_memory(self.huge_pages) as extents:
            shard = qe.EdgeShard.load(
                str(self.path),
                qe.EdgeConfig(
                    vectors=self._dense_params(),
                    optimizers=self._optimizers_config(),
                    max_search_threads=search_threads(self._search_threads, shard_segments(self.path)),
                ),
            )
        if extents and SHARD_HUGE_PAGES:
            self._collapsing = threading.Thread(
                target=hugepages.collapse,
                args=(extents, self.huge_pages),
                name=f"edge-huge-pages-{self.collection}",
                daemon=True,
            )
            self._collapsing.start()
        return shard

    def _read_search_params(self) -> qe.SearchParams:
        """Search settings for the shard as stored: the beam `search_beam` chooses from EDGE_HNSW_EF and the
        layout; a quantized shard is searched on its int8 vectors and the best candidates rescored with the
        original vectors (so every score is the exact cosine)."""
        config = json.loads((self.path / "edge_config.json").read_text(encoding="utf-8"))
        info = self.shard.info()
        layout = {
            "points": info.points_count,
            "segments": info.segments_count,
            "segment_points": self._segment_points,
        }
        beam = search_beam(self.hnsw_ef, **layout)
        hnsw = config.get("hnsw_config") or {}
        # Tenant graphs (see HNSW_M's comment): a tenant's walk meets no other tenant's point, so ACORN costs
        # nothing for the tenant filter and needs no per-tenant decision.
        self._tenant_graphs = hnsw.get("m") == 0 and bool(hnsw.get("payload_m"))
        acorn = (
            qe.AcornSearchParams(enable=True, max_selectivity=ACORN_MAX_SELECTIVITY)
            if merged_layout(**layout)
            else None
        )
        if not config.get("quantization_config"):
            return qe.SearchParams(hnsw_ef=beam, acorn=acorn)
        return qe.SearchParams(
            hnsw_ef=beam,
            quantization=qe.QuantizationSearchParams(rescore=True, oversampling=QUANTIZATION_OVERSAMPLING),
            acorn=acorn,
        )

    def _tenant_search_params(self, tenant_id: str) -> qe.SearchParams | None:
        """The dense search settings for ``tenant_id``: on a shard of tenant graphs, the shard's; on one global
        graph (a shard an earlier release merged, until its next consolidation), ACORN (merged layouts) only when
        the tenant holds at least ACORN_MIN_SHARE of the shard's points by the engine's estimate (see HNSW_M's
        comment)."""
        params = self._search_params
        if params is None or params.acorn is None or self._tenant_graphs:
            return params
        tenant = qe.Filter(must=[_match("tenant_id", tenant_id)])
        with self._engine() as shard:
            points = shard.count(qe.CountRequest(exact=False))
            share = shard.count(qe.CountRequest(exact=False, filter=tenant))
        if share >= ACORN_MIN_SHARE * points:
            return params
        return qe.SearchParams(hnsw_ef=params.hnsw_ef, quantization=params.quantization)

    @property
    def quantized(self) -> bool:
        """Whether the open shard stores int8-quantized dense vectors (searched, then rescored exactly)."""
        return self._search_params is not None and self._search_params.quantization is not None

    def _ensure_sparse(self) -> None:
        """Add the BM25 vector to a shard that predates it and fill it from every point's chunk text."""
        config = json.loads((self.path / "edge_config.json").read_text(encoding="utf-8"))
        if SPARSE_VECTOR not in (config.get("sparse_vectors") or {}):
            self.shard.update(
                qe.UpdateOperation.create_sparse_vector(SPARSE_VECTOR, modifier=qe.Modifier.Idf)
            )
            encoder = default_encoder()
            offset: Any = None
            filled = 0
            while True:
                records, offset = self.shard.scroll(
                    qe.ScrollRequest(offset=offset, limit=SCROLL_PAGE, with_payload=["text"])
                )
                for start in range(0, len(records), self.upsert_batch):
                    self.shard.update(
                        qe.UpdateOperation.update_vectors(
                            [
                                qe.PointVectors(
                                    record.id,
                                    {
                                        SPARSE_VECTOR: _sparse(
                                            encoder.document((record.payload or {})["text"])
                                        )
                                    },
                                )
                                for record in records[start : start + self.upsert_batch]
                            ]
                        )
                    )
                filled += len(records)
                if offset is None:
                    break
            self.shard.flush()
            logger.info("added the %r sparse vector to %s (%d points)", SPARSE_VECTOR, self.path, filled)
        self.has_sparse = True

    def _ensure_indexes(self) -> None:
        schema = self.shard.info().payload_schema
        wanted: list[tuple[str, Any]] = [
            ("tenant_id", qe.KeywordIndexParams(is_tenant=True)),
            # No graph of their own (see HNSW_M's comment); a shard created before keeps its indexes until its
            # next consolidation's child re-creates them so.
            ("document_id", edge_ops.index_params("keyword")),
            ("version", edge_ops.index_params("integer")),
        ]
        for key, params in wanted:
            if key not in schema:
                self.shard.update(qe.UpdateOperation.create_field_index(key, params))
        self._open_metadata_budget(schema)

    def _open_metadata_budget(self, schema: dict[str, Any]) -> None:
        """The admitted metadata keys: every one the shard has an index on (kept, whatever the limit: indexes are
        never dropped here), then those persisted and not built yet (a process stopped before it built them),
        while the limit lasts; these are queued to build."""
        built: dict[str, IndexKind] = {
            key.removeprefix("metadata."): _KIND_OF_EDGE.get(str(info.data_type), "keyword")
            for key, info in schema.items()
            if key.startswith("metadata.")
        }
        # An index of a kind no longer wanted (``integer``, from an earlier release) is rebuilt by the builder.
        admitted = {key: rebuilt_kind(kind) for key, kind in built.items()}
        for key, kind in read_admitted(self.path / METADATA_INDEX_FILE).items():
            if key not in admitted and len(admitted) < self.metadata_index_max_keys:
                admitted[key] = kind
        self.metadata_budget = MetadataKeyBudget(
            self.metadata_index_max_keys,
            store="edge",
            collection=self.collection,
            existing=admitted,
            persist=functools.partial(write_admitted, self.path / METADATA_INDEX_FILE),
        )
        self.indexer = _IndexBuilder(self._build_metadata_index, pause_ratio=self.metadata_index_pause_ratio)
        self.indexer.add((key, kind) for key, kind in admitted.items() if built.get(key) != kind)

    def _build_metadata_index(self, key: str, kind: IndexKind) -> None:
        """One index build (the builder thread's): holds the GIL for its duration, a search's gate share only.

        A build scans every point's payload (2-4 s at 100k points even for a key no point has yet, measured), so
        on a shard of more than ``metadata_index_inline_points`` points, with consolidation on, the key is
        deferred to the next consolidation instead: its child builds the index in its copy (its own GIL) and the
        swap brings it in. Until then the key is filtered unindexed (exactly, more slowly)."""
        with self._engine() as shard:
            info = shard.info()
        current = info.payload_schema.get(f"metadata.{key}")
        if current is not None:
            if _KIND_OF_EDGE.get(str(current.data_type)) == kind:
                return
            # An index of another kind (an ``integer`` one from an earlier release, which misses every float
            # value): dropped, so the key is filtered unindexed (exactly) until the new one is built.
            self._apply(edge_ops.index_entry(key, None))
            logger.info("dropped the payload index on metadata.%s to rebuild it as %s", key, kind)
            with self._engine() as shard:
                info = shard.info()
        if self._consolidate_idle and info.points_count > self.metadata_index_inline_points:
            self._deferred_indexes[key] = kind
            logger.info(
                "payload index on metadata.%s deferred to the next consolidation (%d points)",
                key,
                info.points_count,
            )
            if self._optimizer is not None:
                self._optimizer.wrote()  # a consolidation is due once writes pause
            return
        started = time.perf_counter()
        self._apply(edge_ops.index_entry(key, kind))
        logger.info(
            "built the payload index on metadata.%s (%s) in %.2f s", key, kind, time.perf_counter() - started
        )

    def _admit_metadata(self, metadata_items: Iterable[dict[str, Any]]) -> None:
        """Admit the new metadata keys before the points that carry them are written (a dict lookup per key, plus
        one small fsynced file write when one is new); never an index build in the request."""
        if self.metadata_budget is None:
            raise ServiceUnavailable("vector store is closed")
        new = self.metadata_budget.admit(metadata_items)
        with self._unqueued_lock:
            self._unqueued.extend(new)

    def _queue_indexes(self) -> None:
        """Hand the admitted keys to the builder once a write is done: the write does not wait for the GIL behind
        a build it caused, and the build is decided on a point count that includes it. (Keys of a write that
        failed wait for the next write that succeeds.)"""
        with self._unqueued_lock:
            keys, self._unqueued = self._unqueued, []
        if keys and self.indexer is not None:
            self.indexer.add(keys)

    def _free_bytes(self) -> int:
        """Free space (for this user) on the store's volume: of the shard directory, or the nearest parent."""
        where = self.path
        while not where.exists() and where != where.parent:
            where = where.parent
        stats = os.statvfs(where)
        return faked_free_bytes(stats.f_bavail * stats.f_frsize)

    def _check_room(self) -> None:
        """ServiceUnavailable when a WAL sync failed since the store opened (`write_failure`), or when the store's
        volume has less free space than ``min_free_bytes``."""
        if self.write_failure is not None:
            FAILURES.labels(component="vector_store").inc()
            raise ServiceUnavailable(self.write_failure)
        if not self.min_free_bytes:
            return
        free = self._free_bytes()
        if free < self.min_free_bytes:
            FAILURES.labels(component="vector_store").inc()
            logger.error("write refused: %d bytes free under %s, below READY_MIN_FREE_BYTES", free, self.path)
            raise DiskNearlyFull(
                f"the embedded store's disk is nearly full ({free // (1024 * 1024)} MiB free, below "
                f"READY_MIN_FREE_BYTES {self.min_free_bytes // (1024 * 1024)} MiB): writes are refused until "
                "space is freed; searches still work",
                retry_after=DISK_FULL_RETRY_SECONDS,
            )

    def check_room(self) -> None:
        """What a write would be refused for now (`_check_room`), for a write accepted before it runs: an async
        write's 202 must not promise what a full disk already refuses."""
        self._check_room()

    @_guarded
    def upsert(self, points: Sequence[ChunkPoint]) -> None:
        """Write points in batches; each batch is in the WAL and visible when its call returns."""
        if not points:
            return
        self._check_room()
        self._admit_metadata({id(p.metadata): p.metadata for p in points}.values())
        for start in range(0, len(points), self.upsert_batch):
            batch = points[start : start + self.upsert_batch]
            entry = edge_ops.upsert_entry(
                [
                    (
                        point_id(p.tenant_id, p.document_id, p.version, p.chunk_index),
                        list(p.vector),
                        _sparse_lists(p.sparse_vector()),
                        p.payload(),
                    )
                    for p in batch
                ]
            )
            self._apply(entry)
            self._wrote(len(batch))
        if not getattr(self._deferring, "active", False):
            self.sync()
        self._queue_indexes()

    @contextlib.contextmanager
    def sync_deferred(self) -> Iterator[None]:
        """Upserts this thread makes inside the block return before their WAL sync: the caller owes a `sync()`
        (it may run on another thread, overlapping other work) and acknowledges nothing they wrote before it
        returned. The ingest runs it while the registry prepares the commit that acknowledges the write."""
        self._deferring.active = True
        try:
            yield
        finally:
            self._deferring.active = False

    @_guarded
    def upsert_records(self, records: Sequence[tuple[str, Sequence[float], dict[str, Any]]]) -> None:
        """Write (point id, dense vector, payload) triples as they are, e.g. copied from another store; the sparse
        vector is computed from the payload's chunk text."""
        self._check_room()
        self._admit_metadata(payload.get("metadata") or {} for _, _, payload in records)
        encoder = default_encoder()
        for start in range(0, len(records), self.upsert_batch):
            batch = records[start : start + self.upsert_batch]
            entry = edge_ops.upsert_entry(
                [
                    (pid, list(vector), _sparse_lists(encoder.document(payload["text"])), payload)
                    for pid, vector, payload in batch
                ]
            )
            self._apply(entry)
            self._wrote(len(batch))
        self.sync()
        self._queue_indexes()

    @_guarded
    def sync(self) -> None:
        """With ``sync_writes`` (WRITE_DURABILITY=power_loss): put every write applied so far on disk, so it
        survives a power loss. The caller acknowledges nothing before this returns: the ingest commits the
        registry (which makes the version visible and the write acknowledged) only after its upsert returned.

        Group commit (service.app.store.group_sync): concurrent callers share one sync, which covers every write
        applied before it started; a caller whose write came later waits for the next one. The sync fsyncs the
        WAL segment the engine appends to (fsync writes back the pages the engine dirtied through its memory
        map: Linux's msync(MS_SYNC) is the same call on the same file) and, when the names in the WAL directory
        changed since the last round (a segment created, retired or removed), every file in it and the
        directory itself (`_fsync_wal`). Where this version of the engine keeps no ``open-*`` WAL segment,
        ``EdgeShard.flush()`` instead. Deletes are not synced: a lost delete leaves points the registry no
        longer names, which the orphan collector removes.
        """
        if not self.sync_writes:
            return
        self._wal_sync.sync()

    def _sync_wal(self) -> None:
        """One sync of the WAL (`sync`'s leader runs it for every caller waiting). After a failed one, none: a
        write applied before the failure was known, and waiting for the next round, must not be acknowledged by
        an fsync that succeeds over the hole the failed one may have left (`write_failure`)."""
        if self.write_failure is not None:
            raise ServiceUnavailable(self.write_failure)
        with self._gate.shared():  # no consolidation swap between the listing and the syncs
            wal = self.path / WAL_DIRECTORY
            try:
                for attempt in range(WAL_LIST_ATTEMPTS):
                    try:
                        self._fsync_wal(wal)
                        return
                    except FileNotFoundError:
                        # The WAL retired (renamed) or removed a segment between the listing and its fsync: list
                        # again (the renamed file is synced under its new name, the directory with it).
                        if attempt + 1 == WAL_LIST_ATTEMPTS:
                            raise
            except OSError as exc:
                # After a failed fsync the kernel may have dropped the dirty pages: nothing can say the write
                # is on disk, so it is not acknowledged (the ingest discards its version). Nor can anything say
                # the pages are still there to write back: Linux marks them clean after reporting the error once,
                # so the next fsync succeeds over a WAL with a hole where this write was, and a replay after a
                # power loss stops at the hole and loses every write acknowledged after it (PostgreSQL's
                # "fsyncgate", which it answers by stopping). So the store takes no more writes until the process
                # restarts and the engine reopens the WAL as it is on disk; searches go on. A segment renamed
                # away under the listing (FileNotFoundError after the retries) says nothing about the disk.
                self._wal_names = None
                if not isinstance(exc, FileNotFoundError):
                    self.write_failure = (
                        f"a sync of the embedded store's write-ahead log failed ({exc.strerror or exc}): writes "
                        "are refused until the service restarts, since nothing can say the writes before it "
                        "reached the disk; check the disk (its kernel log), then restart; searches still work"
                    )
                FAILURES.labels(component="vector_store").inc()
                logger.error("could not sync the edge store's WAL under %s: %s", wal, exc)
                raise ServiceUnavailable(
                    "the embedded store could not sync its write-ahead log; retry"
                ) from exc

    def _fsync_wal(self, wal: Path) -> None:
        """fsync what the writes since the last round changed in ``wal``.

        When the directory lists the same (name, inode) pairs as at the last round that fsynced every file and
        the directory itself, only the segment the WAL appends to is fsynced: the lowest-numbered ``open-N``
        (the wal crate hands its preallocated segments out in id order and renames the one it retires to
        ``closed-*``, so every write since that round went there; a retire, a new or a removed segment changes
        the listing, and then every file and the directory are fsynced again). The preallocated next segment
        holds nothing new, and an fsync of a clean file still flushes the device's write cache: measured at
        2.6 ms p50 of a 7 ms sync on the loaded benchmark machine (docs/benchmarks.md, stop 18)."""
        try:
            # stat's inode, not readdir's d_ino: on overlayfs (a container's writable layer) the two may differ.
            entries = sorted(
                (entry.name, entry.stat(follow_symlinks=False).st_ino) for entry in os.scandir(wal)
            )
        except NotADirectoryError:
            entries = []
        except FileNotFoundError:
            if wal.exists():
                raise  # a segment renamed or removed between the listing and its stat: list again
            entries = []
        appending = min(
            ((int(name[5:]), name) for name, _ in entries if name.startswith("open-") and name[5:].isdigit()),
            default=None,
        )
        if appending is None:
            self.shard.flush()
            return
        listing = frozenset([(str(wal), os.stat(wal).st_ino), *entries])
        unchanged = listing == self._wal_names
        inodes = dict(entries)
        for name in [appending[1]] if unchanged else list(inodes):
            fd = os.open(wal / name, os.O_RDONLY)
            try:
                if os.fstat(fd).st_ino != inodes[name]:
                    # Replaced between the listing and the open (a rename over it): list again.
                    raise FileNotFoundError(
                        errno.ENOENT, "WAL segment replaced while listed", str(wal / name)
                    )
                os.fsync(fd)
            finally:
                os.close(fd)
        if not unchanged:
            fsync_path(wal)
            self._wal_names = listing

    def _apply(self, entry: edge_ops.Entry) -> None:
        """Apply one write (logged for a consolidation's copy while one merges)."""
        operation = edge_ops.operation(entry)
        with self._writing(entry) as shard:
            shard.update(operation)

    def _delete_where(self, entry: edge_ops.Entry) -> None:
        # A delete is a write through the same memory maps: on a full volume it was the SIGBUS the upserts are
        # guarded against (EYES_SVC3 S3). Refused, its points stay, invisible (the registry decides), for the
        # orphan collector once there is room.
        self._check_room()
        operation = edge_ops.operation(entry)
        with self._writing(entry) as shard:
            before = shard.info().points_count
            shard.update(operation)
            deleted = before - shard.info().points_count
            self._deleted_points += deleted
        if deleted > 0:  # kept across a restart, for the vacuum (atomically, beside the shard)
            self._write_record()
        self._wrote()

    def _wrote(self, points: int = 0) -> None:
        if self._optimizer is not None:
            self._optimizer.wrote(points)

    @_guarded
    def delete_versions_below(self, tenant_id: str, document_id: str, version: int) -> None:
        """Delete every point of the document whose version is lower than ``version``."""
        self._delete_where(edge_ops.delete_entry(tenant_id, document_id, below=version))

    @_guarded
    def delete_version(self, tenant_id: str, document_id: str, version: int) -> None:
        """Delete the points of exactly one version of the document."""
        self._delete_where(edge_ops.delete_entry(tenant_id, document_id, version=version))

    @_guarded
    def delete_document(self, tenant_id: str, document_id: str) -> None:
        """Delete every point of the document, all versions."""
        self._delete_where(edge_ops.delete_entry(tenant_id, document_id))

    @_guarded
    def search(
        self,
        tenant_id: str,
        vector: Sequence[float] | None,
        *,
        limit: int,
        offset: int = 0,
        conditions: Sequence[MetadataCondition] = (),
        score_threshold: float | None = None,
        mode: SearchMode = "dense",
        sparse: SparseVector | None = None,
    ) -> list[VectorHit]:
        """Best chunks of the tenant matching every condition, by ``mode`` (see `VectorStore.search`); the
        engine releases the GIL while it searches."""
        selection = (
            qe.Filter(must=[_match("tenant_id", tenant_id), *(_condition(c) for c in conditions)])
            if conditions
            else _tenant_filter(tenant_id)
        )
        dense_params = self._tenant_search_params(tenant_id) if mode != "sparse" else None
        if mode == "dense":
            if vector is None:
                raise ValueError("dense search needs the query vector")
            request = qe.QueryRequest(
                limit=limit,
                offset=offset or None,
                query=qe.Query.Nearest(vector if type(vector) is list else list(vector), using=DENSE_VECTOR),
                filter=selection,
                with_payload=HIT_PAYLOAD,
                score_threshold=score_threshold,
                params=dense_params,
            )
            # The gate as in `_engine`, without its two generators (a search pays them on every call).
            gate = self._gate
            gate.enter_shared()
            try:
                found = self.shard.query(request)
            finally:
                gate.exit_shared()
            return [VectorHit.from_payload(point.payload, point.score) for point in found]
        if sparse is None:
            raise ValueError(f"{mode} search needs the query's sparse vector")
        sparse_query = qe.Query.Nearest(_sparse(sparse), using=SPARSE_VECTOR)
        with_vector: Any = [DENSE_VECTOR] if score_threshold is not None else False

        def fetch(depth: int) -> list[tuple[VectorHit, Sequence[float] | None]]:
            if mode == "sparse":
                request = qe.QueryRequest(
                    limit=depth,
                    query=sparse_query,
                    filter=selection,
                    with_payload=HIT_PAYLOAD,
                    with_vector=with_vector,
                )
            else:
                assert vector is not None
                prefetch_limit = max(depth, PREFETCH_MIN)
                request = qe.QueryRequest(
                    limit=depth,
                    prefetches=[
                        qe.Prefetch(
                            prefetch_limit,
                            query=qe.Query.Nearest(list(vector), using=DENSE_VECTOR),
                            filter=selection,
                            score_threshold=score_threshold,
                            params=dense_params,
                        ),
                        qe.Prefetch(prefetch_limit, query=sparse_query, filter=selection),
                    ],
                    query=qe.Fusion.Rrf(k=RRF_K),
                    filter=selection,
                    with_payload=HIT_PAYLOAD,
                    with_vector=with_vector,
                )
            with self._engine() as shard:
                found = shard.query(request)
            return [
                (VectorHit.from_payload(point.payload, point.score), _dense_of(point.vector))
                for point in found
            ]

        return fused_search(fetch, vector=vector, limit=limit, offset=offset, score_threshold=score_threshold)

    @_guarded
    def count(self, tenant_id: str, document_id: str | None = None) -> int:
        """Number of points of the tenant (or of one document, all versions); used by tests and checks."""
        must = [_match("tenant_id", tenant_id)]
        if document_id is not None:
            must.append(_match("document_id", document_id))
        with self._engine() as shard:
            return shard.count(qe.CountRequest(exact=True, filter=qe.Filter(must=must)))

    @_guarded
    def chunk_texts(
        self, tenant_id: str, document_id: str, version: int, chunk_indexes: Sequence[int]
    ) -> list[str | None]:
        """See `VectorStore.chunk_texts`."""
        ids = [point_id(tenant_id, document_id, version, index) for index in chunk_indexes]
        with self._engine() as shard:
            records = shard.retrieve(ids, ["text"], False)
        texts = {str(record.id): (record.payload or {}).get("text") for record in records}
        return [texts.get(pid) for pid in ids]

    def versions(self, *, pause: Callable[[], None] | None = None) -> list[PointVersion]:
        """Every stored (tenant, document, version) with its point count (orphan GC): one pass over the shard in
        point-id order, reading three payload fields (memory: one entry per version, not per point).

        The binding holds the GIL for a whole ``scroll`` call, so with ``pause`` (the collector's) the pass reads
        ``VERSIONS_PAGE`` points per call and calls ``pause`` between calls, outside the gate (an exception it
        raises, e.g. the collector being stopped, ends the pass as it is)."""
        counts: dict[tuple[str, str, int], int] = {}
        offset: Any = None
        page = VERSIONS_PAGE if pause is not None else SCROLL_PAGE
        while True:
            offset = self._count_versions(counts, offset, page)
            if offset is None:
                return [PointVersion(t, d, v, n) for (t, d, v), n in counts.items()]
            if pause is not None:
                pause()

    @_guarded
    def _count_versions(self, counts: dict[tuple[str, str, int], int], offset: Any, page: int) -> Any:
        """Add one page of points to ``counts``; the next page's offset, None after the last."""
        with self._engine() as shard:
            records, offset = shard.scroll(
                qe.ScrollRequest(
                    offset=offset, limit=page, with_payload=["tenant_id", "document_id", "version"]
                )
            )
        for record in records:
            payload = record.payload or {}
            key = (payload["tenant_id"], payload["document_id"], int(payload["version"]))
            counts[key] = counts.get(key, 0) + 1
        return offset

    @_guarded
    def ping(self) -> None:
        """Raise ServiceUnavailable unless the shard is open and answers (readiness)."""
        with self._engine() as shard:
            shard.info()

    @_guarded
    def optimize(self) -> bool:
        """Run the optimizers now (HNSW build, merges) and wait; True when anything changed."""
        with self._engine(writes=True) as shard:
            return shard.optimize()

    def close(self) -> None:
        """Stop the optimizer, flush and close the shard, release the directory lock (idempotent)."""
        with self._state:
            self._close_locked()

    def drop(self) -> None:
        """Close the shard and delete its directory: a collection no replica serves, rolls back to or builds
        any more (a re-index's replaced standby or abandoned target). Its space is reclaimed at once."""
        with self._state:
            self._close_locked()
            shutil.rmtree(self.path, ignore_errors=True)

    def _close_locked(self) -> None:
        if self.indexer is not None:
            self.indexer.stop()
            self.indexer = None
        if self._optimizer is not None:
            self._optimizer.stop()
            self._optimizer = None
        if self._shard is not None:
            try:
                self._shard.flush()
                self._shard.close()
            except Exception as exc:
                logger.warning("closing the edge store failed: %s", exc)
            self._shard = None
        if self._holds_lock:  # a sibling never opened holds no reference to the shared lock
            self._holds_lock = False
            with contextlib.suppress(OSError):
                self._lock.release()
