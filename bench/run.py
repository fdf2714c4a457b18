"""`make bench`: every figure measured beside its limit in one run; a table and results.json.

Phases, each against this run's own redis-server and Resend stand-in (127.0.0.1 only):
intake (webhooks, actions) beside a bare FastAPI endpoint; Redis cost per operation; delivery
latency and rate beside the stand-in's own rate; the same intake and costs with 100,000 users and
1,000,000 actions stored; idle workers polling in the background for the whole run.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import redis

from app.storage.action_sightings import SIGHTINGS_FLUSH_S
from app.storage.keys import Keys
from bench import flows, load, procs, seed, startup
from bench.cost import Monitor, command_calls
from bench.load import LoadResult

QUICK = os.environ.get("BENCH_QUICK") == "1"  # a smoke run: short loads, fewer stored users
MEASURE_S = 2.0 if QUICK else 6.0
WARM_S = 2
TARGET_SHARE = 0.60
IDLE_TARGET_PER_MONTH = 100_000
MONTH_S = 30 * 24 * 3600
DEFAULT_IDLE_S = 120
SIGNUPS_PER_MONTH = 10_000
USD_PER_100K_COMMANDS = 0.20
SCALE_USERS = 2_000 if QUICK else 100_000
ACTIONS_PER_USER = 10
RESULTS = procs.ROOT / "bench/results.json"
WELCOME_TURN = "turn: welcome decided and sent"
SENT_EMAIL = "sent email (watched action, then its turn)"
# The storage issue's ceilings: commands per operation (the turn's share of its claim included)
COST_CEILINGS = {
    "user.created": 6,
    "watched action": 4,
    "watched action with a filter": 4,
    "unwatched action": 3,
    WELCOME_TURN: 15,
}
MEMORY_CEILING_KIB = 2.0  # per user with 10 actions and the welcome sent
MONTH_CEILING = 500_000  # commands: Upstash's free tier


@dataclass
class Figure:
    """One measured figure; `limit` was measured in the same run, `ratio` = value / limit."""

    name: str
    value: float
    unit: str
    limit: float | None = None
    limit_name: str = ""
    target: str = ""
    ratio: float | None = None
    met: bool | None = None
    notes: str = ""
    extra: dict[str, float] = field(default_factory=dict)


class Report:
    def __init__(self) -> None:
        self.figures: list[Figure] = []
        self.notes: dict[str, Any] = {}

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        print(f"  {figure.name}: {figure.value:,.2f} {figure.unit} {figure.notes}", flush=True)
        return figure

    def against(self, figure: Figure, share: float | None = None) -> Figure:
        """Add a figure with a limit; `share` is the target's least ratio (None: no target)."""
        assert figure.limit is not None
        figure.ratio = figure.value / figure.limit if figure.limit else None
        if share is not None and figure.ratio is not None:
            figure.target, figure.met = f">= {share:.0%} of limit", figure.ratio >= share
        return self.add(figure)

    def at_most(self, figure: Figure, ceiling: float | None) -> Figure:
        """Add a figure that must not exceed `ceiling` (None: no target)."""
        if ceiling is not None:
            figure.target, figure.met = f"<= {ceiling:,g}", figure.value <= ceiling
        return self.add(figure)

    def table(self) -> str:
        """Every figure beside its limit and target, and beside the committed run's value."""
        before = previous_values()
        header = ("figure", "value", "unit", "before", "limit (same run)", "ratio", "target", "met")
        rows = [(*header, "notes")]
        for f in self.figures:
            limit = f"{f.limit:,.1f} {f.limit_name}" if f.limit is not None else ""
            ratio = f"{f.ratio:.2f}" if f.ratio is not None else ""
            met = {True: "yes", False: "NO", None: ""}[f.met]
            was = before.get(RENAMED.get(f.name, f.name))
            previous = f"{was:,.1f}" if was is not None else ""
            row = (f.name, f"{f.value:,.1f}", f.unit, previous, limit, ratio, f.target, met)
            rows.append((*row, f.notes))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        figures = [vars(f) for f in self.figures]
        path.write_text(json.dumps({"figures": figures, "notes": self.notes}, indent=2) + "\n")


