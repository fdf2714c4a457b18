"""`deploy/prometheus/alerts.yml`: a well-formed Prometheus rule file whose every expr parses as
PromQL and names only metrics (and label values) the service exports; and the two gauges those
rules read, the watched actions' last-seen times and the worker's heartbeat."""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.observability.metrics import Metrics

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "alerts.yml"
# Prometheus's own duration format (common/model.ParseDuration), used by a rule's `for`
DURATION = re.compile(r"0|(?=\d)(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?")
SEVERITIES = {"warning", "critical"}
NOW_MS = 1_700_000_000_000

Exported = dict[str, list[dict[str, str]]]  # sample name -> the label sets it is exported with


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def exported() -> Exported:
    """What GET /metrics shows once every labelled gauge has a series."""
    metrics = Metrics()
    metrics.watched_actions_seen({"first_project_created": NOW_MS})
    metrics.worker_heartbeat(NOW_MS)
    samples: Exported = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample.labels)
    return samples


def selectors(expr: promql_parser.Expr) -> Iterator[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(expr, pre_visit=visit)
    yield from found


def metric_name(selector: promql_parser.VectorSelector) -> str:
    named = [m.value for m in selector.matchers.matchers if m.name == "__name__"]
    name = selector.name or (named[0] if named else None)
    assert name, f"{selector} names no metric"
    return name


def equal_matchers(selector: promql_parser.VectorSelector) -> dict[str, str]:
    return {
        m.name: m.value
        for m in selector.matchers.matchers
        if m.op == promql_parser.MatchOp.Equal and m.name != "__name__"
    }


RULE_IDS = [rule.get("alert", "?") for rule in rules()]


def test_the_file_is_groups_of_named_rules() -> None:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert set(document) == {"groups"}
    for group in document["groups"]:
        assert isinstance(group["name"], str)
        assert group["name"]
        assert isinstance(group["rules"], list)
        assert group["rules"]


def test_alert_names_are_unique_and_the_expected_ones_are_there() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    assert {
        "ActivationWatchedActionSilent",
        "ActivationWorkerStalled",
        "ActivationDeadLettersGrowing",
        "ActivationSendFailures",
        "ActivationStorageErrors",
    } <= set(names)


@pytest.mark.parametrize("rule", rules(), ids=RULE_IDS)
def test_each_rule_is_complete(rule: dict[str, Any]) -> None:
    assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
    assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
    assert isinstance(rule["expr"], str)
    assert rule["expr"].strip()
    assert DURATION.fullmatch(str(rule["for"])), rule["for"]
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"].strip()
    assert rule["annotations"]["description"].strip()


@pytest.mark.parametrize("rule", rules(), ids=RULE_IDS)
def test_each_expr_parses(rule: dict[str, Any]) -> None:
    promql_parser.parse(rule["expr"])  # a syntax error raises


@pytest.mark.parametrize("rule", rules(), ids=RULE_IDS)
def test_each_expr_reads_only_what_the_service_exports(rule: dict[str, Any]) -> None:
    samples = exported()
    chosen = list(selectors(promql_parser.parse(rule["expr"])))
    assert chosen, "an alert on no metric"
    for selector in chosen:
        name = metric_name(selector)
        assert name in samples, f"{name} is not exported"
        wanted = equal_matchers(selector).items()
        assert any(wanted <= labels.items() for labels in samples[name]), str(selector)


def test_the_checks_catch_a_wrong_name_and_a_wrong_label_value() -> None:
    samples = exported()
    typo = next(selectors(promql_parser.parse("rate(activation_email_total[5m]) > 0")))
    assert metric_name(typo) not in samples
    wrong = next(selectors(promql_parser.parse('activation_emails_total{outcome="fail"}')))
    assert not any(equal_matchers(wrong).items() <= s.items() for s in samples[metric_name(wrong)])
    with pytest.raises(ValueError, match=r"\S"):
        promql_parser.parse("rate(activation_emails_total[5m] > 0")


def test_durations_follow_prometheus() -> None:
    assert all(DURATION.fullmatch(d) for d in ("0", "0m", "2m", "15m", "1h30m", "500ms"))
    assert not any(DURATION.fullmatch(d) for d in ("", "5", "10 min", "1.5h", "m"))


def seen(metrics: Metrics) -> dict[str, float]:
    family = "activation_watched_action_last_seen_timestamp_seconds"
    return {
        sample.labels["action"]: sample.value
        for metric in metrics.registry.collect()
        for sample in metric.samples
        if sample.name == family
    }


def test_a_watched_action_has_a_series_only_once_seen_and_while_watched() -> None:
    metrics = Metrics()
    assert seen(metrics) == {}
    metrics.watched_actions_seen({"project_created": NOW_MS, "invite_sent": None})
    assert seen(metrics) == {"project_created": NOW_MS / 1000}
    later = NOW_MS + 60_000
    metrics.watched_actions_seen({"invite_sent": later, "project_created": NOW_MS})
    assert seen(metrics) == {"project_created": NOW_MS / 1000, "invite_sent": later / 1000}
    metrics.watched_actions_seen({"invite_sent": later, "report_shared": None})
    assert seen(metrics) == {"invite_sent": later / 1000}
    metrics.watched_actions_seen({})
    assert seen(metrics) == {}


def test_the_heartbeat_is_the_last_look_in_epoch_seconds() -> None:
    metrics = Metrics()
    name = "activation_worker_heartbeat_timestamp_seconds"
    assert metrics.registry.get_sample_value(name) == 0  # no look yet
    metrics.worker_heartbeat(NOW_MS + 500)
    assert metrics.registry.get_sample_value(name) == NOW_MS / 1000 + 0.5
