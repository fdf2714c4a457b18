"""Job ids: spelled and parsed in one place (`app.engine.job_ids`), and nowhere else."""

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.engine.job_ids import (
    EmailKind,
    JobId,
    JobType,
    email_id,
    email_id_prefix,
    evaluation_id,
    is_evaluation,
    user_of,
)
from app.storage.keys import USER_ID_PATTERN

APP = Path(__file__).parent.parent / "app"
user_ids = st.from_regex(USER_ID_PATTERN, fullmatch=True)
loop_ids = st.from_regex(r"[a-z][a-z0-9_-]{0,30}", fullmatch=True)


@given(user_ids, loop_ids, st.integers(0, 50), st.sampled_from(EmailKind))
def test_an_email_job_id_parses_back_to_its_parts(
    user_id: str, loop_id: str, step: int, reason: EmailKind
) -> None:
    spelled = email_id(user_id, loop_id, step, reason)
    parsed = JobId.parse(spelled)
    assert parsed == JobId(JobType.EMAIL, user_id, loop_id, step, reason)
    assert str(parsed) == spelled
    assert user_of(spelled) == user_id
    assert spelled.startswith(email_id_prefix(user_id))
    assert not is_evaluation(spelled)


@given(user_ids)
def test_an_evaluation_id_parses_back_to_its_user(user_id: str) -> None:
    spelled = evaluation_id(user_id)
    assert JobId.parse(spelled) == JobId(JobType.EVAL, user_id)
    assert str(JobId.parse(spelled)) == spelled
    assert (user_of(spelled), is_evaluation(spelled)) == (user_id, True)


@pytest.mark.parametrize(
    "text",
    ["", "eval|", "eval|a|b", "email|u|loop|x|action", "email|u|loop|0|maybe", "job|u", "email|u"],
)
def test_what_is_not_a_job_id_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"job id|EmailKind"):
        JobId.parse(text)


def test_no_other_module_spells_a_job_id() -> None:
    """A string starting `eval|` or `email|` anywhere in app/ but job_ids.py spells one again."""
    spelled = []
    for path in APP.rglob("*.py"):
        if path.name == "job_ids.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and text.startswith(("eval|", "email|")):
                spelled.append(f"{path.relative_to(APP)}:{node.lineno}")
    assert spelled == []
