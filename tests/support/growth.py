"""Loop files for the growth features (`where:`, audiences and variants, holdouts, a query
condition, experiments), a folder written with them and their templates, and user ids that land
in a chosen arm."""

import uuid
from pathlib import Path
from textwrap import dedent

from app.engine.assign import arm_of
from app.engine.loops import Loop

LOOPS = {
    "team": """
        type: activation
        audience:
          email: {ends_with: "@acme.dev"}
        holdout: 20%
        steps:
          - trigger: {type: database, table: users, event: insert}
            condition:
              type: action
              action: project_created
              where:
                members: {gte: 3}
                template: saas
              timeout: 1d
            action:
              type: email
              template: welcome
              variants:
                - when: {public_metadata.plan: pro}
                  template: welcome_pro
    """,
    "upgrade": """
        type: milestone
        steps:
          - trigger: {type: action, action: plan_changed, where: {plan: {in: [pro, team]}}}
            action: {type: email, template: upgraded}
    """,
    "sql": """
        type: activation
        steps:
          - trigger: {type: clerk, event: user.created}
            condition:
              type: query
              query: >-
                SELECT * FROM user_actions WHERE user_id = $1
                AND action_type = 'invite_sent' AND (properties->>'count')::int >= 2
              timeout: 2d
            action: {type: email, template: welcome}
    """,
}

# Experiments: two arms alone; a holdout beside three arms.
EXPERIMENTS = {
    "trial": """
        type: activation
        steps:
          - trigger: {type: database, table: users, event: insert}
            condition: {type: action, action: project_created, timeout: 1d}
            action:
              type: email
              template: welcome
              experiment:
                - {template: welcome_a, weight: 50}
                - {template: welcome_b, weight: 50}
    """,
    "three": """
        type: activation
        holdout: 20%
        steps:
          - trigger: {type: database, table: users, event: insert}
            condition: {type: action, action: project_created, timeout: 1d}
            action:
              type: email
              template: welcome
              experiment:
                - {template: welcome, weight: 1}
                - {template: welcome_a, weight: 1}
                - {template: welcome_b, weight: 1}
    """,
}

TEMPLATES = ("welcome", "welcome_pro", "upgraded", "welcome_a", "welcome_b")


def write_loops(folder: Path, loops: dict[str, str]) -> Path:
    (folder / "templates").mkdir(exist_ok=True)
    for name in TEMPLATES:
        (folder / "templates" / f"{name}.html").write_text(f"---\nsubject: {name}\n---\n{name}\n")
    for loop_id, text in loops.items():
        (folder / f"{loop_id}.yaml").write_text(dedent(text))
    return folder


def users_in_arm(loop: Loop, arm: str, count: int) -> list[str]:
    """`count` new user ids whose place in `loop` puts them in `arm`."""
    found: list[str] = []
    while len(found) < count:
        user_id = f"user_{arm[:8]}{uuid.uuid4().hex[:12]}"
        if arm_of(loop, user_id) == arm:
            found.append(user_id)
    return found
