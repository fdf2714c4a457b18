"""Fuzzing: the HTTP API against its own OpenAPI document (schemathesis), and the parsers a user
feeds by hand (hypothesis): loop files, durations and SQL conditions. Each either works or fails
with its own error type, never anything else; bounded example counts, no shrinking delays."""

import json
import string
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans

from app.engine.conditions import ACTION_NAME_PATTERN, QueryCondition, translate_query
from app.engine.loop_loading import load_loop
from app.engine.loops import MAX_DURATION_MS, UNIT_MS, Loop, parse_duration
from app.errors import LoopFileError, QueryError
from app.main import create_app
from app.settings import Settings
from tests.conftest import API_KEY, AUTH, SHIPPED_LOOPS, SIGNING_SECRET, load_fixture, sign

TEMPLATES = SHIPPED_LOOPS / "templates"
FUZZ = settings(
    max_examples=30,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: a failure shows as is
    suppress_health_check=list(HealthCheck),
)


# --- the HTTP API against its OpenAPI document ---------------------------------------------


def embedded_settings() -> Settings:
    """The embedded store and no Resend key; explicit Nones so the environment cannot leak in."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=None,
        upstash_redis_rest_url=None,
        upstash_redis_rest_token=None,
        resend_api_key=None,
        activation_api_key=API_KEY,
        clerk_webhook_signing_secret=SIGNING_SECRET,
        resend_webhook_secret=SIGNING_SECRET,  # configured, so fuzzed events get 4xx, not 503
        loops_dir=SHIPPED_LOOPS,
        worker_in_process=False,
        key_prefix="fuzz:",
        metrics_token="fuzz-metrics-token",
    )


APP = create_app(embedded_settings())
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def stop_the_fuzzed_app() -> Iterator[None]:
    """schemathesis starts the app's lifespan on first use and keeps it; stop it with the module."""
    yield
    shutdown_lifespans()


def test_the_fuzzed_schema_covers_every_documented_route() -> None:
    documented = {
        (path, method.upper()) for path, item in APP.openapi()["paths"].items() for method in item
    }
    fuzzed = {(op.ok().path, op.ok().method.upper()) for op in SCHEMA.get_all_operations()}
    assert fuzzed == documented
    assert ("/v1/actions", "POST") in fuzzed


@SCHEMA.parametrize()
@FUZZ
def test_no_request_makes_the_api_fail(case: Any) -> None:
    response = case.call(headers=AUTH)
    case.validate_response(response, checks=[not_a_server_error])


@SCHEMA.parametrize()
@FUZZ
def test_no_request_without_the_key_makes_the_api_fail(case: Any) -> None:
    response = case.call(headers={"Authorization": "Bearer wrong"})
    case.validate_response(response, checks=[not_a_server_error])
    if case.path.startswith("/v1/"):
        assert not 200 <= response.status_code < 300, response.text  # nothing is let through


# --- requests the fuzzer found (or came close to) that fail with a 500 -----------------------


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(embedded_settings())
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


def signed_created(**data: Any) -> tuple[bytes, dict[str, str]]:
    event = load_fixture("clerk_user_created.json")
    event["data"].update(data)
    body = json.dumps(event).encode()  # ASCII: a lone surrogate travels as a \ud800 escape
    return body, sign(body)


@pytest.mark.parametrize("request_kind", ["action", "user", "webhook"])
async def test_user_id_with_an_information_separator_is_refused_not_a_500(
    client: httpx.AsyncClient, request_kind: str
) -> None:
    user_id = "user_a\x1eb"
    if request_kind == "action":
        body = {"user_id": user_id, "action": "first_project_created"}
        response = await client.post("/v1/actions", json=body, headers=AUTH)
    elif request_kind == "user":
        response = await client.get("/v1/users/user_a%1Eb", headers=AUTH)
    else:
        content, headers = signed_created(id=user_id)
        response = await client.post("/webhooks/clerk", content=content, headers=headers)
    assert response.status_code in (400, 404, 422), response.text


@pytest.mark.parametrize("field", ["id", "user_id"])
async def test_lone_surrogate_in_an_action_is_refused_not_a_500(
    client: httpx.AsyncClient, field: str
) -> None:
    action = {"user_id": "user_s", "action": "first_project_created", "id": "evt_s"}
    raw = json.dumps(action).replace(f'"{action[field]}"', f'"{action[field]}\\ud800"')
    headers = {**AUTH, "content-type": "application/json"}
    response = await client.post("/v1/actions", content=raw.encode(), headers=headers)
    assert response.status_code == 422, response.text