def previous_values() -> dict[str, float]:
    """The committed run's figures (bench/results.json before this run writes it)."""
    if not RESULTS.exists():
        return {}
    return {f["name"]: f["value"] for f in json.loads(RESULTS.read_text())["figures"]}


# Figures whose name changed with storage v2 (schema 2): today's name -> the name before.
RENAMED = {
    "cost: signup's turn": "cost: signup evaluation",
    "cost: watched action": "cost: action",
    f"cost: {WELCOME_TURN}": "cost: evaluation + send",
    "cost: unwatched action": "cost: action + evaluation, no email",
    f"cost: {SENT_EMAIL}": "cost: sent email (action, evaluation, send)",
    "turns left due by the intake load": "evaluations left due by the intake load",
    "turns left due by the intake load @100k users": (
        "evaluations left due by the intake load @100k users"
    ),
}
RENAMED |= {f"{new} @100k users": f"{old} @100k users" for new, old in list(RENAMED.items())}


# --- intake ------------------------------------------------------------------------------------


class Intake:
    """wrk runs against `uvicorn <target>`: a warm-up sizes the request file of the measured run.

    Signups come faster than the in-process worker evaluates them: after each run of the app, one
    worker runs the turns it left due (timed apart), so no run inherits another's backlog
    and every run starts from the same state."""

    def __init__(self, redis_url: str, resend_url: str, workdir: Path, prefix: str) -> None:
        self.redis_url = redis_url
        self.resend_url = resend_url
        self.file = workdir / "requests.txt"
        self.prefix = prefix
        self.users: list[str] = []
        self.drained_jobs = 0
        self.drain_s = 0.0

    def env(self, worker: bool = True) -> dict[str, str]:
        return flows.app_env(self.redis_url, self.prefix, worker=worker)

    def run(
        self,
        target: str,
        path: str,
        lines: Callable[[int], list[str]],
        *,
        env: dict[str, str] | None = None,
        workers: int = 1,
        unique: bool = True,
    ) -> LoadResult:
        with procs.uvicorn(target, env or {}, workers) as (url, pid):
            warm = load.wrk(url, path, lines(3000), self.file, WARM_S)
            # the warm-up runs cold: the measured run can be twice as fast, so 3x its count
            n = int(warm.per_s * MEASURE_S * 3) + 1000 if unique else 5000
            cpu_before_s = procs.cpu_s(pid)
            result = load.wrk(url, path, lines(n), self.file, MEASURE_S)
            result = replace(result, server_cpu_s=procs.cpu_s(pid) - cpu_before_s)
        if unique and result.requests > n:
            raise RuntimeError(f"{path}: the request file ran out ({result.requests} > {n})")
        if result.errors:
            raise RuntimeError(f"{path}: {result.errors} requests failed (non-2xx or socket)")
        if target.startswith("app."):
            self.drain()
        return result

    def drain(self) -> None:
        """The users' turns the last run left due, run by one worker (`activation worker`)."""
        env = flows.app_env(self.redis_url, self.prefix, worker=False, resend_url=self.resend_url)
        started = time.monotonic()
        with flows.in_process_worker(env) as worker:
            self.drained_jobs += worker.drain(max_rounds=100_000)
        self.drain_s += time.monotonic() - started

    def report_drain(self, report: Report, label: str) -> None:
        notes = f"left due by the intake runs above; drained by one worker in {self.drain_s:.1f} s"
        rate = self.drained_jobs / max(self.drain_s, 1e-9)
        extra = {"drain_s": self.drain_s, "jobs_per_s": rate}
        name = "turns left due by the intake load" + label
        report.add(Figure(name, self.drained_jobs, "jobs", notes=notes, extra=extra))

    def webhooks(self, count: int) -> list[str]:
        tag = uuid.uuid4().hex[:8]
        self.users = [f"user_{tag}{i:019d}" for i in range(count)]
        return load.signed_lines(self.users)

    def actions(self, batch: int) -> Callable[[int], list[str]]:
        users = self.users or [f"user_{i:027d}" for i in range(1000)]
        return lambda count: load.action_lines(users, count, batch, "project_created")

    def bare(self, path: str, lines: Callable[[int], list[str]], workers: int) -> LoadResult:
        """The limit: the same requests to bench/bare.py (repeats are fine there)."""
        return self.run("bench.bare:app", path, lines, workers=workers, unique=False)


