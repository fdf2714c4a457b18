"""The processes a bench run starts and stops by pid: redis-server, uvicorn, the Resend stand-in."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live children."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for each in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(child) for child in task.read_text().split()]
    return found + [grandchild for child in found for grandchild in _children(child)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout_s}s")
        time.sleep(0.05)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


def stop(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM our own child, then SIGKILL it if it does not exit in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A private redis-server on a free port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench: no redis-server on PATH (apt-get install redis-server)")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    args += ["no", "--dir", str(workdir), "--logfile", str(workdir / f"redis-{port}.log")]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until(lambda: _pings(url), "redis-server")
        yield url
    finally:
        stop(process)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
    except redis.ConnectionError:
        return False


LOG = Path(tempfile.gettempdir()) / "activation-bench-servers.log"


@contextmanager
def uvicorn(target: str, env: Mapping[str, str], workers: int = 1) -> Iterator[tuple[str, int]]:
    """`uvicorn <target>` on a free port with `workers` processes; yields its URL and pid.

    Its output goes to LOG: wrk ends a run with requests in flight, which the app logs."""
    port = free_port()
    args = [str(BIN / "uvicorn"), target, "--host", "127.0.0.1", "--port", str(port)]
    args += ["--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    with LOG.open("ab") as log:
        log.write(f"\n=== {target} workers={workers} port={port}\n".encode())
    log = LOG.open("ab")
    process = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=log)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _started(process, f"{url}/health"), target)
        yield url, process.pid
    finally:
        stop(process)


def _started(process: subprocess.Popen[bytes], health_url: str) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"{process.args[1]} exited with status {process.returncode}; see {LOG}")
    return answers(health_url)


@contextmanager
def python_process(module: str, env: Mapping[str, str], *args: str) -> Iterator[int]:
    """`python -m <module> <args>` from the repo root; yields its pid."""
    command = [sys.executable, "-m", module, *args]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})
    try:
        yield process.pid
    finally:
        stop(process)
