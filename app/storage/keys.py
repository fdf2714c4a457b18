"""The Redis key schema (v2): the only module that spells a key the service uses
(`storage.migrate` spells v1's, to move them).

`P` is `KEY_PREFIX` (default `activation:`). Everything about one user is one hash, `P{<uid>}`:
a user's write is one HMGET and one HSET, and the worker reads a user with one HGETALL. What users
share is one set of keys per shard: on one Redis (and on Upstash) one shard, `P:schedule` ...;
on a Redis Cluster (`storage.cluster_shards`) every script must touch one hash slot, so there is
one shard per master, each under a hash tag `{<tag>}`, and a user's hash moves under their
shard's tag: `P{<uid>}` becomes `P{<tag>}:u:<uid>` and `P:schedule` becomes `P{<tag>}:schedule`
(the shard is a stable hash of the user id, `Keys.shard_of`). `P:layout` keeps the tags (JSON),
chosen once.

| key                          | type   | TTL                  | written by                      |
|------------------------------|--------|----------------------|---------------------------------|
| `P{<uid>}`                   | hash   | none                 | every user script               |
| `P:schedule`                 | zset   | none                 | intake, claim, apply, settle    |
| `P:fence`                    | string | none                 | claim.lua (INCR)                |
| `P:dead`                     | zset   | none                 | settle.lua                      |
| `P:outbox`                   | list   | none (capped)        | settle.lua                      |
| `P:batches`                  | hash   | none (until sent)    | batch_record, _check, _end      |
| `P:suppressed`               | zset   | none                 | email_event.lua                 |
| `P:stats:<loop_id>`          | hash   | none                 | apply.lua, settle.lua           |
| `P:daily:<yyyy-mm-dd>`       | hash   | 90 d                 | v1 only (read until it expires) |
| `P:seen`                     | hash   | none (pruned, 30 d)  | sightings.lua                   |
| `P:seen:<yyyy-mm-dd>`        | hash   | 8 d, from creation   | sightings.lua                   |
| `P:schema`                   | string | none                 | `Store.open` (once), migrate    |
| `P:layout`                   | string | none                 | cluster_shards (once)           |
| `P:session_revoked:<sid>`    | string | the session's rest   | dashboard logout                |
| `P:login_failures:<ip>`      | string | LOGIN_WINDOW_S (15m) | fixed_window.lua                |
| `P:browser_rate:<uid>`       | string | its window (1 min)   | fixed_window.lua                |

The user hash `P{<uid>}` (field names are short: Redis keeps them once per user):
- `p` the profile (UserProfile JSON, defaults left out); `v` the epoch ms of the Clerk data it
  holds (older events never overwrite newer data); `reg` when a verified `user.created` was first
  stored (absent until then: the registration starts the loops).
- `del`: when the user was deleted. A tombstone: the rest of the hash is gone, and a late
  `user.created`/`updated`, action or event is ignored.
- `unsub` (ms): unsubscribed, no further loop email. `sup` (ms) and `sup_why` (`bounced` or
  `complained`): a Resend hard bounce or complaint stopped loop email (`suppress remove` clears).
- `lease`: while a worker holds the user's turn, its claim's token (`fence`), and `@<ms>` once
  the turn was asked for meanwhile (an action, a registration, a retry: its release makes the
  turn due then instead of cutting the lease short); empty once released.
- `rev`: bumped by every change a decision depends on (actions that move a tracked count's
  time, registration, decisions, settled jobs, unsubscribes, suppressions), so a decision made on
  an old snapshot is refused.
- `seen`: the webhook deliveries (Clerk's and Resend's `svix-id`) applied within
  WEBHOOK_DEDUPE_TTL_S, newest last, at most `SEEN_LIMIT`; `ids`: the client action ids accepted
  within ACTION_DEDUPE_TTL_S, at most `IDS_LIMIT`. Each entry is 13 characters: 8 of a digest of
  the id (`digest`), then the minute it was applied, base 36 (5 digits: until 2084).
- `a:<action>`: `<count>,<first>,<last>` (epoch ms), then `;` and the earliest occurred-at times
  (ms after <first>), ascending, comma-separated (as many as the largest count a loop waits for,
  up to `MAX_RANKED_TIMES`: the n-th is when the count reached n, whatever order they came in),
  then `;` and `<n>=<ms>` pairs for counts that list cannot hold (the latest time when the count
  was reached, an upper bound).
- `s:<loop_id>/<step>`: that step's state (engine.StepState):
  `<status>,<started_at>,<deadline>,<met>,<decided>,<email kind>`, the three times after the
  first as ms after it, empty when unknown; the kind names the step's own email job. The status
  is `waiting`, `fired`, `timed_out`, `excluded` or `closed` (a trigger's `within` window ended:
  its started_at is the signup, its deadline the window's end).
- `j:<loop_id>|<step>|<kind>`: the email job `email|<uid>|<loop_id>|<step>|<kind>` (EmailJob JSON
  without the parts its field name says, its defaults, or a due time equal to when it was
  queued). The user's send ledger: queued once, never sent twice. A queued job carries its
  rendered email; a sent one only to whom and the subject.
  Its attempt: `attempts` started that may have reached Resend, `first_attempt_at` when the
  first of them started (Resend keeps an idempotency key 24 h from then), `started_at` when the
  attempt in flight started, `seq` the attempt's number (a worker settles only its own attempt),
  `batch` the batch its attempts go in (`delivery.batch`), when they go in one; `held`
  (`cap` or `quiet_hours`) and `held_at` while its first attempt waits for the frequency cap or
  quiet hours, its `due_at` then when it may go. A webhook step's call is such a job too,
  `channel` `webhook` (absent: an email), its `payload` the body it posts, until it was sent.
- `log`: JSON lines, newest first, at most `LOG_LENGTH`: what nothing else records (an action's
  properties, Resend's delivery events, an operator lifting a suppression). The timeline of
  `GET /v1/users` is built from it and from the fields above (`records.timeline_of`).

What the shard keys hold:
- `schedule`: `eval|<uid>`, one member per user with something to do, by when (epoch ms): a
  worker's turn looks at the user's loops and sends what is due. `batch|<batch_id>`: a recorded
  batch of emails (`batches`), due when it is to be sent (again). While a worker holds a member,
  its score is when the lease runs out, so a crashed or stalled worker's members come back then.
- `fence`: the shard's claim counter. Each claim draws the next number (INCR) as its token:
  unique, never reused. The claim writes it as the lease of each member it takes: a user's turn
  in the user hash's `lease`, a batch in its record's `lease`. A write on behalf of a claim
  (decisions, settles, batch record, check and end, renewals) passes only with the member's
  current token; a claim that takes an expired lease over writes its own, which shuts the
  older holder out whatever the clocks say.
- `batches`: the batches recorded and not yet ended, by id (which is also the request's
  Idempotency-Key): JSON `{"members": [[<email job id>, <seq>], ...], "first": <ms>, "attempts":
  <n>, "body": [<email job id>, ...], "error": <the last one>, "outcome": {<email job id>:
  [sent | refused | failed, <Resend's id or why>]}}`: the members still waiting for it, in the
  request's order, each with the attempt it sends; `body`, the members of the last request
  (every request under the key carried a subset of every earlier one's: a 409
  `invalid_idempotent_request` then means an earlier, larger one was accepted); `outcome` once
  the request ended for good; `lease`, the token of the claim holding it (as a turn's). Written
  before the first request (and `body` before each), the
  outcome before any member is settled; removed when every member has been settled, unless the
  outcome of some is unknown (5xx or timeouts to the end of their retries): then kept, its
  members gone, until Resend forgets the key (24 h after `first`, its schedule entry's time),
  so an operator's retry of a member sends it under this key again (`retry_dead.lua`).
- `dead`: email job ids that failed for good, by when; an operator retries them. `outbox`: emails
  "sent" without a Resend key, newest first, JSON.
- `stats:<loop_id>`: the loop's counters, bumped as events happen (never a scan of users), read by
  `stats.lua` for the dashboard. Step 0's funnel: `entered`, `tta:<bucket>` (condition met, by
  time to activation: their sum is the `met` count), `timed_out`, `activated_after_nudge` (the
  condition met after the step timed out, counted once); `sent:<step>:<kind>` emails sent (step
  0's `action` is the funnel's `sent`, its `timeout` the `nudged`; their sum `emails_sent`);
  `emails_failed`. An email is counted on its UTC day, `<counter>@<yyyy-mm-dd>` (one HINCRBY);
  the first count of a day folds the days older than `funnel.KEPT_DAYS` into `<counter>`.
  `held:cap`, `held:quiet_hours`: emails that waited for the frequency cap or quiet hours (each
  email once per reason). A webhook step's calls: `webhook_sent:<step>:<kind>` answered 2xx and
  `webhooks_failed` dead-lettered, on their days as emails are (the days' chart counts emails).
- `seen` and `seen:<yyyy-mm-dd>` (shard 0's only: one slot for all of them, whatever the user):
  the actions reported to the service, for `GET /v1/actions/health`
  (`storage.action_sightings`). Each process counts the actions it accepts in memory and adds
  them at most every `SIGHTINGS_FLUSH_S` (and when it stops) with one script, `sightings.lua`:
  `seen` maps an action's name to when it was last reported (epoch ms, the larger time kept), and
  holds at most `MAX_SEEN_NAMES` names loops do not watch (a client sending made-up names
  cannot grow it); `sightings_read.lua` removes the names not reported for `SEEN_KEPT_MS` (30 d)
  but those loops watch. `seen:<day>` counts each action per UTC hour, field `<action>@<hh>`;
  it expires 8 days after the flush that made it (the health reads the last 8 days).
- `daily:<yyyy-mm-dd>`: v1's emails per day (`<loop_id>:sent`, `:failed`); read until they
  expire, 90 days after they were written.
- `schema`: `2`, this schema; a store holding the v1 schema (one key per aggregate) is moved by
  `activation migrate` (`storage.migrate`) before the service uses it.
- `session_revoked:<sid>`: a dashboard session logged out; kept until the session would have
  expired. `login_failures:<ip>`: failed dashboard logins from one address in the current window.
- `browser_rate:<uid>`: the actions a user's browser reported with a Clerk session token in the
  current window (a fixed window that starts with the first, `web.v1.browser_limits`); the server's
  (the API key's) are not counted.
- `layout`: on a cluster, `{"shards": [<tag>, ...]}`: the shards' hash tags, in shard order.
"""

