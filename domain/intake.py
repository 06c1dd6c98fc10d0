"""Parameter validation: raw bytes in, a command or a precise reason out. Never raises."""

from __future__ import annotations

import json

from pydantic import TypeAdapter, ValidationError

from domain.commands import COMMAND_TYPES, PaymentCommand

COMMAND_BYTES_MAX = 16_384
_adapter: TypeAdapter = TypeAdapter(PaymentCommand)


class _RepeatedKey(Exception):
    pass


def _refuse_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    """JSON parsers disagree on which of two equal keys wins; we accept neither."""
    doc: dict = {}
    for key, value in pairs:
        if key in doc:
            raise _RepeatedKey(key)
        doc[key] = value
    return doc


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        # A check across fields names its field itself ("split: shares sum to ...").
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def parse_command(raw: bytes | None):
    """Return ``(command, None)`` or ``(None, reason)``; the reason names the field."""
    if raw is None or len(raw) == 0:
        return None, "empty message"
    if len(raw) > COMMAND_BYTES_MAX:
        return None, f"message too large: {len(raw)} bytes > {COMMAND_BYTES_MAX}"
    try:
        doc = json.loads(raw, object_pairs_hook=_refuse_repeated_keys)
    except _RepeatedKey as exc:
        return None, f"{exc.args[0]}: field repeated (ambiguous command)"
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, too deep, too many digits
        return None, f"not JSON: {type(exc).__name__}: {str(exc)[:200]}"
    if not isinstance(doc, dict):
        return None, f"not a JSON object: got {type(doc).__name__}"
    if "type" not in doc:
        return None, f"type: field required (one of {', '.join(COMMAND_TYPES)})"
    try:
        return _adapter.validate_python(doc), None
    except ValidationError as exc:
        return None, _describe(exc)