async def test_lone_surrogate_in_properties_does_not_break_the_user(
    client: httpx.AsyncClient,
) -> None:
    raw = '{"user_id": "user_p", "action": "first_project_created", "properties": {"x": "\\ud800"}}'
    headers = {**AUTH, "content-type": "application/json"}
    accepted = await client.post("/v1/actions", content=raw.encode(), headers=headers)
    state = await client.get("/v1/users/user_p", headers=AUTH)
    assert accepted.status_code in (202, 422)
    assert state.status_code in (200, 404), state.text


@pytest.mark.parametrize("occurred_at", [-100_000_000_000_000_000, -(10**30)])
async def test_an_ancient_occurred_at_does_not_break_the_user(
    client: httpx.AsyncClient, occurred_at: int
) -> None:
    body = {"user_id": "user_old", "action": "first_project_created", "occurred_at": occurred_at}
    accepted = await client.post("/v1/actions", json=body, headers=AUTH)
    state = await client.get("/v1/users/user_old", headers=AUTH)
    assert accepted.status_code in (202, 422)
    assert state.status_code in (200, 404), state.text


async def test_signed_webhook_with_a_lone_surrogate_is_a_400(client: httpx.AsyncClient) -> None:
    content, headers = signed_created(first_name="\ud800")
    response = await client.post("/webhooks/clerk", content=content, headers=headers)
    assert response.status_code == 400, response.text


@pytest.mark.parametrize("path", ["/webhooks/clerk", "/webhooks/resend", "/v1/actions"])
async def test_json_nested_past_the_parsers_depth_is_refused_not_a_500(
    client: httpx.AsyncClient, path: str
) -> None:
    depth = 100_000  # 200 KB: under the size limits, past every JSON parser's recursion limit
    body = b'{"type":"user.created","data":{"x":' + b"[" * depth + b"]" * depth + b"}}"
    headers = {**sign(body), **AUTH} if path.startswith("/webhooks") else AUTH
    response = await client.post(path, content=body, headers=headers)
    assert response.status_code in (400, 422), response.text


# --- loop files -----------------------------------------------------------------------------

KEYS = [
    "type", "opinion", "steps", "trigger", "condition", "action", "on_timeout", "delay",
    "recovery", "table", "event", "count", "timeout", "template", "provider", "personalization",
    "query", "any_of", "retries", "backoff", "initial_delay", "max_delay", "name",
]  # fmt: skip
WORDS = [
    "activation", "milestone", "database", "users", "insert", "clerk", "user.created", "action",
    "email", "resend", "query", "activation_welcome", "activation_nudge", "missing_template",
    "first_project_created", "5m", "1d", "0s", "30", "1 h", "exponential", "linear", "fixed",
    "{{user.name}}", "{{ nope", "SELECT * FROM user_actions WHERE user_id = $1 AND "
    "action_type = 'x'", "SELECT 1",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(),
    st.sampled_from(WORDS),
    st.text(max_size=20),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(-3, 3))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)
BASE_LOOP: dict[str, Any] = yaml.safe_load((SHIPPED_LOOPS / "activation.yaml").read_text())


def mutate(data: Any, draw: Any) -> Any:
    """The shipped loop with one place, somewhere inside, replaced, removed or given a stray key."""
    if not isinstance(data, dict | list) or not data:
        return draw(values)
    places = list(data) if isinstance(data, dict) else list(range(len(data)))
    place = draw(st.sampled_from(places))
    copy: Any = dict(data) if isinstance(data, dict) else list(data)
    choice = draw(st.sampled_from(["delete", "add", "replace", "deeper", "deeper", "deeper"]))
    if choice == "delete":
        del copy[place]
    elif choice == "add" and isinstance(copy, dict):
        copy[draw(keys)] = draw(values)
    elif choice == "replace":
        copy[place] = draw(values)
    else:
        copy[place] = mutate(copy[place], draw)
    return copy


@pytest.fixture(scope="module")
def loop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzzed_loops")


def load_or_refuse(path: Path) -> Loop | None:
    """Load the file: a Loop or a LoopFileError, anything else fails the test."""
    try:
        return load_loop(path, TEMPLATES)
    except LoopFileError as exc:
        message = str(exc)
    assert message.startswith(str(path))  # `<file>: <field>: <reason>`
    return None


def write_yaml(loop_dir: Path, data: Any, name: str = "fuzzed") -> Path:
    path = loop_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@FUZZ
@given(data=st.dictionaries(keys, values, max_size=5))
def test_generated_mappings_load_or_raise_loop_file_error(loop_dir: Path, data: Any) -> None:
    load_or_refuse(write_yaml(loop_dir, data))


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_mutated_shipped_loop_loads_or_raises_loop_file_error(loop_dir: Path, data: Any) -> None:
    load_or_refuse(write_yaml(loop_dir, mutate(BASE_LOOP, data.draw)))


