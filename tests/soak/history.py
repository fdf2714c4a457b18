"""What the workload did and what the service acknowledged, when: one `Op` per request it meant
to make (retries are attempts of the same op), times in epoch ms of this host's clock (the
stand-in's clock too)."""

import time
from collections import Counter, defaultdict
from dataclasses import dataclass

STOPPERS = ("complaint", "bounce", "unsubscribe", "delete")
# A Resend event's answers that leave the user stopped (suppressed now or before, or deleted);
# "unknown" (no such user) does not.
STOPPED_ANSWERS = ("suppressed", "recorded", "duplicate", "tombstoned")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Op:
    """One request of the workload: a signup, an action (its name, and the plan for
    plan_changed), a complaint, a hard bounce, an unsubscribe (POST) or its page (GET), or a
    deletion."""

    user: str
    kind: str
    name: str = ""  # an action's name
    plan: str = ""  # plan_changed's plan
    sent_ms: int = 0  # the first attempt
    acked_ms: int | None = None  # the 2xx answer, if any
    status: int | None = None  # the last answer's HTTP status (None: no answer)
    answer: str = ""  # a webhook's `status`
    attempts: int = 0
    answer_ms: int | None = None  # how long the last answer took

    @property
    def acked(self) -> bool:
        return self.acked_ms is not None

    @property
    def stops(self) -> bool:
        """An acknowledged stopper that left the user stopped."""
        if self.kind not in STOPPERS or not self.acked:
            return False
        return self.kind not in ("complaint", "bounce") or self.answer in STOPPED_ANSWERS


def share(ordered: list[int], part: float) -> int:
    """The value `part` of the way through `ordered` (a percentile)."""
    return ordered[min(int(len(ordered) * part), len(ordered) - 1)]


class History:
    """Every op, in the order they were first sent."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.addresses: dict[str, str] = {}  # user -> the primary address their signup gave

    def add(self, op: Op) -> Op:
        self.ops.append(op)
        return op

    def by_user(self) -> dict[str, list[Op]]:
        ops: dict[str, list[Op]] = defaultdict(list)
        for op in self.ops:
            ops[op.user].append(op)
        return ops

    def answer_times_ms(self) -> dict[str, int]:
        """How long the web process took to answer (the last attempt of each op): p50, p99, max."""
        times = sorted(op.answer_ms for op in self.ops if op.answer_ms is not None)
        if not times:
            return {}
        return {"p50": share(times, 0.5), "p99": share(times, 0.99), "max": times[-1]}

    def counts(self) -> dict[str, dict[str, int]]:
        """Per op kind (actions by name): how many were sent and how many acknowledged."""
        sent: Counter[str] = Counter()
        acked: Counter[str] = Counter()
        for op in self.ops:
            label = op.name if op.kind == "action" else op.kind
            sent[label] += 1
            acked[label] += op.acked
        return {label: {"sent": sent[label], "acked": acked[label]} for label in sorted(sent)}