def report_load(
    report: Report, name: str, app: LoadResult, bare: LoadResult, *, per: int = 1,
    share: float | None = TARGET_SHARE,
) -> Figure:  # fmt: skip
    """App vs bare endpoint: rate, latency under load, and server CPU per request."""
    unit = "req/s" if per == 1 else "actions/s"
    cpu_ratio = bare.cpu_us / app.cpu_us if app.cpu_us else 0.0
    notes = (
        f"p50/p99 {app.p50_ms:.1f}/{app.p99_ms:.1f} ms (bare {bare.p50_ms:.1f}/{bare.p99_ms:.1f});"
        f" CPU {app.cpu_us:.0f} us/req (bare {bare.cpu_us:.0f}; ratio {cpu_ratio:.2f})"
    )
    extra = {
        "p50_ms": app.p50_ms, "p99_ms": app.p99_ms, "bare_p50_ms": bare.p50_ms,
        "bare_p99_ms": bare.p99_ms, "cpu_us_per_request": app.cpu_us,
        "bare_cpu_us_per_request": bare.cpu_us, "cpu_ratio": cpu_ratio, "requests": app.requests,
    }  # fmt: skip
    limit_name = "req/s bare endpoint" if per == 1 else f"actions/s (bare req/s x {per})"
    figure = Figure(name, app.per_s * per, unit, bare.per_s * per, limit_name,
                    notes=notes, extra=extra)  # fmt: skip
    return report.against(figure, share)


def intake(report: Report, loads: Intake, label: str, *, full: bool = True) -> dict[str, Figure]:
    """Webhooks (1 and 2 workers, worker in-process or not) and actions, each beside bare."""
    print(f"intake{label}: wrk -t1 -c{load.CONNECTIONS}, {MEASURE_S:g} s per run", flush=True)
    figures: dict[str, Figure] = {}
    for workers in (1, 2) if full else (1,):
        bare = loads.bare("/webhooks/clerk", loads.webhooks, workers)
        app = loads.run(
            "app.main:app", "/webhooks/clerk", loads.webhooks, env=loads.env(), workers=workers
        )
        name = f"webhook user.created, {workers} worker(s)"
        figures[name] = report_load(report, name + label, app, bare)
        if workers == 1 and full:
            off = loads.run(
                "app.main:app", "/webhooks/clerk", loads.webhooks, env=loads.env(worker=False)
            )
            name = "  same, WORKER_IN_PROCESS=false"
            figures[name] = report_load(report, name + label, off, bare)
    for batch in (1, 100):
        lines = loads.actions(batch)
        bare = loads.bare("/v1/actions", lines, 1)
        app = loads.run("app.main:app", "/v1/actions", lines, env=loads.env())
        name = f"actions, {batch} per request"
        figures[name] = report_load(report, name + label, app, bare, per=batch, share=None)
    return figures


# --- Redis cost --------------------------------------------------------------------------------

COST_N = 50


def measure_costs(
    report: Report, redis_url: str, resend_url: str, prefix: str, label: str
) -> dict[str, float]:
    """Commands and round trips per operation, from MONITOR (and INFO commandstats)."""
    env = flows.app_env(redis_url, prefix, worker=False, resend_url=resend_url)
    with procs.uvicorn("app.main:app", env) as (url, _):
        windows = flows.costs(redis_url, url, env, uuid.uuid4().hex[:8], COST_N)
    per = {name: cost.per(COST_N) for name, cost in windows.items()}
    per[SENT_EMAIL] = {
        k: per["watched action"][k] + per[WELCOME_TURN][k] for k in per["watched action"]
    }
    per[f"action, in a batch of {COST_N}"] = per.pop("batch of n actions")
    for name, values in per.items():
        notes = f"{values['round_trips']:.2f} round trips"
        extra = {"round_trips": values["round_trips"]}
        figure = Figure(f"cost: {name}{label}", values["commands"], "commands", notes=notes,
                        extra=extra)  # fmt: skip
        report.at_most(figure, COST_CEILINGS.get(name))
    report.notes[f"commands by type{label}"] = {k: dict(w.by_command) for k, w in windows.items()}
    return {name: values["commands"] for name, values in per.items()}


