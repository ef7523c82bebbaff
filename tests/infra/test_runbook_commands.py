"""The runbooks' own config commands, applied the way the Pulumi CLI stores them, give a config the program takes.

`pulumi config set --path KEY VALUE` stores "true"/"false" as booleans and integers as numbers, everything else
as a string (pulumi_config_set: "When setting the config for a path, ... integers are treated as numbers"). Each
test reads the `pulumi config set --path` commands of one runbook section from docs/runbooks.md, applies them in
order to the committed stack file's values, and parses the result with the program's own config loader: a
runbook whose commands the config refuses (EYES6 G3: `postgres.version 18` stored as an integer; G11: a scale-up
that leaves an old `scaleDownTo`) fails here, not in a maintenance window. The procedures apply changes with
`ragops preview/up`, which carry the promoted image over; a bare `pulumi preview/up` of a committed staging/prod
file stops at `rag:image ... missing` (G4).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import SECRET_KEYS, ConfigError, StackConfig, parse_config
from infra.offline import PROMOTED_PLACEHOLDER

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "docs" / "runbooks.md"
SET_PATH = re.compile(r"pulumi config set --path rag:([\w.]+) ([^\s`]+)")


def section(title: str) -> str:
    """The text of one runbook section, from its heading to the next heading of the same or a higher level
    (a `#` line inside a fenced code block is a shell comment, not a heading)."""
    lines = RUNBOOKS.read_text(encoding="utf-8").splitlines()
    start = lines.index(next(line for line in lines if re.fullmatch(rf"#+ {re.escape(title)}", line)))
    level = len(lines[start].split(" ", 1)[0])
    fenced = False
    for end in range(start + 1, len(lines)):
        fenced ^= lines[end].startswith("```")
        heading = re.match(r"(#+) ", lines[end])
        if not fenced and heading and len(heading.group(1)) <= level:
            break
    else:
        end = len(lines)
    return "\n".join(lines[start + 1 : end])


def cli_value(text: str) -> Any:
    """What `pulumi config set --path` stores for a value typed on the command line."""
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    return text


def committed(stack: str) -> dict[str, Any]:
    document = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text(encoding="utf-8"))
    values = {
        key.split(":", 1)[1]: value for key, value in document["config"].items() if key.startswith("rag:")
    }
    values.setdefault("image", PROMOTED_PLACEHOLDER)  # what `ragops up` carries over from the promotion
    return values


def apply(values: dict[str, Any], commands: str) -> dict[str, Any]:
    values = copy.deepcopy(values)
    found = SET_PATH.findall(commands)
    assert found, "the section has no `pulumi config set --path` command"
    for path, raw in found:
        *parents, leaf = path.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = cli_value(raw)
    return values


def test_the_cloudnativepg_major_upgrade_commands_are_accepted() -> None:
    upgrade = section("Upgrade the CloudNativePG registry's major version")
    values = apply(committed("staging"), upgrade.split("\n# 3.")[0])  # steps 1-2: declare it
    config: StackConfig = parse_config(values, "staging")
    assert config.postgres.version == "18"
    assert config.postgres.cloudnative.majorUpgrade.fromVersion == "17"
    assert config.postgres.cloudnative.archiveName == "postgres-pg18"


def test_the_managed_major_upgrade_commands_are_accepted() -> None:
    upgrade = section("Upgrade the managed registry's major version")
    values = apply(committed("prod"), upgrade.split("\n# 5.")[0])  # steps 1-4: declare it
    config = parse_config(values, "prod")
    assert config.postgres.version == "18"
    assert config.postgres.managed.majorUpgrade.fromVersion == "17"
    assert config.postgres.managed.applyImmediately is True


def test_a_scale_up_after_a_scale_down_resets_scale_down_to() -> None:
    scaling = section("Scaling Qdrant")
    up, down = scaling.split("### Scale Qdrant down")
    after_down = apply(committed("staging"), down)  # 4 -> 3, acknowledged with scaleDownTo 3
    assert parse_config(after_down, "staging").qdrant.scaleDownTo == 3
    raised = copy.deepcopy(after_down)
    raised["qdrant"]["replicas"] = 4
    with pytest.raises(ConfigError, match=r"rag:qdrant\.scaleDownTo in Pulumi\.staging\.yaml"):
        parse_config(raised, "staging")  # what the runbook used to say: raise replicas only
    config = parse_config(apply(after_down, up.split("To relieve")[0]), "staging")
    assert config.qdrant.replicas == 4
    assert config.qdrant.scaleDownTo == 0


def test_runbook_procedures_apply_changes_with_ragops_not_a_bare_pulumi_up() -> None:
    text = RUNBOOKS.read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    bare = [
        line
        for block in blocks
        for line in block.splitlines()
        if re.search(r"(^|&& )pulumi (up|preview)\b", line.strip())
    ]
    assert bare == []
    assert "### Applying a stack change" in text


def test_a_runbook_that_removes_a_secret_says_so_to_ragops() -> None:
    """`ragops up` refuses an update that drops a secret the last one ran with unless `--drop-secret` names it
    (docs/delivery.md, Secrets): a runbook step that removes one must pass the flag, or it stops there."""
    text = RUNBOOKS.read_text(encoding="utf-8")
    steps = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]
    removals = [
        (line, key)
        for line in steps
        for key in re.findall(r"pulumi config rm (?:--path )?rag:(\w+)", line)
        if key in SECRET_KEYS and "ragops up" in line
    ]
    assert removals, "no runbook removes a secret (the rotation's last step did)"
    assert [line for line, key in removals if f"--drop-secret rag:{key}" not in line] == []
