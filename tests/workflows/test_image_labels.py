"""`ragops rollback` reads the schema labels of an image from a real registry (distribution on loopback) with the
same skopeo script and login fallbacks it uses in production (infra/schema.py `read_image_labels`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.schema import LABEL_COMPATIBLE_FROM, LABEL_HEAD, ImageLabelError, read_image_labels, schema_labels
from service.app.store.registry import SCHEMA_COMPATIBLE_FROM, SCHEMA_HEAD
from tests.workflows.registries import docker_login, isolated_home, push_test_image, registry

REPO = Path(__file__).resolve().parents[2]


def test_labels_of_an_attested_multi_manifest_image_in_a_registry_that_needs_a_login(tmp_path: Path) -> None:
    labels = {**schema_labels(REPO), "org.opencontainers.image.revision": "0" * 40}
    with registry(tmp_path, auth=True) as served:
        env = isolated_home(tmp_path, served)
        docker_login(env, served.host)  # what the runner's `docker login` leaves behind
        ref = push_test_image(tmp_path, env, f"{served.host}/prod/rag-service", labels=labels)
        plain = push_test_image(tmp_path, env, f"{served.host}/prod/rag-service")  # built before 0011

        assert read_image_labels(ref, env=env) == labels
        assert read_image_labels(plain, env=env) == {}
        missing = ref.rsplit("@", 1)[0] + "@sha256:" + "0" * 64
        with pytest.raises(ImageLabelError, match="cannot read"):
            read_image_labels(missing, env=env)
        (Path(env["HOME"]) / ".docker" / "config.json").unlink()  # logged out
        with pytest.raises(ImageLabelError, match="cannot read"):
            read_image_labels(ref, env=env)


def test_the_build_labels_name_this_checkouts_schema() -> None:
    assert schema_labels(REPO) == {LABEL_HEAD: SCHEMA_HEAD, LABEL_COMPATIBLE_FROM: SCHEMA_COMPATIBLE_FROM}


def test_a_broken_migration_chain_fails_the_build(tmp_path: Path) -> None:
    versions = tmp_path / "service/app/store/migrations/versions"
    versions.mkdir(parents=True)
    (versions / "0001.py").write_text('revision = "0001"\ndown_revision = None\ncompatible_from = "0001"\n')
    (versions / "0002_a.py").write_text(
        'revision = "0002_a"\ndown_revision = "0001"\ncompatible_from = "0001"\n'
    )
    (versions / "0002_b.py").write_text('revision = "0002_b"\ndown_revision = "0001"\n')
    with pytest.raises(ValueError, match="expected one migration head"):
        schema_labels(tmp_path)
    (versions / "0002_a.py").unlink()
    with pytest.raises(ValueError, match="0002_b declares no compatible_from"):
        schema_labels(tmp_path)