HANDSHAKE = ("hello", "client")  # a new connection's setup, not a poll


def idle_poll_cost(report: Report, redis_url: str) -> float:
    """The worker's own loop, idle with WORKER_IDLE_S=1 for 10 s: commands per poll."""
    env = flows.app_env(redis_url, "idlepoll:", worker=False)
    with flows.in_process_worker(env, worker_idle_s=1) as worker, Monitor(redis_url) as monitor:
        worker.run_for(10)
    cost = monitor.cost()
    polls = cost.by_command["zrange"]  # an idle look at the schedule is one ZRANGE
    setup = sum(cost.by_command[name] for name in HANDSHAKE)
    per_poll = (cost.commands - setup) / max(polls, 1)
    notes = f"{polls} polls in 10 s; {dict(cost.by_command)}"
    report.add(Figure("cost: idle poll, WORKER_IDLE_S=1", per_poll, "commands/poll", notes=notes))
    return per_poll


def per_month_figure(name: str, commands: float, notes: str) -> Figure:
    return Figure(
        name, commands, "commands/month", IDLE_TARGET_PER_MONTH, "commands/month target",
        "<= target", commands / IDLE_TARGET_PER_MONTH, commands <= IDLE_TARGET_PER_MONTH, notes,
    )  # fmt: skip


class IdleWorkers:
    """Two `activation worker` processes, idle on redis-servers of their own for the whole run:
    one at the default WORKER_IDLE_S=120, one at 31 s (its polls cost what a 120 s poll costs,
    and there are four times as many to count)."""

    IDLE_S = (DEFAULT_IDLE_S, 31)

    def __init__(self, urls: list[str]) -> None:
        self.clients = [redis.Redis.from_url(url, decode_responses=True) for url in urls]
        self.before = [command_calls(c) for c in self.clients]
        self.started = time.monotonic()

    def report(self, report: Report) -> float:
        """Both workers' figures; returns the commands a month of the per-poll extrapolation."""
        elapsed_s = time.monotonic() - self.started
        pairs = zip(self.clients, self.before, strict=True)
        (direct, direct_polls), (short, short_polls) = [self._delta(c, b) for c, b in pairs]
        notes = f"{direct_polls} polls in {elapsed_s:.0f} s (few: coarse)"
        report.add(per_month_figure(
            "idle worker, WORKER_IDLE_S=120, measured", direct / elapsed_s * MONTH_S, notes
        ))  # fmt: skip
        per_poll = short / max(short_polls, 1)
        month = per_poll * MONTH_S / DEFAULT_IDLE_S
        notes = (
            f"{per_poll:.2f} commands/poll ({short_polls} polls at 31 s in {elapsed_s:.0f} s)"
            f" x {MONTH_S // DEFAULT_IDLE_S:,} polls/month at 120 s"
        )
        report.add(
            per_month_figure("idle worker, WORKER_IDLE_S=120, per-poll x polls", month, notes)
        )
        return month

    @staticmethod
    def _delta(client: redis.Redis, before: Counter[str]) -> tuple[int, int]:
        delta = command_calls(client) - before
        return sum(delta.values()), delta["zrange"]  # an idle look is one ZRANGE


@contextmanager
def idle_workers(workdir: Path) -> Iterator[IdleWorkers]:
    with ExitStack() as stack:
        urls = [stack.enter_context(procs.redis_server(workdir)) for _ in IdleWorkers.IDLE_S]
        for url, idle_s in zip(urls, IdleWorkers.IDLE_S, strict=True):
            env = flows.app_env(url, "idle:", worker=False) | {"WORKER_IDLE_S": str(idle_s)}
            stack.enter_context(procs.python_process("app.cli", env, "worker"))
        time.sleep(3)  # started and past their first poll: the window holds idle polls only
        yield IdleWorkers(urls)


