"""Loop files with `within:` windows (a milestone trigger's, a condition's with and without a
timeout), and a folder written with them and their templates."""

from pathlib import Path
from textwrap import dedent

LOOPS = {
    "three_projects": """
        type: milestone
        steps:
          - trigger:
              type: action
              action: project_created
              count: 3
              within: 7d
            action: {type: email, template: three_projects}
    """,
    "first_week": """
        type: activation
        steps:
          - trigger: {type: database, table: users, event: insert}
            condition: {type: action, action: page_published, count: 2, within: 7d}
            action: {type: email, template: welcome}
          - delay: 1d
            action: {type: email, template: tips}
    """,
    "invited": """
        type: activation
        steps:
          - trigger: {type: clerk, event: user.created}
            condition: {type: action, any_of: [invite_sent, link_shared], within: 1d, timeout: 3d}
            action: {type: email, template: welcome}
            on_timeout: {type: email, template: nudge}
    """,
    "quick_start": """
        type: milestone
        steps:
          - trigger: {type: action, action: task_done, count: 3, within: 1h}
            action: {type: email, template: three_projects}
    """,
}

TEMPLATES = ("three_projects", "welcome", "tips", "nudge")


def write_loops(folder: Path, loops: dict[str, str] | None = None) -> Path:
    """`folder` with the loops (LOOPS unless told others) and every template they name."""
    (folder / "templates").mkdir(parents=True, exist_ok=True)
    for name in TEMPLATES:
        (folder / "templates" / f"{name}.html").write_text(f"---\nsubject: {name}\n---\n{name}\n")
    for loop_id, text in (LOOPS if loops is None else loops).items():
        (folder / f"{loop_id}.yaml").write_text(dedent(text))
    return folder
