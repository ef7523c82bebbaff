"""Names of cloud resources derived from the stack name, valid for the cloud API at any stack name.

A cloud resource the program names itself (an EKS or GKE cluster, an ECR or Artifact Registry repository, a
Google service account, a bucket, an RDS final snapshot) lives in a scope wider than the stack: the account, the
project or the whole cloud. Its name must differ per stack, and the cloud API has its own charset and length
limits: a GKE cluster name is at most 40 characters, a Google service account ID 6-30, a bucket 3-63. Pulumi stack
names may be 100 characters of ``[A-Za-z0-9_.-]``, and ephemeral PR stacks are up to 40 (``pr-1234-some-branch``),
so ``f"rag-{stack}-..."`` overflows, and cutting it short (``[:30]``) makes two names of one stack collide
(``rag-<long stack>-backup`` and ``rag-<long stack>-service`` both cut to ``rag-<long stack>``) or end in a hyphen.

:func:`cloud_name` keeps the readable form when it fits and the stack name is already in the target charset;
otherwise it cuts the stack part and inserts a short hash of the *full* stack name, so names stay distinct per stack
and per role, within the limit, and never end in (or double) a separator. The deployability check ``cloud-args``
(infra/deployability.py) validates every recorded name against the cloud's own rules independently of this module.
"""

from __future__ import annotations

import hashlib
import re

PREFIX = "rag"
HASH_LENGTH = 6
_NOT_ALLOWED = re.compile(r"[^a-z0-9-]+")


def stack_hash(stack: str) -> str:
    """A short, stable hash of the stack name (it tells apart two stacks whose names cut to the same prefix)."""
    return hashlib.sha256(stack.encode()).hexdigest()[:HASH_LENGTH]


def sanitize(text: str) -> str:
    """Lowercase letters, digits and single hyphens, no leading or trailing hyphen."""
    cleaned = _NOT_ALLOWED.sub("-", text.lower())
    return re.sub(r"-{2,}", "-", cleaned).strip("-")


def cloud_name(stack: str, *parts: str, limit: int, minimum: int = 1, prefix: str = PREFIX) -> str:
    """``<prefix>-<stack>-<parts...>`` (prefix ``rag``) within `limit` characters, distinct per stack.

    Falls back to ``rag-<cut stack>-<hash>-<parts...>`` when the readable form is too long or the stack name had to
    be changed to fit the charset (``My_Stack`` and ``my-stack`` must not share a name). `parts` are fixed,
    already-valid suffixes (``backup``, ``final``).
    """
    tail = "-".join(sanitize(part) for part in parts if part)
    readable = sanitize(stack)
    name = "-".join(p for p in (prefix, readable, tail) if p)
    if readable == stack and len(name) <= limit and len(name) >= minimum:
        return name
    hashed = stack_hash(stack)
    fixed = len(prefix) + 1 + HASH_LENGTH + (len(tail) + 1 if tail else 0)
    room = limit - fixed - 1
    if room < 0:
        raise ValueError(f"no name of at most {limit} characters fits the parts {parts!r}")
    cut = readable[:room].strip("-")
    name = "-".join(p for p in (prefix, cut, hashed, tail) if p)
    if len(name) < minimum:
        raise ValueError(f"the name {name!r} is shorter than {minimum} characters")
    return name


def stack_marks(stack: str) -> tuple[str, str]:
    """What a name derived from `stack` contains: its sanitized form or its hash (the check looks for either)."""
    return sanitize(stack), stack_hash(stack)
