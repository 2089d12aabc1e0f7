"""The JSON Schema of a rule document (``schemas/rule.schema.json``), exported from the pydantic model.

``python -m consumer.rules.schema`` rewrites the file; ``--check`` exits 1 when it is stale (a test
does the same). Editors can validate rule files against it; cross-field rules (triggers of the
platform, placeholders, ESP names ...) are only checked by ``eventmail rules validate``.
The file is generated: never edit it by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from consumer.rules.model import Rule

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "rule.schema.json"
SCHEMA_ID = "https://github.com/eventmail/eventmail/schemas/rule.schema.json"


def rule_json_schema() -> dict[str, Any]:
    schema = Rule.model_json_schema(mode="validation")
    schema.pop("title", None)
    schema.pop("description", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "eventmail rule",
        "description": "When a trigger fires for a product or campaign, send an email. The value of a record "
        "on the rules topic (key: the id), or a document of an `eventmail rules` file.",
        **schema,
    }


def rendered() -> str:
    return json.dumps(rule_json_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = rendered()
    if "--check" in args:
        current = SCHEMA_PATH.read_text(encoding="utf-8") if SCHEMA_PATH.exists() else ""
        if current != text:
            print(f"{SCHEMA_PATH} is stale: run python -m consumer.rules.schema", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
