"""A service's input schema: checked at registration, never fetched from afar.

A ``$ref`` to another document (``https://...``, ``file:...`` or a relative
name) would make the engine fetch it while validating input, so it is refused
when the service is added; a reference inside the schema itself (``#...``)
must resolve. Validators are built on a registry that retrieves nothing, so
that even a schema registered before this check cannot cause a fetch.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import referencing
import referencing.exceptions
from referencing.jsonschema import DRAFT202012

_REFERENCE_KEYS = ("$ref", "$dynamicRef")


def _retrieve_nothing(uri: str) -> referencing.Resource[Any]:
    raise referencing.exceptions.NoSuchResource(ref=uri)


NO_RETRIEVAL: referencing.Registry[Any] = referencing.Registry(
    retrieve=_retrieve_nothing  # type: ignore[call-arg]
)


def validator_for(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema, registry=NO_RETRIEVAL)


def check_input_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError naming what is wrong with ``schema``."""
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema: {exc.message}") from exc
    resolver = NO_RETRIEVAL.resolver_with_root(DRAFT202012.create_resource(schema))
    for where, ref in _references(schema):
        if not ref.startswith("#"):
            raise ValueError(
                f"{where} is {ref!r}, a reference to another document; the engine "
                "never fetches schemas: use a reference within the schema "
                "('#/$defs/...') and put the definition under $defs"
            )
        try:
            resolver.lookup(ref)
        except referencing.exceptions.Unresolvable as exc:
            raise ValueError(
                f"{where} is {ref!r}, which names nothing in the schema"
            ) from exc


def _references(schema: Any) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    stack: list[tuple[str, Any]] = [("", schema)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}/{key}"
                if key in _REFERENCE_KEYS and isinstance(value, str):
                    found.append((where, value))
                else:
                    stack.append((where, value))
        elif isinstance(node, list):
            stack.extend((f"{path}/{i}", item) for i, item in enumerate(node))
    return sorted(found)
