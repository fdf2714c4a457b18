"""One soak, start to end: the processes up, the workload and the nemesis at once for the run's
length, then the faults off and a quiet settle (every process running) so that due emails go
out, then the checker over the stand-in's ledger and the workload's history."""

import asyncio
import json
import random
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvloop

from tests.conftest import AUTH
from tests.soak.checker import EXAMPLES, Cap, Service, Timing, Verdict, check
from tests.soak.harness import (
    KEY_PREFIX,
    MAX_RETRY_DELAY_S,
    SHORTEST_LEASE_S,
    UNCAPPED,
    Harness,
    Setup,
)
from tests.soak.history import History, now_ms
from tests.soak.jobs import read_holds, read_jobs
from tests.soak.ledger import Ledger
from tests.soak.nemesis import Nemesis
from tests.soak.workload import REQUEST_TIMEOUT_S, Connections, Mix, Workload
from tests.support.constants import REPO

QUIET_S = 3.0  # the settle ends once no email was accepted for this long (and its minimum passed)
GIVE_UP_S = 20.0  # how long after the run a request is still retried (a web restart fits)
EVIDENCE_USERS = 50  # users whose stored state is kept when they have a violation


@dataclass(frozen=True)
class Options:
    users: int = 200
    seconds: float = 20.0
    workers: int = 2
    seed: int = 1
    app_dir: Path = REPO
    nudge_s: float = 10.0
    lease_s: float = SHORTEST_LEASE_S
    faults: bool = True
    fault_every_s: float = 4.0
    max_settle_s: float = 60.0
    log_level: str = "WARNING"
    mix: Mix = field(default_factory=Mix)
    cap: str | None = None  # FREQUENCY_CAP for the app, `"1/20s"`: the cap's rules are checked

    @property
    def frequency_cap(self) -> Cap | None:
        return None if self.cap is None else Cap.parse(self.cap, UNCAPPED)


@dataclass
class Outcome:
    """The verdict, the faults injected, and the run's figures."""

    verdict: Verdict
    faults: dict[str, int]
    seconds: dict[str, float]
    exited: list[str]  # processes that ended without the nemesis
    run_dir: str
    answer_ms: dict[str, int] = field(default_factory=dict)  # the web process's answer times

    @property
    def ok(self) -> bool:
        return not self.verdict.violations and not self.exited

    def as_dict(self) -> dict[str, Any]:
        verdict = self.verdict
        return {
            "ok": self.ok,
            "users": verdict.users,
            "stopped_users": verdict.stopped_users,
            "emails_delivered": verdict.deliveries,
            "emails_by_kind": verdict.by_kind,
            "ops": verdict.ops,
            "faults": self.faults,
            "violations": verdict.by_type,
            "excused": len(verdict.excused),
            "excused_by_type": verdict.excused_by_type,
            "cap": verdict.cap,
            "examples": {
                kind: [example.as_dict() for example in examples]
                for kind, examples in verdict.examples().items()
            },
            "excused_examples": [v.as_dict() for v in verdict.excused[:EXAMPLES]],
            "exited": self.exited,
            "seconds": self.seconds,
            "answer_ms": self.answer_ms,
            "run_dir": self.run_dir,
        }


