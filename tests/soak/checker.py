"""The checker: the stand-in's ledger (every email Resend accepted; replays of a key are not new
deliveries) against the workload's history (what was sent and acknowledged, when). A logical
email is (user, loop, step, kind), as the email's tags say; the shipped loops have five: welcome
(activation/0/action), nudge (activation/0/timeout), tips (activation/1/action, 2 days after
step 0: never in a run), ten_projects and upgraded (the milestones' step 0).

Words: an op is *attempted* once its first request was sent, *acknowledged* at its first 2xx
answer. A user is *stopped* once any stopper (complaint, hard bounce, unsubscribe POST,
`user.deleted`) was attempted; their *stop time* is the first acknowledgement of one that left
them stopped (a Resend event answered anything but "unknown"). T is the nudge timeout, counted
from the signup; *end* is when the ledger was last read, after the settle.

Violations, by type:

- double: a logical email accepted more than once (distinct deliveries, whatever their keys).
- after_stop: an email whose request arrived at the stand-in more than `SLACK_MS` after the
  user's stop time. Excused, and counted apart: one that arrived within `SLACK_MS` after a
  frozen worker was thawed when the stop came while it was frozen (or within `SLACK_MS` before):
  a request that had passed its last look at the user before the freeze (`on_its_way`).
- missing: for a user whose signup was acknowledged and who is not stopped,
  - the welcome, if `first_project_created` was acknowledged before signup sent + T - 1 s;
  - the nudge, if `first_project_created` was never attempted and signup acked + T falls before
    end - `GRACE_MS`;
  - the welcome or the nudge, if `first_project_created` was attempted but not acknowledged in
    time (late, or never answered) and signup acked + T falls before end - `GRACE_MS`;
  - ten_projects, if 10 `project_created` were acknowledged;
  - upgraded, if a `plan_changed` to pro or team was acknowledged.
  Stopped users are exempt: whether an email was due before the stop took effect is not known
  exactly, and `after_stop` covers them.
- unexpected: an email no rule allows: to someone the workload never signed up, or to another
  address than theirs; a welcome without `first_project_created` attempted; a nudge where the
  welcome is required; both the welcome and the nudge; tips; ten_projects with fewer than 10
  `project_created` attempted; upgraded without a pro or team `plan_changed` attempted; an email
  of another loop.

With a frequency cap (`--cap`, `Cap`: rules of N emails per window W, and the loops whose emails
neither count nor wait), the service's own ledger is read from Redis after the settle (`jobs`)
and these rules apply too:

- over_cap: per user, the deliveries of capped loops (each one the stand-in accepted; replays of a
  key are not deliveries), for each rule N per W:
  - by the service's ledger: N+1 of them whose first attempts began (`first_attempt_at` in the
    user's hash) less than W apart. Exact, no slack: the cap counts an email from its first
    attempt's start (it may reach Resend from then on), and the service decides on these very
    numbers, on its one clock. A delivery whose job keeps no first attempt is placed at its
    arrival. Users without a ledger (deleted: only the tombstone is left) are skipped.
  - by arrival: N+1 of them arriving less than W - `SLACK_MS` apart (a request trails its
    attempt's start by the event loop's lag). Excused, and counted apart (`CAP_EXCUSED`): those
    whose first attempts the ledger places W apart or more (the earlier one's accepted request
    trailed its first attempt: retried after a fault, its worker frozen or killed, its batch
    sent at the end of a claim; the cap counts from the attempt's start, as documented), and,
    for a user without a ledger, those of which one arrived within `SLACK_MS` after a frozen
    worker was thawed (a request on its way, as for `after_stop`).
  - by both: a delivery that arrived more than `CLOCK_MS` before the first attempt its job
    says it began with: the ledger would count it from too late, so the exact rule could not be
    trusted.
- missing, with the cap: an email due and never delivered is not missing when its job in the
  user's ledger is held for the cap until later than end - `GRACE_MS`, the hold ending exactly
  one window after an email the ledger counts (a hold the cap explains), or dropped for the cap
  (it could only have gone past its step's `measure`) when the cap was full: N of the user's
  other capped emails counted within W before the drop. An email of a `cap: false` loop is never
  excused; one held past its end, or held or dropped when the ledger shows no reason, is missing.
- held_uncapped: a `cap: false` loop whose `held:cap` counter is not 0.
"""

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.soak.history import STOPPERS, History, Op
from tests.soak.jobs import Job
from tests.soak.ledger import Delivery

