"""The Lua scripts' contracts cannot drift from the Python that calls them: every hash field and
JSON field a script names is one `app.storage.keys` defines, no script spells a key (each comes
in KEYS), and each script's arguments are built by its one named builder (`<script>_args`)."""

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.engine.email_jobs import EmailJob, JobStatus, RenderedEmail
from app.engine.job_ids import batch_member, evaluation_id
from app.storage import keys as k
from app.storage import scripts
from app.storage.batches import BatchRecord
from app.storage.records import decode_job, encode_job

STORAGE = Path(scripts.__file__).parent
LUA_FILES = sorted((STORAGE / "lua").glob("*.lua"))
SCRIPTS = {
    name: script for name, script in vars(scripts).items() if isinstance(script, scripts.Script)
}

HASH_READS = {"HMGET", "HGET", "HEXISTS", "HDEL"}  # every argument after the key is a field
FIELD_NAMES = {*k.USER_FIELDS, *k.STATS_FIELDS, *k.V1_STATS_FIELDS}
FIELD_PREFIXES = (*k.USER_FIELD_PREFIXES, *k.STATS_FIELD_PREFIXES)
STATS_NAMES = {*k.STATS_FIELDS, *k.V1_STATS_FIELDS}
MEMBER_PREFIXES = {evaluation_id(""), batch_member("")}
LIBRARIES = {"string", "table", "redis", "cjson", "math"}
JOB_RECORDS = {"job"}  # a decoded email job (EmailJob JSON)
BATCH_RECORDS = {"batch", "kept"}  # a decoded batch record