def monthly_bill(report: Report, costs: dict[str, float], idle_month: float) -> None:
    """Assumptions: each signup does 3 actions (the first one triggers the welcome; the other two
    are ones no loop is waiting on at that count) and gets 2 emails (the welcome, then the tips 2
    days later: a turn that decides and sends)."""
    per_signup = (
        costs["user.created"]
        + costs["signup's turn"]
        + costs[SENT_EMAIL]
        + 2 * costs["unwatched action"]
        + costs["turn: tips decided and sent, 2 days on"]
    )
    # at most one flush of the action sightings per SIGHTINGS_FLUSH_S, when actions came since
    flushes = MONTH_S / SIGHTINGS_FLUSH_S * costs["action-health flush, 3 names"]
    commands = SIGNUPS_PER_MONTH * per_signup + idle_month + flushes
    report.add(Figure("commands per signup (3 actions, 2 emails)", per_signup, "commands"))
    notes = f"10k signups, one idle worker, {flushes:,.0f} for action-health flushes (at most)"
    month = Figure("commands a month at 10k signups", commands, "commands/month", notes=notes)
    report.at_most(month, MONTH_CEILING)
    notes = f"{commands:,.0f} commands/month incl. one idle worker and flushes; $0.20 per 100k"
    usd = commands / 100_000 * USD_PER_100K_COMMANDS
    report.add(Figure("Upstash bill at 10k signups/month", usd, "USD/month", notes=notes))
    report.notes["bill assumptions"] = monthly_bill.__doc__


# --- delivery ------------------------------------------------------------------------------------


@contextmanager
def resend_standin(*limit_per_s: str) -> Iterator[str]:
    port = procs.free_port()
    with procs.python_process("bench.resend_server", {}, str(port), *limit_per_s):
        url = f"http://127.0.0.1:{port}"
        procs.wait_until(lambda: procs.answers(f"{url}/health"), "the Resend stand-in")
        yield url


def email_lines(count: int) -> list[str]:
    headers = {"authorization": f"Bearer {flows.RESEND_KEY}", "content-type": "application/json"}
    body = {
        "from": "Bench <bench@example.org>",
        "to": ["ada@example.org"],
        "subject": "Welcome",
        "html": "<p>Hi Ada</p>",
        "text": "Hi Ada",
        "headers": {"X-Entity-Ref-ID": "x"},
        "tags": [{"name": "loop", "value": "activation"}],
    }
    lines = []
    for _ in range(count):
        key = {"idempotency-key": f"bench-{uuid.uuid4().hex}"}
        lines.append(
            "\t".join([*(f"{k}: {v}" for k, v in (headers | key).items()), json.dumps(body)])
        )
    return lines


def delivery(report: Report, redis_url: str, resend_url: str, workdir: Path) -> None:
    print("delivery: in-process worker, Resend stand-in, RESEND_RATE_LIMIT_PER_S=0", flush=True)
    env = flows.app_env(redis_url, "delivery:", worker=True, resend_url=resend_url)
    with procs.uvicorn("app.main:app", env) as (url, _):
        latency = flows.delivery_latency(url, resend_url, uuid.uuid4().hex[:8], 200, 20)
        rate, sent = flows.delivery_rate(url, resend_url, uuid.uuid4().hex[:8], 500)
    values = sorted(latency.values())
    p50, p99 = statistics.median(values), values[max(int(len(values) * 0.99) - 1, 0)]
    notes = f"{len(values)}/200 sent; from the action's 202 to the stand-in's received_at_ms"
    report.add(Figure("action-to-send latency p50", p50, "ms", notes=notes))
    report.add(Figure("action-to-send latency p99", p99, "ms", extra={"samples": len(values)}))
    alone = {}
    for connections in (load.CONNECTIONS, 1):
        lines = email_lines(40_000)
        alone[connections] = load.wrk(
            resend_url, "/emails", lines, workdir / "e.txt", 4, connections
        )
    notes = f"{sent}/500 sent; stand-in alone on 1 connection: {alone[1].per_s:,.0f} emails/s"
    limit_name = f"emails/s stand-in alone ({load.CONNECTIONS} connections)"
    figure = Figure("emails/s sustained, 500 due at once", rate, "emails/s",
                    alone[load.CONNECTIONS].per_s, limit_name, notes=notes)  # fmt: skip
    report.against(figure)
    pacing(report, redis_url)
    backlog(report, redis_url)


