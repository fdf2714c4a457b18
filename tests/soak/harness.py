"""The soak's processes, all on 127.0.0.1: a redis-server, the Resend stand-in (a thread of this
process, so its inbox is read directly), the web process (uvicorn `app.main:app` with its
in-process worker) and `activation worker` processes, each started, frozen, killed and stopped by
its own pid, never by name. Whatever is still running when the harness exits is stopped (its
`with` block, and `atexit` for an interpreter that ends another way).

The app runs from `app_dir` (its own `.venv`, its loops copied and shortened, see `soak_loops`),
so a harness in one checkout can drive the app of another (`git worktree`).
"""

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import API_KEY, SENDER, SIGNING_SECRET, RedisProcess, free_port
from tests.standins.resend import ResendStandin, run_standin

RESEND_WEBHOOK_SECRET = "whsec_c29hay1yZXNlbmQtd2ViaG9vay1zZWNyZXQtMDEyMzQ1"
KEY_PREFIX = "soak:"
RESEND_TIMEOUT_S = 2.0
STORAGE_TIMEOUT_S = 1.0
# The shortest lease Settings allows with these timeouts: 2 x (2 + 2 x 1) s.
SHORTEST_LEASE_S = 2 * (RESEND_TIMEOUT_S + 2 * STORAGE_TIMEOUT_S)
# Every loop retries a failed email soon and often, so a run's faults delay an email by seconds,
# never dead-letter it: 10 retries at most 3 s apart.
RECOVERY = {"retries": 10, "backoff": "exponential", "initial_delay": "1s", "max_delay": "3s"}
MAX_RETRY_DELAY_S = 3.0
# The shipped loops the checker's rules are written for: loop id -> its steps' templates.
EXPECTED_LOOPS = {
    "activation": ["activation_welcome", "activation_tips"],
    "milestone_ten_projects": ["milestone_ten_projects"],
    "milestone_upgraded": ["milestone_upgraded"],
}
# With a cap (`--cap`, FREQUENCY_CAP): the thank-you for upgrading goes first when the cap lets
# only one of several emails due through, and may wait at most its `measure` (the cap's longest
# window x 9/10: held behind the welcome, most upgrades are dropped, the later ones go); the
# tenth project's milestone neither counts nor waits (`cap: false`).
CAP_PRIORITY = {"milestone_upgraded": 10}
CAP_MEASURED = "milestone_upgraded"
UNCAPPED = ("milestone_ten_projects",)
STOP_GRACE_S = 3.0
HEALTH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Setup:
    """What the processes are given: where the app lives, how many workers, the lease, the
    nudge's timeout, and the run's folder (loops, logs, Redis files)."""

    app_dir: Path
    run_dir: Path
    workers: int = 2
    lease_s: float = SHORTEST_LEASE_S
    nudge_s: float = 10.0
    log_level: str = "WARNING"
    cap: str | None = None  # FREQUENCY_CAP, `"1/20s"`; None: off
    cap_measure_s: int = 0  # with a cap, CAP_MEASURED's `measure`