def code_of(path: Path) -> str:
    """The script without its comments (`--` to the end of a line, outside a string)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        quoted, cut = False, len(line)
        for i, char in enumerate(line):
            if char == "'":
                quoted = not quoted
            elif not quoted and line.startswith("--", i):
                cut = i
                break
        lines.append(line[:cut])
    return "\n".join(lines)


def split_args(code: str, start: int) -> tuple[list[str], int]:
    """The comma-separated arguments of the call whose `(` is at `start`, and where it ends."""
    args, depth, quoted, current = [], 0, False, ""
    for i in range(start + 1, len(code)):
        char = code[i]
        if char == "'":
            quoted = not quoted
        elif not quoted and char in "([{":
            depth += 1
        elif not quoted and char in ")]}":
            if depth == 0:
                return [*args, current.strip()], i
            depth -= 1
        elif not quoted and char == "," and depth == 0:
            args.append(current.strip())
            current = ""
            continue
        current += char
    raise AssertionError(f"unbalanced call at {start}")


def literal(arg: str) -> str | None:
    """The string an argument is, when it is a literal alone."""
    match = re.fullmatch(r"'([^']*)'", arg.strip())
    return match.group(1) if match else None


def calls(code: str, name: str) -> Iterator[list[str]]:
    for match in re.finditer(rf"(?<![\w.]){re.escape(name)}\(", code):
        args, _ = split_args(code, match.end() - 1)
        yield args


def command_fields(code: str) -> Iterator[tuple[str, str]]:
    """The literal fields of the hash commands (`redis.call('HMGET', key, 'rev', ...)`)."""
    for args in calls(code, "redis.call"):
        command, rest = literal(args[0]), args[2:]
        named = {"HSET": rest[::2], "HINCRBY": rest[:1]}.get(str(command), rest)
        if command in HASH_READS or command in ("HSET", "HINCRBY"):
            for arg in named:
                if (name := literal(arg)) is not None:
                    yield name, f"{command} field"


def table_fields(code: str) -> Iterator[tuple[str, str]]:
    """The fields a script lists to read (`wanted`) or write (`fields`, `add(fields, ...)`)."""
    for args in calls(code, "add"):
        if (name := literal(args[1])) is not None:
            yield name, "add(fields, ...)"
    for match in re.finditer(r"local (wanted|fields) = \{", code):
        args, _ = split_args(code, match.end() - 1)
        for arg in args if match.group(1) == "wanted" else args[::2]:
            if (name := literal(arg)) is not None:
                yield name, f"{match.group(1)} table"
    for match in re.finditer(r"wanted\[[^\]]*\] = ([^\n]*)", code):
        names = re.findall(r"'([^']*)'", match.group(1))
        yield from ((name, "wanted[...]") for name in names if name)


def prefix_fields(code: str) -> Iterator[tuple[str, str]]:
    """The field prefixes a script builds or tests names with (`'a:' .. name`)."""
    for match in re.finditer(r"'([^']*:)' \.\.", code):
        yield match.group(1), "a field's prefix"
    for match in re.finditer(r"string\.sub\([^)]*, 1, \d+\) == '([^']*)'", code):
        if match.group(1) not in MEMBER_PREFIXES:  # a schedule member's, not a field's
            yield match.group(1), "a field's prefix"


def field_uses(code: str) -> Iterator[tuple[str, str]]:
    """(field name, where) for every literal a script uses as a hash field or field prefix."""
    yield from command_fields(code)
    yield from table_fields(code)
    yield from prefix_fields(code)


def stats_uses(code: str) -> Iterator[str]:
    """The stats counters a script bumps by name (settle.lua's `count`, migrate's `grow`)."""
    for function in ("count", "grow"):
        for args in calls(code, function):
            if (name := literal(args[0])) is not None:
                yield name


def known_field(name: str) -> bool:
    if name in FIELD_NAMES or name in FIELD_PREFIXES:
        return True
    return any(name.startswith(prefix) for prefix in FIELD_PREFIXES)


@pytest.mark.parametrize("path", LUA_FILES, ids=lambda path: path.name)
def test_every_hash_field_a_script_names_is_defined_in_keys_py(path: Path) -> None:
    code = code_of(path)
    unknown = sorted({(name, where) for name, where in field_uses(code) if not known_field(name)})
    assert not unknown, f"{path.name} names fields keys.py does not define: {unknown}"
    counters = [name for name in stats_uses(code) if name not in STATS_NAMES]
    counters = [name for name in counters if not name.startswith(k.STATS_FIELD_PREFIXES)]
    assert not counters, f"{path.name} bumps counters keys.py does not define: {counters}"


@pytest.mark.parametrize("path", LUA_FILES, ids=lambda path: path.name)
def test_every_json_field_a_script_reads_is_its_records(path: Path) -> None:
    code = code_of(path)
    job_fields = set(EmailJob.model_fields)
    wrong = []
    for record, field in re.findall(r"(?<![\w.'])([a-z_]\w*)\.([a-z_]\w*)", code):
        if record in LIBRARIES:
            continue
        if record in JOB_RECORDS:
            ok = field in job_fields
        elif record in BATCH_RECORDS:
            ok = field in k.BATCH_FIELDS
        else:
            ok = False  # a record the test does not know: name it above
        if not ok:
            wrong.append(f"{record}.{field}")
    for field in re.findall(r"cjson\.decode\([^()]*(?:\([^()]*\))?[^()]*\)\.(\w+)", code):
        if field not in k.BATCH_FIELDS:
            wrong.append(f"cjson.decode(...).{field}")
    assert not wrong, f"{path.name} reads JSON fields no record defines: {wrong}"


@pytest.mark.parametrize("path", LUA_FILES, ids=lambda path: path.name)
def test_no_script_spells_a_key(path: Path) -> None:
    """Each key comes in KEYS (or a variable holding one of them): a script never builds one."""
    code = code_of(path)
    spelled = []
    for args in calls(code, "redis.call"):
        if len(args) < 2 or literal(args[0]) in {"TIME"}:
            continue
        key = args[1]
        taken = re.fullmatch(r"KEYS\[[^\]]+\]|[a-z_]\w*|unpack\(KEYS.*\)", key)
        if not taken:
            spelled.append(key)
    assert not spelled, f"{path.name} builds keys instead of taking them in KEYS: {spelled}"
    assert "activation:" not in code


def test_a_batch_record_writes_only_the_fields_keys_py_names() -> None:
    record = BatchRecord("b1", 0, (("email|u|l|0|action", 1),), first=1, attempts=2,
                         body=("email|u|l|0|action",), error="x",
                         outcome={"email|u|l|0|action": ("sent", "re_1")})  # fmt: skip
    written = set(json.loads(record.encode()))
    assert written <= set(k.BATCH_FIELDS)
    assert set(k.BATCH_FIELDS) - written == {"lease"}  # the lease is the scripts' own


def test_a_stored_job_writes_every_field_a_script_reads_that_has_a_default() -> None:
    """settle.lua, unsubscribe.lua and `waits_in` read a job's status and seq: encode_job
    writes them even at their defaults, so no script guesses (a null, like `batch`, is none)."""
    job = EmailJob(id="email|u|l|0|action", user_id="u", loop_id="l", step=0, kind="action",
                   template="welcome", queued_at=1, due_at=1)  # fmt: skip
    read = set(re.findall(r"\bjob\.(\w+)", "".join(code_of(path) for path in LUA_FILES)))
    defaulted = {name for name in read if EmailJob.model_fields[name].default is not None}
    assert defaulted == {"status", "seq"}
    assert defaulted <= set(json.loads(encode_job(job)))


def test_a_sent_job_stores_its_summary_and_nothing_empty() -> None:
    """A sent job keeps to whom and the subject, and round-trips: no empty sender, body or
    headers (they cost every sent email a size class of Redis memory)."""
    rendered = RenderedEmail(sender="Team <t@example.org>", to="ada@example.org", subject="Hi",
                             html="<p>Hi</p>", text="Hi", headers={"X": "1"})  # fmt: skip
    job = EmailJob(id="email|u|l|0|action", user_id="u", loop_id="l", step=0, kind="action",
                   template="welcome", queued_at=1, due_at=1, status=JobStatus.SENT,
                   rendered=rendered.summary())  # fmt: skip
    stored = json.loads(encode_job(job))
    assert stored["rendered"] == {"to": "ada@example.org", "subject": "Hi"}
    assert decode_job("u", "j:l|0|action", encode_job(job)) == job


def test_the_checker_sees_a_drifted_field() -> None:
    """The checks above find what they look for: a misspelt field, an unknown JSON field and a
    spelled key in a script are reported."""
    drifted = (
        "local user = redis.call('HMGET', KEYS[1], 'leese', 'rev')\n"
        "add(fields, 'unsubbed', 1)\n"
        "local x = job.statuss\n"
        "redis.call('ZADD', 'activation:schedule', 1, 'm')\n"
    )
    assert {name for name, _ in field_uses(drifted) if not known_field(name)} == {
        "leese",
        "unsubbed",
    }
    assert ("job", "statuss") in re.findall(r"(?<![\w.'])([a-z_]\w*)\.([a-z_]\w*)", drifted)
    assert [args[1] for args in calls(drifted, "redis.call")][1] == "'activation:schedule'"


# --- each script's arguments built by one named builder -----------------------------------------


def storage_modules() -> dict[str, ast.Module]:
    return {
        path.name: ast.parse(path.read_text(encoding="utf-8"))
        for path in sorted(STORAGE.glob("*.py"))
    }


def builders() -> dict[str, list[str]]:
    """`<name>_args` functions, by name, with the modules defining them."""
    found: dict[str, list[str]] = {}
    for module, tree in storage_modules().items():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_args"):
                found.setdefault(node.name, []).append(module)
    return found


def test_every_script_has_one_named_builder() -> None:
    defined = builders()
    for name in SCRIPTS:
        builder = f"{name.lower()}_args"
        found = defined.get(builder, [])
        assert len(found) == 1, f"{name} needs exactly one `{builder}` in app/storage: {found}"


def script_runs() -> Iterator[tuple[str, str, ast.expr, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(module, script constant, the args expression, the function) for every `self.run(...)`."""
    for module, tree in storage_modules().items():
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "run"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "self"
                    and len(node.args) == 3
                    and isinstance(node.args[0], ast.Name)
                    and node.args[0].id in SCRIPTS
                ):
                    yield module, node.args[0].id, node.args[2], function


def built_by(expr: ast.expr, function: ast.AST) -> str | None:
    """The function that built an args expression: a call, or a name assigned from one."""
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
        return expr.func.id
    if isinstance(expr, ast.Name):
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == expr.id for target in node.targets
            ):
                return built_by(node.value, function)
    return None


def test_every_script_run_passes_its_builders_arguments() -> None:
    runs = list(script_runs())
    assert {name for _, name, _, _ in runs} == set(SCRIPTS) - {"NAME"}, "every script is run"
    wrong = [
        f"{module}: {name} run with {ast.unparse(args)}"
        for module, name, args, function in runs
        if built_by(args, function) != f"{name.lower()}_args"
    ]
    assert not wrong, wrong
