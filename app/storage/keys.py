"""The Redis key schema: the only module that spells a key.

`P` is `KEY_PREFIX` (default `activation:`). On one Redis (and on Upstash) the table below is the
whole schema: every key of one user carries the hash tag `{<uid>}`, and what users share
(`schedule` ... `daily`) is one set of keys. On a Redis Cluster (`storage.layout`) every script
must touch one hash slot, so what users share is split into shards, each under a tag `{<tag>}`,
and a user's keys move under their shard's tag: `P{<uid>}:user` becomes `P{<tag>}:u:<uid>:user`
and `P:schedule` becomes `P{<tag>}:schedule`, the shard being a stable hash of the user id
(`Keys.shard_of`). `P:layout` keeps the tags (JSON), chosen once, one per master.

| key                          | type   | TTL                  | written by            |
|------------------------------|--------|----------------------|-----------------------|
| `P{<uid>}:user`              | hash   | none                 | record_user.lua       |
| `P{<uid>}:tombstone`         | string | none                 | delete_user.lua       |
| `P{<uid>}:webhook:<svix_id>` | string | WEBHOOK_DEDUPE_TTL_S | record/delete_user    |
| `P{<uid>}:activity`          | hash   | none                 | record_actions.lua    |
| `P{<uid>}:action:<id>`       | string | ACTION_DEDUPE_TTL_S  | record_actions.lua    |
| `P{<uid>}:loops`             | hash   | none                 | apply.lua             |
| `P{<uid>}:jobs`              | hash   | none                 | apply.lua, settle.lua |
| `P{<uid>}:attempts`          | hash   | none                 | begin_attempt.lua     |
| `P{<uid>}:timeline`          | list   | none (capped)        | every writer          |
| `P:schedule`                 | zset   | none                 | intake, apply, claim  |
| `P:leases`                   | zset   | none                 | claim.lua, renew.lua  |
| `P:lease_tokens`             | hash   | none                 | claim.lua             |
| `P:lease_seq`                | string | none                 | claim.lua             |
| `P:dead`                     | zset   | none                 | settle.lua            |
| `P:outbox`                   | list   | none (capped)        | settle.lua            |
| `P:suppressed`               | zset   | none                 | email_event.lua       |
| `P:stats:<loop_id>`          | hash   | none                 | apply.lua, settle.lua |
| `P:daily:<yyyy-mm-dd>`       | hash   | DAILY_TTL_S (90 d)   | settle.lua            |
| `P:session_revoked:<sid>`    | string | the session's rest   | dashboard logout      |
| `P:login_failures:<ip>`      | string | LOGIN_WINDOW_S (15m) | login_failures.lua    |
| `P:layout`                   | string | none                 | storage.layout (once) |

Reads: `snapshot.lua` reads every per-user key at once; intake scripts read the tombstone; the
worker's `claim.lua` reads `schedule` and `leases`.

- `user`: field `profile` is the UserProfile as JSON; `version` the epoch ms of the Clerk data it
  holds (older events never overwrite newer data); `registered_at` the epoch ms a verified
  `user.created` was first stored (absent until then).
- `tombstone`: epoch ms of the `user.deleted`; a late `user.created`/`updated` or action is ignored.
- `webhook:<svix_id>` / `action:<id>`: a delivery or client action id already applied.
- `activity`: `rev` (bumped by every change, so a decision made on an old snapshot is refused);
  per action `n:<a>` (count), `first:<a>` and `last:<a>` (epoch ms), `ts:<a>` (its earliest
  occurred-at times, ascending, comma-separated epoch ms, as many as the largest count a loop
  waits for, up to `store.MAX_RANKED_TIMES`: the n-th is when the count reached n, whatever order
  the reports came in), `at:<a>:<n>` (for a count `ts:` cannot hold, the latest time when the
  count was reached, an upper bound; written before `ts:` existed, the n-th report's time).
- `loops`: field `<loop_id>/<step>` holds that step's state as JSON (engine.StepState).
- `jobs`: field `<job_id>` holds the email job as JSON (jobs.EmailJob), its rendered email included;
  it is also the user's send ledger: a job id is queued once and a sent job is never sent again.
- `attempts`: `<job_id>` how many sends were started, `<job_id>@` when the last one started and
  `<job_id>^` when the first one that may have reached Resend started (ms): Resend keeps an
  idempotency key 24 h from then, so no attempt goes out blind after that.
- `user` field `unsubscribed_at` (ms): no further loop email for this user.
- `user` fields `suppressed_at` (ms) and `suppression` (`bounced` or `complained`): a Resend hard
  bounce or complaint stopped loop email for this user; `activation suppress remove` clears them.
  `suppressed`: those user ids by when (for `activation suppress list`), removed with them.
- `timeline`: the newest events first, JSON, capped at TIMELINE_LENGTH.
- `schedule`: job ids by due time (epoch ms): `eval|<uid>` (look at the user's loops) and
  `email|<uid>|<loop>|<step>|<kind>` (send one email). `leases`: claimed job ids by lease expiry;
  an expired lease (a crashed or stalled worker) puts the job back on the schedule.
  `lease_tokens`: each leased job's fencing token, the number `lease_seq` gave its claim; a worker
  whose token no longer matches (its lease was taken back) can neither start an attempt nor settle
  or apply anything but a send that happened. `dead`: email jobs that
  failed for good, by when; an operator retries them. `outbox`: emails "sent" without a Resend
  key, newest first, JSON.
- `stats:<loop_id>`: the loop's counters, bumped as events happen (never a scan of users), read
  by `stats.lua` for the dashboard. Funnel of step 0: `entered` (started), `met` (condition met:
  fired), `sent` (its email sent), `timed_out`, `nudged` (its on_timeout email sent),
  `activated_after_nudge` (the condition met after the step timed out: counted once, when the
  worker writes that `met_at` onto the timed-out state); `tta:<bucket>` a histogram of
  time-to-activation (started to met, buckets `stats.TTA_BUCKETS`); `emails_sent` and
  `emails_failed` count every email of the loop.
- `daily:<yyyy-mm-dd>` (UTC day): `<loop_id>:sent` and `<loop_id>:failed`, emails that day.
- `session_revoked:<sid>`: a dashboard session logged out; kept until the session would have
  expired, so its cookie no longer opens a page. `login_failures:<ip>`: failed dashboard
  logins from one client address in the current window (the first failure starts it).
- `Keys.personal(uid)` lists every key with personal data; `user.deleted` removes them all.
- `layout`: on a cluster, `{"shards": [<tag>, ...]}`: the shards' hash tags, in shard order.
"""

