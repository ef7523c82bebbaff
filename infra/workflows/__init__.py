"""Delivery workflows over the Pulumi Automation API: preview, promote, ephemeral stacks, drift.

Each module holds pure orchestration functions that take a ``Workspace`` (a ``LocalWorkspace`` over the repo root,
built by :func:`infra.workflows.stacks.open_workspace`) so tests can inject a fake ``PulumiCommand``; ``cli.py`` is
the thin Typer front end installed as the ``ragops`` console script.
"""