import base64
import hashlib
import re
import zlib
from dataclasses import dataclass, field

from app.engine.funnel import HELD, SENT, STORED_COUNTERS, TTA, WEBHOOK_SENT
from app.engine.job_ids import SEPARATOR, email_id_prefix

SCHEMA_VERSION = "2"

# Clerk ids look like `user_29w83sxmDNGwOuEthce5gg56FcC`. Any printable ASCII but `{`, `|` and `}`
# (0x21-0x7A and `~`) is allowed so other providers' ids fit: braces would break the hash tag, `|`
# separates a job id's parts, and ASCII reads the same in pydantic's and Python's regex engines.
USER_ID_PATTERN = r"^[!-z~]{1,128}$"
_USER_ID = re.compile(USER_ID_PATTERN)

LOG_LENGTH = 50
SEEN_LIMIT = 32
IDS_LIMIT = 64
OUTBOX_LENGTH = 1000


def valid_user_id(user_id: str) -> bool:
    return _USER_ID.fullmatch(user_id) is not None


def digest(delivery_or_action_id: str) -> str:
    """8 characters standing for a delivery's or an action's id in `seen` / `ids` (48 bits: two
    ids of one user alike by chance, among the few dozen kept, is not a worry)."""
    raw = hashlib.blake2b(delivery_or_action_id.encode(), digest_size=6).digest()
    return base64.urlsafe_b64encode(raw).decode()


