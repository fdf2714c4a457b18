"""The dashboard's experiment and action-health parts: `app.web.pages.panels` (points, sentences,
the uplift chart's geometry, which arms the pooled uplift joins, an experiment's arms against each
other, the action problems) and the two partials rendered with the dashboard's Jinja2 settings,
read back with the standard library's HTML parser."""

from html.parser import HTMLParser
from typing import Any

import jinja2
import pytest

from app.engine.measure import Uplift
from app.web.pages import panels as figures
from app.web.pages.panels import (
    MINUS,
    action_problems,
    arms_sentence,
    experiment_views,
    points,
    uplift_view,
)
from tests.support.constants import DAY

HOSTILE = '<script>alert("x")</script>'
NOW_MS = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
VOID = {"br", "hr", "img", "input", "meta", "link"}

RAISE = {"vs": "holdout", "estimate": 0.052, "low": 0.010, "high": 0.094}
LOWER = {"vs": "holdout", "estimate": -0.04, "low": -0.079, "high": -0.005}
UNCLEAR = {"vs": "holdout", "estimate": 0.026, "low": -0.031, "high": 0.084}


def environment(loader: jinja2.BaseLoader | None = None) -> jinja2.Environment:
    """As `app.web.pages.dashboard.PAGE_ENV`, with the figures' functions as globals."""
    env = jinja2.Environment(
        loader=loader or jinja2.PackageLoader("app.web.pages", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(figures.TEMPLATE_GLOBALS)
    return env


def render(name: str, **variables: Any) -> str:
    return environment().get_template(name).render(**variables)


class Page(HTMLParser):
    """The elements of a rendered part, in order, and whether its tags close as they open."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.open: list[str] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert self.open, f"</{tag}> closes nothing"
        assert self.open.pop() == tag, f"</{tag}> closes another element"

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def words(self) -> str:
        return " ".join(" ".join(self.text).split())

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [
            found
            for name, found in self.elements
            if name == tag and all(found.get(key) == value for key, value in attrs.items())
        ]


def arm(entered: int, activated: int) -> dict[str, Any]:
    rate = activated / entered if entered else None
    return {"entered": entered, "activated": activated, "activation_rate": rate}


def loop(loop_id: str, **extra: Any) -> dict[str, Any]:
    counts = {"entered": 150, "activated": 104, "timed_out": 30, "waiting": 16}
    return {"id": loop_id, "type": "activation", **counts, "activation_rate": 104 / 150, **extra}


NOBODY = {"estimate": None, "low": None, "high": None}
LOOPS = [
    loop("holdout_loop", arms={"holdout": arm(80, 48), "treatment": arm(70, 56)}, uplift=RAISE),
    loop(
        "templates",
        arms={"short": arm(40, 10), "long": arm(0, 0)},
        uplift=None,
        vs_arms={"a": "short", "b": "long", **NOBODY},
    ),
    loop("plain"),
    loop("no_arms", arms={}, uplift=None),
]
BOTH = loop(
    "both",
    arms={"holdout": arm(20, 5), "short": arm(40, 10), "long": arm(42, 21), "tiny": arm(3, 1)},
    uplift={"vs": "holdout", "estimate": 0.1, "low": -0.3, "high": 0.4},
    vs_arms={"a": "short", "b": "long", "estimate": -0.25, "low": -0.45, "high": -0.04},
)


def test_points_are_signed_with_a_true_minus() -> None:
    assert [points(f) for f in (0.052, -0.031, 0.0, -0.0004, 1.0)] == [
        "+5.2",
        "\u22123.1",
        "0.0",
        "0.0",
        "+100.0",
    ]


@pytest.mark.parametrize(
    ("uplift", "direction", "sentence"),
    [
        (RAISE, "raise", "Emails raise activation by 5.2 points (95 % interval +1.0 to +9.4)."),
        (
            LOWER,
            "lower",
            f"Emails lower activation by 4.0 points (95 % interval {MINUS}7.9 to {MINUS}0.5).",
        ),
        (
            UNCLEAR,
            "unclear",
            f"Not yet distinguishable from no effect: the 95 % interval runs from {MINUS}3.1 "
            "to +8.4 points.",
        ),
        (
            {**RAISE, "vs": "short"},
            "raise",
            "Emails raise activation by 5.2 points against short (95 % interval +1.0 to +9.4).",
        ),
    ],
)
def test_the_uplift_in_words(uplift: dict[str, Any], direction: str, sentence: str) -> None:
    view = uplift_view(uplift)
    assert view is not None
    assert (view.direction, view.sentence) == (direction, sentence)


def test_an_interval_touching_zero_is_not_distinguishable() -> None:
    view = uplift_view({"vs": "holdout", "estimate": 0.05, "low": 0.0, "high": 0.1})
    assert view is not None
    assert view.direction == "unclear"


def test_no_uplift_no_view() -> None:
    assert uplift_view(None) is None
    assert uplift_view({}) is None


def test_the_chart_scales_over_the_widest_end() -> None:
    # span 10 points over 360 - 2 * 24 = 312 units: x = 24 + (points + 10) / 20 * 312
    view = uplift_view(RAISE)
    assert view is not None
    assert view.span_points == 10
    assert (view.x_low, view.x_estimate, view.x_zero, view.x_high) == (195.6, 261.1, 180.0, 326.6)
    ticks = [(t.x, t.label) for t in view.ticks]
    assert ticks == [(24.0, f"{MINUS}10"), (180.0, "0"), (336.0, "+10")]


@pytest.mark.parametrize(
    ("low", "high", "span"),
    [(-0.002, 0.004, 5), (-0.05, 0.01, 5), (-0.051, 0.01, 10), (0.1, 0.21, 25), (0.6, 1.0, 100)],
)
def test_the_span_has_a_minimum_and_round_steps(low: float, high: float, span: int) -> None:
    view = uplift_view({"vs": "holdout", "estimate": (low + high) / 2, "low": low, "high": high})
    assert view is not None
    assert view.span_points == span
    assert 24.0 <= view.x_low <= view.x_estimate <= view.x_high <= 336.0


def test_only_loops_with_arms_are_experiments_holdout_arms_first() -> None:
    shown = experiment_views(LOOPS)
    assert [e.loop_id for e in shown] == ["holdout_loop", "templates"]
    assert [a.name for a in shown[0].arms] == ["treatment", "holdout"]
    assert [(a.name, a.rate) for a in shown[1].arms] == [("short", "25.0%"), ("long", "n/a")]
    assert shown[1].uplift is None


def test_the_experiments_part_shows_arms_side_by_side_and_draws_the_uplift() -> None:
    page = Page(render("experiments.html", loops=LOOPS))
    assert not page.open
    words = page.words()
    assert "Emails raise activation by 5.2 points (95 % interval +1.0 to +9.4)." in words
    assert "Entered 70 80 Activated 56 48 Activation rate 80.0% 60.0%" in words
    assert "No comparison yet: long has nobody in it." in words  # the template experiment
    assert "Pooled uplift" not in words  # one arm against the holdout: nothing is pooled
    assert "Uplift against the holdout treatment against holdout" in words
    assert "short \u2212 long" in words
    assert not page.find("section", id="experiment-plain")
    assert not page.find("section", id="experiment-no_arms")
    [svg] = page.find("svg")
    assert svg["viewbox"] == "0 0 360.0 52.0"
    assert page.find("circle", **{"class": "estimate", "cx": "261.1"})
    assert page.find("rect", **{"class": "interval", "x": "195.6", "width": "131.0"})
    assert page.find("line", **{"class": "zero", "x1": "180.0", "x2": "180.0"})


@pytest.mark.parametrize(
    ("uplift", "sentence"),
    [
        (
            Uplift(0.1, 0.02, 0.18),
            "a activates 10.0 points higher than b (95 % interval +2.0 to +18.0).",
        ),
        (
            Uplift(-0.1, -0.18, -0.02),
            f"a activates 10.0 points lower than b (95 % interval {MINUS}18.0 to {MINUS}2.0).",
        ),
        (
            Uplift(0.1, -0.02, 0.18),
            "a against b: not yet distinguishable, the 95 % interval of the difference runs "
            f"from {MINUS}2.0 to +18.0 points.",
        ),
    ],
)
def test_an_arm_against_another_in_words(uplift: Uplift, sentence: str) -> None:
    assert arms_sentence(uplift, "a", "b") == sentence


def test_an_experiment_beside_a_holdout_pools_its_arms_and_compares_the_largest_two() -> None:
    [both] = experiment_views([BOTH])
    assert [a.name for a in both.arms] == ["short", "long", "tiny", "holdout"]
    assert both.pooled == ("short", "long", "tiny")
    assert both.vs_arms is not None
    assert (both.vs_arms.a, both.vs_arms.b, both.vs_arms.of_arms) == ("short", "long", 3)
    assert both.vs_arms.view is not None
    assert both.vs_arms.view.direction == "lower"
    assert both.uplift is not None
    # one axis for both: the wider interval's (±50 points), so the two widths compare
    assert both.uplift.span_points == both.vs_arms.view.span_points == 50

    words = Page(render("experiments.html", loops=[BOTH])).words()
    assert "Pooled uplift against the holdout short + long + tiny against holdout" in words
    assert "Arm against arm short \u2212 long (of 3 arms, the two with the most entrants)" in words
    assert "short activates 25.0 points lower than long" in words


def test_an_arm_comparison_without_figures_names_the_empty_arms() -> None:
    empty = {**BOTH, "arms": {"short": arm(0, 0), "long": arm(0, 0)}, "uplift": None,
             "vs_arms": {"a": "short", "b": "long", **NOBODY}}  # fmt: skip
    [shown] = experiment_views([empty])
    assert shown.vs_arms is not None
    assert (shown.vs_arms.view, shown.vs_arms.empty) == (None, ("short", "long"))
    words = Page(render("experiments.html", loops=[empty])).words()
    assert "No comparison yet: short and long have nobody in them." in words


def test_the_experiments_part_runs_nothing_and_loads_nothing() -> None:
    html = render("experiments.html", loops=LOOPS)
    page = Page(html)
    assert not page.find("script")
    assert all(
        not value or "http" not in value or key == "xmlns"
        for _, attrs in page.elements
        for key, value in attrs.items()
    )
    assert "href" not in html
    assert "url(" not in html


def test_without_experiments_the_part_is_empty() -> None:
    assert render("experiments.html", loops=[loop("plain")]).strip() == ""
    assert render("experiments.html", loops=[]).strip() == ""


def health(**extra: Any) -> dict[str, Any]:
    ok = {
        "action": "project_created",
        "loops": ["activation"],
        "last_seen_at": NOW_MS,
        "count_24h": 12,
        "count_7d": 80,
        "status": "ok",
    }
    quiet = {"action": "page_viewed", "count_7d": 900, "did_you_mean": None}
    return {"watched": [ok], "unwatched": [quiet], **extra}


def test_no_banner_when_all_is_well() -> None:
    assert render("action_health.html", health=health()).strip() == ""
    assert action_problems(health()) == []
    assert action_problems(None) == []


def test_the_banner_says_what_is_wrong_in_words() -> None:
    watched = [
        {"action": "project_created", "loops": ["activation"], "last_seen_at": None,
         "count_24h": 0, "count_7d": 0, "status": "never_seen"},
        {"action": "invite_sent", "loops": ["expansion", "team"],
         "last_seen_at": NOW_MS - 2 * DAY, "count_24h": 0, "count_7d": 9, "status": "silent"},
    ]  # fmt: skip
    unwatched = [
        {"action": "first_projet_created", "count_7d": 31, "did_you_mean": "first_project_created"}
    ]
    page = Page(render("action_health.html", health={"watched": watched, "unwatched": unwatched}))
    assert not page.open
    words = page.words()
    assert "Action health: 3 problem(s)" in words
    assert "project_created (loop activation) has never been seen." in words
    assert (
        "invite_sent (loops expansion, team) is silent: last seen 2023-11-12 22:13 UTC, "
        "none in 24 h (9 in 7 days)." in words
    )
    assert (
        "first_projet_created is reported but no loop watches it — did you mean "
        "first_project_created ?" in words
    )
    assert [li["data-problem"] for li in page.find("li")] == ["never_seen", "silent", "unwatched"]


def test_a_watched_action_never_seen_gets_the_reported_name_it_likely_misspells() -> None:
    """A loop file's typo: `project_created` is reported (watched by another loop, or by none),
    `project_craeted`, which a loop waits for, never."""
    never = {"action": "project_craeted", "loops": ["ten"], "last_seen_at": None,
             "count_24h": 0, "count_7d": 0, "status": "never_seen"}  # fmt: skip
    other = {"action": "invite_sent", "loops": ["team"], "last_seen_at": None,
             "count_24h": 0, "count_7d": 0, "status": "never_seen"}  # fmt: skip
    for reported in (
        health(watched=[never, other, {**health()["watched"][0], "loops": ["more"]}]),
        health(
            watched=[never, other],
            unwatched=[{"action": "project_created", "count_7d": 4, "did_you_mean": None}],
        ),
    ):
        words = Page(render("action_health.html", health=reported)).words()
        assert (
            "project_craeted (loop ten) has never been seen — did you mean project_created ? "
            "That one is reported." in words
        )
        assert "invite_sent (loop team) has never been seen." in words
    # a name no loop reports is no answer: two never-seen names do not suggest each other
    near = {**other, "action": "project_craetd"}
    assert [p.did_you_mean for p in action_problems(health(watched=[never, near]))] == [None, None]


def test_hostile_names_are_escaped() -> None:
    watched = [{"action": HOSTILE, "loops": [HOSTILE], "last_seen_at": None, "count_24h": 0,
                "count_7d": 0, "status": "never_seen"}]  # fmt: skip
    unwatched = [{"action": HOSTILE, "count_7d": 1, "did_you_mean": HOSTILE}]
    banner = render("action_health.html", health={"watched": watched, "unwatched": unwatched})
    hostile_loop = loop(HOSTILE, type=HOSTILE, arms={HOSTILE: arm(10, 3), "holdout": arm(10, 1)})
    part = render("experiments.html", loops=[{**hostile_loop, "uplift": {**RAISE, "vs": HOSTILE}}])
    for html in (banner, part):
        assert "<script" not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
        assert not Page(html).find("script")


def test_the_parts_render_inside_a_page() -> None:
    """As the dashboard includes them: the page's variables, the environment's globals."""
    page = jinja2.DictLoader(
        {"page.html": '{% include "action_health.html" %}{% include "experiments.html" %}'}
    )
    pages = jinja2.PackageLoader("app.web.pages", "templates")
    env = environment(jinja2.ChoiceLoader([page, pages]))
    broken = health(unwatched=[{"action": "signup", "count_7d": 3, "did_you_mean": "sign_up"}])
    html = env.get_template("page.html").render(loops=LOOPS, health=broken)
    words = Page(html).words()
    assert words.index("did you mean sign_up") < words.index("Holdouts and experiments")
