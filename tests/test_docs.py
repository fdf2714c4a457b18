"""The docs are code: every example in README.md and docs/ runs here, and README.md's links resolve.

Each fenced block is treated by its language, as docs/contributing.md says ("Examples are
tested"): `sh` runs (a transcript's shown output is compared), `python` runs, `yaml` is loaded by
the app's loop loader, `html+jinja` replaces a shipped template and the loops are loaded again,
`ini` names only settings of .env.example, `json` parses; `text`, `ts`, `tsx` and `mermaid` are
shown, not run. An HTML comment right above a block, `<!-- docs-test: ... -->`, says more: `skip:
<reason>`, `setup` (commands run first), `same-as: <loop file>`, `loops: <folder>`, `template:
<name>`, `yaml-only: <reason>`, `startup-log`.
"""

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

# The app's loop loader, named in this one place: its module moves with the app's layout.
from app.engine.loop_loading import load_loop, read_loops
from app.main import create_app
from app.settings import Settings
from tests.conftest import free_port, served_routes, uvicorn_thread

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
VENV_BIN = Path(sys.executable).parent
API_KEY = "docs-example-api-key"
METRICS_TOKEN = "docs-example-metrics-token"
SIGNING_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LOCAL_SERVICE = re.compile(r"\b(?:127\.0\.0\.1|localhost):8000\b")
RUN = {"sh", "python", "yaml", "html+jinja", "ini", "json", "text"}  # `text`: if `startup-log`
SHOWN_NOT_RUN = {"ts", "tsx", "mermaid"}
DIRECTIVES = {"skip", "setup", "same-as", "loops", "template", "yaml-only", "startup-log"}
TIMEOUT_S = 60
# What the docs' webhook steps read from the environment (`${NAME}`), as a reader's would hold
DOCS_ENVIRONMENT = {
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXX",
    "CRM_WEBHOOK_URL": "https://crm.example.com/hooks/activation",
    "TEAM_WEBHOOK_SECRET": SIGNING_SECRET,
}


# --- the blocks -----------------------------------------------------------------------------------

