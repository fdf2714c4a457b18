"""Who is in which arm of a loop's holdout or experiment: deterministic per (loop, user).

A user's place is a number in [0, 10,000) drawn from a hash of the loop id and the user id
(BLAKE2b: the same on every process and every run, and independent between loops). The holdout
takes the places below its share (10 % = places 0-999); the rest are split among the
experiment's arms by weight, from a second, independent hash, so changing the holdout does not
move anyone between arms. The arm is stored with the user's step 0 when they enter, so a loop
file edited later does not move users already in it.
"""

import hashlib

from app.engine.loops import HOLDOUT, TREATMENT, Loop

PLACES = 10_000


def place(loop_id: str, user_id: str, salt: str = "") -> int:
    """The user's place in [0, PLACES) for one loop (and one draw: `salt`)."""
    digest = hashlib.blake2b(f"{salt}\x00{loop_id}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % PLACES


def arm_of(loop: Loop, user_id: str) -> str | None:
    """The user's arm in the loop (`Loop.arms`), or None for a loop without any."""
    if not loop.arms:
        return None
    if loop.holdout_bp and place(loop.id, user_id) < loop.holdout_bp:
        return HOLDOUT
    arms = loop.experiment
    if not arms:
        return TREATMENT
    total = sum(arm.weight for arm in arms)
    point = place(loop.id, user_id, "experiment") * total // PLACES
    for arm in arms:
        if point < arm.weight:
            return arm.template
        point -= arm.weight
    raise AssertionError("the weights add up to the total")
