"""How the CLI signs its requests and learns who it is to the dispatcher.

The key is ``--key`` (a path, or a name in ``<home>/keys``), else
``security.signing_key``, else the home's operator key. The principal is
whichever principal holds that key. Each command signs one envelope for the
action it asks and hands the verified caller to the dispatcher, as every
other interface does. Where ``security.allow_unsigned = true`` and there is
no key, the request goes unsigned, as principal ``local``.

A home whose operator is missing (made before ``init`` set one up, or by
``Home.init`` alone) gets it on first use of the default key, as ``init``
would make it: whoever can write the home owns its store anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kos_see.engine import Engine
from kos_see.errors import KeyFileError, UnknownPrincipal
from kos_see.security.envelope import sign_request, unsigned_request
from kos_see.security.keys import PRIVATE_SUFFIX, SigningKey, load_private
from kos_see.security.operator import ensure_operator
from kos_see.security.principals import PrincipalStore
from kos_see.security.verify import Caller

UNSIGNED_PRINCIPAL = "local"


def key_path(engine: Engine, named: str | None) -> Path:
    chosen = named or engine.config.security.signing_key
    if not chosen:
        return engine.home.operator_key_path
    path = Path(chosen).expanduser()
    if path.parent == Path(".") and not path.exists():
        # A bare name: a key made by 'kos-see keys new NAME'.
        name = chosen if chosen.endswith(PRIVATE_SUFFIX) else chosen + PRIVATE_SUFFIX
        return engine.home.keys_dir / name
    return path


def load_key(engine: Engine, named: str | None) -> SigningKey | None:
    path = key_path(engine, named)
    default = path == engine.home.operator_key_path
    if engine.config.security.allow_unsigned and not named and not path.exists():
        return None
    if default and not path.exists():
        ensure_operator(
            engine.home, engine.store, engine.home.policy_path(engine.config)
        )
    return load_private(path)


def authenticate(
    engine: Engine, named: str | None, action: str, fields: dict[str, Any]
) -> Caller:
    """Sign ``fields`` for ``action`` and have the dispatcher verify them."""
    key = load_key(engine, named)
    if key is None:
        envelope = unsigned_request(UNSIGNED_PRINCIPAL, action, fields)
        return engine.dispatcher.authenticate(envelope)
    principals = PrincipalStore(engine.store)
    holder = principals.by_key(key.key_id)
    if holder is None and key.path == engine.home.operator_key_path:
        # The key exists but its principal not yet: another command on this
        # fresh home is making the operator right now; finish it here.
        ensure_operator(
            engine.home, engine.store, engine.home.policy_path(engine.config)
        )
        holder = principals.by_key(key.key_id)
    if holder is None:
        raise UnknownPrincipal(
            f"no principal holds the key {key.path} ({key.key_id}); add one with "
            f"'kos-see principals add NAME --public-key {_pub(key.path)}'",
            key_id=key.key_id,
        )
    return engine.dispatcher.authenticate(
        sign_request(key, holder.name, action, fields)
    )


def _pub(path: Path | None) -> str:
    if path is None:
        raise KeyFileError("the signing key has no file")
    return str(path.with_suffix(".pub"))
