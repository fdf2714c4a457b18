"""The README's Reliability table names, for each fault, the test that proves what it says: each
name must be a test of this suite, so a promise cannot outlive its proof."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
SECTION = re.compile(r"^## Reliability.*?(?=^## )", re.DOTALL | re.MULTILINE)
NAMED = re.compile(r"`(?:tests/[\w/]+\.py::)?(test_\w+)`")


def test_every_row_of_the_reliability_table_names_a_test_that_exists() -> None:
    section = SECTION.search((ROOT / "README.md").read_text())
    assert section is not None
    table = [line for line in section.group(0).splitlines() if line.startswith("| ")][2:]
    defined = {
        name
        for path in (ROOT / "tests").rglob("test_*.py")
        for name in re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.MULTILINE)
    }
    assert table
    for row in table:
        named = NAMED.findall(row)
        assert named, f"this row names no test: {row[:80]}"
        assert set(named) <= defined, set(named) - defined
