"""`make plan STACK=qa` for a new stack of a promoted environment: the plan renders a placeholder image (offline
there is no backend holding the promoted one) and says, in one line, that the stack needs its first promotion."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra import render
from infra.offline import PROJECT_DIR, PROMOTED_PLACEHOLDER, StackRun, run_stack

DIGEST = "registry.example.com/rag/service@sha256:" + "ab" * 32


def new_stack(name: str, like: str) -> StackRun:
    """A fourth stack whose Pulumi.<name>.yaml says what the committed Pulumi.<like>.yaml says, run offline."""
    config = yaml.safe_load((PROJECT_DIR / f"Pulumi.{like}.yaml").read_text())["config"]
    return run_stack(name, stack_config=config)


def plan_lines(run: StackRun, out: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    report = render.render_run(run, out, environment=run.config["rag:environment"], deployability=False)
    render.print_report(report, out)
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(("like", "source"), [("staging", "dev"), ("prod", "staging")])
def test_the_plan_of_a_new_promoted_stack_says_it_needs_its_first_promotion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], like: str, source: str
) -> None:
    run = new_stack("qa", like)
    assert run.config["rag:image"] == PROMOTED_PLACEHOLDER
    lines = plan_lines(run, tmp_path / "plan", capsys)
    said = [line for line in lines if "first promotion" in line]
    assert len(said) == 1, lines
    assert said[0].startswith("  IMAGE   a placeholder: qa (environment " + like + ")")
    assert f"`ragops promote --from {source} --to qa`" in said[0]
    assert "first promotion" in (tmp_path / "plan" / "plan.md").read_text()
    # Not a warning: a permanent staging/prod plan with everything configured stays free of them.
    assert not [line for line in lines if line.startswith("  WARNING") and "placeholder" in line]


def test_no_such_line_where_the_image_is_built_or_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not [
        line for line in plan_lines(run_stack("dev"), tmp_path / "dev", capsys) if "placeholder" in line
    ]
    given = run_stack("staging", config_overrides={"image": DIGEST})
    assert not [line for line in plan_lines(given, tmp_path / "given", capsys) if "placeholder" in line]
