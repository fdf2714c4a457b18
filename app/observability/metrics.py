"""Prometheus metrics: one `Metrics` (with its own registry) per runtime.

A registry per app, not prometheus-client's global one, so tests and several apps in one process
never share counts. Instrumented code calls one method per event; the schedule and dead-letter
gauges are read from storage when Prometheus scrapes (`app.web.metrics`, `GET /metrics`).
"""

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from app.engine.evaluate import Decisions
from app.errors import NotConfigured, StorageError, StorageUnavailable, WebhookRejected

logger = logging.getLogger(__name__)

UNKNOWN_TYPE = "-"  # a refused webhook's type is not known (or not to be trusted)
# seconds from an email's due time to its outcome: sends take ~1 s, retries minutes to hours
LATENCY_BUCKETS_S = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 24 * 3600)


class Families:
    """Every metric family the service exports, in a registry of its own, registered by a method
    per group, in order; `Metrics` records the events."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._register_intake()
        self._register_loops()
        self._register_failures()
        self._register_gauges()
        self._register_liveness()
        self._zeros()

    def _register_intake(self) -> None:
        """What comes in: webhooks and actions."""
        self.webhooks = Counter(
            "activation_webhooks",
            "Webhook deliveries by source, event type and outcome",
            ["source", "type", "outcome"],
            registry=self.registry,
        )
        self.actions = Counter(
            "activation_actions",
            "Actions received, by outcome (accepted, duplicate)",
            ["outcome"],
            registry=self.registry,
        )

    def _register_loops(self) -> None:
        """What the loops do: step transitions, emails and their latency, suppressions."""
        self.step_transitions = Counter(
            "activation_step_transitions",
            "Loop step transitions, by loop and new status",
            ["loop", "status"],
            registry=self.registry,
        )
        self.emails = Counter(
            "activation_emails",
            "Email job outcomes (sent, retry, failed, dropped)",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_calls = Counter(
            "activation_webhook_calls",
            "Webhook steps' calls by outcome (sent, retry, failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.job_latency = Histogram(
            "activation_job_latency_seconds",
            "From a job's due time to its outcome",
            ["kind"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.suppressions = Counter(
            "activation_suppressions",
            "Users suppressed by a Resend event, by reason",
            ["reason"],
            registry=self.registry,
        )

    def _register_failures(self) -> None:
        """What went wrong: storage errors and the worker's failures."""
        self.storage_errors = Counter(
            "activation_storage_errors",
            "Storage failures seen (unavailable, error)",
            ["kind"],
            registry=self.registry,
        )
        self.worker_errors = Counter(
            "activation_worker_errors",
            "Worker failures: a claim (`stage=claim`, the worker backs off) or one job (`job`)",
            ["stage", "kind"],
            registry=self.registry,
        )

    def _register_gauges(self) -> None:
        """What is true now: the clock's skew, the schedule and dead-letter sizes."""
        self.clock_skew = Gauge(
            "activation_clock_skew_seconds",
            "This machine's clock minus Redis's (TIME) at the last sync; the service uses Redis's",
            registry=self.registry,
        )
        self.schedule_jobs = Gauge(
            "activation_schedule_jobs",
            "Jobs on the schedule (queue depth), read at scrape",
            registry=self.registry,
        )
        self.dead_letter_jobs = Gauge(
            "activation_dead_letter_jobs",
            "Email jobs in the dead-letter set, read at scrape",
            registry=self.registry,
        )

    def _register_liveness(self) -> None:
        """What still moves: the actions loops wait for, and this process's worker."""
        self.watched_action_last_seen = Gauge(
            "activation_watched_action_last_seen_timestamp_seconds",
            "Last time an action a loop waits for was reported (epoch seconds), read at scrape; "
            "absent until first seen",
            ["action"],
            registry=self.registry,
        )
        self._seen_actions: set[str] = set()
        # 0 until the worker first looks (an unlabelled gauge is always exported)
        self.worker_heartbeat_at = Gauge(
            "activation_worker_heartbeat_timestamp_seconds",
            "When this process's worker last completed a look at the schedule (epoch seconds)",
            registry=self.registry,
        )

    def _zeros(self) -> None:
        """Export the fixed label sets at 0 from the start, so rates and alerts have a series."""
        for outcome in ("sent", "retry", "failed", "dropped", "defer"):
            self.emails.labels(outcome)
        for outcome in ("accepted", "duplicate"):
            self.actions.labels(outcome)
        for kind in ("unavailable", "error"):
            self.storage_errors.labels(kind)
        for stage in ("claim", "job"):
            for kind in ("unavailable", "error", "other"):
                self.worker_errors.labels(stage, kind)