# A stop is judged by when the email's request arrived at the stand-in. What may rightly arrive
# after the stop's acknowledgement is a request that had passed the sender's last look at the
# user before the stop was written: one request on a loopback connection (milliseconds) plus the
# event-loop and scheduling lag of a loaded 2-core machine. Each run prints how long the web
# process took to answer the workload ("web answers", the same kind of lag): a p99 under 0.2 s
# and a maximum under 0.6 s in runs of 6,000-18,000 users beside another test suite. 1 s covers
# it; a batch retried or re-sent seconds later without a fresh look is still caught.
SLACK_MS = 1_000
# A nudge falls due when its timeout passes and goes out at the worker's next look (WORKER_IDLE_S
# is 1 s), in one request: 5 s is ample once the faults are off (the settle).
GRACE_MS = 5_000
# The service keeps Redis's clock (same host, advanced by the monotonic clock): within
# milliseconds of this one. An action acknowledged 1 s before its deadline was in time.
IN_TIME_MS = 1_000
# The service's clock is Redis's (same host), read at a process's start and advanced by the
# monotonic clock: it can only lag this host's clock by the read's round trip (milliseconds), so
# an attempt's recorded start is never later than its request's arrival by more than this.
CLOCK_MS = 100
PAID_PLANS = ("pro", "team")
PROJECTS = 10
EXAMPLES = 3
EXCUSED = "after_stop_across_a_freeze"
CAP_EXCUSED = "over_cap_by_arrival_explained"
EXCUSES = (EXCUSED, CAP_EXCUSED)
# How the service says why a job was dropped for the cap (`delivery.holding.dropped_reason`), and
# the reason a job held for it keeps (`engine.holds.HoldReason.CAP`).
CAP_DROP = "the frequency cap would hold it"
CAP_HOLD = "cap"
UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
RULE = re.compile(r"\s*([1-9][0-9]*)\s*/\s*([0-9]+)([smhdw])\s*")


@dataclass(frozen=True)
class Cap:
    """FREQUENCY_CAP as the run set it: (emails, window ms) rules, every one held at once, and
    the loops whose emails neither count nor wait (`cap: false`)."""

    rules: tuple[tuple[int, int], ...]
    uncapped: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str, uncapped: Iterable[str] = ()) -> "Cap":
        """`"1/20s"`, `"2/10s,3/1m"`; ValueError for anything else."""
        rules = []
        for part in text.split(","):
            match = RULE.fullmatch(part)
            if match is None or int(match[2]) == 0:
                raise ValueError(f"{part!r} is not a cap rule like 1/20s")
            rules.append((int(match[1]), int(match[2]) * UNIT_MS[match[3]]))
        return cls(tuple(rules), frozenset(uncapped))

    @property
    def longest_ms(self) -> int:
        return max(window_ms for _, window_ms in self.rules)

    def capped(self, loop: str) -> bool:
        return loop not in self.uncapped

    def full(self, times: Iterable[int], at_ms: int) -> bool:
        """Whether one more email at `at_ms` would pass a rule, `times` those counted then."""
        times = list(times)
        return any(
            sum(at_ms - window_ms < t <= at_ms for t in times) >= emails
            for emails, window_ms in self.rules
        )


@dataclass(frozen=True, slots=True)
class Violation:
    type: str
    user: str
    email: str
    detail: str
    keys: tuple[str | None, ...] = ()
    times_ms: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "user": self.user,
            "email": self.email,
            "detail": self.detail,
            "keys": list(self.keys),
            "times_ms": list(self.times_ms),
        }


