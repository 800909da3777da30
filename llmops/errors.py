"""Typed domain errors. Domains raise these; one server interceptor maps them to gRPC codes.

Domains never import grpc: each error class carries the *name* of its status code, and the
interceptor resolves it once. Unexpected exceptions become INTERNAL with the request id and
no internals in the message (the traceback goes to the log).
"""

from __future__ import annotations


class LLMOpsError(Exception):
    """Base of all errors a domain may raise on purpose.

    Besides the message, an error may say *why* in machine-readable form: ``reason`` (a stable
    UPPER_SNAKE_CASE word), ``field`` (the offending request field) and ``metadata`` (e.g.
    ``decision_id``). The interceptor sends them as an ``llmops.v1.ErrorDetail`` in the
    call's rich status (``google.rpc.Status`` details, the ``grpc-status-details-bin``
    trailer) whenever one is set; never put secrets or raw PII in them."""

    code: str = "UNKNOWN"
    """Name of the grpc.StatusCode this error maps to."""
    reason: str = ""
    field: str = ""

    def __init__(self, message: str, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(LLMOpsError):
    """The request is malformed; ``field`` names the offending field path."""

    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(LLMOpsError):
    code = "NOT_FOUND"


class AlreadyExists(LLMOpsError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(LLMOpsError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(LLMOpsError):
    """A bounded buffer or queue is full; the caller should back off and retry."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(LLMOpsError):
    """A backend is down; safe for the caller to retry."""

    code = "UNAVAILABLE"


class Aborted(LLMOpsError):
    """A concurrent change won (a compare-and-set failed): re-read and retry."""

    code = "ABORTED"


class Unauthenticated(LLMOpsError):
    """The call carries no credentials the server accepts (no client certificate signed by
    the mesh's CA, no known bearer token). The message never repeats the credential."""

    code = "UNAUTHENTICATED"


class PermissionDenied(LLMOpsError):
    """Policy refused the action; the message carries the policy's reasons."""

    code = "PERMISSION_DENIED"


class AuditNotPublished(LLMOpsError):
    """A change was stored but its audit record could not be published: the caller must not
    take the call for a success (the record is in the service's log, ``audit_publish_failed``)."""

    code = "DATA_LOSS"


class NotDurable(LLMOpsError):
    """The change is applied and its events accepted, but the event log did not make them
    durable in time (``events.durable_timeout_s``); they are still delivered, at least once.
    The caller must not take the call for a plain success."""

    code = "DEADLINE_EXCEEDED"


class DeadlineExceeded(LLMOpsError):
    """The RPC's deadline passed before the work started: nothing of it was done."""

    code = "DEADLINE_EXCEEDED"


class NotImplementedYet(LLMOpsError):
    """An RPC of the v1 contract whose implementation has not landed; names what is missing."""

    code = "UNIMPLEMENTED"