# What YAML accepts in a stream; other characters are the subject of an xfail test below.
yaml_text = st.text(
    st.characters(codec="utf-8").filter(lambda c: not yaml.reader.Reader.NON_PRINTABLE.match(c)),
    max_size=200,
)


@settings(FUZZ, max_examples=100)
@given(raw=st.one_of(st.binary(max_size=200), yaml_text.map(str.encode)))
def test_arbitrary_bytes_load_or_raise_loop_file_error(loop_dir: Path, raw: bytes) -> None:
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        text = ""
    if yaml.reader.Reader.NON_PRINTABLE.search(text):
        return  # see test_a_control_character_is_a_loop_file_error
    path = loop_dir / "raw.yaml"
    path.write_bytes(raw)
    load_or_refuse(path)


@pytest.mark.parametrize("character", ["\x07", "\x81", "\ufffe"])
def test_a_control_character_is_a_loop_file_error(loop_dir: Path, character: str) -> None:
    path = loop_dir / "control.yaml"
    path.write_text(f"type: activation\nopinion: bell{character}\n", encoding="utf-8")
    assert load_or_refuse(path) is None


@FUZZ
@given(stem=st.text(alphabet=string.ascii_letters + string.digits + "-_. ", min_size=1))
def test_any_file_name_loads_or_raises_loop_file_error(loop_dir: Path, stem: str) -> None:
    path = write_yaml(loop_dir, BASE_LOOP, name=stem.strip(". ") or "x")
    loop = load_or_refuse(path)
    assert loop is None or loop.id == path.stem


def test_shipped_loop_round_trips_through_yaml(loop_dir: Path) -> None:
    loop = load_or_refuse(write_yaml(loop_dir, BASE_LOOP, name="activation"))
    assert loop is not None
    assert loop.steps[0].condition is not None


