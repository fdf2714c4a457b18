"""The nemesis, on its own seeded schedule while the workload runs: it freezes an `activation
worker` (SIGSTOP for longer than the lease, then SIGCONT), kills one (SIGKILL) and starts it
again, and now and then kills and restarts the web process (its in-process worker with it);
meanwhile the Resend stand-in's chaos mode answers random 500s, 429s with retry-after,
accept-then-500s and added latency (some of it past the client's timeout). The first three
faults, and the stand-in's first answers, are one of each kind, so even a short run sees every
kind. `calm` ends it all: every
process thawed and running, the stand-in's faults off.
"""

import asyncio
import random
import time
from collections import Counter

from tests.soak.harness import Harness, Service
from tests.soak.history import now_ms
from tests.standins.resend import Chaos

# The chances a fault of the schedule is each kind, after the first round.
WEIGHTS = {"freeze": 0.4, "kill_worker": 0.4, "kill_web": 0.2}
FIRST_ROUND = ("freeze", "kill_worker", "kill_web")
# How the stand-in misbehaves while the nemesis runs (chances per request): latency from 50 ms to
# past the client's 2 s timeout, retry-after of up to 2 s.
CHAOS = {
    "error_rate": 0.04,
    "limit_rate": 0.04,
    "accept_then_fail_rate": 0.03,
    "latency_rate": 0.08,
    "retry_after_s": (0.2, 2.0),
    "latency_s": (0.05, 2.5),
}
# The stand-in's first answers once the nemesis starts: one fault of each kind, whatever the draws.
FIRST_ANSWERS = (
    ("status", 500),
    ("status", 429, 1.0),
    ("accept_then_fail", 500),
    ("hang", 0.5),
    ("hang", 3.0),  # past the client's 2 s timeout
)
STANDIN_FAULTS = {
    "500": "resend_500",
    "429": "resend_429",
    "accept_then_fail 500": "resend_accept_then_500",
    "hang": "resend_latency",
    "client left": "resend_timeout",
}


class Nemesis:
    """Faults for `harness`'s processes and its stand-in, drawn from `rng`, one every
    `every_s` seconds on average; `counts` says what was done."""

    def __init__(self, harness: Harness, rng: random.Random, every_s: float) -> None:
        self.harness, self.rng, self.every_s = harness, rng, every_s
        self.lease_s = harness.setup.lease_s
        self.counts: Counter[str] = Counter()
        self.thawing: set[asyncio.Task[None]] = set()
        self.freezes: list[tuple[int, int]] = []  # (frozen, thawed), epoch ms
        self.log: list[tuple[int, str, str]] = []  # (epoch ms, what, which process)

    def faults(self) -> dict[str, int]:
        """Faults injected so far, by type: the nemesis's and the stand-in's."""
        standin = {
            STANDIN_FAULTS.get(name, name): n for name, n in self.harness.standin.faults.items()
        }
        return dict(sorted({**self.counts, **standin}.items()))

    async def run(self, until_s: float) -> None:
        """Inject faults until `until_s` (monotonic); none starts that cannot end by then."""
        self.harness.standin.script(*FIRST_ANSWERS)
        self.harness.standin.chaos(Chaos(**CHAOS, seed=self.rng.randrange(2**32)))
        for n in range(10**9):
            await asyncio.sleep(self.every_s * self.rng.uniform(0.5, 1.5))
            kind = FIRST_ROUND[n] if n < len(FIRST_ROUND) else self.draw()
            if time.monotonic() + self.longest(kind) >= until_s:
                return
            await getattr(self, kind)()

    def draw(self) -> str:
        return self.rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]

    def longest(self, kind: str) -> float:
        """How long a fault of `kind` may take to end (a web restart: its startup)."""
        return {"freeze": self.lease_s + 3, "kill_worker": 2.0, "kill_web": 6.0}[kind]

    async def calm(self) -> None:
        """Faults off: frozen workers thawed, dead ones started, the stand-in well-behaved."""
        self.harness.standin.chaos(None)
        await asyncio.gather(*self.thawing)
        for service in self.harness.workers:
            if not service.running:
                service.start()
        if not self.harness.web.running:
            await asyncio.to_thread(self.harness.restart_web)

    # --- the faults -----------------------------------------------------------------------

    async def freeze(self) -> None:
        worker = self.pick()
        if worker is None:
            return
        worker.freeze()
        self.note("freeze", worker)
        pause_s = self.lease_s + self.rng.uniform(1, 3)
        task = asyncio.create_task(self.thaw_later(worker, now_ms(), pause_s))
        self.thawing.add(task)
        task.add_done_callback(self.thawing.discard)

    async def thaw_later(self, worker: Service, frozen_ms: int, after_s: float) -> None:
        await asyncio.sleep(after_s)
        worker.thaw()
        self.freezes.append((frozen_ms, now_ms()))
        self.note("thaw", worker, count=False)

    async def kill_worker(self) -> None:
        worker = self.pick()
        if worker is None:
            return
        worker.kill()
        self.note("kill_worker", worker)
        await asyncio.sleep(self.rng.uniform(0.3, 1.5))
        worker.start()
        self.note("start", worker, count=False)

    async def kill_web(self) -> None:
        self.harness.web.kill()
        self.note("kill_web", self.harness.web)
        await asyncio.sleep(self.rng.uniform(0.2, 1.0))
        await asyncio.to_thread(self.harness.restart_web)
        self.note("start", self.harness.web, count=False)

    def note(self, what: str, service: Service, *, count: bool = True) -> None:
        self.log.append((now_ms(), what, service.name))
        if count:
            self.counts[what] += 1

    def pick(self) -> Service | None:
        """A running worker that is not frozen; None if there is none."""
        ready = [s for s in self.harness.workers if s.running and not s.frozen]
        return self.rng.choice(ready) if ready else None
