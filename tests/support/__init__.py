"""What the test files share besides fixtures (those are tests/conftest.py's): a test file imports
helpers from here or from the conftest, never from another test file, and the stand-ins of the
services the app talks to live apart, in tests/standins/ (tests/test_suite_layout.py holds this).

- `constants`: the repository's paths, the fixtures' user ids, SEC, MIN, HOUR and DAY (ms)
- `marks`: `embedded_only`
- `flow`: a signup, an action, the user's state and its steps, through the HTTP API
- `storage`: storage that cannot be reached, or that is reached through an Upstash stand-in, and
  the commands Redis ran
- `processes`: the `activation` command and a worker process, with their environment
- `timing`: bounded waits, and Resend's pacing on the fake clock
- `gate`: the hot routes beside the routed ones, and a request body sent in chunks
- `growth`: loop files for the growth features, and user ids that land in a chosen arm
- `within`: loop files with `within:` windows
- `pages`: the operator pages filled by a realistic flow or the outbox's writer, and read back
- `browser`: a headless Chromium
"""
