"""The JSON Schema of loop files (`loops/loop.schema.json`), generated from `loop_spec`:
`python -m app.engine.loop_schema schema` prints it."""

import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from app.engine.loop_spec import LoopSpec

# --- the JSON Schema ----------------------------------------------------------------------------


class _FileSchema(GenerateJsonSchema):
    """The file's schema: an optional key is left out, never `null` (the loader refuses null)."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        if schema.get("default", ...) is None:
            return self.generate_inner(schema["schema"])
        return super().default_schema(schema)


def loop_json_schema() -> dict[str, Any]:
    """The JSON Schema of a loop file (the raw YAML shape), for editors and validators."""
    return LoopSpec.model_json_schema(schema_generator=_FileSchema)


def loop_json_schema_text() -> str:
    """The schema as committed in `loops/loop.schema.json`."""
    return json.dumps(loop_json_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str]) -> int:
    if list(argv) != ["schema"]:
        sys.stderr.write("usage: python -m app.engine.loop_schema schema\n")
        return 2
    sys.stdout.write(loop_json_schema_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
