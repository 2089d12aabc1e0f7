"""Loads the Avro schemas of ``schemas/`` (the wire truth), parsed once and cached."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

SCHEMA_DIR = Path(os.environ.get("EVENTMAIL_SCHEMA_DIR", Path(__file__).resolve().parent.parent / "schemas"))


@cache
def raw_schema(name: str) -> dict[str, Any]:
    """The schema ``schemas/NAME.avsc`` as JSON."""
    with (SCHEMA_DIR / f"{name}.avsc").open(encoding="utf-8") as handle:
        loaded: dict[str, Any] = json.load(handle)
    return loaded


@cache
def parsed_schema(name: str) -> Any:
    """The schema parsed by fastavro (parsing is the costly step, so it is cached)."""
    return fastavro.parse_schema(raw_schema(name))


def field_names(name: str) -> list[str]:
    return [f["name"] for f in raw_schema(name)["fields"]]
