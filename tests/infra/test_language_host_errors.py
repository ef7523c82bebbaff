"""A config error reaches a bare `pulumi up` / `pulumi preview` as one line naming the key and the stack file.

The program runs here as the CLI's Python language host runs it (tests/infra/exec_program.py: the config from
$PULUMI_CONFIG, `pulumi.runtime.configure`, `run_in_stack(runpy.run_path(...))`, a RunError logged as its message
alone, anything else as "Program failed with an unhandled exception" and a traceback), in a subprocess, against the
offline mocks; nothing unwraps the error on the way, unlike `infra.offline.run_stack`. The real case is the EKS
zone count: the region's zones are read from the cloud, so the check runs inside an Output that feeds each subnet's
`availabilityZone`, and the SDK re-raises a ValueError raised there as "While processing input" ValueErrors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infra.naming import cloud_name
from infra.offline import cli_config
from infra.workflows.errors import program_refusal

REPO_ROOT = Path(__file__).resolve().parents[2]
EXEC = Path(__file__).with_name("exec_program.py")
ZONES_REFUSAL = (
    "rag:cluster.eks.availabilityZones in Pulumi.prod.yaml: 4 zones asked, but eu-west-1 offers 3 Availability "
    "Zones to this account (eu-west-1a, eu-west-1b, eu-west-1c): lower it"
)


#: The SDK's blocking invokes give a thread without an event loop one of its own (pulumi/runtime/sync_await.py
#: `_ensure_event_loop`) and never close it; at interpreter exit such a loop may be finalized after its self-pipe
#: socket, and CPython prints "Exception ignored in: <function BaseEventLoop.__del__ ...>" with a traceback ending
#: "ValueError: Invalid file descriptor: -1" (CI's clean-clone run saw it once in the preview case). That is the
#: SDK's shutdown, after the program's error was reported, not what this file checks: it is dropped here.
SHUTDOWN_NOISE = "Exception ignored in: <function BaseEventLoop.__del__"


def _program_lines(stderr: str) -> list[str]:
    lines: list[str] = []
    skipping = False
    for line in stderr.splitlines():
        if line.startswith(SHUTDOWN_NOISE):
            skipping = True
            continue
        if skipping and (
            not line.strip() or line.startswith((" ", "Traceback")) or line.startswith("ValueError: ")
        ):
            continue
        skipping = False
        lines.append(line)
    return lines


def test_the_shutdown_noise_filter_keeps_everything_else() -> None:
    noise = (
        f"{SHUTDOWN_NOISE} at 0x7f>\nTraceback (most recent call last):\n"
        '  File "x.py", line 1, in close\n    self.close()\nValueError: Invalid file descriptor: -1\n'
    )
    assert _program_lines(f"error: one\n{noise}") == ["error: one"]
    assert _program_lines("error: one\nerror: two\n") == ["error: one", "error: two"]
    assert _program_lines(f"{noise}error: after\n") == ["error: after"]


def _exec(
    stack: str,
    tmp_path: Path,
    *,
    overrides: dict[str, Any] | None = None,
    preview: bool = False,
    live: dict[str, Any] | None = None,
    program: Path = REPO_ROOT / "infra" / "__main__.py",
) -> subprocess.CompletedProcess[str]:
    values, secret_keys = cli_config(stack, config_overrides=overrides)
    env = {
        **os.environ,
        "PULUMI_CONFIG": json.dumps(values),
        "PULUMI_CONFIG_SECRET_KEYS": json.dumps(secret_keys),
    }
    command = [sys.executable, str(EXEC), "--stack", stack, "--dry_run", "true" if preview else "false"]
    if live is not None:
        (tmp_path / "live.json").write_text(json.dumps(live))
        command += ["--live", str(tmp_path / "live.json")]
    command.append(str(program))
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("preview", [False, True], ids=["up", "preview"])
def test_a_config_error_inside_an_output_is_one_line_for_the_language_host(
    preview: bool, tmp_path: Path
) -> None:
    result = _exec(
        "prod", tmp_path, overrides={"cluster": {"eks": {"availabilityZones": 4}}}, preview=preview
    )
    assert _program_lines(result.stderr) == [f"error: {ZONES_REFUSAL}"], result.stderr
    assert result.returncode == 1  # the host's status after a RunError (32 after an unhandled exception)
    # ragops reads the same line out of the CLI's output (its red line).
    assert program_refusal(result.stdout + result.stderr) == ZONES_REFUSAL


def test_a_refusal_at_the_top_level_is_one_line_too(tmp_path: Path) -> None:
    """The EKS version check runs before anything is registered (blocking invokes): two minors up is refused."""
    name = cloud_name("prod", limit=100)
    live = {"eks": {"name": name, "version": "1.33", "nodeGroups": {"eks-nodes-1a2b": "1.33"}}}
    result = _exec("prod", tmp_path, live=live)
    lines = _program_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: rag:cluster.eks.version in Pulumi.prod.yaml: "), lines
    assert result.returncode == 1


@pytest.mark.parametrize(
    ("raised", "one_line"),
    [
        ('ConfigError("rag:x.y", "Pulumi.dev.yaml", "bad")', True),
        ('ValueError("rag:x.y in Pulumi.dev.yaml: bad")', False),
    ],
    ids=["ConfigError", "ValueError"],
)
def test_the_runner_wraps_a_value_error_inside_an_output_as_the_sdk_does(
    raised: str, one_line: bool, tmp_path: Path
) -> None:
    """The control: the same program raising a ValueError inside an Output that feeds an input gets the SDK's
    "While processing input" wrapping and the host's traceback, so the runner does not hide what the host shows.
    A blocking invoke after the registration (as the program's cloud reads are) lets the registration fail while
    the program still runs, so the host is handed the registration's error, as in the real program."""
    program = tmp_path / "__main__.py"
    program.write_text(
        "import pulumi\n"
        "from infra.config import ConfigError\n\n"
        "def fail(_):\n"
        f"    raise {raised}\n\n"
        'pulumi.CustomResource("test:index:Thing", "thing", {"value": pulumi.Output.from_input(1).apply(fail)})\n'
        'pulumi.runtime.invoke("aws:index/getAvailabilityZones:getAvailabilityZones", {"state": "available"})\n'
    )
    result = _exec("dev", tmp_path, program=program)
    if one_line:
        assert _program_lines(result.stderr) == ["error: rag:x.y in Pulumi.dev.yaml: bad"], result.stderr
        assert result.returncode == 1
    else:
        assert result.stderr.startswith("error: Program failed with an unhandled exception:\nTraceback"), (
            result.stderr
        )
        assert "ValueError: While processing resource: 'thing'" in result.stderr
        assert "has risen: While processing input: 'value'" in result.stderr
        assert result.returncode == 32


INLINE_KUBECONFIG = (
    "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://10.0.0.1:6443'}}]\n"
    "contexts: [{name: kind-rag, context: {cluster: c, user: u}}]\ncurrent-context: kind-rag\n"
    "users: [{name: u, user: {client-key-data: LS0t}}]\n"
)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rag:slackWebhookUrl", "https://hooks.slack.example/services/T0/B0/x"),
        ("rag:adminApiKey", "a-plain-admin-key-of-forty-characters-xx"),
        # `pulumi config set --path --secret rag:cluster.existing.kubeconfig` makes the engine name rag:cluster.
        ("rag:cluster", json.dumps({"provider": "existing", "existing": {"kubeconfig": INLINE_KUBECONFIG}})),
    ],
    ids=["webhook", "admin-key", "inline-kubeconfig"],
)
def test_a_secret_stored_in_plain_text_is_refused_by_a_bare_pulumi_up(key: str, value: str) -> None:
    """The engine passes the names of the stack's secure config values to the program: Target.Config.SecureKeys()
    (pkg/resource/deploy/source_eval.go) -> RunRequest.configSecretKeys -> the Python language host's
    PULUMI_CONFIG_SECRET_KEYS, always set (`[]` when there are none: constructConfigSecretKeys in
    sdk/python/cmd/pulumi-language-python/main.go) -> `set_all_config` in pulumi-language-python-exec ->
    `is_config_secret`. So the program itself tells a value written by `pulumi config set --secret` from one typed
    into the stack file, with no `ragops` around it (infra/config.py check_config_keys)."""
    values, secret_keys = cli_config("dev")
    values[key] = value

    def exec_with(secrets: list[str]) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PULUMI_CONFIG": json.dumps(values),
            "PULUMI_CONFIG_SECRET_KEYS": json.dumps(secrets),
        }
        command = [sys.executable, str(EXEC), "--stack", "dev", str(REPO_ROOT / "infra" / "__main__.py")]
        return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)

    plain = exec_with(secret_keys)
    [line] = plain.stderr.splitlines()
    if key == "rag:cluster":
        assert line.startswith(
            "error: rag:cluster.existing.kubeconfig in Pulumi.dev.yaml: an inline kubeconfig with credentials "
            "(client-key-data) stored in plain text"
        ), line
    else:
        assert line == (
            f"error: {key} in Pulumi.dev.yaml: stored in plain text (it would sit in the stack file and git "
            f"history); set it with `pulumi config set --secret {key} ...`"
        )
    assert plain.returncode == 1
    # The same value, stored encrypted (the engine names the key), is taken.
    encrypted = exec_with([*secret_keys, key])
    assert encrypted.returncode == 0, encrypted.stderr
