"""Start-up benchmark: `python -m service` from process start to a ready service, and where the time goes.

    python bench/startup.py                                  # 5 runs on an empty data dir
    python bench/startup.py --data DIR                       # on a copy of a populated DATA_DIR (edge + registry)
    python bench/startup.py --baseline /path/to/checkout     # interleaved with another checkout (before/after)

**Start-up** is measured from spawning `python -m service` (embedded defaults: SQLite registry, qdrant-edge
store, the local ONNX model) to the first 200 from /readyz, polled every 20 ms: uvicorn binds its socket only
after the app's lifespan has built everything (registry migrated, store open, model loaded), so ready means a
search is served. **First search** is the next request, POST /v1/search, timed at the client. With
``--baseline`` the two checkouts run alternately (A, B, A, B ...) with the same interpreter and environment,
so both see the same machine load; the ratio is the result.

**Breakdown** (`phases`): each start-up step run one after the other in a fresh process, timed: imports of
the entry point and the app, the fastembed import, the model load, the registry migration, the store's
opening, the wiring of the services, the first query. The service overlaps some of these (the model loads in
a thread while the app is imported and the registry migrates), so their sum exceeds the measured start-up.
One probe per run and checkout, interleaved with the start-ups (until stop 21: one probe per checkout after
all runs, so one slow moment of a shared machine set a whole row); the table gives the median of each step's
wall time and, for the imports, its CPU time (``time.process_time()`` in the probe: less sensitive to other
jobs than the wall time).

**Byte code.** Before measuring, each checkout's ``service`` package is compiled to ``__pycache__``
(``compileall -f``; the files are git-ignored), as the image does at build time
and as any start after the first does where Python may write byte code. Without it, a shell with
``PYTHONDONTWRITEBYTECODE=1`` (this sandbox's) compiles the service's ~650 KB of source at every start: ~11 %
of the imports' instructions (docs/benchmarks.md, "Start-up imports, stop 21"), and whether an earlier run had
left ``.pyc`` files behind decided a tenth of the imports row.

The service runs at the benchmark's priority (bench/priority.py; the setup line says which).

Results go to stdout; ``--write`` replaces the section between the start-up markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from priority import check_same_priority, conditions
from sections import replace_section

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / ".models" / "all-MiniLM-L6-v2"
START = "<!-- startup:start -->"
END = "<!-- startup:end -->"

# Run in a fresh interpreter inside the checkout under test: each step of build_services timed on its own.
PHASES = r"""
import json, sys, time
t, c = time.perf_counter(), time.process_time()
out, cpu = {}, {}
def mark(name):
    global t, c
    now, spent = time.perf_counter(), time.process_time()
    out[name], cpu[name] = now - t, spent - c
    t, c = now, spent
