"""Marks the test files share."""

import pytest

# the `transport` fixture (tests/conftest.py) for the embedded store only
embedded_only = pytest.mark.parametrize("transport", ["embedded"], indirect=True)
