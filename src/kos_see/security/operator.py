"""A fresh home's safe defaults: the engine key, an operator, a policy.

``kos-see init`` calls ``ensure_operator`` so that a new home accepts only
signed requests from its first minute and its owner can still use it: the
owner's key signs the CLI's requests as principal ``operator``, an admin of
every tenant, and the default policy gives admins everything and nobody
else anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kos_see.home import Home
from kos_see.policy.gate import default_policy_text
from kos_see.security.keys import load_or_create, temporary_beside
from kos_see.security.principals import (
    ANY_TENANT,
    PrincipalExists,
    PrincipalRecord,
    PrincipalStore,
)

OPERATOR = "operator"
ADMIN_ROLE = "admin"


def ensure_operator(home: Home, store: Any, policy_path: Path) -> PrincipalRecord:
    """Make what is missing of the engine key, the operator key and
    principal, and the policy file; leave what exists as it is."""
    load_or_create(home.engine_key_path)
    key = load_or_create(home.operator_key_path)
    if not policy_path.exists():
        _write_new(policy_path, default_policy_text())
    principals = PrincipalStore(store)
    record = principals.get(OPERATOR)
    if record is not None:
        return record
    try:
        return principals.add(OPERATOR, ANY_TENANT, ADMIN_ROLE, key.public)
    except PrincipalExists:
        # Another command on the same fresh home added it first.
        return principals.require(OPERATOR)


def _write_new(path: Path, text: str) -> None:
    """Write ``path`` whole, unless it exists (then leave it as it is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_beside(path)
    temporary.write_text(text)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)