def recent_entry(delivery_or_action_id: str, now_ms: int) -> str:
    """The 13-character `seen` / `ids` entry: the id's digest, then the minute, base 36."""
    return digest(delivery_or_action_id) + _base36(now_ms // 60_000).rjust(5, "0")


def oldest_minute(now_ms: int, ttl_s: int) -> int:
    """The oldest minute a `seen` / `ids` entry is kept from, `ttl_s` before now."""
    return now_ms // 60_000 - ttl_s // 60


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


# The user hash's fields (see the table above).
PROFILE, VERSION, REGISTERED, DELETED = "p", "v", "reg", "del"
UNSUBSCRIBED, SUPPRESSED, SUPPRESSION = "unsub", "sup", "sup_why"
REV, SEEN, IDS, LOG, LEASE = "rev", "seen", "ids", "log", "lease"
ACTION, STEP, JOB = "a:", "s:", "j:"
USER_FIELDS = (PROFILE, VERSION, REGISTERED, DELETED, UNSUBSCRIBED, SUPPRESSED, SUPPRESSION, REV,
               SEEN, IDS, LOG, LEASE)  # fmt: skip
USER_FIELD_PREFIXES = (ACTION, STEP, JOB)

# A recorded batch's JSON (`batches`, above; `storage.batches.BatchRecord`).
BATCH_FIELDS = ("members", "first", "attempts", "body", "error", "outcome", "lease")

# A loop's `stats` hash: the funnel's counters, and schema 1's (moved by migrate_stats.lua).
STATS_FIELDS = STORED_COUNTERS
STATS_FIELD_PREFIXES = (TTA, SENT, HELD, WEBHOOK_SENT)
V1_STATS_FIELDS = ("met", "sent", "nudged", "emails_sent")


def action_field(action: str) -> str:
    return f"{ACTION}{action}"


def step_field(name: str) -> str:
    """`name` is the engine's `<loop_id>/<step>`."""
    return f"{STEP}{name}"


def job_field(job_id: str) -> str:
    """`j:<loop_id>|<step>|<kind>` for `email|<uid>|<loop_id>|<step>|<kind>`."""
    return JOB + job_id.split(SEPARATOR, 2)[2]


def job_id_of(user_id: str, field_name: str) -> str:
    """The email job id a `j:` field stands for."""
    return email_id_prefix(user_id) + field_name.removeprefix(JOB)


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """The keys one shard shares among its users: the schedule, dead letters, the outbox,
    suppressions and the loop counters (and, shard 0's only, the sightings of actions). On one
    Redis there is one shard and these are the unsharded `P:schedule`...; on a cluster
    `P{<tag>}:schedule`..., one hash slot per shard."""

    scope: str  # `P` or `P{<tag>}:`

    @property
    def schedule(self) -> str:
        return f"{self.scope}schedule"

    @property
    def fence(self) -> str:
        """The claim counter each claim's token is drawn from."""
        return f"{self.scope}fence"

    @property
    def dead(self) -> str:
        return f"{self.scope}dead"

    @property
    def outbox(self) -> str:
        return f"{self.scope}outbox"

    @property
    def batches(self) -> str:
        return f"{self.scope}batches"

    @property
    def suppressed(self) -> str:
        return f"{self.scope}suppressed"

    def stats(self, loop_id: str) -> str:
        return f"{self.scope}stats:{loop_id}"

    def daily(self, day: str) -> str:
        """`day` is a UTC date, `yyyy-mm-dd`."""
        return f"{self.scope}daily:{day}"

    @property
    def seen(self) -> str:
        """Each action reported, with when last (read and written on shard 0 only)."""
        return f"{self.scope}seen"

    def seen_day(self, day: str) -> str:
        """Actions reported per UTC hour of `day` (`yyyy-mm-dd`), on shard 0 only."""
        return f"{self.scope}seen:{day}"


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds every key from the configured prefix and the storage's shards: none on one Redis
    (or Upstash), one hash tag per shard on a cluster (`shard_tags`, see
    `storage.cluster_shards`)."""

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
        """The shard a user's hash and place on the schedule live in (a stable hash of the id)."""
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

    def user(self, user_id: str) -> str:
        """The user's hash: everything stored about them."""
        if not valid_user_id(user_id):
            raise ValueError(f"invalid user id {user_id!r}")
        if not self.shard_tags:
            return f"{self.prefix}{{{user_id}}}"
        return f"{self.of_user(user_id).scope}u:{user_id}"

    @property
    def schema(self) -> str:
        """The schema version the data is in (`SCHEMA_VERSION`)."""
        return f"{self.prefix}schema"

    @property
    def layout(self) -> str:
        """Where a cluster's shard tags are kept, once chosen (`storage.cluster_shards`)."""
        return f"{self.prefix}layout"

    def session_revoked(self, session_id: str) -> str:
        return f"{self.prefix}session_revoked:{session_id}"

    def login_failures(self, client: str) -> str:
        """`client` is the caller's address, as the server reports it."""
        return f"{self.prefix}login_failures:{client}"

    def browser_rate(self, user_id: str) -> str:
        """The actions the user's browser reported in the current window (a counter)."""
        if not valid_user_id(user_id):
            raise ValueError(f"invalid user id {user_id!r}")
        return f"{self.prefix}browser_rate:{user_id}"