import uvicorn
import service.__main__
from service.app.core.config import get_settings
from service.app.store.registry import DocumentRegistry
mark("imports: entry point")
import service.app.main as main
mark("imports: app")
import fastembed
mark("imports: fastembed")
from service.app.store.embedder import FastEmbedEmbedder
settings = get_settings()
embedder = FastEmbedEmbedder.from_settings(settings)
mark("model load")
registry = DocumentRegistry.from_settings(settings)
registry.migrate()
mark("registry migrate")
vectors = main.open_vector_store(settings, model_name=embedder.model_name, dimension=embedder.dimension)
vectors.ensure_collection()
mark("store open")
services = main.build_services(settings, embedder=embedder, vectors=vectors, registry=registry)
mark("wiring")
vector = embedder.embed_query("how do I open a file?")
vectors.search("default", vector, limit=5)
mark("first query")
services.close(); vectors.close(); registry.close()
print(json.dumps({"wall": out, "cpu": cpu}))
"""


def service_env(data_dir: Path, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATA_DIR": str(data_dir),
        "ENVIRONMENT": "development",
        "AUTH_DISABLED": "true",
        "RATE_LIMIT_ENABLED": "false",
        "CACHE_ENABLED": "false",
        "GC_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
        "EMBEDDING_MODEL_PATH": str(MODEL_DIR),
    }
    for key in (
        "DATABASE_URL",
        "QDRANT_URL",
        "REDIS_URL",
        "QDRANT_PATH",
        "EDGE_PATH",
        "VECTOR_STORE",
        "LLM_BASE_URL",
    ):
        env.pop(key, None)
    env.update(extra or {})
    return env


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def compile_service(checkout: Path) -> None:
    """Byte-compile ``checkout``'s service package into its (git-ignored) ``__pycache__`` directories, as the
    image does (module docstring, "Byte code"). Forced (~0.1 s): compileall's own up-to-date check compares the
    source's mtime in whole seconds only, so a file edited within the second of the last compile kept a
    ``.pyc`` that the import then rejects (it also checks the size) and compiles from source again."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-f", "service"],
        cwd=checkout,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def measure_startup(
    checkout: Path, data_dir: Path, *, extra_env: dict[str, str] | None = None, timeout: float = 300.0
) -> dict[str, float]:
    """Spawn `python -m service` in ``checkout`` on ``data_dir``: seconds to /readyz 200, then the first search."""
    compile_service(checkout)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"service-{port}.log"
    with log.open("wb") as sink:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=checkout,
            env=service_env(data_dir, port, extra_env),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"service exited: {log.read_text(errors='replace')[-2000:]}")
                if time.perf_counter() - started > timeout:
                    raise SystemExit("service did not become ready")
                try:
                    if client.get("/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
            ready = time.perf_counter() - started
            check_same_priority(proc.pid)
            t = time.perf_counter()
            client.post("/v1/search", json={"query": "how do I open a file?", "top_k": 5}).raise_for_status()
            first = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"ready": ready, "first_search": first}


