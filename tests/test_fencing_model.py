"""A stateful property test of the storage scripts under simulated workers and a controllable
clock: hypothesis interleaves claims, renewals, lease expiries, users' turns (decisions and the
attempts they begin), single sends and batches (record, check, request, settle, end), resumed
batches, operators' retries, and what arrives from outside meanwhile (actions that ask for a
turn, suppressions), with a Resend of its own that honours Idempotency-Key as Resend documents it
and fails as Resend may (a 500 before or after accepting, a 429).

After every step it checks what the issue promises:
- no write accepted from a holder that is not current: every fenced script that wrote did so
  with the token of the latest claim of that member not released since (the model's own record
  of claims and releases, not the scripts' check);
- no job sent twice: each email is delivered at most once, however many requests and keys;
- nothing delivered after a suppression was acknowledged before the request's check;
and at the end, with the faults gone and one worker draining, that every email due went out once
unless its user was suppressed first.

The workers run the real code (`Evaluator.plan`, `Delivery`, `BatchSender`, `Batcher`), one
step of one worker at a time; what Resend answers and when a suppression or a clock jump lands
inside a batch's wait for its slot is drawn by hypothesis too.
"""

import asyncio
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from app.delivery.attempts import Lease
from app.delivery.batch import Batcher
from app.delivery.outbox import BatchEmail, Refused
from app.engine.email_jobs import JobStatus, RenderedEmail
from app.engine.job_ids import batch_of, is_batch, is_evaluation
from app.errors import KeyReused, NotSent, TransientSendError
from app.runtime import Runtime, build_runtime
from app.settings import Settings
from app.storage.records import Claim, EmailEvent, NewAction, UserProfile
from app.storage.scripts import Script, ScriptRunner
from tests.conftest import FakeClock
from tests.support.constants import SEC

T = TypeVar("T")
LEASE_MS = 20 * SEC
USERS = ("user_m0", "user_m1", "user_m2")
WORKERS = 3
FENCED = {"apply", "settle", "batch_record", "batch_check", "batch_end", "renew"}


def welcome(user_id: str) -> str:
    return f"email|{user_id}|activation|0|action"


def job_of(tags: Any) -> str:
    """The email job an email is, from the tags it carries (`delivery.send.tags_of`)."""
    tags = dict(tags)
    return f"email|{tags['user']}|{tags['loop']}|{tags['step']}|{tags['kind']}"


# --- a Resend of the model's own -----------------------------------------------------------------


@dataclass
class ModelResend:
    """Idempotency-Key as Resend documents it: the same key and payload answer the first answer,
    another payload 409; only an accepted request keeps its key. `faults`: what the next
    requests do ("ok", "fail" before accepting, "accept_then_fail", "429"); `on_pace`: what
    happens while a request waits for its slot (drawn by the test)."""

    clock: FakeClock
    faults: list[str] = field(default_factory=list)
    on_pace: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    accepted: dict[str, tuple[Any, list[str]]] = field(default_factory=dict)
    delivered: dict[str, list[int]] = field(default_factory=dict)  # job id -> ticks
    requests: int = 0
    tick: Callable[[], int] = lambda: 0

    async def pace(self, max_wait_s: float = 0.0) -> float:
        if self.on_pace:
            await self.on_pace.pop(0)()
            return 1.0  # it waited: what comes now is read again
        return 0.0

    async def send(
        self, email: RenderedEmail, key: str, *, tags: dict[str, str], **options: Any
    ) -> str:
        [outcome] = await self._request(key, [(job_of(tags), email)])
        return str(outcome)

    async def send_batch(
        self, emails: Sequence[BatchEmail], key: str, **options: Any
    ) -> list[str | Refused]:
        return await self._request(key, [(job_of(e.tags), e.email) for e in emails])

    async def _request(self, key: str, items: list[tuple[str, Any]]) -> list[str | Refused]:
        self.requests += 1
        fault = self.faults.pop(0) if self.faults else "ok"
        if fault == "fail":
            raise TransientSendError("500 before accepting", status=500)
        if fault == "429":
            raise NotSent("429", status=429, retry_after_s=1.0)
        payload = [repr(item) for _, item in items]
        if key in self.accepted:
            first_payload, ids = self.accepted[key]
            if first_payload != payload:
                raise KeyReused("409 invalid_idempotent_request", key)
        else:
            ids = [f"re_{key}_{i}" for i in range(len(items))]
            self.accepted[key] = (payload, ids)
            for job_id, _ in items:
                self.delivered.setdefault(job_id, []).append(self.tick())
        if fault == "accept_then_fail":
            raise TransientSendError("500 after accepting", status=500)
        return list(ids)


