"""Many stored users, fast: real users made by the service, then cloned with DUMP/RESTORE.

A few template users go through the real flow (signup, actions, emails sent); their hash is then
copied under other user ids, so every clone has the shape and encoding the scripts produce (the
profile, actions, step states, jobs, recent delivery and action ids), and their turn on the
schedule with it.
"""

import redis

from app.storage.keys import Keys

BATCH = 2000


def clone_id(i: int) -> str:
    return f"user_clone{i:022d}"  # 32 characters, like a Clerk id


def template_keys(client: redis.Redis, keys: Keys, user_id: str) -> list[bytes]:
    """The user's keys: their hash, and anything else under their hash tag (none in schema v2;
    listed so a key added later is measured too)."""
    pattern = keys.user(user_id).replace("{", "\\{").replace("}", "\\}")
    return sorted(client.scan_iter(match=f"{pattern}*", count=1000))


def schedule_entries(client: redis.Redis, keys: Keys, user_id: str) -> list[tuple[bytes, float]]:
    entries = client.zrange(keys.shard(0).schedule, 0, -1, withscores=True)
    return [(member, score) for member, score in entries if f"|{user_id}|" in f"{member.decode()}|"]


def clone_users(client: redis.Redis, keys: Keys, templates: list[str], count: int) -> None:
    """Store `count` users, each a copy of one template user (round robin)."""
    dumps = [_dump(client, keys, uid) for uid in templates]
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        template, (saved, scheduled) = templates[i % len(templates)], dumps[i % len(templates)]
        for key, ttl_ms, payload in saved:
            pipe.restore(clone_key(key, template, i), max(ttl_ms, 0), payload)
        for member, score in scheduled:
            pipe.zadd(
                keys.shard(0).schedule, {member.decode().replace(template, clone_id(i)): score}
            )
        if len(pipe) >= BATCH:
            pipe.execute()
    pipe.execute()


def clone_key(template_key: str, template: str, i: int) -> str:
    return template_key.replace(f"{{{template}}}", f"{{{clone_id(i)}}}")


def _dump(
    client: redis.Redis, keys: Keys, user_id: str
) -> tuple[list[tuple[str, int, bytes]], list[tuple[bytes, float]]]:
    names = template_keys(client, keys, user_id)
    saved = [(k.decode(), client.pttl(k), client.dump(k)) for k in names]
    return saved, schedule_entries(client, keys, user_id)


def memory_per_user(
    client: redis.Redis, keys: Keys, templates: list[str], sample: list[int]
) -> dict[str, float]:
    """Bytes per user: MEMORY USAGE of every key of each sampled clone, averaged."""
    names = [[k.decode() for k in template_keys(client, keys, uid)] for uid in templates]
    totals = []
    for i in sample:
        template = templates[i % len(templates)]
        clone_keys = [clone_key(k, template, i) for k in names[i % len(templates)]]
        totals.append(sum(client.memory_usage(k, samples=0) or 0 for k in clone_keys))
    members = client.zcard(keys.shard(0).schedule) or 1
    schedule_share = (client.memory_usage(keys.shard(0).schedule, samples=0) or 0) / members
    return {
        "bytes_per_user_keys": sum(totals) / len(totals),
        "keys_per_user": len(names[0]),
        "bytes_per_schedule_entry": schedule_share,
    }