@dataclass
class Verdict:
    """The counts and the violations of one run."""

    users: int
    stopped_users: int
    deliveries: int
    by_kind: dict[str, int]
    ops: dict[str, dict[str, int]]
    violations: list[Violation] = field(default_factory=list)
    excused: list[Violation] = field(default_factory=list)  # types EXCUSES: not violations
    cap: dict[str, Any] = field(default_factory=dict)  # with a cap: what the ledger shows

    @property
    def excused_by_type(self) -> dict[str, int]:
        return dict(Counter(excuse.type for excuse in self.excused))

    @property
    def by_type(self) -> dict[str, int]:
        return dict(Counter(violation.type for violation in self.violations))

    def examples(self, limit: int = EXAMPLES) -> dict[str, list[Violation]]:
        found: dict[str, list[Violation]] = defaultdict(list)
        for violation in self.violations:
            if len(found[violation.type]) < limit:
                found[violation.type].append(violation)
        return dict(found)


@dataclass
class Facts:
    """What one user's ops say."""

    user: str
    address: str | None
    nudge_ms: int
    signup: Op | None = None
    first: Op | None = None
    projects_sent: int = 0
    projects_acked: int = 0
    paid_sent: bool = False
    paid_acked: bool = False
    stopped: bool = False
    stop_ms: int | None = None

    @classmethod
    def of(cls, user: str, ops: Iterable[Op], address: str | None, nudge_ms: int) -> "Facts":
        facts = cls(user, address, nudge_ms)
        for op in ops:
            facts.add(op)
        return facts

    def add(self, op: Op) -> None:
        if op.kind == "signup":
            self.signup = op
        elif op.kind in STOPPERS:
            self.add_stopper(op)
        elif op.name == "first_project_created":
            self.first = op
        elif op.name == "project_created":
            self.projects_sent += 1
            self.projects_acked += op.acked
        elif op.name == "plan_changed" and op.plan in PAID_PLANS:
            self.paid_sent = True
            self.paid_acked = self.paid_acked or op.acked

    def add_stopper(self, op: Op) -> None:
        self.stopped = True
        if op.stops and op.acked_ms is not None:
            self.stop_ms = min(op.acked_ms, self.stop_ms or op.acked_ms)

    @property
    def welcome_required(self) -> bool:
        """`first_project_created` acknowledged in time: the welcome, never the nudge."""
        first, signup = self.first, self.signup
        if first is None or first.acked_ms is None or signup is None:
            return False
        return first.acked_ms <= signup.sent_ms + self.nudge_ms - IN_TIME_MS


@dataclass(frozen=True)
class Timing:
    """What the rules need of the run: the nudge's timeout, the end of the settle, when
    workers were frozen (frozen, thawed), all in ms (epoch ms for times), and the cap if any."""

    nudge_ms: int
    end_ms: int
    freezes: tuple[tuple[int, int], ...] = ()
    cap: Cap | None = None


Jobs = Mapping[str, Job]  # one user's jobs in the service's ledger, by email name


@dataclass(frozen=True)
class Service:
    """The service's own ledger, read after the settle (`jobs`): each user's jobs (users
    without any left out), and each loop's `held:<why>` counters."""

    jobs: Mapping[str, Jobs] = field(default_factory=dict)
    holds: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


def check(
    deliveries: Iterable[Delivery],
    history: History,
    timing: Timing,
    service: Service | None = None,
) -> Verdict:
    """Every violation of the rules in the module docstring (and the excused emails)."""
    deliveries = list(deliveries)
    service = service or Service()
    mine: dict[str, list[Delivery]] = defaultdict(list)
    for delivery in deliveries:
        mine[delivery.user].append(delivery)
    ops = history.by_user()
    found: list[Violation] = []
    facts_of = {}
    for user in sorted(set(ops) | set(mine)):
        facts = Facts.of(user, ops.get(user, []), history.addresses.get(user), timing.nudge_ms)
        facts_of[user] = facts
        found += user_violations(facts, mine.get(user, []), timing, service.jobs.get(user))
    if timing.cap is not None:
        found += held_uncapped(timing.cap, service.holds)
    return Verdict(
        users=sum(bool(f.signup and f.signup.acked) for f in facts_of.values()),
        stopped_users=sum(f.stopped for f in facts_of.values()),
        deliveries=len(deliveries),
        by_kind=dict(Counter(delivery.name for delivery in deliveries)),
        ops=history.counts(),
        violations=[v for v in found if v.type not in EXCUSES],
        excused=[v for v in found if v.type in EXCUSES],
        cap={} if timing.cap is None else cap_figures(timing, service, deliveries),
    )