FENCE = re.compile(r"^```(?P<lang>\S*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SNIPPET = re.compile(r'^--8<-- "(?P<path>[^"]+)"$', re.MULTILINE)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    body: str
    says: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> Iterator[Block]:
    text = page.read_text(encoding="utf-8")
    for fence in FENCE.finditer(text):
        body = SNIPPET.sub(lambda m: (ROOT / m["path"]).read_text(encoding="utf-8"), fence["body"])
        line = text.count("\n", 0, fence.start()) + 1
        yield Block(page, line, fence["lang"], body, directives_above(text[: fence.start()]))


def directives_above(before: str) -> dict[str, str]:
    """The `<!-- docs-test: KEY[: VALUE] -->` comments right above a block (blank lines allowed)."""
    says: dict[str, str] = {}
    before = before.rstrip()
    while before.endswith("-->") and "<!--" in before:
        start = before.rindex("<!--")
        comment = before[start + 4 : -3].strip()
        before = before[:start].rstrip()
        if comment.startswith("docs-test:"):
            first, _, lines = comment.removeprefix("docs-test:").strip().partition("\n")
            key, _, value = first.partition(":")  # `setup` takes the lines after it
            says[key.strip()] = (value if key.strip() != "setup" else lines).strip()
    return says


BLOCKS = [block for page in PAGES for block in blocks_of(page)]


# --- what every block must say --------------------------------------------------------------------


def test_the_docs_have_examples_of_every_kind_that_runs() -> None:
    assert {"sh", "python", "yaml", "html+jinja", "ini", "json"} <= {b.lang for b in BLOCKS}


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_every_block_says_how_it_is_tested(block: Block) -> None:
    assert block.lang in RUN | SHOWN_NOT_RUN, (
        f"{block.name}: a block needs a language this test knows "
        f"({', '.join(sorted(RUN | SHOWN_NOT_RUN))})"
    )
    assert set(block.says) <= DIRECTIVES, f"{block.name}: unknown {set(block.says) - DIRECTIVES}"
    for key in ("skip", "yaml-only"):
        assert key not in block.says or block.says[key], f"{block.name}: {key} needs a reason"
    assert block.lang != "html+jinja" or "template" in block.says, f"{block.name}: which template?"


# --- running them ---------------------------------------------------------------------------------


def runs(block: Block) -> bool:
    return block.lang in RUN and (block.lang != "text" or "startup-log" in block.says)


@pytest.mark.parametrize("block", [b for b in BLOCKS if runs(b)], ids=lambda b: b.name)
def test_example(block: Block, tmp_path: Path) -> None:
    if "skip" in block.says:
        pytest.skip(f"{block.name}: {block.says['skip']}")
    RUNNERS[block.lang](block, tmp_path)


def run_sh(block: Block, tmp_path: Path) -> None:
    with workspace(block, tmp_path) as work:
        if work.setup:
            work.bash(f"set -eo pipefail\n{FAIL_ON_ERROR_ANSWER}\n{work.setup}")
        if TRANSCRIPT.search(block.body):
            for command, shown in transcript(work.local(block.body)):
                assert_shown(shown, work.bash(command, check=False), block)
        else:
            script = MAKE_RUN.sub("docs_make_run", work.local(block.body))
            work.bash(f"set -eo pipefail\n{FAIL_ON_ERROR_ANSWER}\n{SERVE_FUNCTION}\n{script}")


def run_python(block: Block, tmp_path: Path) -> None:
    with workspace(block, tmp_path) as work:
        work.run([str(VENV_BIN / "python"), "-"], block.body)


def run_yaml(block: Block, tmp_path: Path) -> None:
    data = yaml.safe_load(block.body)
    if "yaml-only" in block.says:
        return
    folder = shipped_loops_copy(tmp_path)
    for name in templates_named(data):
        template = folder / "templates" / f"{name}.html"
        if not template.exists():
            template.write_text("---\nsubject: An example\n---\n<p>An example.</p>\n")
    same_as = block.says.get("same-as")
    path = folder / (Path(same_as).name if same_as else "docs_example.yaml")
    path.write_text(block.body, encoding="utf-8")
    loop = load_loop(path, folder / "templates", DOCS_ENVIRONMENT)
    if same_as:
        shipped = load_loop(ROOT / same_as, ROOT / "loops" / "templates")
        assert dataclasses.replace(loop, source=shipped.source) == shipped, (
            f"{block.name} reads differently from {same_as}"
        )


def run_template(block: Block, tmp_path: Path) -> None:
    folder = shipped_loops_copy(tmp_path)
    (folder / "templates" / f"{block.says['template']}.html").write_text(block.body)
    _, problems = read_loops(folder)
    assert not problems, "\n".join(map(str, problems))


def run_ini(block: Block, tmp_path: Path) -> None:
    settings = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", env_example(), re.MULTILINE))
    named = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", block.body, re.MULTILINE))
    assert named, f"{block.name} names no setting"
    assert named <= settings, f"{block.name}: not in .env.example: {sorted(named - settings)}"


def run_json(block: Block, tmp_path: Path) -> None:
    json.loads(block.body)


def run_text(block: Block, tmp_path: Path) -> None:
    """A `text` block marked `startup-log`: the paragraph `activation serve` logs as it starts,
    with nothing configured."""
    with workspace(block, tmp_path) as work:
        log = work.bash(f"set -e\n{SERVE_FUNCTION}\ndocs_make_run\ncat serve.log")
        shown = work.local(block.body)
    assert " ".join(shown.split()) in " ".join(log.split()), log


RUNNERS: dict[str, Callable[[Block, Path], None]] = {
    "sh": run_sh,
    "python": run_python,
    "yaml": run_yaml,
    "html+jinja": run_template,
    "ini": run_ini,
    "json": run_json,
    "text": run_text,
}


# --- where shell and Python examples run ----------------------------------------------------------

FAIL_ON_ERROR_ANSWER = 'curl() { command curl --fail-with-body "$@"; }'
MAKE_RUN = re.compile(r"^make run\b", re.MULTILINE)
SERVE_FUNCTION = """docs_make_run() {  # `make run` in the background, on this block's port
  activation serve --host 127.0.0.1 --port "$DOCS_PORT" > serve.log 2>&1 &
  DOCS_SERVE_PID=$!
  trap 'kill $DOCS_SERVE_PID; wait $DOCS_SERVE_PID || true' EXIT
  for _ in $(seq 300); do
    command curl -sf "http://127.0.0.1:$DOCS_PORT/health" > /dev/null && return 0
    sleep 0.1
  done
  cat serve.log >&2
  return 1
}"""


@dataclass
class Workspace:
    """A block's folder (a copy of the loops, `.venv` linked), its environment and service."""

    folder: Path
    env: dict[str, str]
    port: int
    setup: str

    def local(self, text: str) -> str:
        """`text` with 127.0.0.1:8000 and localhost:8000 pointed at this block's service."""
        return LOCAL_SERVICE.sub(f"127.0.0.1:{self.port}", text)

    def bash(self, script: str, check: bool = True) -> str:
        return self.run(["bash", "-c", script], check=check)

    def run(self, command: list[str], stdin: str = "", check: bool = True) -> str:
        """`command`'s output (stderr in it); in a process group of its own, ended with it, so
        nothing it started in the background outlives it."""
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
            env=self.env,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(stdin, timeout=TIMEOUT_S)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if check and process.returncode != 0:
            pytest.fail(f"exit status {process.returncode}:\n{command[-1]}\n---\n{output}")
        return output


@contextmanager
def workspace(block: Block, tmp_path: Path) -> Iterator[Workspace]:
    folder = tmp_path / "work"
    folder.mkdir()
    shutil.copytree(ROOT / block.says.get("loops", "loops"), folder / "loops")
    (folder / ".venv").symlink_to(ROOT / ".venv")
    port = free_port()
    env = {
        **clean_env(),
        "DOCS_REPO": str(ROOT),
        "DOCS_PORT": str(port),
        "ACTIVATION_URL": f"http://127.0.0.1:{port}",
    }
    work = Workspace(folder, env, port, "")
    work.setup = work.local(block.says.get("setup", ""))
    with ExitStack() as stack:
        if needs_service(block):
            stack.enter_context(service(folder / "loops", port))
            env |= {
                "ACTIVATION_API_KEY": API_KEY,
                "METRICS_TOKEN": METRICS_TOKEN,
                "CLERK_WEBHOOK_SIGNING_SECRET": SIGNING_SECRET,
            }
        yield work


def needs_service(block: Block) -> bool:
    """Whether the block talks to the service on 127.0.0.1:8000 that it does not start itself."""
    if block.lang == "text" or MAKE_RUN.search(block.body):
        return False
    text = block.body + block.says.get("setup", "")
    return bool(LOCAL_SERVICE.search(text)) or "ACTIVATION_URL" in text


@contextmanager
def service(loops_dir: Path, port: int) -> Iterator[None]:
    """The app on the embedded store, its worker in-process, served on `port`."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        activation_api_key=API_KEY,
        metrics_token=METRICS_TOKEN,
        clerk_webhook_signing_secret=SIGNING_SECRET,
        loops_dir=loops_dir,
        worker_in_process=True,
    )
    with uvicorn_thread(create_app(settings), port=port):
        yield


def clean_env() -> dict[str, str]:
    """This environment without any of the service's settings, the venv's commands first."""
    names = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", env_example(), re.MULTILINE))
    env = {name: value for name, value in os.environ.items() if name not in names}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def env_example() -> str:
    return (ROOT / ".env.example").read_text(encoding="utf-8")


def wait_healthy(base_url: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{base_url} never answered /health")


def shipped_loops_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(ROOT / "loops", tmp_path / "loops"))


def templates_named(data: Any) -> Iterator[str]:
    if isinstance(data, dict):
        if isinstance(data.get("template"), str):
            yield data["template"]
        for value in data.values():
            yield from templates_named(value)
    elif isinstance(data, list):
        for item in data:
            yield from templates_named(item)


# --- transcripts: `$ command` lines, then what it shows -------------------------------------------

TRANSCRIPT = re.compile(r"^\$ ", re.MULTILINE)


def transcript(body: str) -> Iterator[tuple[str, str]]:
    """Each `$ command` (with its lines after a `\\` or inside quotes) and the output shown after
    it."""
    lines = body.splitlines()
    index = 0
    while index < len(lines):
        command = [lines[index].removeprefix("$ ")]
        while unfinished("\n".join(command)):
            index += 1
            command.append(lines[index])
        index += 1
        shown: list[str] = []
        while index < len(lines) and not lines[index].startswith("$ "):
            shown.append(lines[index])
            index += 1
        yield "\n".join(command), "\n".join(shown)


def unfinished(command: str) -> bool:
    try:
        shlex.split(command)
    except ValueError:  # a quote left open
        return True
    return command.endswith("\\")


ELIDED = re.compile(r"(?<=[\[,\s])\.\.\.(?=\s*[\],])")


def assert_shown(shown: str, actual: str, block: Block) -> None:
    """JSON shown: the answer has its shape (keys, types; strings and null/true/false as shown).
    Else the lines as shown, where `...` stands for any text and a `...` line for any lines."""
    expected = shown_json(shown)
    if expected is NOT_JSON:
        if not lines_match(shown.rstrip().splitlines(), actual.rstrip().splitlines()):
            pytest.fail(f"{block.name}: shown\n{shown}\n--- but it printed\n{actual}")
        return
    problems = list(shape_problems(expected, json.loads(actual)))
    if problems:
        pytest.fail(f"{block.name}: {problems}\n--- it printed\n{actual}")


NOT_JSON = object()


def shown_json(shown: str) -> Any:
    """The JSON shown (a `...` item for more items), or NOT_JSON."""
    try:
        return json.loads(ELIDED.sub('"..."', shown))
    except ValueError:
        return NOT_JSON


def lines_match(shown: list[str], actual: list[str]) -> bool:
    if not shown:
        return not actual
    head, *rest = shown
    if head.strip() == "...":
        return any(lines_match(rest, actual[at:]) for at in range(len(actual) + 1))
    return bool(actual) and text_matches(head, actual[0]) and lines_match(rest, actual[1:])


def text_matches(shown: str, actual: str) -> bool:
    pattern = ".*?".join(re.escape(part) for part in shown.rstrip().split("..."))
    return re.fullmatch(pattern, actual.rstrip()) is not None


def shape_problems(shown: Any, actual: Any, at: str = "$") -> Iterator[str]:
    if isinstance(shown, dict):
        yield from mapping_problems(shown, actual, at)
    elif isinstance(shown, list):
        yield from list_problems(shown, actual, at)
    elif isinstance(shown, str):
        if not isinstance(actual, str) or not text_matches(shown, actual):
            yield f"{at}: {shown!r}, got {actual!r}"
    elif isinstance(shown, bool) or shown is None:
        if actual is not shown:
            yield f"{at}: {shown!r}, got {actual!r}"
    elif not isinstance(actual, int | float) or isinstance(actual, bool):
        yield f"{at}: a number, got {actual!r}"


def mapping_problems(shown: dict[str, Any], actual: Any, at: str) -> Iterator[str]:
    if not isinstance(actual, dict) or set(shown) != set(actual):
        yield f"{at}: keys {sorted(shown)}, got {actual!r:.200}"
        return
    for key, value in shown.items():
        yield from shape_problems(value, actual[key], f"{at}.{key}")


def list_problems(shown: list[Any], actual: Any, at: str) -> Iterator[str]:
    """A shown `...` item: the answer may hold more items than those shown."""
    items = [item for item in shown if item != "..."]
    more = len(items) < len(shown)
    fits = isinstance(actual, list) and (
        len(actual) == len(items) or (more and len(actual) > len(items))
    )
    if not fits:
        yield f"{at}: {len(items)}{'+' if more else ''} items, got {actual!r:.200}"
        return
    for index, item in enumerate(items):
        yield from shape_problems(item, actual[index], f"{at}[{index}]")


# --- links ----------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (?P<title>.+)$", re.MULTILINE)


def test_the_readme_links_resolve() -> None:
    """The site's strict build checks docs/; this checks README.md's own relative links."""
    readme = ROOT / "README.md"
    for target in LINK.findall(outside_fences(readme.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        page = (readme.parent / path).resolve() if path else readme
        assert page.exists(), f"README.md links to {target}: no such file"
        if anchor:
            assert anchor in anchors_of(page), f"README.md links to {target}: no such heading"


def outside_fences(text: str) -> str:
    return FENCE.sub("", text)


def anchors_of(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings."""
    titles = HEADING.findall(outside_fences(page.read_text(encoding="utf-8")))
    return {re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-") for title in titles}


def test_the_http_api_page_lists_every_route() -> None:
    page = (ROOT / "docs" / "reference" / "http-api.md").read_text(encoding="utf-8")
    rows = [line.split("|")[1] for line in page.splitlines() if line.startswith("| `")]
    listed = {
        (path, method) for row in rows for method, path in re.findall(r"`([A-Z]+) (/[^`]*)`", row)
    }
    served = served_routes(create_app(Settings(_env_file=None)))  # type: ignore[call-arg]
    documents = {"/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"}
    assert {(path, method) for path, method in served if path not in documents} == listed


MODULE = re.compile(r"`(app(?:[./]\w+)*)(?:\.py)?/?`")
TEST_PATH = re.compile(r"`(tests/[\w./]*?)/?(?:::\w+)?`")


@pytest.mark.parametrize("page", [*PAGES, ROOT / "bench" / "README.md"], ids=lambda p: p.name)
def test_the_modules_the_docs_name_exist(page: Path) -> None:
    """`app.storage.keys`, `app/signing.py`, `app.web.gate.Gate`: the module is there (and the
    name after it is in its source); `tests/test_soak.py::...`: the file is there. So a page does
    not outlive a rename."""
    text = page.read_text(encoding="utf-8")
    missing = [name for name in MODULE.findall(text) if not module_exists(name)]
    missing += [path for path in TEST_PATH.findall(text) if not (ROOT / path).exists()]
    assert not missing, f"{page.relative_to(ROOT)} names what the repository lacks: {missing}"


def module_exists(dotted: str) -> bool:
    path, parts = ROOT, re.split(r"[./]", dotted.removesuffix(".py"))
    while parts and (path / parts[0]).is_dir():
        path = path / parts.pop(0)
    if parts and (path / f"{parts[0]}.py").is_file():
        path = path / f"{parts.pop(0)}.py"
    if not parts:
        return True
    source = path / "__init__.py" if path.is_dir() else path
    return source.is_file() and re.search(rf"\b{parts[0]}\b", source.read_text()) is not None