import re
import zlib
from dataclasses import dataclass, field

# Clerk ids look like `user_29w83sxmDNGwOuEthce5gg56FcC`. Any printable ASCII but `{`, `|` and `}`
# (0x21-0x7A and `~`) is allowed so other providers' ids fit: braces would break the hash tag, `|`
# separates a job id's parts, and ASCII reads the same in pydantic's and Python's regex engines.
USER_ID_PATTERN = r"^[!-z~]{1,128}$"
_USER_ID = re.compile(USER_ID_PATTERN)


def valid_user_id(user_id: str) -> bool:
    return _USER_ID.fullmatch(user_id) is not None


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """The keys one shard shares among its users: the schedule and its leases, dead letters,
    the outbox, suppressions and the loop counters. On one Redis there is one shard and these are
    the unsharded `P:schedule`...; on a cluster `P{<tag>}:schedule`..., one hash slot per shard."""

    scope: str  # `P` or `P{<tag>}:`

    @property
    def schedule(self) -> str:
        return f"{self.scope}schedule"

    @property
    def leases(self) -> str:
        return f"{self.scope}leases"

    @property
    def lease_tokens(self) -> str:
        return f"{self.scope}lease_tokens"

    @property
    def lease_seq(self) -> str:
        return f"{self.scope}lease_seq"

    @property
    def dead(self) -> str:
        return f"{self.scope}dead"

    @property
    def outbox(self) -> str:
        return f"{self.scope}outbox"

    @property
    def suppressed(self) -> str:
        return f"{self.scope}suppressed"

    def stats(self, loop_id: str) -> str:
        return f"{self.scope}stats:{loop_id}"

    def daily(self, day: str) -> str:
        """`day` is a UTC date, `yyyy-mm-dd`."""
        return f"{self.scope}daily:{day}"


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds every key from the configured prefix and the storage's shards: none on one Redis
    (or Upstash), one hash tag per shard on a cluster (`shard_tags`, see `storage.layout`)."""

    prefix: str = "activation:"
    shard_tags: tuple[str, ...] = ()
    _shards: tuple[ShardKeys, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        scopes = [f"{self.prefix}{{{tag}}}:" for tag in self.shard_tags] or [self.prefix]
        object.__setattr__(self, "_shards", tuple(ShardKeys(scope) for scope in scopes))

    @property
    def sharded(self) -> bool:
        return bool(self.shard_tags)

    @property
    def shard_count(self) -> int:
        return max(len(self.shard_tags), 1)

    def shard_of(self, user_id: str) -> int:
        """The shard a user's keys and jobs live in (a stable hash of the id)."""
        if not self.shard_tags:
            return 0
        return zlib.crc32(user_id.encode()) % len(self.shard_tags)

    def shard(self, index: int) -> ShardKeys:
        return self._shards[index]

    def shards(self) -> tuple[ShardKeys, ...]:
        return self._shards

    def of_user(self, user_id: str) -> ShardKeys:
        """The shared keys of the user's shard: a script touching both stays in one slot."""
        return self._shards[self.shard_of(user_id)]

    def _user_scope(self, user_id: str) -> str:
        if not valid_user_id(user_id):
            raise ValueError(f"invalid user id {user_id!r}")
        if not self.shard_tags:
            return f"{self.prefix}{{{user_id}}}"
        return f"{self.of_user(user_id).scope}u:{user_id}"

    def user(self, user_id: str) -> str:
        return f"{self._user_scope(user_id)}:user"

    def tombstone(self, user_id: str) -> str:
        return f"{self._user_scope(user_id)}:tombstone"

    def webhook_seen(self, user_id: str, delivery_id: str) -> str:
        return f"{self._user_scope(user_id)}:webhook:{delivery_id}"

    def activity(self, user_id: str) -> str:
        return f"{self._user_scope(user_id)}:activity"

    def action_seen(self, user_id: str, action_id: str) -> str:
        return f"{self._user_scope(user_id)}:action:{action_id}"

    def loops(self, user_id: str) -> str:
        return f"{self._user_scope(user_id)}:loops"

    def jobs(self, user_id: str) -> str:
        return f"{self._user_scope(user_id)}:jobs"

    def attempts(self, user_id: str) -> str:
        return f"{self._user_scope(user_id)}:attempts"

    def timeline(self, user_id: str) -> str:
        return f"{self._user_scope(user_id)}:timeline"

    @property
    def layout(self) -> str:
        """Where a cluster's shard tags are kept, once chosen (`storage.layout`)."""
        return f"{self.prefix}layout"

    def session_revoked(self, session_id: str) -> str:
        return f"{self.prefix}session_revoked:{session_id}"

    def login_failures(self, client: str) -> str:
        """`client` is the caller's address, as the server reports it."""
        return f"{self.prefix}login_failures:{client}"

    def snapshot(self, user_id: str) -> list[str]:
        """What `snapshot.lua` reads of one user, in its KEYS order."""
        return [
            self.user(user_id),
            self.activity(user_id),
            self.loops(user_id),
            self.jobs(user_id),
            self.timeline(user_id),
            self.tombstone(user_id),
        ]

    def personal(self, user_id: str) -> list[str]:
        """Every key holding the user's personal data (removed on `user.deleted`)."""
        return [
            self.user(user_id),
            self.activity(user_id),
            self.loops(user_id),
            self.jobs(user_id),
            self.attempts(user_id),
            self.timeline(user_id),
        ]


TIMELINE_LENGTH = 200
OUTBOX_LENGTH = 1000
DAILY_TTL_S = 90 * 24 * 3600