def user_violations(
    facts: Facts, deliveries: list[Delivery], timing: Timing, jobs: Jobs | None = None
) -> list[Violation]:
    return [
        *doubles(facts, deliveries),
        *after_stop(facts, deliveries, timing.freezes),
        *missing(facts, deliveries, timing, jobs),
        *unexpected(facts, deliveries),
        *over_cap(facts.user, deliveries, timing, jobs),
    ]


def doubles(facts: Facts, deliveries: list[Delivery]) -> Iterator[Violation]:
    copies: dict[tuple[str, str, str, str], list[Delivery]] = defaultdict(list)
    for delivery in deliveries:
        copies[delivery.logical].append(delivery)
    for same in copies.values():
        if len(same) > 1:
            detail = f"accepted {len(same)} times"
            yield violation("double", facts.user, same, detail)


def after_stop(
    facts: Facts, deliveries: list[Delivery], freezes: tuple[tuple[int, int], ...]
) -> Iterator[Violation]:
    stop_ms = facts.stop_ms
    if stop_ms is None:
        return
    for delivery in deliveries:
        late_ms = delivery.arrived_ms - stop_ms
        if late_ms > SLACK_MS:
            detail = f"arrived {late_ms} ms after the stop was acknowledged at {stop_ms}"
            excused = any(on_its_way(stop_ms, delivery, freeze) for freeze in freezes)
            kind = EXCUSED if excused else "after_stop"
            yield violation(kind, facts.user, [delivery], detail)


def on_its_way(stop_ms: int, delivery: Delivery, freeze: tuple[int, int]) -> bool:
    """The stop came during a freeze (or just before it) and the email right after the thaw: a
    request a frozen worker had passed its last look at the user for, which it sends on waking.
    No sender can fence that (Resend knows nothing of the stop); the slack counts from the thaw."""
    frozen_ms, thawed_ms = freeze
    stopped_then = frozen_ms - SLACK_MS <= stop_ms <= thawed_ms
    return stopped_then and thawed_ms <= delivery.arrived_ms <= thawed_ms + SLACK_MS


def missing(
    facts: Facts, deliveries: list[Delivery], timing: Timing, jobs: Jobs | None = None
) -> Iterator[Violation]:
    signup = facts.signup
    if signup is None or signup.acked_ms is None or facts.stopped:
        return
    got = {delivery.name for delivery in deliveries}
    timed_out = signup.acked_ms + facts.nudge_ms <= timing.end_ms - GRACE_MS
    for name, why in due(facts, timed_out):
        names = name.split("|")
        if set(names) & got:
            continue
        if timing.cap is not None and any(
            capped_away(timing.cap, job_name, jobs or {}, timing.end_ms) for job_name in names
        ):
            continue
        detail = f"due ({why}), never delivered{ledger_says(names, jobs)}"
        yield Violation("missing", facts.user, name, detail, times_ms=(signup.acked_ms,))


def capped_away(cap: Cap, name: str, jobs: Jobs, end_ms: int) -> bool:
    """Whether the user's ledger shows the email `name` held for the cap past the end, or
    dropped for it, and the cap explains it (the module docstring's `missing`)."""
    job = jobs.get(name)
    if job is None or not cap.capped(job.loop):
        return False
    others = [other for other in jobs.values() if other is not job and cap.capped(other.loop)]
    if job.status == "queued" and job.held == CAP_HOLD:
        return job.due_at > end_ms - GRACE_MS and any(
            job.due_at - window_ms in (other.first_attempt_at, other.sent_at)
            for other in others
            for _, window_ms in cap.rules
        )
    if job.status == "dropped" and (job.last_error or "").startswith(CAP_DROP):
        at_ms = job.ended_at if job.ended_at is not None else end_ms
        counted = (other.counted_at(at_ms) for other in others)
        return cap.full((t for t in counted if t is not None), at_ms)
    return False


