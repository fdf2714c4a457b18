"""Job ids: the one place that spells and parses them.

    eval|<user_id>                              look at one user's loops
    email|<user_id>|<loop_id>|<step>|<kind>     send one email (kind: action | timeout)
    batch|<batch_id>                            send (again) a recorded batch of emails

An id is deterministic, so the same decision queues one job, and an email job's id is Resend's
Idempotency-Key. User ids hold no `|` (`storage.keys.USER_ID_PATTERN`), loop ids are file stems.
The spelling functions are plain f-strings: intake builds an evaluation id on every request.
"""

import uuid
from dataclasses import dataclass
from enum import StrEnum

SEPARATOR = "|"


class JobType(StrEnum):
    EVAL = "eval"
    EMAIL = "email"


class EmailKind(StrEnum):
    """Which of a step's emails: the one its condition met sends, or its timeout's (the
    `EmailJob.kind` of the job, the last part of its id)."""

    ACTION = "action"  # the step's condition was met: its action
    TIMEOUT = "timeout"  # its deadline passed first: its on_timeout


@dataclass(frozen=True, slots=True)
class JobId:
    """A job id, parsed; `str()` spells it again."""

    type: JobType
    user_id: str
    loop_id: str | None = None
    step: int | None = None
    kind: EmailKind | None = None

    def __str__(self) -> str:
        if self.type is JobType.EVAL:
            return evaluation_id(self.user_id)
        assert self.loop_id is not None
        assert self.step is not None
        assert self.kind is not None
        return email_id(self.user_id, self.loop_id, self.step, self.kind)

    def short(self) -> str:
        """An email job id without `email|<user_id>|`: how the user's own hash names it."""
        return SEPARATOR.join((str(self.loop_id), str(self.step), str(self.kind)))

    @classmethod
    def parse(cls, job_id: str) -> "JobId":
        """The parts of a job id; ValueError when it is not one."""
        type_, _, rest = job_id.partition(SEPARATOR)
        if type_ == JobType.EVAL and rest and SEPARATOR not in rest:
            return cls(JobType.EVAL, rest)
        parts = rest.split(SEPARATOR)
        if type_ != JobType.EMAIL or len(parts) != 4 or not parts[2].isdigit():
            raise ValueError(f"not a job id: {job_id!r}")
        user_id, loop_id, step, kind = parts
        return cls(JobType.EMAIL, user_id, loop_id, int(step), EmailKind(kind))


def evaluation_id(user_id: str) -> str:
    """The schedule member that makes a worker look at one user's loops."""
    return f"eval{SEPARATOR}{user_id}"


def email_id(user_id: str, loop_id: str, step: int, kind: str) -> str:
    return SEPARATOR.join(("email", user_id, loop_id, str(step), kind))


def email_id_prefix(user_id: str) -> str:
    """How every email job id of the user begins."""
    return f"email{SEPARATOR}{user_id}{SEPARATOR}"


def user_of(job_id: str) -> str:
    """The user a job belongs to, without parsing the rest (the worker asks for every job)."""
    return job_id.split(SEPARATOR, 2)[1]


def is_evaluation(job_id: str) -> bool:
    return job_id.startswith(f"eval{SEPARATOR}")


def is_batch(member: str) -> bool:
    """A schedule member that sends a recorded batch of emails (`delivery.batch`)."""
    return member.startswith(f"batch{SEPARATOR}")


def batch_member(batch_id: str) -> str:
    """The schedule member of a recorded batch: leased like a user's turn while it is sent."""
    return f"batch{SEPARATOR}{batch_id}"


def batch_of(member: str) -> str:
    return member.removeprefix(f"batch{SEPARATOR}")


def new_batch_id() -> str:
    """A batch's id, which is also its Idempotency-Key: unique, whoever makes it."""
    return f"batch-{uuid.uuid4().hex}"