PACING_ROUNDS = 4
PACING_EMAILS = 1000


def pacing(report: Report, redis_url: str) -> None:
    """PACING_EMAILS due at once, plain and with FREQUENCY_CAP and QUIET_HOURS set (none held:
    the cap far above one email per user, the quiet hours away from now), in PACING_ROUNDS pairs
    taken in turn, which goes first alternating, each on a fresh app process and a fresh Resend
    stand-in (one shared, the later run of a pair met a fuller inbox and ran up to 25 % slower,
    whichever it was): the median rate with them against the median without, and the app
    process's CPU per email (intake of the actions included), the steadier figure. Redis commands
    per email are unchanged (tests/test_costs.py runs the cost table both ways)."""
    hour = time.gmtime().tm_hour
    quiet = f"{(hour + 6) % 24:02d}:00-{(hour + 7) % 24:02d}:00"
    print(f"pacing: FREQUENCY_CAP=100/1d,200/7d QUIET_HOURS={quiet}, paired", flush=True)
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for round_ in range(PACING_ROUNDS):
        for paced in (False, True) if round_ % 2 == 0 else (True, False):
            env = {"FREQUENCY_CAP": "100/1d,200/7d", "QUIET_HOURS": quiet} if paced else {}
            runs[paced].append(pacing_run(redis_url, f"pacing{round_}{paced:d}:", env))
    rate = {paced: statistics.median(r for r, _ in runs[paced]) for paced in runs}
    cpu_us = {paced: statistics.median(c for _, c in runs[paced]) for paced in runs}
    pairs = ", ".join(f"{on[0]:,.0f}/{off[0]:,.0f}"
                      for off, on in zip(runs[False], runs[True], strict=True))  # fmt: skip
    notes = (
        f"median of {PACING_ROUNDS} pairs of {PACING_EMAILS:,} emails (with/without: {pairs}); "
        f"app CPU per email {cpu_us[True]:.0f} us with them, {cpu_us[False]:.0f} us without; "
        "every email checked against the cap and quiet hours, none held"
    )
    extra = {"cpu_us_per_email": cpu_us[True], "plain_cpu_us_per_email": cpu_us[False]}
    report.against(Figure("emails/s sustained, cap and quiet hours on", rate[True], "emails/s",
                          rate[False], "emails/s without them (same run)", notes=notes,
                          extra=extra))  # fmt: skip


def pacing_run(redis_url: str, prefix: str, settings: dict[str, str]) -> tuple[float, float]:
    """(emails/s, the app process's CPU µs per email) of one all-at-once delivery."""
    with resend_standin() as resend_url:
        env = flows.app_env(redis_url, prefix, worker=True, resend_url=resend_url) | settings
        with procs.uvicorn("app.main:app", env) as (url, pid):
            cpu_before_s = procs.cpu_s(pid)
            rate, sent = flows.delivery_rate(url, resend_url, uuid.uuid4().hex[:8], PACING_EMAILS)
            cpu_s = procs.cpu_s(pid) - cpu_before_s
    if sent != PACING_EMAILS:
        raise RuntimeError(f"pacing: {sent}/{PACING_EMAILS} emails arrived")
    return rate, cpu_s / sent * 1e6


BACKLOG = 300
TEAM_LIMIT_PER_S = 5


