"""Every error the engine raises on purpose, under one base class.

Each class's docstring is its default message. Errors carry the offending
value in their message and, where the caller can fix something, what to do.
``exit_code`` tells the CLI how to end: 2 bad usage, 3 refused request,
4 failed task, 1 anything the engine itself got wrong.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ENGINE = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_TASK_FAILED = 4


class KosSeeError(Exception):
    """The engine could not do what was asked."""

    exit_code = EXIT_ENGINE
    code = "engine_error"

    def __init__(self, message: str | None = None, **details: object) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.details = details
        super().__init__(self.message)

    def to_dict(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, **self.details}


class UsageError(KosSeeError):
    """The command was called with arguments it cannot use."""

    exit_code = EXIT_USAGE
    code = "bad_usage"


class ConfigError(KosSeeError):
    """The configuration is not valid."""

    exit_code = EXIT_USAGE
    code = "bad_config"


class HomeError(KosSeeError):
    """The engine's home folder is missing or unusable."""

    exit_code = EXIT_USAGE
    code = "bad_home"


class RequestRefused(KosSeeError):
    """The request was refused."""

    exit_code = EXIT_REFUSED
    code = "refused"


class ManifestError(RequestRefused):
    """The service manifest is not valid."""

    code = "bad_manifest"


class ServiceNotFound(RequestRefused):
    """No such service is registered."""

    code = "unknown_service"


class ServiceChanged(RequestRefused):
    """The service's files no longer match the digest they were registered with."""

    code = "service_changed"


class InputInvalid(RequestRefused):
    """The task's input does not match the service's input schema."""

    code = "invalid_input"

    def __init__(self, message: str, violations: list[dict[str, str]]) -> None:
        super().__init__(message, violations=violations)
        self.violations = violations


class IdempotencyConflict(RequestRefused):
    """The idempotency key was already used for a different request."""

    code = "idempotency_conflict"


class TaskNotFound(RequestRefused):
    """No such task."""

    code = "unknown_task"


class TaskFailed(KosSeeError):
    """The task ended without success."""

    exit_code = EXIT_TASK_FAILED
    code = "task_failed"


class IllegalTransition(KosSeeError):
    """A task state change that the state machine does not allow; a bug."""

    code = "illegal_transition"


class StaleEpoch(KosSeeError):
    """A write came from a lease that has since been superseded; it was refused."""

    code = "stale_epoch"


class StoreError(KosSeeError):
    """The store could not complete the operation."""

    code = "store_error"


class StoreUnavailable(StoreError):
    """The store cannot be reached or is busy; the operation may be retried."""

    code = "store_unavailable"


class KeyFileError(UsageError):
    """A key file is missing, unreadable or not an Ed25519 key."""

    code = "bad_key_file"


class SignatureRequired(RequestRefused):
    """The request is unsigned and this engine accepts only signed requests."""

    code = "unsigned_request"


class UnknownPrincipal(RequestRefused):
    """The request names a principal or key that this engine does not know."""

    code = "unknown_principal"


class PrincipalRevoked(RequestRefused):
    """The request is signed by a principal whose key was revoked."""

    code = "principal_revoked"


class BadSignature(RequestRefused):
    """The request's signature does not match its content and key."""

    code = "bad_signature"


class ReplayedRequest(RequestRefused):
    """The request's nonce was already used within the replay window."""

    code = "replayed_request"


class StaleRequest(RequestRefused):
    """The request's timestamp is outside the allowed clock skew."""

    code = "stale_request"


class PermissionDenied(RequestRefused):
    """The policy does not grant the principal what the request needs."""

    code = "permission_denied"


class AuditError(KosSeeError):
    """The audit log could not be written or read."""

    code = "audit_error"


class DependencyFailed(KosSeeError):
    """A dependency of the attempt could not be fetched; the attempt may be retried."""

    code = "dependency_failed"


class ArtifactNotFound(RequestRefused):
    """No artifact with that digest is in the vault."""

    code = "unknown_artifact"


class VaultError(KosSeeError):
    """The artifact vault could not store or read an artifact."""

    code = "vault_error"


class CollectionError(RequestRefused):
    """The vector collection or the query on it is not usable."""

    code = "bad_collection"


class EmbeddingError(KosSeeError):
    """Text could not be turned into embeddings."""

    code = "embedding_failed"


class ProvenanceNotFound(RequestRefused):
    """The task has no provenance record."""

    code = "no_provenance"


class ReplayRefused(RequestRefused):
    """The task cannot be replayed as it ran: something it depended on changed."""

    code = "replay_refused"


class ProvenanceInvalid(KosSeeError):
    """A provenance record does not verify against the engine's key."""

    code = "provenance_invalid"


class AuthenticationRequired(RequestRefused):
    """The request carries neither a signed envelope nor a read token."""

    code = "authentication_required"


class TokenInvalid(RequestRefused):
    """The read token is malformed, expired, or not signed by this engine."""

    code = "bad_token"


class CallbackRefused(RequestRefused):
    """The task's callback URL is not one this engine may call."""

    code = "callback_refused"


class NotAvailable(KosSeeError):
    """This engine does not provide what was asked for."""

    code = "not_available"


class ServerUnreachable(KosSeeError):
    """The engine's API server could not be reached or answered out of protocol."""

    code = "server_unreachable"


class EngineAlreadyServing(RequestRefused):
    """Another engine already serves this store; only one may serve it at a time."""

    code = "already_serving"
