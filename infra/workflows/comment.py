"""The Markdown PR comment for a preview: counts first, details folded, never over GitHub's size limit.

GitHub rejects comment bodies over 65,536 characters. The summary (the marker, the headline, the counts table,
policy counts, the error if any) is bounded and always kept whole; only the folded details are trimmed, line by
line from the end, and the cut is marked so nobody mistakes a truncated plan for a complete one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from infra.workflows.preview import PreviewReport

GITHUB_COMMENT_LIMIT = 65_536
MARKER = "<!-- ragops-preview:{stack} -->"  # lets a sticky-comment action find and replace our comment
MAX_ERROR_CHARS = 2_000  # keeps the summary bounded even when the CLI error is huge
MAX_LINE_CHARS = 500  # one enormous diff line must not crowd out every other line

# Display order and symbols of change types (the CLI's own symbols).
OP_ORDER = (
    ("create", "+", "to create"),
    ("update", "~", "to update"),
    ("replace", "+-", "to replace"),
    ("create-replacement", "++", "create replacement"),
    ("delete-replaced", "--", "delete replaced"),
    ("delete", "-", "to delete"),
    ("import", "=", "to import"),
    ("read", ">", "to read"),
    ("refresh", "~", "to refresh"),
    ("discard", "-", "to discard"),
    ("same", " ", "unchanged"),
)
_SYMBOL = {op: sym for op, sym, _ in OP_ORDER}
_LABEL = {op: label for op, _, label in OP_ORDER}


@dataclass(frozen=True)
class _Section:
    title: str
    lines: list[str]
    fence: str | None  # code-fence language, or None for plain Markdown lines


def summary_markdown(report: PreviewReport) -> str:
    """The part of the comment that is never trimmed."""
    out = [MARKER.format(stack=report.stack), f"### Pulumi preview for `{report.stack}`", ""]
    if report.refusal is not None:
        out += [f"**Preview failed:** {report.refusal}", ""]
    elif report.error is not None:
        out += ["**Preview failed.**", ""]
    pending = report.pending
    if report.ok and not pending:
        out += ["**No changes.**", ""]
    elif pending:
        headline = " · ".join(f"{n} {_LABEL.get(op, op)}" for op, n in _ordered(pending))
        out += [f"**{headline}**", ""]
    counts = _ordered({op: n for op, n in report.changes.items() if n > 0})
    if counts:
        out += ["| Change | Resources |", "|---|---:|"]
        out += [f"| `{_SYMBOL.get(op, '?')}` {op} | {n} |" for op, n in counts]
        out.append("")
    if report.violations:
        by_level: dict[str, int] = {}
        for v in report.violations:
            by_level[v.level] = by_level.get(v.level, 0) + 1
        levels = ", ".join(f"{n} {level}" for level, n in sorted(by_level.items()))
        out += [f"**Policy violations:** {levels}", ""]
    if report.error is not None:
        err = report.error
        if len(err) > MAX_ERROR_CHARS:
            err = err[:MAX_ERROR_CHARS] + "\n… (error truncated; see the workflow log)"
        out += [
            "<details><summary>Error</summary>",
            "",
            _fence(err) + "text",
            err,
            _fence(err),
            "</details>",
            "",
        ]
    return "\n".join(out)


def _ordered(counts: dict[str, int]) -> list[tuple[str, int]]:
    rank = {op: i for i, (op, _, _) in enumerate(OP_ORDER)}
    return sorted(counts.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0]))


def _sections(report: PreviewReport) -> list[_Section]:
    sections: list[_Section] = []
    if report.violations:
        sections.append(
            _Section(
                "Policy violations",
                [
                    _clip(
                        f"- **{v.level}** `{v.pack}/{v.policy}`"
                        + (f" on `{v.urn.rsplit('::', 1)[-1]}`" if v.urn else "")
                        + f": {' '.join(v.message.split())}"
                    )
                    for v in report.violations
                ],
                None,
            )
        )
    steps = [s for s in report.steps if s.op != "same"]
    if steps:
        lines = []
        for s in steps:
            diff = f"  [{', '.join(s.diffs)}]" if s.diffs else ""
            lines.append(_clip(f"{_SYMBOL.get(s.op, '?'):<2} {s.op:<18} {s.type}  {s.name}{diff}"))
        sections.append(_Section(f"Resource changes ({len(steps)})", lines, "diff"))
    if report.stdout.strip():
        sections.append(
            _Section(
                "Full diff",
                [_clip(line) for line in report.stdout.splitlines()],
                "diff",
            )
        )
    return sections


def _fence(text: str) -> str:
    """A backtick fence longer than any backtick run in the text, so content can never close it early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _clip(line: str) -> str:
    return line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 1] + "…"


def _render_section(section: _Section, lines: list[str], note: str | None) -> str:
    body = ["<details>", f"<summary>{section.title}</summary>", ""]
    fence = _fence("\n".join(section.lines))
    if section.fence is not None:
        body.append(f"{fence}{section.fence}")
    body += lines
    if section.fence is not None:
        body.append(fence)
    if note:
        body += ["", note]
    body += ["</details>", ""]
    return "\n".join(body)


def _note(dropped: int, total: int, later: int) -> str:
    note = f"**Truncated:** {dropped} of {total} lines omitted"
    if later:
        note += f" and {later} more section(s) dropped"
    return note + " to stay under GitHub's comment limit; see the workflow log for the full preview."


def _trimmed(section: _Section, budget: int, later: int) -> str | None:
    """The longest prefix of the section's lines that fits ``budget`` characters, with a truncation note."""
    total = len(section.lines)
    # The note is longest when every line is dropped; sizing with it guarantees the real one fits too.
    fixed = len(_render_section(section, [], _note(total, total, later)))
    if fixed > budget:
        return None
    room, kept = budget - fixed, 0
    for line in section.lines:
        if len(line) + 1 > room:
            break
        room -= len(line) + 1
        kept += 1
    return _render_section(section, section.lines[:kept], _note(total - kept, total, later))


def render_comment(report: PreviewReport, limit: int = GITHUB_COMMENT_LIMIT) -> str:
    """The full comment, at most ``limit`` characters, with the summary always intact."""
    summary = summary_markdown(report)
    if len(summary) > limit:
        raise ValueError(f"The preview summary alone is {len(summary)} characters, over the {limit} limit.")
    parts = [summary]
    used = len(summary)
    sections = _sections(report)
    for index, section in enumerate(sections):
        full = _render_section(section, section.lines, None)
        if used + 1 + len(full) <= limit:
            parts.append(full)
            used += 1 + len(full)
            continue
        later = len(sections) - index - 1
        trimmed = _trimmed(section, limit - used - 1, later)
        if trimmed is not None:
            parts.append(trimmed)
        break
    return "\n".join(parts)
