"""The PR comment: counts first, details folded, trimmed under GitHub's limit without touching the summary."""

from __future__ import annotations

import pytest

from infra.workflows.comment import GITHUB_COMMENT_LIMIT, render_comment, summary_markdown
from infra.workflows.preview import PolicyViolation, PreviewReport, Step


def _report(n_steps: int = 3, stdout_lines: int = 5, **kw: object) -> PreviewReport:
    steps = [
        Step(
            op="update",
            urn=f"urn:pulumi:dev::rag::kubernetes:apps/v1:Deployment::svc-{i}",
            type="k8s",
            diffs=("spec",),
        )
        for i in range(n_steps)
    ]
    stdout = "\n".join(f"    ~ spec.replicas: {i} => {i + 1}" for i in range(stdout_lines))
    defaults: dict = {
        "stack": "dev",
        "changes": {"create": 2, "update": n_steps, "delete": 1, "same": 40},
        "steps": steps,
        "violations": [
            PolicyViolation("limits-set", "rag-policies", "advisory", "no CPU limit", "urn::svc-0")
        ],
        "stdout": stdout,
    }
    defaults.update(kw)
    return PreviewReport(**defaults)


def test_small_comment_has_counts_first_then_folded_details() -> None:
    text = render_comment(_report())
    summary = summary_markdown(_report())
    assert text.startswith(summary)
    assert text.splitlines()[0] == "<!-- ragops-preview:dev -->"
    assert "**2 to create · 3 to update · 1 to delete**" in summary
    assert "| `+` create | 2 |" in summary
    assert "| ` ` same | 40 |" in summary
    assert "**Policy violations:** 1 advisory" in summary
    # Details only inside <details>, nothing truncated.
    assert text.index("<details>") > text.index("| ` ` same | 40 |")
    assert "svc-2  [spec]" in text
    assert "spec.replicas: 4 => 5" in text
    assert "Truncated" not in text


def test_no_changes_says_so() -> None:
    report = PreviewReport(stack="prod", changes={"same": 40}, steps=[], violations=[])
    text = render_comment(report)
    assert "**No changes.**" in text
    assert "<details>" not in text


def test_huge_preview_is_trimmed_under_the_limit_with_summary_intact() -> None:
    report = _report(n_steps=3_000, stdout_lines=20_000)
    summary = summary_markdown(report)
    text = render_comment(report)
    assert len(text) <= GITHUB_COMMENT_LIMIT
    assert text.startswith(summary)
    assert "**Truncated:**" in text
    assert "1 more section(s) dropped" in text  # the full diff did not fit at all
    # The trimmed section is still well-formed Markdown: its fence and <details> are closed.
    tail = text[len(summary) :]
    assert tail.count("<details>") == tail.count("</details>")
    assert tail.count("```") % 2 == 0
    # Whatever was kept is a prefix of the step list, in order.
    assert "svc-0  [spec]" in text
    assert "svc-2999" not in text


@pytest.mark.parametrize("limit", [1_500, 3_000, 10_000, GITHUB_COMMENT_LIMIT])
def test_trimming_respects_any_limit(limit: int) -> None:
    report = _report(n_steps=500, stdout_lines=500)
    text = render_comment(report, limit=limit)
    assert len(text) <= limit
    assert text.startswith(summary_markdown(report))


def test_exact_fit_is_not_truncated() -> None:
    report = _report(n_steps=10, stdout_lines=10)
    full = render_comment(report, limit=10**9)
    assert render_comment(report, limit=len(full)) == full
    assert "Truncated" in render_comment(report, limit=len(full) - 1)


def test_failed_preview_shows_error_in_summary_with_bounded_size() -> None:
    report = _report(error="error: " + "x" * 50_000)
    summary = summary_markdown(report)
    assert "**Preview failed.**" in summary
    assert len(summary) < 3_000
    assert len(render_comment(report)) <= GITHUB_COMMENT_LIMIT


def test_backticks_in_diff_cannot_break_the_fence() -> None:
    report = _report(stdout="data: ```not a fence``` and ````four````")
    text = render_comment(report)
    assert "`````diff" in text  # fence longer than the longest backtick run


def test_summary_over_the_limit_is_an_error_not_a_cut() -> None:
    with pytest.raises(ValueError, match="summary alone"):
        render_comment(_report(), limit=50)
