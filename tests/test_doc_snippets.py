"""The one-VM production recipe in docs/operations.md works as written: its systemd unit passes
`systemd-analyze verify` and matches the service's exit codes and shutdown budget, its reverse-proxy snippet keeps
every key-less operations route private, and its disk alert fires on node_exporter's series (`promtool`)."""

from __future__ import annotations

import configparser
import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from service.app.api.routes import health, internal, metrics
from service.app.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
OPERATIONS = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
CHECKOUT = "/srv/rag/app"


def one_vm_section() -> str:
    match = re.search(r"^## One VM in production.*?(?=^## )", OPERATIONS, re.M | re.S)
    assert match, "docs/operations.md has no one-VM section"
    return match.group(0)


def block(language: str) -> str:
    blocks = re.findall(rf"^```{language}\n(.*?)^```", one_vm_section(), re.M | re.S)
    assert len(blocks) == 1, f"expected one ```{language} block in the one-VM section"
    return blocks[0]


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(block("ini"))
    return parser


def test_the_systemd_unit_is_valid_for_systemd(tmp_path: Path) -> None:
    # The unit as documented, with the checkout where this one is (systemd-analyze checks ExecStart exists).
    text = block("ini").replace(CHECKOUT, str(ROOT))
    path = tmp_path / "rag.service"
    path.write_text(text)
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian package systemd) is needed to check the documented unit"
    verified = subprocess.run(
        [analyze, "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LANG": "C"},
    )
    assert verified.returncode == 0, verified.stderr
    # verify exits 0 on a misspelt value (it only warns): any line naming the unit is a problem in it.
    assert [line for line in verified.stderr.splitlines() if "rag.service" in line] == [], verified.stderr


def test_the_unit_runs_the_service_from_its_checkout_and_waits_out_its_shutdown() -> None:
    service = unit()["Service"]
    # .env and the default model (.models/) are read relative to the working directory: it must be the checkout.
    assert service["ExecStart"] == f"{service['WorkingDirectory']}/.venv/bin/python -m service"
    assert service["Restart"] == "on-failure"
    defaults = Settings(_env_file=None)
    stop = float(service["TimeoutStopSec"])
    assert stop > defaults.shutdown_grace_seconds + defaults.jobs_shutdown_grace_seconds + 30
    assert service["UMask"] == "0077"


def test_the_exit_status_the_unit_does_not_restart_is_the_services_one_line_refusal(tmp_path: Path) -> None:
    prevented = unit()["Service"]["RestartPreventExitStatus"].split()
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEYS", "API_KEYS_FILE", "AUTH_DISABLED")}
    env |= {"ENVIRONMENT": "production", "DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    refused = subprocess.run(
        [sys.executable, "-m", "service"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert refused.stderr.startswith("service: error: ENVIRONMENT=production needs API_KEYS or API_KEYS_FILE")
    assert prevented == [str(refused.returncode)] == ["2"]


def test_the_proxy_keeps_every_keyless_operations_route_private() -> None:
    caddy = re.search(r"^```\n(rag\.example\.com \{.*?)^```", one_vm_section(), re.M | re.S)
    assert caddy, "no Caddyfile block in the one-VM section"
    matcher = re.search(r"@private path (.+)", caddy.group(1))
    assert matcher
    patterns = matcher.group(1).split()
    assert "respond @private 404" in caddy.group(1)
    assert "reverse_proxy 127.0.0.1:8000" in caddy.group(1)
    # The routes that answer without an API key (they are mounted outside the /v1 routers): all but /healthz.
    keyless = {route.path for module in (health, metrics, internal) for route in module.router.routes}
    private = keyless - {"/healthz"}
    assert {"/metrics", "/readyz", "/readyz/serving", "/internal/vectors/{operation}"} == private
    # Caddy's path matcher: `*` at the end is a prefix match.
    assert all(any(fnmatch.fnmatchcase(p, pattern) for pattern in patterns) for p in private), patterns
    for api in ("/v1/search", "/v1/documents/readme", "/healthz"):
        assert not any(fnmatch.fnmatchcase(api, pattern) for pattern in patterns), api


def test_the_disk_alert_fires_on_node_exporters_series(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(block("yaml"))
    assert yaml.safe_load(block("yaml"))["groups"][0]["rules"][0]["alert"] == "RagDataDirFillingUp"
    series = 'node_filesystem_avail_bytes{mountpoint="/srv"}'
    gib = 1024**3
    (tmp_path / "test.yml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["rules.yml"],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        # 2 GiB for 10 minutes, then 512 MiB
                        "input_series": [{"series": series, "values": f"{2 * gib}x10 {gib // 2}x30"}],
                        "alert_rule_test": [
                            {"eval_time": "15m", "alertname": "RagDataDirFillingUp", "exp_alerts": []},
                            {
                                "eval_time": "25m",
                                "alertname": "RagDataDirFillingUp",
                                "exp_alerts": [
                                    {
                                        "exp_labels": {"mountpoint": "/srv"},
                                        "exp_annotations": {
                                            "summary": "/srv (DATA_DIR) has 512MiB free; writes stop at 64 MiB"
                                        },
                                    }
                                ],
                            },
                        ],
                    }
                ],
            }
        )
    )
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by `make servers`"
    tested = subprocess.run(
        [promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_no_document_puts_an_api_key_on_a_command_line() -> None:
    """EYES10: the docs showed `--key "$RAG_API_KEY"`, which puts the key in every user's `ps`; the client reads
    $RAG_API_KEY itself."""
    from service import client

    assert 'os.environ.get("RAG_API_KEY")' in Path(client.__file__).read_text(encoding="utf-8")
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"--key \"?\$\{?RAG_API_KEY", text), path.name
