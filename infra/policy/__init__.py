"""CrossGuard policies for the RAG platform (importable; the PolicyPack itself is built in ``__main__``).

``POLICIES`` is the list the real pack serves; ``run_policies`` applies it offline to recorded resources.
"""

from infra.policy.evaluate import Violation, run_policies
from infra.policy.rules import POLICIES, environment_of

__all__ = ["POLICIES", "Violation", "environment_of", "run_policies"]