class Metrics(Families):
    """The service's metrics (`Families`), with one method per event the code reports."""

    def __repr__(self) -> str:
        return f"Metrics(registry={id(self.registry):#x})"

    def webhook(self, source: str, event_type: str, outcome: str) -> None:
        self.webhooks.labels(source, event_type, outcome).inc()

    @contextmanager
    def webhook_failures(self, source: str) -> Iterator[None]:
        """Count a webhook refused (4xx) or not stored (storage down) on its way out."""
        try:
            yield
        except WebhookRejected as exc:
            self.webhook(source, UNKNOWN_TYPE, "rejected")
            hint = f" ({exc.hint})" if exc.hint else ""
            logger.warning("%s webhook refused (%d): %s%s", source, exc.status_code, exc, hint)
            raise
        except NotConfigured as exc:
            logger.warning("%s webhook refused (%d): %s", source, exc.status_code, exc)
            raise
        except StorageUnavailable:
            self.webhook(source, UNKNOWN_TYPE, "unavailable")
            raise

    def actions_recorded(self, accepted: int, duplicates: int) -> None:
        self.actions.labels("accepted").inc(accepted)
        self.actions.labels("duplicate").inc(duplicates)

    def transitions(self, decisions: Decisions) -> None:
        for name, state in decisions.transitions.items():
            loop_id = name.rpartition("/")[0]
            self.step_transitions.labels(loop_id, state.status.value).inc()

    def email(
        self, outcome: str, *, due_at_ms: int | None = None, now_ms: int = 0, kind: str = "email"
    ) -> None:
        """An email's outcome (or a webhook call's: `kind`); a final one also times the job."""
        (self.webhook_calls if kind == "webhook" else self.emails).labels(outcome).inc()
        if due_at_ms is not None:
            self.job_latency.labels(kind).observe(max(now_ms - due_at_ms, 0) / 1000)

    def storage_error(self, exc: StorageError) -> None:
        kind = "unavailable" if isinstance(exc, StorageUnavailable) else "error"
        self.storage_errors.labels(kind).inc()

    def worker_failure(self, exc: Exception) -> None:
        """A claim failed: the worker backs off and tries again."""
        self._worker_error("claim", exc)

    def job_failure(self, exc: Exception) -> None:
        """One job failed: its lease brings it back later."""
        self._worker_error("job", exc)

    def _worker_error(self, stage: str, exc: Exception) -> None:
        if isinstance(exc, StorageError):
            self.storage_error(exc)
            kind = "unavailable" if isinstance(exc, StorageUnavailable) else "error"
        else:
            kind = "other"
        self.worker_errors.labels(stage, kind).inc()

    def watched_actions_seen(self, last_seen_ms: Mapping[str, int | None]) -> None:
        """The watched actions now, each with when it was last reported (None: never). An action
        never seen, or no longer watched, has no series."""
        seen = {action: at_ms for action, at_ms in last_seen_ms.items() if at_ms is not None}
        for action in self._seen_actions - seen.keys():
            self.watched_action_last_seen.remove(action)
        for action, at_ms in seen.items():
            self.watched_action_last_seen.labels(action).set(at_ms / 1000)
        self._seen_actions = set(seen)

    def worker_heartbeat(self, now_ms: int) -> None:
        """The worker finished a look at the schedule."""
        self.worker_heartbeat_at.set(now_ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
