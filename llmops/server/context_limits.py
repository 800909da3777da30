"""Caps on the shared ``RequestContext`` of a request, and on the identifiers every request
names at its top level (route, task, policy, collection, ids, names), checked where requests
are parsed.

Every service copies parts of the context and those names into logs, events, cache keys,
metric labels and audit chains, so an oversized tenant, user id or route name would travel
everywhere; the caps hold for all seven services at once. A request over one is
INVALID_ARGUMENT naming the field (``context.tenant: at most 64 characters``, ``route: at
most 256 characters``).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

LIMITS: dict[str, int] = {
    "request_id": 128,
    "tenant": 64,
    "user_id": 128,
    "session_id": 128,
    "locale": 35,  # the longest BCP 47 tags in use
    "market": 8,
    "currency": 8,
    "trace_id": 64,
    "time_zone": 64,
    "client_name": 128,
}
"""Most characters of each text field."""
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_KEY = 128
MAX_ATTRIBUTE_TEXT = 4096
"""Most attributes, characters of a key, and characters of a text value (strings and each
item of a string list)."""
CONTEXT_TYPE = "llmops.v1.RequestContext"


def context_problem(message: Any) -> str | None:
    """``path: reason`` for the first cap the request's top-level ``context`` exceeds."""
    field = message.DESCRIPTOR.fields_by_name.get("context")
    if field is None or field.message_type is None or field.message_type.full_name != CONTEXT_TYPE:
        return None
    if not message.HasField("context"):
        return None
    context = message.context
    for name, limit in LIMITS.items():
        if len(getattr(context, name)) > limit:
            return f"context.{name}: at most {limit} characters"
    attributes = context.attributes
    if len(attributes) > MAX_ATTRIBUTES:
        return f"context.attributes: at most {MAX_ATTRIBUTES} attributes"
    for key, value in attributes.items():
        if len(key) > MAX_ATTRIBUTE_KEY:
            return f"context.attributes: keys of at most {MAX_ATTRIBUTE_KEY} characters"
        texts = [value.string_value, *value.string_list_value.values]
        if any(len(t) > MAX_ATTRIBUTE_TEXT for t in texts):
            return f"context.attributes[{key}]: at most {MAX_ATTRIBUTE_TEXT} characters"
    return None


MAX_IDENTIFIER = 256
"""Most characters of a top-level identifier field of a request."""
_IDENTIFIER = re.compile(
    r"(^|_)(id|ids|name|names|route|task|key|alias|policy|collection|variant|kind)$"
)


@functools.cache
def _identifier_fields(descriptor: Descriptor) -> tuple[tuple[str, bool], ...]:
    """(name, repeated) of the top-level string fields of a request type named like an
    identifier, found once per type from the generated descriptor."""
    return tuple(
        (f.name, f.is_repeated)
        for f in descriptor.fields
        if f.type == FieldDescriptor.TYPE_STRING and _IDENTIFIER.search(f.name)
    )


def identifier_problem(message: Any) -> str | None:
    """``path: reason`` for the first top-level identifier over :data:`MAX_IDENTIFIER`."""
    for name, repeated in _identifier_fields(message.DESCRIPTOR):
        value = getattr(message, name)
        if repeated:
            for i, item in enumerate(value):
                if len(item) > MAX_IDENTIFIER:
                    return f"{name}[{i}]: at most {MAX_IDENTIFIER} characters"
        elif len(value) > MAX_IDENTIFIER:
            return f"{name}: at most {MAX_IDENTIFIER} characters"
    return None
