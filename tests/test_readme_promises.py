"""The Reliability page's table (docs/reliability.md) names, for each fault, the test that proves
what it says: each name must be a test of this suite, so a promise cannot outlive its proof."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
PAGE = ROOT / "docs" / "reliability.md"
NAMED = re.compile(r"`(?:tests/[\w/]+\.py::)?(test_\w+)`")


def test_every_row_of_the_reliability_table_names_a_test_that_exists() -> None:
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    table = [line for line in lines if line.startswith("| ")][2:]
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
