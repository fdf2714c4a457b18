"""Redis cost: commands (Upstash bills each, a script's inner calls too) and round trips.

`Monitor` reads Redis' MONITOR stream: a line from a client is a round trip, a line from `lua` a
command a script ran. `INFO commandstats` deltas (our INFO/ECHO/MONITOR excluded) cross-check it.
"""

import socket
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlparse

import redis

OWN_COMMANDS = {"info", "echo", "monitor"}  # what the bench itself sends


@dataclass
class Cost:
    """Commands and round trips seen in one window."""

    commands: int = 0
    round_trips: int = 0
    by_command: Counter[str] = field(default_factory=Counter)
    stats_commands: int = 0  # the same window per INFO commandstats

    def scaled(self, factor: float) -> "Cost":
        """The same window as if it had covered `factor` times as many operations."""
        return Cost(
            commands=round(self.commands * factor),
            round_trips=round(self.round_trips * factor),
            by_command=Counter({k: round(v * factor) for k, v in self.by_command.items()}),
            stats_commands=round(self.stats_commands * factor),
        )

    def per(self, n: int) -> dict[str, float]:
        return {
            "commands": self.commands / n,
            "round_trips": self.round_trips / n,
            "commands_per_commandstats": self.stats_commands / n,
        }


def command_calls(client: redis.Redis) -> Counter[str]:
    stats = client.info("commandstats")
    calls = Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})
    for name in OWN_COMMANDS:
        calls.pop(name, None)
    return calls


class Monitor:
    """MONITOR on a raw socket, in a thread, between two ECHO markers of our own."""

    def __init__(self, url: str) -> None:
        parts = urlparse(url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.client = redis.Redis.from_url(url)
        self.marker = f"bench-{uuid.uuid4().hex}"
        self.lines: list[str] = []
        self.sock = socket.create_connection(self.address)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.before: Counter[str] = Counter()

    def __enter__(self) -> "Monitor":
        self.sock.sendall(b"MONITOR\r\n")
        self.thread.start()
        self.client.echo(f"{self.marker}-start")
        self.before = command_calls(self.client)
        return self

    def __exit__(self, *exc: object) -> None:
        self.after = command_calls(self.client)
        self.client.echo(f"{self.marker}-end")
        self.thread.join(30)
        self.sock.close()
        self.client.close()

    def _read(self) -> None:
        buffer = b""
        while f"{self.marker}-end".encode() not in buffer:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\r\n")
            self.lines += [line.decode("utf-8", "replace") for line in complete]
            if any(f"{self.marker}-end" in line for line in self.lines[-len(complete) :]):
                break

    def cost(self) -> Cost:
        start = next(i for i, line in enumerate(self.lines) if f"{self.marker}-start" in line)
        cost = Cost()
        for line in self.lines[start + 1 :]:
            if self.marker in line:
                break
            where, _, command = line.partition("] ")
            name = command.split(" ", 1)[0].strip('"').lower()
            if name in OWN_COMMANDS and " lua" not in where:
                continue
            cost.commands += 1
            cost.round_trips += " lua" not in where
            cost.by_command[name] += 1
        cost.stats_commands = sum((self.after - self.before).values())
        return cost
