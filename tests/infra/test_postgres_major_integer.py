"""A PostgreSQL major written as a number is read as that major (EYES6 G3).

The major-upgrade runbooks set `pulumi config set --path rag:postgres.version 18`, and the Pulumi CLI stores a
path value that looks like an integer as a number ("When setting the config for a path ... integers are treated as
numbers", pulumi_config_set). The config used to refuse it ("expected a string, got an integer") in the middle of
the maintenance window; it now reads 18 as "18", through the path the real CLI takes (`run_stack`: the stack file
-> the CLI's config strings -> `load_config`). Anything else that is not a string is still refused.
"""

from __future__ import annotations

from typing import Any

import pytest

from infra.config import ConfigError
from infra.offline import run_stack

CLUSTER = "kubernetes:postgresql.cnpg.io/v1:Cluster"


def _cluster_image(overrides: dict[str, Any]) -> str:
    run = run_stack("staging", config_overrides=overrides)
    (cluster,) = run.of_type(CLUSTER)
    return str(cluster.inputs["spec"]["imageName"])


def test_an_integer_major_upgrade_declaration_deploys_like_the_string_one() -> None:
    as_numbers = {
        "postgres": {
            "version": 18,
            "cloudnative": {"majorUpgrade": {"fromVersion": 17}, "archiveName": "postgres-pg18"},
        }
    }
    as_strings = {
        "postgres": {
            "version": "18",
            "cloudnative": {"majorUpgrade": {"fromVersion": "17"}, "archiveName": "postgres-pg18"},
        }
    }
    image = _cluster_image(as_numbers)
    assert ":18" in image
    assert image == _cluster_image(as_strings)


def test_an_integer_managed_upgrade_declaration_is_read_as_its_major() -> None:
    run = run_stack(
        "prod",
        config_overrides={
            "postgres": {
                "version": 18,
                "managed": {"majorUpgrade": {"fromVersion": 17}, "applyImmediately": True},
            }
        },
    )
    (instance,) = run.of_type("aws:rds/instance:Instance")
    assert str(instance.inputs["engineVersion"]).split(".")[0] == "18"


@pytest.mark.parametrize("value", [18.0, True, [18]])
def test_other_non_strings_are_still_refused(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"rag:postgres\.version in Pulumi\.staging\.yaml"):
        run_stack("staging", config_overrides={"postgres": {"version": value}})
