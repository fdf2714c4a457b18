"""How soon a command answers: `activation --help`, `activation check` on the shipped loops (the
embedded store: nothing to read but the loop folder), and `activation worker` until it logs that
it runs, against the bench's Redis. Each the median of a few runs, as whole processes."""

import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.procs import ROOT

RUNS = 5
READY = b"worker running"


def command_s(*args: str, env: dict[str, str]) -> float:
    """The median wall time of `python -m app.cli ARGS` over RUNS runs."""
    times = []
    for _ in range(RUNS):
        started = time.monotonic()
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, check=True,
                       **quiet)  # fmt: skip
        times.append(time.monotonic() - started)
    return statistics.median(times)


def worker_ready_s(redis_url: str, workdir: Path) -> float:
    """The median time from starting `activation worker` to its "worker running" line."""
    times = []
    for _ in range(RUNS):
        env = {**os.environ, "REDIS_URL": redis_url, "KEY_PREFIX": f"ready{uuid.uuid4().hex[:6]}:"}
        log = workdir / "worker-ready.log"
        with log.open("wb") as out:
            started = time.monotonic()
            process = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], cwd=ROOT,
                                       env=env, stdout=out, stderr=out)  # fmt: skip
            try:
                while READY not in log.read_bytes() and time.monotonic() - started < 30:
                    time.sleep(0.01)
                times.append(time.monotonic() - started)
            finally:
                process.terminate()
                process.wait(timeout=10)
    return statistics.median(times)


def clean_env() -> dict[str, str]:
    """No storage, no keys: what a newcomer's first `activation` sees."""
    keep = ("PATH", "HOME", "LANG")
    return {name: os.environ[name] for name in keep if name in os.environ}
