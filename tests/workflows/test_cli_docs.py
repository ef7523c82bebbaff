"""The docs list every `ragops` command: docs/delivery.md's Commands table has a row for each (sub)command, and
README's `ragops --help` row names each top-level command and group (EYES6 G14: `reconcile`, `rollback` and
`qdrant-drain` were missing), so a command added later without its docs fails here."""

from __future__ import annotations

from pathlib import Path

from infra.workflows.cli import app

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    names = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    for group in app.registered_groups:
        names += [
            f"{group.name} {c.name or c.callback.__name__.replace('_', '-')}"
            for c in group.typer_instance.registered_commands
        ]
    return names


def test_the_delivery_command_table_has_a_row_per_command() -> None:
    text = (ROOT / "docs" / "delivery.md").read_text(encoding="utf-8")
    table = text[text.index("## Commands") :]
    rows = [line for line in table.splitlines() if line.startswith("| `ragops ")]
    missing = [name for name in _commands() if not any(row.startswith(f"| `ragops {name} ") for row in rows)]
    assert missing == []


def test_the_readme_names_every_command_and_group() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `.venv/bin/ragops --help` |"))
    listed = {part.split("(")[0].strip() for part in row.split("|")[2].split(":", 1)[1].split(",")}
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    names |= {f"{g.name} stacks" if g.name == "ephemeral" else str(g.name) for g in app.registered_groups}
    assert names - listed == set()


def test_the_smoke_transcript_shows_every_step_smoke_runs() -> None:
    text = (ROOT / "docs" / "delivery.md").read_text(encoding="utf-8")
    transcript = text[text.index("$ ragops smoke") :].split("```")[0]
    steps = [
        line.split(" ", 2)[:2]
        for line in transcript.splitlines()[1:]
        if line and not line.startswith("smoke")
    ]
    assert [" ".join(s) for s in steps] == [
        "GET /readyz:",
        "PUT /v1/documents/ragops-smoke-f4699c667b07:",
        "POST /v1/search:",
        "POST /v1/answer:",
        "DELETE /v1/documents/ragops-smoke-f4699c667b07:",
    ]