def ledger_says(names: list[str], jobs: Jobs | None) -> str:
    """What the user's ledger says of these emails, for a violation's detail."""
    if jobs is None:
        return ""
    said = []
    for name in names:
        job = jobs.get(name)
        state = "no job" if job is None else f"{job.status}, held {job.held}, due {job.due_at}"
        if job is not None and job.last_error:
            state += f", {job.last_error}"
        said.append(f"{name}: {state}")
    return f"; the ledger: {'; '.join(said)}"


def due(facts: Facts, timed_out: bool) -> Iterator[tuple[str, str]]:
    """The emails the user must have had: (name, or names joined by |; why)."""
    if facts.welcome_required:
        yield "welcome", "first_project_created acknowledged in time"
    elif facts.first is None and timed_out:
        yield "nudge", "no first_project_created and the timeout passed"
    elif timed_out:
        yield "welcome|nudge", "first_project_created late or unanswered, the timeout passed"
    if facts.projects_acked >= PROJECTS:
        yield "ten_projects", f"{facts.projects_acked} project_created acknowledged"
    if facts.paid_acked:
        yield "upgraded", "plan_changed to a paid plan acknowledged"


def unexpected(facts: Facts, deliveries: list[Delivery]) -> Iterator[Violation]:
    names = {delivery.name for delivery in deliveries}
    for delivery in deliveries:
        why = not_allowed(facts, delivery, names)
        if why:
            yield violation("unexpected", facts.user, [delivery], why)


def not_allowed(facts: Facts, delivery: Delivery, names: set[str]) -> str:
    """Why no rule allows this email; empty when one does."""
    if facts.address is None:
        return "not a user of this run"
    if delivery.to != facts.address:
        return f"sent to {delivery.to!r}, not the user's address"
    rules = {
        "welcome": ("" if facts.first else "no first_project_created was sent"),
        "nudge": ("the welcome was due instead" if facts.welcome_required else ""),
        "tips": "tips come 2 days after step 0",
        "ten_projects": (
            "" if facts.projects_sent >= PROJECTS else f"{facts.projects_sent} project_created"
        ),
        "upgraded": ("" if facts.paid_sent else "no plan_changed to a paid plan was sent"),
    }
    if {"welcome", "nudge"} <= names and delivery.name in ("welcome", "nudge"):
        return "both the welcome and the nudge"
    return rules.get(delivery.name, "an email of no loop the soak knows")


def violation(type_: str, user: str, same: list[Delivery], detail: str) -> Violation:
    keys = tuple(delivery.key for delivery in same)
    times = tuple(delivery.arrived_ms for delivery in same)
    return Violation(type_, user, same[0].name, detail, keys, times)


def over_cap(
    user: str, deliveries: list[Delivery], timing: Timing, jobs: Jobs | None
) -> Iterator[Violation]:
    """The module docstring's `over_cap`: by the service's ledger, by arrival, by both."""
    cap = timing.cap
    if cap is None:
        return
    capped = [delivery for delivery in deliveries if cap.capped(delivery.loop)]
    starts: Placed | None = None
    if jobs is not None:
        starts = []
        for delivery in capped:
            job = jobs.get(delivery.name)
            first = job.first_attempt_at if job is not None else None
            starts.append((delivery.arrived_ms if first is None else first, delivery))
            if first is not None and delivery.arrived_ms < first - CLOCK_MS:
                early_ms = first - delivery.arrived_ms
                detail = f"arrived {early_ms} ms before the first attempt its job says it began"
                yield violation("over_cap", user, [delivery], detail)
        for emails, window_ms, group in crowded(starts, cap, 0):
            detail = f"first attempts {spread(group)} ms apart, {rule(emails, window_ms)}"
            keys, times = tuple(d.key for _, d in group), tuple(at for at, _ in group)
            yield Violation("over_cap", user, group[0][1].name, detail, keys, times)
    arrivals = [(delivery.arrived_ms, delivery) for delivery in capped]
    for emails, window_ms, group in crowded(arrivals, cap, SLACK_MS):
        detail = f"arrivals {spread(group)} ms apart, {rule(emails, window_ms)}"
        deliveries_of = [d for _, d in group]
        excuse = arrival_excuse(deliveries_of, window_ms, starts, timing)
        kind = CAP_EXCUSED if excuse else "over_cap"
        yield violation(kind, user, deliveries_of, detail + excuse)


