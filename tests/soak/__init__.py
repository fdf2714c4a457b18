"""A checker that hunts for doubles, Jepsen-style: the real web process (with its in-process
worker) and separate `activation worker` processes against one real redis-server and the
idempotent Resend stand-in, under a nemesis, while a concurrent workload signs users up and
reports their actions, complaints, bounces, unsubscribes and deletions; then a checker reads the
stand-in's ledger against the workload's history. Exit status 1 on any violation.

    python -m tests.soak --users 2000 --seconds 120 [--workers 2] [--seed 1] [--json]
    python -m tests.soak --app-dir /tmp/other-checkout   # that checkout's app and .venv
    python -m tests.soak --cap 1/20s   # FREQUENCY_CAP set: the cap is checked too (over_cap)
    make soak SOAK_USERS=20000 SOAK_SECONDS=300
    make soak SOAK_ARGS="--users 2000 --seconds 120 --cap 1/20s"

Modules: `harness` (the processes), `workload` (the users) and `history` (what they did, when),
`nemesis` (the faults), `ledger` (what Resend accepted), `jobs` (what the service's own ledger
in Redis says, read after a run with a cap), `checker` (the rules, in its docstring), `session`
(one run, start to end; its folder keeps the logs, the history, the ledger, the faults, every
violation and the service's view of users with one). `tests/test_soak.py` runs a short one in
the suite, and a short one with a cap.
"""