def phase_probe(
    checkout: Path, data_dir: Path, *, extra_env: dict[str, str] | None = None
) -> dict[str, dict[str, float]]:
    """One sequential breakdown of the start-up steps (module docstring) in a fresh process in ``checkout``:
    {"wall": step -> seconds, "cpu": step -> CPU seconds of the probe process}."""
    compile_service(checkout)
    result = subprocess.run(
        [sys.executable, "-c", PHASES],
        cwd=checkout,
        env=service_env(data_dir, free_port(), extra_env),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"phase probe failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def medians(probes: list[dict[str, dict[str, float]]], clock: str = "wall") -> dict[str, float]:
    """Each step's median over ``probes`` (``clock``: "wall" or "cpu")."""
    steps = list(dict.fromkeys(step for probe in probes for step in probe[clock]))
    return {step: statistics.median(probe[clock][step] for probe in probes) for step in steps}


def phases(
    checkout: Path, data_dir: Path, *, extra_env: dict[str, str] | None = None, runs: int = 3
) -> dict[str, float]:
    """Each start-up step's median wall seconds over ``runs`` probes, each a fresh process on ``data_dir``."""
    return medians([phase_probe(checkout, data_dir, extra_env=extra_env) for _ in range(runs)])


def prepared(source: Path | None, work: Path, name: str) -> Path:
    """A data dir for one run: a copy of ``source`` (so each run opens the same store), or an empty one."""
    target = work / name / "data"
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if source is not None:
        shutil.copytree(source, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--data", type=Path, help="a populated DATA_DIR to copy for each run (default: empty)"
    )
    parser.add_argument(
        "--baseline", type=Path, help="another checkout to interleave with (e.g. main before)"
    )
    parser.add_argument(
        "--label", default="", help="what --data holds, for the table (e.g. '100,000 chunks')"
    )
    parser.add_argument(
        "--write", type=Path, help="replace the start-up section of this file (docs/benchmarks.md)"
    )
    args = parser.parse_args()
    if not (MODEL_DIR / "model.onnx").exists():
        raise SystemExit("run `make model` first")
    checkouts = {"this checkout": REPO}
    if args.baseline is not None:
        checkouts = {"baseline": args.baseline.resolve(), "this checkout": REPO}
    work = Path(tempfile.mkdtemp(prefix="rag-startup-"))
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    probes: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in checkouts}
    try:
        for i in range(args.runs):
            order = list(checkouts.items()) if i % 2 == 0 else list(reversed(checkouts.items()))
            for name, checkout in order:
                data = prepared(args.data, work, f"{name.replace(' ', '-')}-{i}")
                runs[name].append(measure_startup(checkout, data))
                shutil.rmtree(data.parent, ignore_errors=True)
                print(json.dumps({"checkout": name, "run": i, **runs[name][-1]}), flush=True)
            for name, checkout in order:  # the breakdown, interleaved the same way (a fresh copy of the data)
                data = prepared(args.data, work, f"phases-{name.replace(' ', '-')}-{i}")
                probes[name].append(phase_probe(checkout, data))
                shutil.rmtree(data.parent, ignore_errors=True)
                print(json.dumps({"checkout": name, "run": i, "phases": probes[name][-1]}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    breakdown = {name: medians(values) for name, values in probes.items()}
    cpu = {name: medians(values, "cpu") for name, values in probes.items()}
    table = render(runs, breakdown, args, load_before[0], load_after[0], cpu)
    print(table)
    if args.write:
        replace_section(args.write, table, START, END, heading="")
        print(f"wrote {args.write}")


def render(
    runs: dict[str, list[dict[str, float]]],
    breakdown: dict[str, dict[str, float]],
    args: argparse.Namespace,
    load_before: float,
    load_after: float,
    cpu: dict[str, dict[str, float]] | None = None,
) -> str:
    what = args.label or (f"a copy of {args.data}" if args.data else "an empty data dir")
    setup = (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, load average "
        f"{load_before:.1f} before and {load_after:.1f} after; {args.runs} runs per checkout on {what}"
        + (", interleaved with the baseline" if len(runs) > 1 else "")
        + f"; the service's modules loaded from byte code compiled beforehand; {conditions()}."
    )
    rows = [
        "| checkout | start-up to /readyz 200, median (min-max) (s) | first search, median (ms) |",
        "|---|---|---|",
    ]
    ready_median = {}
    for name, values in runs.items():
        ready = [v["ready"] for v in values]
        ready_median[name] = statistics.median(ready)
        first = statistics.median(v["first_search"] for v in values) * 1000
        rows.append(
            f"| {name} | {ready_median[name]:.2f} ({min(ready):.2f}-{max(ready):.2f}) | {first:.0f} |"
        )
    if "baseline" in ready_median:
        rows.append("")
        rows.append(
            f"This checkout / baseline: {ready_median['this checkout'] / ready_median['baseline']:.2f}x "
            "(median start-up, same machine, runs interleaved)."
        )
    steps = list(dict.fromkeys(step for phases_ in breakdown.values() for step in phases_))
    rows += [
        "",
        "Sequential breakdown (s), one fresh process per run, steps run one after the other; medians over the "
        "runs (interleaved with the start-ups):",
        "",
    ]
    rows.append("| step | " + " | ".join(breakdown) + " |")
    rows.append("|---|" + "---|" * len(breakdown))
    for step in steps:
        rows.append(
            f"| {step} | " + " | ".join(f"{breakdown[name].get(step, 0.0):.2f}" for name in breakdown) + " |"
        )
    rows.append("| sum | " + " | ".join(f"{sum(breakdown[name].values()):.2f}" for name in breakdown) + " |")
    if cpu:
        imports = {
            name: sum(v for k, v in steps_.items() if k.startswith("imports")) for name, steps_ in cpu.items()
        }
        rows.append(
            "| imports, CPU (s) | " + " | ".join(f"{imports.get(name, 0.0):.2f}" for name in breakdown) + " |"
        )
    return "\n".join([START, "", setup, "", *rows, "", END])


if __name__ == "__main__":
    main()