# --- the simulated workers ---------------------------------------------------------------------


@dataclass
class SimWorker:
    claim: Claim | None = None
    turns: list[str] = field(default_factory=list)  # the claim's members not run yet
    batcher: Batcher | None = None


class FencingModel(RuleBasedStateMachine):
    settings_of: Callable[[], Settings]

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(1_800_000_000_000)
        self.runtime: Runtime = build_runtime(self.settings_of(), self.clock)
        self.loop = asyncio.new_event_loop()
        self.resend = ModelResend(self.clock)
        self.ticks = 0
        self.resend.tick = self.next_tick
        delivery = self.runtime.worker.evaluator.delivery
        assert delivery is not None
        delivery.mailer = self.resend
        assert self.runtime.worker.batch_sender is not None
        self.runtime.worker.batch_sender.mailer = self.resend
        self.workers = [SimWorker() for _ in range(WORKERS)]
        self.current: dict[str, str] = {}  # member -> the token of its latest claim, if held
        self.last_token = 0
        self.suppressed_at: dict[str, int] = {}  # user -> when the suppression was acknowledged
        self.violations: list[str] = []
        self._watch_scripts()

    # the fenced scripts' writes, checked against the model's claims and releases

    def _watch_scripts(self) -> None:
        runner = ScriptRunner
        original = runner.run
        model = self

        async def run(self: Any, script: Script, keys: list[str], args: list[Any]) -> Any:
            reply = await original(self, script, keys, args)
            model.observe(script.name, [str(a) for a in args], reply)
            return reply

        self._patch = (runner, original)
        runner.run = run  # type: ignore[method-assign]

    def teardown(self) -> None:
        runner, original = self._patch
        runner.run = original  # type: ignore[method-assign]
        self.loop.run_until_complete(self.runtime.close())
        self.loop.close()

    def observe(self, name: str, args: list[str], reply: Any) -> None:
        if name == "claim":
            _, token, *members = reply
            if token is not None:
                assert int(token) > self.last_token, "a claim's token was used before"
                self.last_token = int(token)
                self.current.update(dict.fromkeys(map(str, members), str(token)))
            return
        if name not in FENCED:
            return
        for member, token in self._writes(name, args, reply):
            if self.current.get(member) != token:
                self.violations.append(
                    f"{name} by {token} on {member} ({self.current.get(member)})"
                )
        self._releases(name, args, reply)

    def _writes(self, name: str, args: list[str], reply: Any) -> Iterator[tuple[str, str]]:
        """(member, token) of each write `name` made for a claim (its reply says it wrote)."""
        if name == "apply" and str(reply) in ("applied", "deleted") and args[2]:
            yield args[1], args[2]
        elif name == "settle" and str(reply) == "settled" and args[2] != "sent" and args[12]:
            yield args[11], args[12]
        elif name == "batch_record" and reply:
            recorded = {str(job_id) for job_id in reply}
            for i in range(5, len(args), 3):  # each member's turn: eval|<its user>
                if args[i] in recorded:
                    yield f"eval|{args[i].split('|')[1]}", args[4]
        elif name == "batch_check" and isinstance(reply, list):
            yield f"batch|{args[0]}", args[1]
        elif name == "batch_end" and int(reply) == 1:
            yield args[1], args[2]
        elif name == "renew":
            for member in reply or ():
                yield str(member), args[1]

    def _releases(self, name: str, args: list[str], reply: Any) -> None:
        if name == "apply" and str(reply) in ("applied", "deleted") and args[4] != "1":
            self.current.pop(args[1], None)
        elif name == "settle" and args[15] != "keep" and self.current.get(args[13]) == args[14]:
            if str(reply) != "stale" and args[14]:
                self.current.pop(args[13], None)
        elif name == "batch_record" and reply:
            self.current[args[1]] = args[4]
        elif name == "batch_end" and int(reply) == 1 and args[4] != "keep":
            self.current.pop(args[1], None)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def next_tick(self) -> int:
        """A logical time: what was acknowledged before what."""
        self.ticks += 1
        return self.ticks

    # --- setup and what arrives from outside ----------------------------------------------------

    @initialize()
    def signups(self) -> None:
        """Every user signs up and reports the first project: each welcome is due."""
        users = self.runtime.store.users
        for uid in USERS:
            profile = UserProfile(id=uid, email=f"{uid}@example.org", first_name="M")
            self.run(users.record(f"msg_{uid}", profile, created=True, version_ms=1,
                                  now_ms=self.clock.now_ms))  # fmt: skip
            self.first_project(uid)

    @rule(user=st.sampled_from(USERS))
    def first_project(self, user: str) -> None:
        action = NewAction(user, "first_project_created", self.clock.now_ms, id=f"a_{user}")
        tracked = self.runtime.tracked_counts
        self.run(self.runtime.store.actions.record([action], now_ms=self.clock.now_ms,
                                                   tracked=tracked))  # fmt: skip

    @rule(user=st.sampled_from(USERS), reason=st.sampled_from(["complained", "bounced"]))
    def suppress(self, user: str, reason: str) -> None:
        self.run(self._suppress(user, reason))

    async def _suppress(self, user: str, reason: str) -> None:
        event = EmailEvent(f"evt_{reason}_{user}", user, "email.x", suppression=reason)
        await self.runtime.store.users.record_email_event(event, now_ms=self.clock.now_ms)
        self.suppressed_at.setdefault(user, self.next_tick())

    @rule(ms=st.sampled_from([1, SEC, LEASE_MS // 2, LEASE_MS + 1, 3 * 60 * SEC]))
    def time_passes(self, ms: int) -> None:
        self.clock.advance(ms)

    @rule(faults=st.lists(st.sampled_from(["ok", "fail", "accept_then_fail", "429"]), max_size=3))
    def resend_will(self, faults: list[str]) -> None:
        self.resend.faults = faults

    @rule(
        during=st.sampled_from(["nothing", "suppress", "action", "lease runs out"]),
        user=st.sampled_from(USERS),
    )
    def while_a_request_waits(self, during: str, user: str) -> None:
        """What lands while the next request waits for its rate-limit slot."""

        async def meanwhile() -> None:
            if during == "suppress":
                await self._suppress(user, "complained")
            elif during == "action":
                action = NewAction(user, "first_project_created", self.clock.now_ms, id=f"w_{user}")
                await self.runtime.store.actions.record(
                    [action], now_ms=self.clock.now_ms, tracked=self.runtime.tracked_counts
                )
            elif during == "lease runs out":
                self.clock.advance(LEASE_MS + 1)

        self.resend.on_pace.append(meanwhile)

    # --- one step of one worker ------------------------------------------------------------------

    @rule(
        w=st.integers(0, WORKERS - 1),
        upto=st.sampled_from(["claim", "turns", "send", "all"]),
        batches=st.booleans(),
    )
    def work(self, w: int, upto: str, batches: bool) -> None:
        """Worker `w` goes on from where it stopped up to `upto`: claim what is due, run the
        claim's turns (and batches sent again), send the batches its turns began, and (`all`)
        look at the schedule afresh. Others may act between any two of these."""
        worker = self.workers[w]
        if worker.claim is None:
            self.claim(worker, batches)
        if upto == "claim":
            return
        self.run_turns(worker)
        if upto == "turns":
            return
        if worker.batcher is not None:
            self.run(worker.batcher.flush(set()))
        if upto == "all":
            self.workers[w] = SimWorker()

    def claim(self, worker: SimWorker, batches: bool) -> None:
        queue = self.runtime.store.queue
        claim = self.run(queue.claim_due(now_ms=self.clock.now_ms, lease_ms=LEASE_MS, limit=10))
        if claim.job_ids:
            sender = self.runtime.worker.batch_sender
            worker.claim, worker.turns = claim, list(claim.job_ids)
            worker.batcher = Batcher(sender, claim, LEASE_MS) if batches and sender else None

    def run_turns(self, worker: SimWorker) -> None:
        """Users' turns (decisions applied, attempts begun: sent at once alone, or handed to
        the batcher) and batches sent again."""
        while worker.turns:
            member = worker.turns.pop(0)
            assert worker.claim is not None
            lease = Lease(worker.claim, member, LEASE_MS, worker.batcher)
            if is_batch(member):
                sender = self.runtime.worker.batch_sender
                assert sender is not None
                self.run(sender.resume(worker.claim.shard, batch_of(member), lease))
            elif is_evaluation(member):
                self.run(self.runtime.worker.evaluator.run(member.split("|", 1)[1], lease))

    @rule(w=st.integers(0, WORKERS - 1))
    def renew(self, w: int) -> None:
        worker = self.workers[w]
        if worker.claim is not None:
            queue, now = self.runtime.store.queue, self.clock.now_ms
            renewal = queue.renew_leases(
                worker.claim, worker.claim.job_ids, now_ms=now, lease_ms=LEASE_MS
            )
            self.run(renewal)

    @rule(w=st.integers(0, WORKERS - 1))
    def dies(self, w: int) -> None:
        """The worker dies with what it has in hand: its leases bring it back."""
        self.workers[w] = SimWorker()

    @rule()
    def operator_retries(self) -> None:
        queue = self.runtime.store.queue
        for job in self.run(queue.dead_jobs()):
            self.run(queue.retry_dead(job, now_ms=self.clock.now_ms))

    # --- what must hold --------------------------------------------------------------------------

    @invariant()
    def no_stale_write_was_accepted(self) -> None:
        assert not self.violations, self.violations

    @invariant()
    def no_email_went_twice(self) -> None:
        twice = {job: at for job, at in self.resend.delivered.items() if len(at) > 1}
        assert not twice, twice

    @invariant()
    def nothing_went_after_a_suppression(self) -> None:
        for uid, since in self.suppressed_at.items():
            late = [at for at in self.resend.delivered.get(welcome(uid), []) if at > since]
            assert not late, (uid, since, late)

    def drain_to_the_end(self) -> None:
        """Faults gone, leases run out, one worker drains: what was due goes out once."""
        self.resend.faults, self.resend.on_pace = [], []
        for _ in range(8):
            self.clock.advance(LEASE_MS + 1)
            self.run(self.runtime.worker.drain())
            self.clock.advance(10 * 60 * SEC)
            self.run(self.runtime.worker.drain())
            for job in self.run(self.runtime.store.queue.dead_jobs()):
                self.run(self.runtime.store.queue.retry_dead(job, now_ms=self.clock.now_ms))
        for uid in USERS:
            record = self.run(self.runtime.store.queries.snapshot(uid))
            job = record.jobs.get(welcome(uid))
            if job is None:
                continue  # no first project: the nudge's to come, not this test's
            went = len(self.resend.delivered.get(welcome(uid), []))
            if uid in self.suppressed_at:
                assert went <= 1, (uid, job)
                assert job.terminal, (uid, job)
            else:
                assert (went, job.status) == (1, JobStatus.SENT), (uid, job, went)


def machine_for(settings_of: Callable[[], Settings]) -> type[FencingModel]:
    class Machine(FencingModel):
        pass

    Machine.settings_of = staticmethod(settings_of)  # type: ignore[assignment]
    original_teardown = Machine.teardown

    def teardown(self: FencingModel) -> None:
        try:
            self.drain_to_the_end()
        finally:
            original_teardown(self)

    Machine.teardown = teardown  # type: ignore[method-assign]
    return Machine


@pytest.mark.parametrize("transport", ["embedded", "redis"], indirect=True)
def test_no_stale_holder_writes_and_no_email_goes_twice(
    make_settings: Callable[..., Settings], transport: str
) -> None:
    def settings_of() -> Settings:
        return make_settings(
            key_prefix=f"fm{uuid.uuid4().hex[:10]}:",
            resend_api_key="re_model", resend_api_url="http://127.0.0.1:9",
            email_from="Acme <hello@acme.dev>", worker_in_process=False,
            worker_lease_s=LEASE_MS // SEC, resend_timeout_s=2, storage_timeout_s=2,
        )  # fmt: skip

    run_state_machine_as_test(
        machine_for(settings_of),
        settings=settings(
            max_examples=50 if transport == "redis" else 200,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