def backlog(report: Report, redis_url: str) -> None:
    """A launch day's backlog: BACKLOG welcomes due at once, against a Resend stand-in that holds
    the team to its default 5 requests a second (429s past it, `ratelimit-*` headers), the app at
    RESEND_RATE_LIMIT_PER_S=5. One email per request, the floor would be BACKLOG / 5 seconds; the
    worker sends them in batches of up to 100 (`POST /emails/batch`)."""
    print(f"backlog: {BACKLOG} due at once, Resend limited to {TEAM_LIMIT_PER_S}/s", flush=True)
    with resend_standin(str(TEAM_LIMIT_PER_S)) as resend_url:
        env = flows.app_env(redis_url, "backlog:", worker=True, resend_url=resend_url)
        env["RESEND_RATE_LIMIT_PER_S"] = str(TEAM_LIMIT_PER_S)
        with procs.uvicorn("app.main:app", env) as (url, _):
            drain_s, sent = flows.backlog_drain(url, resend_url, uuid.uuid4().hex[:8], BACKLOG)
            sizes = flows.batch_sizes(resend_url)
    floor_s = BACKLOG / TEAM_LIMIT_PER_S
    notes = (
        f"{sent}/{BACKLOG} sent, from the last action's 202 to the last email's arrival, in "
        f"{len(sizes)} batch requests (sizes {sizes}); one email per request, the floor at "
        f"{TEAM_LIMIT_PER_S} req/s would be {floor_s:.0f} s"
    )
    report.add(Figure(f"backlog of {BACKLOG} at {TEAM_LIMIT_PER_S} req/s, drained in",
                      drain_s, "s", floor_s, "s at one email per request",
                      notes=notes))  # fmt: skip


# --- scale -------------------------------------------------------------------------------------


def stored_users(redis_url: str, resend_url: str, prefix: str) -> list[str]:
    """Template users through the real flow: signup, 10 actions with ids, the welcome sent."""
    env = flows.app_env(redis_url, prefix, worker=True, resend_url=resend_url)
    users = [f"user_template{i:019d}" for i in range(4)]
    with procs.uvicorn("app.main:app", env) as (url, _), httpx.Client(base_url=url) as http:
        flows.signup(http, users)
        flows.act(http, users, "first_project_created")
        for _ in range(ACTIONS_PER_USER - 1):
            flows.act(http, users, "project_created")
        flows.wait_for_emails(resend_url, users, timeout_s=30)
        time.sleep(1)  # the last turns settle
    return users


