"""Load analysts' YAML from ``config/``, validated by pydantic, errors with file and line."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file that does not validate; the message names file, line and field."""


def _line_of(node, loc: tuple) -> int:
    """Walk the YAML node tree along a pydantic error location; return a 1-based line."""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            match = node.value[part] if part < len(node.value) else None
        else:
            match = None
        if match is None:
            continue  # a union's tag in the location (rules.2.velocity.window_ms): skip it
        node = match
    return node.start_mark.line + 1


def load_yaml(path: Path, model: type[M]) -> M:
    text = path.read_text()
    try:
        node = yaml.compose(text)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        raise ConfigError(f"{path}:{line}: not valid YAML: {exc}") from exc
    try:
        return model.model_validate(doc or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"]) + tuple(getattr(err.get("ctx", {}).get("error"), "loc", ()))
            line = _line_of(node, loc) if node is not None else 0
            where = ".".join(str(p) for p in loc)
            problems.append(f"{path}:{line}: {where}: {err['msg']}")
        raise ConfigError("\n".join(problems)) from exc
