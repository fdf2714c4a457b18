"""Load with wrk: pre-signed webhooks and action bodies written to a file, sent once each."""

import base64
import json
import secrets
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from svix.webhooks import Webhook

from bench.procs import ROOT

SIGNING_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()  # this run's
API_KEY = secrets.token_urlsafe(24)
CONNECTIONS = 32
CLERK_USER = json.loads((ROOT / "tests/fixtures/clerk_user_created.json").read_text())


@dataclass(frozen=True)
class LoadResult:
    requests: int
    duration_s: float
    errors: int
    p50_ms: float
    p99_ms: float
    server_cpu_s: float = 0.0  # CPU the server processes used during the run

    @property
    def per_s(self) -> float:
        return self.requests / self.duration_s

    @property
    def cpu_us(self) -> float:
        """Server CPU per request: less sensitive than req/s to other load on a shared machine."""
        return self.server_cpu_s / max(self.requests, 1) * 1e6


def user_created(user_id: str, now_ms: int) -> str:
    """Clerk's documented `user.created` payload, for another user."""
    event: dict[str, Any] = json.loads(json.dumps(CLERK_USER))
    data = event["data"]
    data.update(id=user_id, created_at=now_ms, updated_at=now_ms, last_sign_in_at=now_ms)
    data["email_addresses"][0]["email_address"] = f"{user_id}@example.org"
    event["timestamp"] = now_ms
    return json.dumps(event, separators=(",", ":"))


def signed_lines(user_ids: list[str]) -> list[str]:
    """One wrk line per user: Svix headers (fresh timestamp, unique svix-id) and the body."""
    webhook = Webhook(SIGNING_SECRET)
    now = datetime.now(tz=UTC)
    now_ms = int(now.timestamp() * 1000)
    lines = []
    for user_id in user_ids:
        body = user_created(user_id, now_ms)
        msg_id = f"msg_{uuid.uuid4().hex}"
        headers = {
            "svix-id": msg_id,
            "svix-timestamp": str(int(now.timestamp())),
            "svix-signature": webhook.sign(msg_id, now, body),
            "content-type": "application/json",
        }
        lines.append(_line(headers, body))
    return lines


def action(user_id: str, name: str) -> dict[str, str]:
    return {"user_id": user_id, "action": name, "id": f"act_{uuid.uuid4().hex}"}


def action_lines(user_ids: list[str], count: int, batch: int, name: str) -> list[str]:
    """`count` requests of one action (batch=1) or of `batch` actions, over the users in turn."""
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    lines = []
    for i in range(count):
        users = [user_ids[(i * batch + j) % len(user_ids)] for j in range(batch)]
        actions = [action(uid, name) for uid in users]
        body = actions[0] if batch == 1 else {"actions": actions}
        lines.append(_line(headers, json.dumps(body, separators=(",", ":"))))
    return lines


def _line(headers: dict[str, str], body: str) -> str:
    return "\t".join([*(f"{name}: {value}" for name, value in headers.items()), body])


def wrk(
    url: str,
    path: str,
    lines: list[str],
    file: Path,
    duration_s: float,
    connections: int = CONNECTIONS,
) -> LoadResult:
    """Send the lines in turn for `duration_s`, `connections` at a time, from one wrk thread."""
    file.write_text("\n".join(lines) + "\n")
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--timeout", "10s"]
    command += ["-s", str(ROOT / "bench/requests.lua"), url, "--", str(file), path]
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=duration_s + 30
    )
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    return LoadResult(
        requests=stats["requests"],
        duration_s=stats["duration_us"] / 1e6,
        errors=stats["non_2xx"] + stats["socket_errors"],
        p50_ms=stats["p50_us"] / 1000,
        p99_ms=stats["p99_us"] / 1000,
    )
