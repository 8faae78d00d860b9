"""Reading a feature's YAML file (configs/schedule.yaml, configs/figurines.yaml) with start-up errors that
name the file, and the line and column of a syntax error, in the feature's own error type."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: Path, error: type[Exception]) -> Any:
    """The parsed document; an unreadable file or malformed YAML raises `error` naming `path`."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(f"{path}: cannot be read: {exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise error(f"{path}: (top level): not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