def run(options: Options, run_dir: Path | None = None) -> Outcome:
    """One soak; its processes' logs stay in `run_dir` (a new temporary folder by default)."""
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="soak-"))
    cap = options.frequency_cap
    setup = Setup(
        app_dir=options.app_dir.resolve(),
        run_dir=run_dir,
        workers=options.workers,
        lease_s=options.lease_s,
        nudge_s=options.nudge_s,
        log_level=options.log_level,
        cap=options.cap,
        cap_measure_s=0 if cap is None else max(cap.longest_ms * 9 // 10_000, 1),
    )
    started = time.monotonic()
    with Harness(setup) as harness:
        startup_s = time.monotonic() - started
        outcome = uvloop.run(Session(harness, options).run())
    outcome.seconds["startup"] = round(startup_s, 1)
    outcome.seconds["total"] = round(time.monotonic() - started, 1)
    (run_dir / "outcome.json").write_text(json.dumps(outcome.as_dict(), indent=2))
    return outcome


class Session:
    def __init__(self, harness: Harness, options: Options) -> None:
        self.harness, self.options = harness, options
        self.history = History()
        self.ledger = Ledger(harness.standin.inbox)
        self.nemesis = Nemesis(harness, random.Random(options.seed), options.fault_every_s)
        self.seconds: dict[str, float] = {}

    async def run(self) -> Outcome:
        """The run, cut short (TimeoutError) if it ever outlives every bound it has."""
        async with asyncio.timeout(self.longest_s()):
            return await self.steps()

    def longest_s(self) -> float:
        options = self.options
        load_s = 2 * options.seconds + GIVE_UP_S + REQUEST_TIMEOUT_S
        cap = options.frequency_cap
        waits_s = 0 if cap is None else cap.longest_ms / 1000
        return load_s + options.lease_s + 3 + options.max_settle_s + waits_s + 60

    async def steps(self) -> Outcome:
        follow = asyncio.create_task(self.ledger.follow())
        try:
            workload = await self.load()
            exited = [s.name for s in self.harness.services if not s.running]
            await self.nemesis.calm()
            end_ms = await self.settle(workload)
        finally:
            follow.cancel()
        self.ledger.refresh()
        nudge_ms = int(self.options.nudge_s * 1000)
        cap = self.options.frequency_cap
        timing = Timing(nudge_ms, end_ms, tuple(self.nemesis.freezes), cap)
        service = await asyncio.to_thread(self.service) if cap is not None else None
        verdict = check(self.ledger, self.history, timing, service)
        await self.keep_evidence(verdict, service)
        run_dir = str(self.harness.setup.run_dir)
        answers = self.history.answer_times_ms()
        return Outcome(verdict, self.nemesis.faults(), self.seconds, exited, run_dir, answers)

    def service(self) -> Service:
        """The service's ledger in Redis: every user's jobs, and the loops' held counters."""
        url = self.harness.redis.url
        users = self.history.addresses
        loops = [path.stem for path in (self.harness.setup.run_dir / "loops").glob("*.yaml")]
        return Service(read_jobs(url, KEY_PREFIX, users), read_holds(url, KEY_PREFIX, loops))

    async def keep_evidence(self, verdict: Verdict, service: Service | None = None) -> None:
        """The run's history, ledger and faults, and the service's view of the first users with
        a violation (GET /v1/users/{id}; with a cap, their jobs as Redis keeps them too), as
        files in the run's folder."""
        run_dir = self.harness.setup.run_dir
        write_lines(run_dir / "history.jsonl", (asdict(op) for op in self.history.ops))
        write_lines(run_dir / "ledger.jsonl", (asdict(d) for d in self.ledger))
        faults = (
            {"at_ms": at, "what": what, "process": name} for at, what, name in self.nemesis.log
        )
        write_lines(run_dir / "nemesis.jsonl", faults)
        write_lines(run_dir / "violations.jsonl", (v.as_dict() for v in verdict.violations))
        write_lines(run_dir / "excused.jsonl", (v.as_dict() for v in verdict.excused))
        users = list(dict.fromkeys(violation.user for violation in verdict.violations))
        states = {}
        async with httpx.AsyncClient(base_url=self.harness.web_url, timeout=10) as client:
            for user in users[:EVIDENCE_USERS]:
                response = await client.get(f"/v1/users/{user}", headers=AUTH)
                states[user] = response.json() if response.is_success else response.text
        (run_dir / "violating_users.json").write_text(json.dumps(states, indent=1))
        if service is not None:
            jobs = {
                user: {name: asdict(job) for name, job in service.jobs.get(user, {}).items()}
                for user in users[:EVIDENCE_USERS]
            }
            (run_dir / "violating_jobs.json").write_text(json.dumps(jobs, indent=1))

    async def load(self) -> Workload:
        """The workload and the nemesis, for the run's length (plus the workload's retries)."""
        options, start = self.options, time.monotonic()
        stop_at = start + options.seconds
        async with Connections(self.harness.web_url) as connections:
            workload = Workload(
                connections,
                self.history,
                self.ledger,
                seed=options.seed,
                mix=options.mix,
                stop_at_s=stop_at,
                give_up_at_s=start + 2 * options.seconds + GIVE_UP_S,
            )
            nemesis = self.nemesis.run(stop_at) if options.faults else asyncio.sleep(0)
            await asyncio.gather(workload.run(options.users, options.seconds), nemesis)
        self.seconds["load"] = round(time.monotonic() - start, 1)
        return workload

    async def settle(self, workload: Workload) -> int:
        """Faults off, every process running: wait until the emails due have gone out (the
        dead workers' leases ran out, retries came, the last nudges fell due), then until no
        email was accepted for QUIET_S; at most `max_settle_s`. The end, epoch ms."""
        start = time.monotonic()
        options = self.options
        nudges_due_s = (workload.last_signup_ms - now_ms()) / 1000 + options.nudge_s + 2
        cap = options.frequency_cap
        if cap is not None:  # the last nudges may wait for a window
            nudges_due_s += cap.longest_ms / 1000
        least_s = max(options.lease_s + MAX_RETRY_DELAY_S + 2, nudges_due_s)
        while True:
            await asyncio.sleep(0.25)
            self.ledger.refresh()
            waited_s = time.monotonic() - start
            quiet = time.monotonic() - self.ledger.last_change_s >= QUIET_S
            if waited_s >= max(options.max_settle_s, least_s) or (waited_s >= least_s and quiet):
                break
        self.seconds["settle"] = round(time.monotonic() - start, 1)
        return now_ms()


def write_lines(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


def summary(outcome: Outcome) -> str:
    """The counts, as lines for a terminal."""
    data = outcome.as_dict()
    lines = [
        f"soak: {'ok' if outcome.ok else 'VIOLATIONS'}  (logs: {outcome.run_dir})",
        f"users: {data['users']} signed up, {data['stopped_users']} stopped",
        f"emails delivered: {data['emails_delivered']}  by kind: {fmt(data['emails_by_kind'])}",
        "requests (sent/acknowledged): "
        + ", ".join(f"{k} {v['sent']}/{v['acked']}" for k, v in data["ops"].items()),
        f"faults injected: {fmt(data['faults']) or 'none'}",
        f"violations: {fmt(data['violations']) or 'none'}",
    ]
    if data["cap"]:
        lines.append(f"cap: {json.dumps(data['cap'])}")
    for kind, examples in data["examples"].items():
        for example in examples:
            lines.append(f"  {kind}: {json.dumps(example)}")
    if data["excused"]:
        lines.append(f"excused: {fmt(data['excused_by_type'])}")
        lines += [f"  {json.dumps(example)}" for example in data["excused_examples"]]
    if outcome.exited:
        lines.append(f"processes that exited on their own: {', '.join(outcome.exited)}")
    lines.append(f"web answers (ms): {fmt(outcome.answer_ms)}")
    lines.append(f"seconds: {fmt(outcome.seconds)}")
    return "\n".join(lines)


def fmt(counts: dict[str, Any]) -> str:
    return ", ".join(f"{name} {value}" for name, value in counts.items())