class Service:
    """One process of the app, by its pid: started, frozen (SIGSTOP), thawed (SIGCONT), killed
    (SIGKILL) and started again with the same command."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, log: Path):
        self.name, self.argv, self.env, self.cwd, self.log = name, argv, env, cwd, log
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self.starts = 0

    def __repr__(self) -> str:
        pid = self.process.pid if self.process else None
        return f"Service({self.name!r}, pid={pid}, frozen={self.frozen}, starts={self.starts})"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts + 1} at {time.time():.3f}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdout=out, stderr=out
            )
        self.frozen = False
        self.starts += 1
        _LIVE.add(self)

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)
        self.frozen = False

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=STOP_GRACE_S)
        self.frozen = False
        _LIVE.discard(self)

    def terminate(self) -> None:
        """SIGTERM (after SIGCONT if frozen); `reap` waits for it."""
        if self.running:
            assert self.process is not None
            self.thaw()
            self.process.terminate()

    def reap(self, deadline_s: float) -> None:
        """Wait for the process to end until `deadline_s` (monotonic), then SIGKILL it."""
        if self.process is not None:
            try:
                self.process.wait(timeout=max(deadline_s - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                self.kill()
        _LIVE.discard(self)

    def _signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signum)


_LIVE: set[Service] = set()


@atexit.register
def _stop_leftovers() -> None:
    stop_all(list(_LIVE))


def stop_all(services: list[Service]) -> None:
    """SIGTERM to all at once, then SIGKILL to those still running after the grace period."""
    for service in services:
        service.terminate()
    deadline_s = time.monotonic() + STOP_GRACE_S
    for service in services:
        service.reap(deadline_s)


class Harness:
    """The whole set: Redis, the stand-in, the web process and its workers. A context manager:
    everything started is stopped on exit, by pid."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.stack = contextlib.ExitStack()
        self.redis = RedisProcess(redis_binary(), setup.run_dir)
        self.web_port = free_port()
        self.standin: ResendStandin
        self.web: Service
        self.workers: list[Service] = []

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def services(self) -> list[Service]:
        return [self.web, *self.workers]

    def __enter__(self) -> "Harness":
        try:
            self._start()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def _start(self) -> None:
        self.redis.start()
        self.stack.callback(self.redis.stop)
        self.standin = self.stack.enter_context(run_standin())
        shipped, copy = self.setup.app_dir / "loops", self.setup.run_dir / "loops"
        loops = soak_loops(shipped, copy, self.setup.nudge_s)
        if self.setup.cap is not None:
            cap_loops(loops, self.setup.cap_measure_s)
        env = self.env(loops)
        python = str(self.setup.app_dir / ".venv" / "bin" / "python")
        web_env = {**env, "WORKER_IN_PROCESS": "true"}
        self.web = self.service("web", [python, "-m", "uvicorn", *self.uvicorn_args()], web_env)
        activation = str(self.setup.app_dir / ".venv" / "bin" / "activation")
        for n in range(1, self.setup.workers + 1):
            self.workers.append(self.service(f"worker-{n}", [activation, "worker"], env))
        self.stack.callback(lambda: stop_all(self.services))
        for service in self.services:
            service.start()
        wait_healthy(self.web_url, self.web)

    def service(self, name: str, argv: list[str], env: dict[str, str]) -> Service:
        log = self.setup.run_dir / f"{name}.log"
        return Service(name, argv, env, self.setup.app_dir, log)

    def uvicorn_args(self) -> list[str]:
        return [
            "app.main:app",
            *("--host", "127.0.0.1", "--port", str(self.web_port)),
            *("--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", "2"),
        ]

    def env(self, loops_dir: Path) -> dict[str, str]:
        """The processes' whole environment: nothing else of this one leaks in."""
        keep = {name: value for name, value in os.environ.items() if name in ("PATH", "HOME")}
        return {
            **keep,
            "REDIS_URL": self.redis.url,
            "KEY_PREFIX": KEY_PREFIX,
            "LOOPS_DIR": str(loops_dir),
            "CLERK_WEBHOOK_SIGNING_SECRET": SIGNING_SECRET,
            "RESEND_WEBHOOK_SECRET": RESEND_WEBHOOK_SECRET,
            "ACTIVATION_API_KEY": API_KEY,
            "RESEND_API_KEY": self.standin.api_key,
            "RESEND_API_URL": self.standin.url,
            "EMAIL_FROM": SENDER,
            "RESEND_RATE_LIMIT_PER_S": "0",
            "RESEND_TIMEOUT_S": str(RESEND_TIMEOUT_S),
            "STORAGE_TIMEOUT_S": str(STORAGE_TIMEOUT_S),
            "WORKER_LEASE_S": str(self.setup.lease_s),
            "WORKER_IDLE_S": "1",
            "WORKER_IN_PROCESS": "false",
            "PUBLIC_URL": self.web_url,
            "LOG_LEVEL": self.setup.log_level,
            "FREQUENCY_CAP": self.setup.cap or "off",
        }

    def restart_web(self) -> None:
        """Start the web process again (same port) and wait until it answers."""
        self.web.start()
        wait_healthy(self.web_url, self.web)


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("the soak needs a redis-server binary on PATH")
    return binary


def wait_healthy(url: str, web: Service, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """Poll GET /health (bounded) until the web process answers 200."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=1.0) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/health").status_code == 200:
                    return
            if not web.running or time.monotonic() > deadline:
                raise RuntimeError(f"the web process did not become healthy; see {web.log}")
            time.sleep(0.05)


def soak_loops(shipped: Path, target: Path, nudge_s: float) -> Path:
    """A copy of the shipped loops (templates too), the activation step's timeout set to
    `nudge_s` and every loop's recovery to `RECOVERY`; loops the checker's rules were not written
    for are refused."""
    shutil.copytree(shipped, target, dirs_exist_ok=True)
    found = {}
    for path in sorted(target.glob("*.yaml")):
        loop: dict[str, Any] = yaml.safe_load(path.read_text())
        found[path.stem] = [step["action"]["template"] for step in loop["steps"]]
        if path.stem == "activation":
            loop["steps"][0]["condition"]["timeout"] = f"{nudge_s:g}s"
        loop["recovery"] = RECOVERY
        path.write_text(yaml.safe_dump(loop, sort_keys=False))
    if found != EXPECTED_LOOPS:
        raise RuntimeError(f"the checker's rules are written for {EXPECTED_LOOPS}, not {found}")
    return target


def cap_loops(loops_dir: Path, measure_s: int) -> None:
    """The soak's loops for a run with a cap: `CAP_PRIORITY`, `CAP_MEASURED`'s `measure` and
    `UNCAPPED`'s `cap: false`, written into the copy."""
    for path in sorted(loops_dir.glob("*.yaml")):
        loop: dict[str, Any] = yaml.safe_load(path.read_text())
        if path.stem in CAP_PRIORITY:
            loop["priority"] = CAP_PRIORITY[path.stem]
        if path.stem == CAP_MEASURED:
            loop["measure"] = f"{measure_s}s"
        if path.stem in UNCAPPED:
            loop["cap"] = False
        path.write_text(yaml.safe_dump(loop, sort_keys=False))