def test_alias_bomb_is_refused_quickly(loop_dir: Path) -> None:
    """Nested YAML aliases ("billion laughs") must not blow up time or memory."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 9)]
    path = loop_dir / "bomb.yaml"
    path.write_text("\n".join(lines) + "\ntype: activation\nopinion: x\nsteps: *a8\n")
    assert load_or_refuse(path) is None


def test_deeply_nested_query_is_a_loop_file_error(loop_dir: Path) -> None:
    query = "SELECT * FROM user_actions WHERE user_id = $1 AND " + "(" * 60
    query += "action_type = 'x'" + ")" * 60
    data = {**BASE_LOOP, "steps": [{**BASE_LOOP["steps"][0]}]}
    data["steps"][0]["condition"] = {"type": "query", "query": query, "timeout": "5m"}
    assert load_or_refuse(write_yaml(loop_dir, data)) is None


# --- durations ------------------------------------------------------------------------------

units = st.sampled_from(sorted(UNIT_MS))


@FUZZ
@given(unit=units, data=st.data())
def test_duration_round_trips(unit: str, data: Any) -> None:
    count = data.draw(st.integers(min_value=1, max_value=MAX_DURATION_MS // UNIT_MS[unit]))
    zeros = data.draw(st.sampled_from(["", "0", "00"]))
    assert parse_duration(f"{zeros}{count}{unit}") == count * UNIT_MS[unit]


@FUZZ
@given(unit=units, data=st.data())
def test_zero_and_overlong_durations_are_refused(unit: str, data: Any) -> None:
    too_long = MAX_DURATION_MS // UNIT_MS[unit] + 1
    count = data.draw(st.one_of(st.just(0), st.integers(min_value=too_long, max_value=10**30)))
    with pytest.raises(ValueError, match=r"duration|longer"):
        parse_duration(f"{count}{unit}")


@settings(FUZZ, max_examples=200)
@given(text=st.one_of(st.text(max_size=30), st.from_regex(r"\A[0-9 ]{0,6}[smhdwSMH ]{0,2}\Z")))
def test_any_text_is_a_duration_or_a_value_error(text: str) -> None:
    try:
        duration_ms = parse_duration(text)
    except ValueError:
        return
    assert 0 < duration_ms <= MAX_DURATION_MS
    assert text[:-1].isascii()
    assert text[:-1].isdigit()
    assert text[-1] in UNIT_MS


@FUZZ
@given(value=st.one_of(st.none(), st.integers(), st.floats(), st.lists(st.text(), max_size=2)))
def test_a_duration_that_is_not_text_is_a_value_error(value: Any) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(value)


# --- SQL conditions -------------------------------------------------------------------------

SQL_WORDS = [
    "SELECT", "select", "*", "COUNT(*)", "count(*)", "FROM", "user_actions", "ua", "AS", "WHERE",
    "user_id", "ua.user_id", "=", "$1", "$2", "AND", "OR", "NOT", "action_type", "IN", "(", ")",
    ",", "'x'", "'a'", "''", "GROUP BY", "HAVING", ">=", ">", "<=", "3", "0", "-1", "created_at",
    "properties", "JOIN", "users", "ORDER BY", "LIMIT", "1", ";", "UNION", "WITH", "--", "/*",
]  # fmt: skip
sql_soup = st.lists(st.sampled_from(SQL_WORDS), max_size=25).map(" ".join)


@settings(FUZZ, max_examples=200)
@given(sql=st.one_of(st.text(max_size=80), sql_soup))
def test_any_text_translates_or_raises_query_error(sql: str) -> None:
    try:
        condition = translate_query(sql)
    except QueryError:
        return
    assert isinstance(condition, QueryCondition)
    assert condition.count >= 1


action_names = st.from_regex(ACTION_NAME_PATTERN.replace("^", r"\A").replace("$", r"\Z"))


def keyword(word: str, draw: Any) -> str:
    """A keyword in any letter case, followed by any whitespace."""
    cased = draw(st.sampled_from([word, word.lower(), word.title()]))
    return cased + draw(st.sampled_from([" ", "  ", "\n", "\t "]))


@st.composite
def valid_queries(draw: Any) -> tuple[str, tuple[str, ...], int]:
    """A query in one of the documented shapes, and the actions and count it means."""
    actions = tuple(draw(st.lists(action_names, min_size=1, max_size=4, unique=True)))
    alias = draw(st.sampled_from(["", "ua"]))
    column = (alias or "user_actions") + "." if draw(st.booleans()) else ""
    count = draw(st.one_of(st.none(), st.integers(min_value=1, max_value=1000)))
    strict = draw(st.booleans())
    quoted = ", ".join(f"'{name}'" for name in actions)
    named = (
        f"{column}action_type = {quoted}"
        if len(actions) == 1 and draw(st.booleans())
        else f"{column}action_type IN ({quoted})"
    )
    where = [f"{column}user_id = $1", named]
    if draw(st.booleans()):
        where.reverse()
    selected = "COUNT(*)" if count is not None and draw(st.booleans()) else "*"
    sql = f"{keyword('SELECT', draw)}{selected} {keyword('FROM', draw)}user_actions {alias} "
    sql += keyword("WHERE", draw) + f" {keyword('AND', draw)}".join(where)
    if count is not None:
        if len(actions) > 1 or draw(st.booleans()):
            sql += f" {keyword('GROUP BY', draw)}{column}action_type"
        bound = f"{'>' if strict else '>='} {count - 1 if strict else count}"
        sql += f" {keyword('HAVING', draw)}COUNT(*) {bound}"
    return sql, actions, count or 1


@settings(FUZZ, max_examples=100)
@given(query=valid_queries())
def test_valid_queries_translate_to_their_actions_and_count(
    query: tuple[str, tuple[str, ...], int],
) -> None:
    sql, actions, count = query
    assert translate_query(sql) == QueryCondition(actions, count)


@pytest.mark.parametrize("having", ["COUNT(*) >= 0", "COUNT(*) > -1", "0 <= COUNT(*)"])
def test_a_count_that_always_holds_is_refused(having: str) -> None:
    where = "user_id = $1 AND action_type = 'x'"
    sql = f"SELECT * FROM user_actions WHERE {where} HAVING {having}"  # noqa: S608
    with pytest.raises(QueryError):
        translate_query(sql)


@FUZZ
@given(actions=st.lists(action_names, min_size=2, max_size=4, unique=True), count=st.integers(2, 9))
def test_several_actions_counted_together_need_group_by(actions: list[str], count: int) -> None:
    quoted = ", ".join(f"'{name}'" for name in actions)
    where = f"user_id = $1 AND action_type IN ({quoted})"
    sql = f"SELECT * FROM user_actions WHERE {where} HAVING COUNT(*) >= {count}"  # noqa: S608
    with pytest.raises(QueryError, match="GROUP BY action_type"):
        translate_query(sql)


def test_an_empty_in_list_is_refused() -> None:
    with pytest.raises(QueryError):
        translate_query("SELECT * FROM user_actions WHERE user_id = $1 AND action_type IN ()")


def test_deeply_nested_query_is_a_query_error() -> None:
    sql = "SELECT * FROM user_actions WHERE user_id = $1 AND " + "(" * 60
    with pytest.raises(QueryError):
        translate_query(sql + "action_type = 'x'" + ")" * 60)
