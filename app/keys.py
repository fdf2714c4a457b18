"""The Redis key schema: the only module that spells a key.

Every key of one user carries the hash tag `{<user_id>}`, so a script touching one user's keys runs
on Redis Cluster too. `P` is `KEY_PREFIX` (default `activation:`).

| key                          | type   | TTL                  | writer          | reader         |
|------------------------------|--------|----------------------|-----------------|----------------|
| `P{<uid>}:user`              | hash   | none                 | record_user.lua | Store.get_user |
| `P{<uid>}:tombstone`         | string | none                 | delete_user.lua | record_user.lua|
| `P{<uid>}:webhook:<svix_id>` | string | WEBHOOK_DEDUPE_TTL_S | both scripts    | both scripts   |

- `user`: field `profile` is the UserProfile as JSON; `version` the epoch ms of the Clerk data it
  holds (older events never overwrite newer data); `registered_at` the epoch ms a verified
  `user.created` was first stored (absent until then).
- `tombstone`: epoch ms of the `user.deleted`; a late `user.created`/`updated` is then ignored.
- `webhook:<svix_id>`: epoch ms the delivery was applied; a redelivery is a duplicate.
- `Keys.personal(uid)` lists every key with personal data; `user.deleted` removes them all.
"""

import re
from dataclasses import dataclass

# Clerk ids look like `user_29w83sxmDNGwOuEthce5gg56FcC`; anything printable without braces or
# whitespace is allowed so other identity providers' ids fit, but braces would break the hash tag.
USER_ID_PATTERN = r"^[^\s{}]{1,128}$"
_USER_ID = re.compile(USER_ID_PATTERN)


def valid_user_id(user_id: str) -> bool:
    return _USER_ID.fullmatch(user_id) is not None


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds every key from the configured prefix."""

    prefix: str = "activation:"

    def _user_scope(self, user_id: str) -> str:
        if not valid_user_id(user_id):
            raise ValueError(f"invalid user id {user_id!r}")
        return f"{self.prefix}{{{user_id}}}"

    def user(self, user_id: str) -> str:
        return f"{self._user_scope(user_id)}:user"

    def tombstone(self, user_id: str) -> str:
        return f"{self._user_scope(user_id)}:tombstone"

    def webhook_seen(self, user_id: str, delivery_id: str) -> str:
        return f"{self._user_scope(user_id)}:webhook:{delivery_id}"

    def personal(self, user_id: str) -> list[str]:
        """Every key holding the user's personal data (removed on `user.deleted`)."""
        return [self.user(user_id)]