Placed = list[tuple[int, Delivery]]  # deliveries, each at a time (epoch ms)


def crowded(placed: Placed, cap: Cap, slack_ms: int) -> Iterator[tuple[int, int, Placed]]:
    """Each rule (N per W) with N+1 of the deliveries placed less than W - `slack_ms` apart:
    every run of N+1 consecutive ones, in time order, that is."""
    ordered = sorted(placed, key=lambda pair: pair[0])
    for emails, window_ms in cap.rules:
        for i in range(len(ordered) - emails):
            group = ordered[i : i + emails + 1]
            if spread(group) < window_ms - slack_ms:
                yield emails, window_ms, group


def arrival_excuse(
    group: list[Delivery], window_ms: int, starts: Placed | None, timing: Timing
) -> str:
    """Why deliveries arriving too close together break no rule; empty when nothing says so:
    the ledger's first attempts of the same deliveries W apart or more, or (no ledger) one of
    them arriving right after a thaw."""
    if starts is not None:
        same = [pair for pair in starts if any(pair[1] is delivery for delivery in group)]
        apart_ms = spread(same)
        return f"; their first attempts began {apart_ms} ms apart" if apart_ms >= window_ms else ""
    for delivery in group:
        for _, thawed_ms in timing.freezes:
            if thawed_ms <= delivery.arrived_ms <= thawed_ms + SLACK_MS:
                return f"; one arrived {delivery.arrived_ms - thawed_ms} ms after a thaw"
    return ""


def spread(placed: Placed) -> int:
    times = [at for at, _ in placed]
    return max(times) - min(times)


def rule(emails: int, window_ms: int) -> str:
    return f"over the cap of {emails} per {window_ms} ms"


def held_uncapped(cap: Cap, holds: Mapping[str, Mapping[str, int]]) -> Iterator[Violation]:
    """The module docstring's `held_uncapped`."""
    for loop in sorted(cap.uncapped):
        held = holds.get(loop, {}).get(CAP_HOLD, 0)
        if held:
            detail = f"its loop has cap: false, yet its held:cap counter is {held}"
            yield Violation("held_uncapped", "", loop, detail)


def cap_figures(timing: Timing, service: Service, deliveries: list[Delivery]) -> dict[str, Any]:
    """What a run with a cap shows: deliveries of capped loops, the service's held counters,
    jobs dropped for the cap and still held at the end, and how long an accepted request
    trailed its job's first attempt (ms, from the ledger)."""
    assert timing.cap is not None
    jobs = [job for user_jobs in service.jobs.values() for job in user_jobs.values()]
    lags = sorted(
        delivery.arrived_ms - job.first_attempt_at
        for delivery in deliveries
        if (job := service.jobs.get(delivery.user, {}).get(delivery.name)) is not None
        and job.first_attempt_at is not None
    )
    dropped = [job for job in jobs if job.status == "dropped"]
    return {
        "rules": [f"{emails}/{window_ms}ms" for emails, window_ms in timing.cap.rules],
        "uncapped_loops": sorted(timing.cap.uncapped),
        "capped_deliveries": sum(timing.cap.capped(d.loop) for d in deliveries),
        "held_counters": {loop: dict(held) for loop, held in service.holds.items() if held},
        "dropped_for_cap": sum((job.last_error or "").startswith(CAP_DROP) for job in dropped),
        "held_at_end": sum(job.status == "queued" and job.held == CAP_HOLD for job in jobs),
        "users_with_a_ledger": len(service.jobs),
        "arrival_after_first_attempt_ms": percentiles(lags),
    }


def percentiles(ordered: list[int]) -> dict[str, int]:
    if not ordered:
        return {}
    at = {"min": 0.0, "p50": 0.5, "p99": 0.99}
    found = {
        name: ordered[min(int(len(ordered) * part), len(ordered) - 1)] for name, part in at.items()
    }
    return found | {"max": ordered[-1]}
