"""service/Dockerfile and .dockerignore, checked without a Docker engine: what the build copies exists and is
in the context, images are pinned, the runtime is non-root with declared writable volumes, the health check and
the entry modules work, and the exposed port is the service's default."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "service" / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    stage: int  # index of the FROM this instruction belongs to (-1 before the first FROM)


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    current = ""
    stage = -1
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, value = current.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, value.strip(), stage))
        current = ""
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.value:
            name, _, default = ins.value.partition("=")
            defaults.setdefault(name, default)
    return defaults


def env_of_last_stage(instructions: list[Instruction]) -> dict[str, str]:
    last = max(ins.stage for ins in instructions)
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV" and ins.stage == last:
            for pair in shlex.split(ins.value):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path (or one of its parent directories) wins."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            excluded = not negate
    return excluded


def test_build_context_copies_exist_and_are_not_ignored(instructions: list[Instruction]) -> None:
    copies = [ins for ins in instructions if ins.keyword == "COPY" and "--from=" not in ins.value]
    assert copies
    for ins in copies:
        *sources, _destination = [word for word in shlex.split(ins.value) if not word.startswith("--")]
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"COPY source {source} does not exist"
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            assert files
            for file in files:
                if "__pycache__" in file.parts:
                    continue
                relative = file.relative_to(ROOT).as_posix()
                assert not dockerignore_excludes(relative), f"{relative} is copied but .dockerignore drops it"


def test_dockerignore_keeps_secrets_and_bulk_out_of_the_context() -> None:
    for path in (
        ".env",
        ".git/config",
        ".venv/bin/python",
        ".data/registry.db",
        ".models/x/model.onnx",
        "tests/x.py",
    ):
        assert dockerignore_excludes(path), path
    for path in ("service/app/main.py", "service/requirements.txt", "constraints.txt"):
        assert not dockerignore_excludes(path), path


def test_stage_copies_refer_to_earlier_stages(instructions: list[Instruction]) -> None:
    stages = [
        ins.value.split()[-1] for ins in instructions if ins.keyword == "FROM" and " AS " in ins.value.upper()
    ]
    for ins in instructions:
        match = re.search(r"--from=(\S+)", ins.value)
        if ins.keyword == "COPY" and match:
            assert match.group(1) in stages


def test_base_images_are_pinned_and_multi_stage(instructions: list[Instruction]) -> None:
    args = arg_defaults(instructions)
    froms = [ins.value.split()[0] for ins in instructions if ins.keyword == "FROM"]
    assert len(froms) >= 2, "expected a builder and a runtime stage"
    for image in froms:
        resolved = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], image)
        name, _, tag = resolved.partition(":")
        assert name == "python", resolved
        assert tag, f"{resolved} has no tag"
        assert tag != "latest"
        # A patch-level Python version and a slim Debian release: rebuilds get the same base.
        assert re.fullmatch(r"3\.11\.\d+-slim-\w+", tag), resolved


def test_runtime_runs_as_a_non_root_user(instructions: list[Instruction]) -> None:
    users = [ins for ins in instructions if ins.keyword == "USER"]
    assert users
    last = users[-1]
    assert last.stage == max(ins.stage for ins in instructions)
    uid = last.value.split(":")[0]
    assert uid.isdigit(), "a numeric UID lets Kubernetes verify runAsNonRoot"
    assert int(uid) == 10001


def test_writable_paths_are_declared_volumes(instructions: list[Instruction]) -> None:
    env = env_of_last_stage(instructions)
    volumes = [v for ins in instructions if ins.keyword == "VOLUME" for v in json.loads(ins.value)]
    assert env["DATA_DIR"] in volumes
    assert "/tmp" in volumes
    # The model is baked into the image, outside every volume, so a read-only root filesystem serves it.
    assert env["EMBEDDING_CACHE_DIR"] not in volumes
    assert env["HF_HUB_OFFLINE"] == "1"
    runs = " ".join(ins.value for ins in instructions if ins.keyword == "RUN")
    assert "python -m service.tools.fetch_model" in runs
    assert f"--cache-dir {env['EMBEDDING_CACHE_DIR']}" in runs
    assert importlib.util.find_spec("service.tools.fetch_model") is not None


def test_the_model_is_configurable_at_build_time(instructions: list[Instruction]) -> None:
    args = arg_defaults(instructions)
    assert args["EMBEDDING_MODEL"] == "BAAI/bge-small-en-v1.5"
    assert env_of_last_stage(instructions)["EMBEDDING_MODEL"] == "${EMBEDDING_MODEL}"


def test_the_image_runs_its_models_float32_queries(instructions: list[Instruction]) -> None:
    # The int8 query graph is written by `make model` for the offline MiniLM export only; fetch_model's hub models
    # have none (and BGE's CLS pooling is not what the int8 path repeats), so with the settings' int8 default the
    # image would refuse to start (tests/service/test_embedder.py: a hub model under int8 names this setting).
    from service.app.core.config import Settings

    assert Settings.model_fields["embedding_query_precision"].default == "int8"
    assert env_of_last_stage(instructions)["EMBEDDING_QUERY_PRECISION"] == "fp32"


def test_healthcheck_probes_healthz_with_python(instructions: list[Instruction]) -> None:
    checks = [ins for ins in instructions if ins.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    command = json.loads(checks[0].value[checks[0].value.index("CMD") + 3 :].strip())
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2]
    assert "curl" not in checks[0].value
    compile(command[2], "<healthcheck>", "exec")


def test_entrypoint_modules_import_and_port_matches(instructions: list[Instruction]) -> None:
    cmd = json.loads(next(ins.value for ins in reversed(instructions) if ins.keyword == "CMD"))
    assert cmd == ["python", "-m", "service"]
    assert importlib.util.find_spec("service.__main__") is not None
    importlib.import_module("service.__main__")
    importlib.import_module("service.worker")  # the worker Deployment's command: python -m service.worker
    exposed = [ins.value for ins in instructions if ins.keyword == "EXPOSE"]
    default_port = Settings.model_fields["port"].default
    assert exposed == [str(default_port)]
    env = env_of_last_stage(instructions)
    assert env["PORT"] == str(default_port)
    assert env["HOST"] == "0.0.0.0"
    assert env["WORKERS"].isdigit()


def test_dependencies_come_from_the_pinned_requirements() -> None:
    constraints = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    constraints = {re.sub(r"\[.*\]", "", k).lower().replace("_", "-"): v for k, v in constraints.items()}
    for line in (ROOT / "service" / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{line} is not pinned"
        key = re.sub(r"\[.*\]", "", name).lower().replace("_", "-")
        assert constraints.get(key) == version, f"{line} disagrees with constraints.txt"


def _run_fetch_step(
    instructions: list[Instruction], tmp_path: Path, build_args: dict[str, str], fail: str = ""
) -> tuple[int, list[str]]:
    """The builder's fetch RUN line, executed with /bin/sh -c as Docker runs it, against a `python` on PATH that
    records each `-m service.tools.fetch_model` call (and fails for the model named `fail`)."""
    step = next(
        ins for ins in instructions if ins.keyword == "RUN" and "service.tools.fetch_model" in ins.value
    )
    record = tmp_path / "calls"
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *service.tools.fetch_model*) echo "$EMBEDDING_MODEL|$*" >> {record};; esac\n'
        f'case "$*" in *"--model {fail} "*) [ -n "{fail}" ] && exit 1;; esac\n'
        "exit 0\n"
    )
    fake.chmod(0o755)
    defaults = arg_defaults([ins for ins in instructions if ins.stage == step.stage])
    env = {
        "PATH": f"{fake.parent}:/usr/bin:/bin",
        **{k: v.strip('"') for k, v in defaults.items()},
        **build_args,
    }
    done = subprocess.run(["/bin/sh", "-c", step.value], env=env, capture_output=True, text=True, check=False)
    calls = record.read_text().splitlines() if record.exists() else []
    return done.returncode, calls


def test_the_build_fetches_every_model_the_stack_names(
    instructions: list[Instruction], tmp_path: Path
) -> None:
    # Default: EMBEDDING_MODEL alone.
    code, calls = _run_fetch_step(instructions, tmp_path / "a", {})
    assert code == 0
    assert calls == [
        "BAAI/bge-small-en-v1.5|-m service.tools.fetch_model --model BAAI/bge-small-en-v1.5 --cache-dir /models"
    ]
    # What the stack passes (rag:embedding.model + extraModels): each is fetched into the one cache.
    two = {"EMBEDDING_MODEL": "new/model", "EMBEDDING_MODELS": "new/model old/model"}
    code, calls = _run_fetch_step(instructions, tmp_path / "b", two)
    assert code == 0
    assert [c.split("|")[0] for c in calls] == ["new/model", "old/model"]
    assert all("--cache-dir /models" in c for c in calls)
    # One failed fetch fails the build (no image without a model the stack names).
    code, calls = _run_fetch_step(instructions, tmp_path / "c", two, fail="new/model")
    assert code != 0
    assert [c.split("|")[0] for c in calls] == ["new/model"]
    labels = [ins.value for ins in instructions if ins.keyword == "LABEL"]
    assert 'io.rag.embedding-models="${EMBEDDING_MODELS:-$EMBEDDING_MODEL}"' in labels
