"""The harness's own service start: a port taken between `free_port` and the child's bind is retried on a new
port, not a failed test (a race the loaded CI machine can hit; hundreds of tests start the service)."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from tests.support import processes
from tests.support.servers import free_port


def test_a_port_taken_before_the_service_binds_it_is_retried_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy])
        monkeypatch.setattr(processes, "free_port", lambda: next(ports, None) or free_port())
        started = processes.start_api(tmp_path, vector_store="local", environment="development")
        try:
            assert not started.url.endswith(f":{busy}")
            assert httpx.get(f"{started.url}/healthz", timeout=10).status_code == 200
            refused = tmp_path / f"api-{busy}.log"  # the first child's log: it said why it exited
            assert f"cannot listen on 127.0.0.1:{busy}" in refused.read_text()
        finally:
            processes._stop(started.proc)


def test_any_other_exit_still_fails_the_start(tmp_path: Path) -> None:
    with pytest.raises(processes.ServerError) as caught:
        processes.start_api(tmp_path, vector_store="no-such-store", environment="development")
    assert not isinstance(caught.value, processes.PortTaken)
