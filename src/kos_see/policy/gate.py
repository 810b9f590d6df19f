"""The policy gate: deny by default, every decision with the rule that made it.

Rules live in a Casbin policy file (``default_policy.csv`` shows the format)
under the role-based model with domains in ``model.conf``: a tenant is a
domain, and a principal holds its role in its own tenant (or in every tenant,
``*``, for operators). Two enforcers read the same rules: one decides with
deny rules overriding allow rules, the other, which knows only allow rules'
effect, names the allow rule that matched, so that every decision in the
audit log carries its reason.

Numeric ceilings (priority range, resource limits) and a forced sandbox are
``p2`` lines; Casbin keeps them and resolves the caller's roles, and this
module compares the numbers, which a Casbin matcher cannot do on strings.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import casbin
from casbin.model import Model
from casbin.persist.adapters import FileAdapter

from kos_see.errors import ConfigError, PermissionDenied
from kos_see.security.principals import ANY_TENANT
from kos_see.security.verify import Caller

log = logging.getLogger(__name__)

ACTIONS = ("submit", "cancel", "read", "admin")
LIMITS = (
    "priority_min",
    "priority_max",
    "timeout_max",
    "memory_mb_max",
    "cpu_seconds_max",
    "processes_max",
    "runner",
)
NO_RULE = "no rule allows it (deny by default)"
MAX_REMEMBERED = 10000


@dataclass(frozen=True)
class Decision:
    principal: str
    role: str | None
    tenant: str
    action: str
    object: str
    allowed: bool
    rule: str  # the policy line that decided, or NO_RULE

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def explain(self) -> str:
        verdict = "allowed" if self.allowed else "denied"
        return (
            f"{self.action} {self.object} in tenant {self.tenant} by principal "
            f"{self.principal} (role {self.role or 'none'}): {verdict}: {self.rule}"
        )


@dataclass
class Ceilings:
    """The numeric limits and forced runner that apply to a caller in a tenant."""

    values: dict[str, float] = field(default_factory=dict)
    runner: str | None = None
    rules: list[str] = field(default_factory=list)


def model_text() -> str:
    return resources.files("kos_see.policy").joinpath("model.conf").read_text()


def default_policy_text() -> str:
    return resources.files("kos_see.policy").joinpath("default_policy.csv").read_text()


class PolicyGate:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._loaded_stamp: tuple[int, int] | None = None
        self._decide: casbin.Enforcer | None = None
        self._explain: casbin.Enforcer | None = None
        self._links: set[tuple[str, str, str]] = set()
        # Casbin evaluates its matcher in Python (about 0.4 ms a decision);
        # the same question gets the same answer until the policy changes.
        self._decided: dict[tuple[str, ...], Decision] = {}

    # decisions

    def decide(self, caller: Caller, tenant: str, action: str, obj: str) -> Decision:
        key = (caller.principal, caller.role or "", caller.tenant, tenant, action, obj)
        with self._lock:
            decide, explain = self._enforcers()
            known = self._decided.get(key)
            if known is not None:
                return known
            self._link(caller)
            allowed, deny_rule = decide.enforce_ex(
                caller.principal, tenant, action, obj
            )
            if allowed:
                _ok, allow_rule = explain.enforce_ex(
                    caller.principal, tenant, action, obj
                )
                rule = _line("p", allow_rule)
            else:
                rule = _line("p", deny_rule) if deny_rule else NO_RULE
            decision = Decision(
                principal=caller.principal,
                role=caller.role,
                tenant=tenant,
                action=action,
                object=obj,
                allowed=bool(allowed),
                rule=rule,
            )
            if len(self._decided) >= MAX_REMEMBERED:
                self._decided.clear()
            self._decided[key] = decision
        return decision

    def require(self, caller: Caller, tenant: str, action: str, obj: str) -> Decision:
        decision = self.decide(caller, tenant, action, obj)
        if not decision.allowed:
            raise denied(decision)
        return decision

    def ceilings(self, caller: Caller, tenant: str) -> Ceilings:
        with self._lock:
            decide, _explain = self._enforcers()
            self._link(caller)
            subjects = {caller.principal, *self._roles(decide, caller, tenant)}
            found = Ceilings()
            for sub, dom, limit, value in decide.get_named_policy("p2"):
                # Subject * holds for every caller in the tenant: a tenant's
                # tasks may all be forced into the sandbox.
                if sub not in (*subjects, "*") or dom not in (ANY_TENANT, tenant):
                    continue
                found.rules.append(_line("p2", [sub, dom, limit, value]))
                if limit == "runner":
                    found.runner = value
                    continue
                number = float(value)
                # Several lines may apply (a role's and the principal's own):
                # the strictest holds.
                keep = max if limit == "priority_min" else min
                old = found.values.get(limit)
                found.values[limit] = number if old is None else keep(old, number)
            return found

    # loading

    def _enforcers(self) -> tuple[casbin.Enforcer, casbin.Enforcer]:
        stamp = _stamp(self.path)
        if self._decide is None or stamp != self._loaded_stamp:
            self._decide, self._explain = self._load()
            self._loaded_stamp = stamp
            self._links = set()
            self._decided = {}
        assert self._explain is not None
        return self._decide, self._explain

    def _load(self) -> tuple[casbin.Enforcer, casbin.Enforcer]:
        if not self.path.is_file():
            raise ConfigError(
                f"policy file {self.path} does not exist; 'kos-see init' writes a "
                "default one (operators may do everything, nobody else anything)"
            )
        text = model_text()
        deny_aware = _enforcer(text, self.path)
        allow_only = _enforcer(
            text.replace(
                "some(where (p.eft == allow)) && !some(where (p.eft == deny))",
                "some(where (p.eft == allow))",
            ),
            self.path,
        )
        _check_lines(deny_aware, self.path)
        log.info(
            "policy loaded",
            extra={"action": "policy_loaded", "path": str(self.path)},
        )
        return deny_aware, allow_only

    def _link(self, caller: Caller) -> None:
        """Give the caller its role in its tenant, as its principal row says."""
        if caller.role is None:
            return
        link = (caller.principal, caller.role, caller.tenant)
        if link in self._links:
            return
        assert self._decide is not None and self._explain is not None
        for enforcer in (self._decide, self._explain):
            enforcer.add_grouping_policy(*link)
        self._links.add(link)

    @staticmethod
    def _roles(enforcer: casbin.Enforcer, caller: Caller, tenant: str) -> list[str]:
        return list(enforcer.get_implicit_roles_for_user(caller.principal, tenant))


def denied(decision: Decision) -> PermissionDenied:
    return PermissionDenied(
        f"principal {decision.principal!r} (role {decision.role or 'none'}) may not "
        f"{decision.action} {decision.object} in tenant {decision.tenant!r}: "
        f"{decision.rule}; the missing permission is "
        f"'{decision.action} {decision.object}' in tenant {decision.tenant}",
        permission=f"{decision.action} {decision.object}",
        tenant=decision.tenant,
        principal=decision.principal,
    )


def _enforcer(model: str, path: Path) -> casbin.Enforcer:
    parsed = Model()
    parsed.load_model_from_text(model)
    try:
        enforcer = casbin.Enforcer(parsed, FileAdapter(str(path)))
    except (ValueError, IndexError, KeyError) as exc:
        raise ConfigError(f"policy file {path} cannot be read: {exc}") from exc
    enforcer.enable_auto_save(False)
    # A role given in tenant "*" holds in every tenant.
    enforcer.add_named_domain_matching_func(
        "g", lambda asked, held: held == ANY_TENANT or asked == held
    )
    return enforcer


def _check_lines(enforcer: casbin.Enforcer, path: Path) -> None:
    """Refuse a policy that would silently mean something else."""
    for rule in enforcer.get_policy():
        _sub, _dom, act, _obj, eft = rule
        if act not in (*ACTIONS, "*"):
            raise ConfigError(
                f"policy file {path}: line {_line('p', rule)!r} names unknown action "
                f"{act!r}; use one of {', '.join(ACTIONS)} or *"
            )
        if eft not in ("allow", "deny"):
            raise ConfigError(
                f"policy file {path}: line {_line('p', rule)!r} must end in allow "
                "or deny"
            )
    for rule in enforcer.get_named_policy("p2"):
        limit, value = rule[2], rule[3]
        if limit not in LIMITS:
            raise ConfigError(
                f"policy file {path}: line {_line('p2', rule)!r} names unknown limit "
                f"{limit!r}; use one of {', '.join(LIMITS)}"
            )
        if limit == "runner":
            if value != "sandbox":
                raise ConfigError(
                    f"policy file {path}: line {_line('p2', rule)!r}: the only runner "
                    "a policy can force is sandbox"
                )
            continue
        try:
            float(value)
        except ValueError:
            raise ConfigError(
                f"policy file {path}: line {_line('p2', rule)!r}: {value!r} is not "
                "a number"
            ) from None


def _line(kind: str, rule: list[str]) -> str:
    return ", ".join([kind, *rule])


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size)
