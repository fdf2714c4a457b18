"""Constants the tests share, each defined here and nowhere else (tests/test_suite_layout.py holds
that): the repository's paths, the fixtures' user ids, and spans of time in milliseconds, the unit
of every time the service stores."""

from pathlib import Path

REPO = Path(__file__).parent.parent.parent
FIXTURES = REPO / "tests" / "fixtures"
SHIPPED_LOOPS = REPO / "loops"

USER = "user_29w83sxmDNGwOuEthce5gg56FcC"  # the user of Clerk's documented payloads (fixtures)
OTHER = "user_2other0000000000000000000"

SEC = 1_000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