def scale(
    report: Report,
    redis_url: str,
    resend_url: str,
    workdir: Path,
    empty: dict[str, Figure],
    empty_costs: dict[str, float],
) -> None:
    prefix = "scale:"
    keys = Keys(prefix)
    client = redis.Redis.from_url(redis_url)
    started = time.monotonic()
    templates = stored_users(redis_url, resend_url, prefix)
    seed.clone_users(client, keys, templates, SCALE_USERS)
    took = time.monotonic() - started
    print(
        f"scale: {SCALE_USERS:,} users, {SCALE_USERS * ACTIONS_PER_USER:,} actions stored in "
        f"{took:.0f} s; used_memory {client.info('memory')['used_memory_human']}",
        flush=True,
    )
    sample = list(range(0, SCALE_USERS, SCALE_USERS // 100))
    memory = seed.memory_per_user(client, keys, templates, sample)
    report.notes["memory"] = memory
    notes = (
        f"MEMORY USAGE of {memory['keys_per_user']} key(s) x {len(sample)} users,"
        f" {memory['bytes_per_user_keys']:.0f} B, + {memory['bytes_per_schedule_entry']:.0f} B"
        " of the schedule (a turn each)"
    )
    kib = (memory["bytes_per_user_keys"] + memory["bytes_per_schedule_entry"]) / 1024
    name = "Redis memory per user (10 actions, welcome sent)"
    report.at_most(Figure(name, kib, "KiB", notes=notes), MEMORY_CEILING_KIB)
    intake_at_scale = Intake(redis_url, resend_url, workdir, prefix)
    intake_at_scale.users = [seed.clone_id(i) for i in range(0, SCALE_USERS, 7)]
    for name, figure in intake(report, intake_at_scale, " @100k users", full=False).items():
        figure.extra["vs_empty_store"] = figure.value / empty[name].value
        figure.notes += f"; vs empty store {figure.extra['vs_empty_store']:.2f}"
    intake_at_scale.report_drain(report, " @100k users")
    costs = measure_costs(report, redis_url, resend_url, prefix, " @100k users")
    grown = {n: costs[n] - empty_costs[n] for n in costs if abs(costs[n] - empty_costs[n]) > 0.05}
    report.notes["cost growth with 100k users (commands)"] = grown
    print(f"  cost growth with data: {grown or 'none'}", flush=True)


# issue 21's bars for the command line, in seconds
STARTUP_CEILINGS = {
    "activation --help": 0.3,
    "activation check": 1.0,
    "activation worker ready": 2.0,
}
SOAK_USERS = 600 if QUICK else 3000
SOAK_SECONDS = 20 if QUICK else 60


def cli_startup(report: Report, redis_url: str, workdir: Path) -> None:
    """The command line's start, each as a whole process (`bench.startup`)."""
    env = startup.clean_env()
    times = {
        "activation --help": startup.command_s("--help", env=env),
        "activation check": startup.command_s("check", str(procs.ROOT / "loops"), env=env),
        "activation worker ready": startup.worker_ready_s(redis_url, workdir),
    }
    for name, seconds in times.items():
        figure = Figure(name, seconds, "s", notes=f"median of {startup.RUNS} runs")
        report.at_most(figure, STARTUP_CEILINGS[name])


def soak(report: Report) -> None:
    """One run of the checker that hunts for doubles (`tests.soak`): the web process and two
    workers under the nemesis; its counts beside the table, its violations a figure (target 0)."""
    args = ["--users", str(SOAK_USERS), "--seconds", str(SOAK_SECONDS), "--json"]
    result = subprocess.run([sys.executable, "-m", "tests.soak", *args], cwd=procs.ROOT,
                            capture_output=True, text=True, timeout=1200, check=False)  # fmt: skip
    outcome = json.loads(result.stdout)
    violations = sum(outcome["violations"].values()) + len(outcome["exited"])
    faults = sum(outcome["faults"].values())
    notes = (f"{outcome['users']:,} users, {outcome['emails_delivered']:,} emails, {faults} faults "
             f"in {SOAK_SECONDS} s")  # fmt: skip
    report.at_most(Figure("soak: violations (doubles, missing, after a stop)", violations,
                          "violations", notes=notes), 0)  # fmt: skip
    report.notes["soak"] = {key: outcome[key] for key in (
        "users", "stopped_users", "emails_delivered", "emails_by_kind", "faults", "violations",
        "excused", "exited", "seconds")}  # fmt: skip


def main() -> None:
    missing = [tool for tool in ("wrk", "redis-server") if shutil.which(tool) is None]
    if missing:  # said before anything starts, not as a traceback minutes in
        needs = " and ".join(missing)
        sys.exit(f"make bench needs {needs} on PATH (apt-get install -y wrk redis-server)")
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="activation-bench-"))
    report = Report()
    with ExitStack() as stack:
        redis_url = stack.enter_context(procs.redis_server(workdir))
        idle = stack.enter_context(idle_workers(workdir))
        resend_url = stack.enter_context(resend_standin())
        loads = Intake(redis_url, resend_url, workdir, "bench:")
        empty = intake(report, loads, "")
        loads.report_drain(report, "")
        print("Redis cost per operation (MONITOR; INFO commandstats agrees)", flush=True)
        costs = measure_costs(report, redis_url, resend_url, "cost:", "")
        idle_poll_cost(report, redis_url)
        delivery(report, redis_url, resend_url, workdir)
        scale(report, redis_url, resend_url, workdir, empty, costs)
        monthly_bill(report, costs, idle.report(report))
        cli_startup(report, redis_url, workdir)
    print("soak (tests.soak: the web process, two workers, the nemesis)", flush=True)
    soak(report)
    report.notes["took_s"] = round(time.monotonic() - started)
    report.notes["load generator"] = f"wrk -t1 -c{load.CONNECTIONS}, {MEASURE_S:g} s per run"
    print()
    print(report.table())
    report.write(RESULTS)
    print(f"\nwrote {RESULTS.relative_to(procs.ROOT)} in {report.notes['took_s']} s")


if __name__ == "__main__":
    main()
