"""What the commands that work on shared storage have in common: their settings (refusing the
embedded store) and a started runtime."""

from collections.abc import Mapping, Sequence

from app.errors import ConfigError
from app.runtime import Runtime, build_runtime
from app.settings import Settings, given_settings, load_settings

# Any of these chooses shared storage (the settings refuse a half-configured one, naming the half).
SHARED_STORAGE = frozenset({"redis_url", "upstash_redis_rest_url", "upstash_redis_rest_token"})


def shared_settings(command: str, needs: Mapping[str, str] | None = None) -> Settings:
    """The settings, refused when storage is the embedded store: each process has its own, so
    this command would only ever see an empty one, never the web app's. `needs`: the other
    settings the command cannot run without (field name: what to set it to). Everything missing
    or invalid is named at once, in one message."""
    problems, settings = [], None
    try:
        settings = load_settings()
    except ConfigError as exc:
        problems.append(str(exc))
    given = given_settings()
    if not given & SHARED_STORAGE:
        problems.append(no_shared_storage(command))
    for name, hint in (needs or {}).items():
        if name not in given:
            problems.append(f"{name.upper()} is not set: set it to {hint}")
    if problems or settings is None:
        raise ConfigError(all_of(problems))
    return settings


def no_shared_storage(command: str) -> str:
    return (
        "no shared storage: set REDIS_URL or UPSTASH_REDIS_REST_URL and "
        "UPSTASH_REDIS_REST_TOKEN. With neither, every process keeps its own in-memory store, "
        f"so `activation {command}` would see an empty one, not the web app's (whose worker "
        "runs in-process)"
    )


def all_of(problems: Sequence[str]) -> str:
    """One problem as it is; several counted, on one line."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems: " + "; ".join(
        f"({n}) {problem}" for n, problem in enumerate(problems, 1)
    )


async def started(settings: Settings) -> Runtime:
    """The runtime, its clock synced with Redis's."""
    runtime = build_runtime(settings)
    await runtime.start()
    return runtime
