"""The repository keeps its promises: the README's two commands, CI running the same test command, and a
settings table that lists every variable the service reads."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.app.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _first_code_block(markdown: str) -> list[str]:
    match = re.search(r"```(?:bash)?\n(.*?)```", markdown, re.S)
    assert match, "README has no code block"
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.strip()]


def test_readme_starts_with_exactly_the_two_set_up_commands() -> None:
    assert _first_code_block(README) == ["make serve", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [
        line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    assert "make test" in commands


def test_make_targets_named_in_the_readme_exist() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.M))
    named = set(re.findall(r"`make ([a-z0-9-]+)", README)) | set(
        re.findall(r"^make ([a-z0-9-]+)", README, re.M)
    )
    assert named, "README names no make target"
    assert named <= targets, f"README names missing targets: {sorted(named - targets)}"


def test_every_setting_is_in_the_readme_settings_table() -> None:
    table_rows = {m.group(1) for m in re.finditer(r"^\| `([A-Z_]+)` \|", README, re.M)}
    variables = {name.upper() for name in Settings.model_fields}
    assert variables <= table_rows, (
        f"settings missing from the README table: {sorted(variables - table_rows)}"
    )


def test_every_documented_setting_exists() -> None:
    table_rows = {m.group(1) for m in re.finditer(r"^\| `([A-Z_]+)` \|", README, re.M)}
    variables = {name.upper() for name in Settings.model_fields}
    # The one row that is not ours: prometheus-client reads it directly.
    assert table_rows - variables == {"PROMETHEUS_MULTIPROC_DIR"}


def test_readme_links_point_at_files_that_exist() -> None:
    # Files only; the sections a link names (`file.md#section`) are checked by tests/test_doc_links.py.
    for target in re.findall(r"\]\(((?!https?:|#)[^)]+)\)", README):
        path = target.partition("#")[0]
        assert (ROOT / path).exists(), f"README links to missing {path}"


def test_env_example_lists_exactly_the_settings_with_their_defaults() -> None:
    text = (ROOT / ".env.example").read_text()
    assigned = dict(re.findall(r"^# ([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))
    assert set(assigned) == {name.upper() for name in Settings.model_fields}
    defaults = Settings(_env_file=None)
    for name in Settings.model_fields:
        value = assigned[name.upper()]
        if value:
            # Uncommenting a line unchanged must give the default it shows.
            parsed = Settings(_env_file=None, **{name: value})
            assert getattr(parsed, name) == getattr(defaults, name), name


def test_make_test_runs_the_same_lint_as_make_lint() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    test_rule = re.search(r"^test:([^#\n]*)", makefile, re.M)
    lint_rule = re.search(r"^lint:[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M)
    assert test_rule, "Makefile has no test target"
    assert lint_rule, "Makefile has no lint target"
    assert "lint" in test_rule.group(1).split(), "make test must depend on the lint target"
    assert "ruff format --check" in lint_rule.group(1)
    assert "ruff check" in lint_rule.group(1)


@pytest.mark.parametrize(
    ("env_file", "command_line", "auth_disabled"),
    [
        (None, [], "true"),  # the local single-user run
        (
            "API_KEYS=0123456789abcdef0123456789abcdef:team\n",
            [],
            "false",
        ),  # keys in .env, which the service reads
        ("export API_KEYS_FILE=/run/keys\n", [], "false"),
        ("# API_KEYS=commented-out:team\nAPI_KEYS=\n", [], "true"),
        (None, ["API_KEYS=0123456789abcdef0123456789abcdef:team"], "false"),
    ],
)
def test_make_serve_turns_auth_off_only_without_keys(
    tmp_path: Path, env_file: str | None, command_line: list[str], auth_disabled: str
) -> None:
    """`make serve` passed AUTH_DISABLED=true as a real environment variable whenever API_KEYS was not on the
    command line, which overrode keys kept in .env: the service then accepted every request unauthenticated."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    serve = re.search(r"^serve:[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M)
    assert serve
    assert "$(SERVE_AUTH)" in serve.group(1)
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    if env_file is not None:
        (tmp_path / ".env").write_text(env_file)
    env = {key: value for key, value in os.environ.items() if key not in ("API_KEYS", "API_KEYS_FILE")}
    printed = subprocess.run(
        ["make", "-s", "--eval", "print-auth: ; @echo $(SERVE_AUTH_DISABLED)", "print-auth", *command_line],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout.strip() == auth_disabled


@pytest.mark.parametrize(
    ("env_file", "command_line", "environ", "expected"),
    [
        (None, [], {}, "127.0.0.1 8000 True"),  # the service's defaults: local, single user
        (
            "HOST=0.0.0.0\nPORT=8794\nAPI_KEYS=0123456789abcdef0123456789abcdef:team\n",
            [],
            {},
            "0.0.0.0 8794 False",
        ),
        ("HOST=0.0.0.0\nPORT=8794\n", ["PORT=9000"], {}, "0.0.0.0 9000 True"),  # the command line wins
        ("HOST=0.0.0.0\nPORT=8794\n", [], {"HOST": "127.0.0.2"}, "127.0.0.2 8794 True"),  # so does the env
        (
            "AUTH_DISABLED=false\nAPI_KEYS=\n",
            [],
            {},
            "127.0.0.1 8000 False",
        ),  # .env's own AUTH_DISABLED holds
    ],
)
def test_make_serve_runs_the_service_with_the_settings_of_dotenv(
    tmp_path: Path, env_file: str | None, command_line: list[str], environ: dict[str, str], expected: str
) -> None:
    """EYES10: `make serve` exported its own HOST=127.0.0.1 PORT=8000, which beat HOST/PORT kept in .env (README and
    .env.example say settings may live there): a VM configured in .env served on localhost:8000. The real recipe
    runs here, with a stand-in python that prints what the real Settings read in that environment and directory."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    if env_file is not None:
        (tmp_path / ".env").write_text(env_file)
    fake_python = tmp_path / ".venv" / "bin" / "python"
    fake_python.parent.mkdir(parents=True)
    probe = (
        "from service.app.core.config import Settings; s = Settings(); print(s.host, s.port, s.auth_disabled)"
    )
    fake_python.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(probe)}\n")
    fake_python.chmod(0o755)
    names = (
        "HOST",
        "PORT",
        "AUTH_DISABLED",
        "API_KEYS",
        "API_KEYS_FILE",
        "ENVIRONMENT",
        "MAKEFLAGS",
        "MFLAGS",
    )
    env = {key: value for key, value in os.environ.items() if key not in names} | environ
    served = subprocess.run(
        # -o: the set-up targets (venv, model) count as done; the serve recipe itself runs as written.
        ["make", "-s", "-o", "install", "-o", "model", "serve", *command_line],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert served.returncode == 0, served.stderr
    assert served.stdout.strip() == expected


def test_dotenv_is_ignored_by_git_and_docker() -> None:
    """EYES10: the README puts API keys (and ADMIN_API_KEY) in .env; it was not in .gitignore, so `git add -A`
    committed them. .env.example, the template, stays tracked."""
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-v", ".env", ".env.example"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert [line.rsplit("\t", 1)[1] for line in ignored.stdout.splitlines()] == [".env"], ignored.stderr
    assert "**/.env" in (ROOT / ".dockerignore").read_text(encoding="utf-8").split()


def test_shipped_code_never_imports_the_tests() -> None:
    """The service, the Pulumi program and the quality tools run without tests/ (the image and a pip install carry
    no tests): an import of `tests.` there works in a checkout and fails where it is deployed."""
    import ast

    offenders = []
    for top in ("service/app", "infra", "quality"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                offenders += [
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {name}"
                    for name in names
                    if name == "tests" or name.startswith("tests.")
                ]
    assert not offenders, offenders
