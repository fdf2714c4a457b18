"""Email templates: front matter, load-time and check-time refusals (every one found, the
variants' and experiment arms' templates too), rendering, derived text."""

from collections.abc import Callable
from pathlib import Path

import pytest

from app.delivery.html_text import html_to_text
from app.delivery.templates import USER_FIELDS, RenderContext, TemplateSet
from app.errors import (
    ActivationError,
    ConfigError,
    LoopFolderError,
    TemplateError,
    TemplateRenderError,
)
from app.runtime import build_runtime
from app.settings import Settings
from tests.conftest import write_files

WHERE = "loops/activation.yaml: steps[0].action"
WELCOME = """---
subject: Welcome aboard, {{ name }}!
---
<p>Hi {{ name }}, your first project is live. <a href="{{ activationLink }}">Keep going</a></p>
"""
PERSONALIZATION = {"name": "{{user.name}}", "activationLink": "{{user.activation_link}}"}
USER = {
    "id": "user_1",
    "email": "ada@example.com",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "name": "Ada Lovelace",
    "username": "ada",
    "image_url": None,
    "created_at": 1_700_000_000_000,
    "public_metadata": {"plan": "pro"},
    "unsafe_metadata": {},
    "activation_link": "https://app.example/projects?from=email&step=1",
}
LOOP = {"id": "activation", "type": "activation"}


def context(**user: object) -> RenderContext:
    return RenderContext(
        user={**USER, **user},
        loop=LOOP,
        app_url="https://app.example",
        unsubscribe_url="https://svc.example/unsubscribe?token=t",
    )


def write(folder: Path, name: str, html: str, text: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if text is not None:
        (folder / f"{name}.txt").write_text(text)
    path = folder / f"{name}.html"
    path.write_text(html)
    return path


def one(tmp_path: Path, html: str, text: str | None = None) -> TemplateSet:
    write(tmp_path, "t", html, text)
    return TemplateSet.load(tmp_path)


# --- rendering -----------------------------------------------------------------------------------


def test_subject_and_body_from_personalization_rendered_against_the_user(tmp_path: Path) -> None:
    templates = one(tmp_path, WELCOME)
    templates.check("t", PERSONALIZATION, WHERE)

    email = templates.render("t", PERSONALIZATION, context())

    assert email.subject == "Welcome aboard, Ada Lovelace!"
    assert "<p>Hi Ada Lovelace, your first project is live." in email.html
    assert 'href="https://app.example/projects?from=email&amp;step=1"' in email.html


def test_personalization_sees_the_contract_variables_and_is_not_rendered_twice(
    tmp_path: Path,
) -> None:
    html = "---\nsubject: Hi {{ who }}\n---\n<p>{{ who }} / {{ where }}</p>\n"
    personalization = {
        "who": "{{ user.first_name }} ({{ user.public_metadata.plan }})",
        "where": "{{ loop.id }}:{{ loop.type }} {{ app_url }} {{ unsubscribe_url }}",
    }
    templates = one(tmp_path, html)
    templates.check("t", personalization, WHERE)

    # A user whose name is Jinja must come out literally: their data is never a template.
    email = templates.render("t", personalization, context(first_name="{{ 7 * 7 }}"))

    assert email.subject == "Hi {{ 7 * 7 }} (pro)"
    assert "activation:activation https://app.example https://svc.example/unsubscribe?token=t" in (
        email.html
    )


@pytest.mark.parametrize(
    ("name", "in_html", "in_subject_and_text"),
    [
        ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;", "<script>"),
        ('Tom & "Jerry"', "Tom &amp; &#34;Jerry&#34;", 'Tom & "Jerry"'),
        ("&lt;already&gt;", "&amp;lt;already&amp;gt;", "&lt;already&gt;"),
    ],
)
def test_html_is_escaped_exactly_once_and_subject_and_text_not_at_all(
    tmp_path: Path, name: str, in_html: str, in_subject_and_text: str
) -> None:
    templates = one(tmp_path, WELCOME, text="Hi {{ name }}\n")

    email = templates.render("t", PERSONALIZATION, context(name=name))

    assert in_html in email.html
    assert in_subject_and_text in email.subject
    assert email.text == f"Hi {name}\n"


def test_a_script_name_is_escaped_once_not_twice(tmp_path: Path) -> None:
    templates = one(tmp_path, WELCOME)

    email = templates.render("t", PERSONALIZATION, context(name="<script>"))

    assert "Hi &lt;script&gt;," in email.html
    assert "&amp;lt;" not in email.html
    assert "<script>" not in email.html


@pytest.mark.parametrize("line_break", ["\r\n", "\n", "\r", "\u2028", "\x85", "\x00", "\t\n "])
def test_line_breaks_in_a_rendered_subject_cannot_inject_headers(
    tmp_path: Path, line_break: str
) -> None:
    templates = one(tmp_path, WELCOME)

    email = templates.render("t", PERSONALIZATION, context(name=f"Ada{line_break}Bcc: x@evil"))

    assert email.subject == "Welcome aboard, Ada Bcc: x@evil!"


def test_a_subject_that_renders_empty_is_a_render_error(tmp_path: Path) -> None:
    templates = one(tmp_path, "---\nsubject: '{{ name }}'\n---\n<p>x</p>\n")

    with pytest.raises(TemplateRenderError, match="subject is empty"):
        templates.render("t", {"name": "{{ user.name }}"}, context(name="\r\n"))


def test_the_txt_part_is_used_when_present(tmp_path: Path) -> None:
    text = "Hi {{ name }},\n{% if user.username %}\nYou are @{{ user.username }}.\n{% endif %}\n"
    templates = one(tmp_path, WELCOME, text=text)
    templates.check("t", PERSONALIZATION, WHERE)

    email = templates.render("t", PERSONALIZATION, context())

    assert email.text == "Hi Ada Lovelace,\nYou are @ada.\n"


def test_without_a_txt_part_the_text_is_derived_from_the_html(tmp_path: Path) -> None:
    templates = one(tmp_path, WELCOME)

    email = templates.render("t", PERSONALIZATION, context())

    assert email.text == (
        "Hi Ada Lovelace, your first project is live. "
        "Keep going (https://app.example/projects?from=email&step=1)"
    )


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>One</p><p>Two</p>", "One\n\nTwo"),
        ("<p>Line<br>break<br/>again</p>", "Line\nbreak\nagain"),
        ("<p>  lots \n\n of\t space  </p>", "lots of space"),
        ('<a href="https://x.dev/a?b=1&amp;c=2">Open</a>', "Open (https://x.dev/a?b=1&c=2)"),
        ('<a href="https://x.dev">https://x.dev</a>', "https://x.dev"),
        ('<a href="https://x.dev"><img src="i.png"></a>', "https://x.dev"),
        ('<a href="mailto:hi@x.dev">hi@x.dev</a>', "hi@x.dev"),
        ('<a href="#top">Top</a>', "Top"),
        ("<ul><li>a</li><li>b</li></ul>", "- a\n- b"),
        ("<p>Fish &amp; chips &lt;3 &eacute;t&#233;&nbsp;!</p>", "Fish & chips <3 été !"),
        ("<head><title>T</title><style>p{}</style></head><p>Body</p><script>x()</script>", "Body"),
        ("<h1>Title</h1>\n\n\n<div><p>Deep</p></div>", "Title\n\nDeep"),
    ],
)
def test_html_to_text(html: str, text: str) -> None:
    assert html_to_text(html) == text


# --- load-time refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<p>no front matter</p>\n", "missing front matter"),
        ("---\nsubject: Hi\n<p>never closed</p>\n", "missing front matter"),
        ("---\n- subject\n---\n<p>x</p>\n", "must be a mapping"),
        ("---\n---\n<p>x</p>\n", "must be a mapping"),
        ("---\ntitle: Hi\n---\n<p>x</p>\n", "unknown front matter key(s) ['title']"),
        ("---\nsubject: Hi\nfrom: a@b.c\n---\n<p>x</p>\n", "unknown front matter key(s) ['from']"),
        ("---\nsubject: ''\n---\n<p>x</p>\n", "non-empty string 'subject'"),
        ("---\nsubject: 42\n---\n<p>x</p>\n", "non-empty string 'subject'"),
        ("---\nsubject: [Hi]\n---\n<p>x</p>\n", "non-empty string 'subject'"),
        ("---\nsubject: Hi\n  bad: [\n---\n<p>x</p>\n", "not valid YAML"),
        ("---\nsubject: Hi\n---\n   \n", "HTML body after the front matter is empty"),
    ],
)
def test_bad_front_matter_fails_at_load(tmp_path: Path, html: str, expected: str) -> None:
    path = write(tmp_path, "t", html)

    with pytest.raises(TemplateError) as caught:
        TemplateSet.load(tmp_path)

    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("html", "line", "expected"),
    [
        ("---\nsubject: Hi\n---\n<p>ok</p>\n<p>{{ name | }}</p>\n", 5, "expected token"),
        ("---\nsubject: Hi\n---\n<p>{% if name %}open</p>\n", 4, "endif"),
        ("---\nsubject: Hi\n---\n\n<p>{{ name | no_such_filter }}</p>\n", 5, "no_such_filter"),
        ("---\n# note\nsubject: Hi {{ name\n---\n<p>x</p>\n", 3, "unexpected end"),
        ("---\nsubject: Hi\n---\n<p>{{ user.xyz }}</p>\n", 4, "unknown field user.xyz"),
        ("---\nsubject: Hi {{ user['nick'] }}\n---\n<p>x</p>\n", 2, "unknown field user.nick"),
        ("---\nsubject: Hi\n---\n<p>{{ loop.name }}</p>\n", 4, "unknown field loop.name"),
        ("---\nsubject: Hi\n---\n<p>\n{{ ''.__class__ }}</p>\n", 5, "'__class__'"),
        ("---\nsubject: Hi\n---\n<p>{{ user['__dict__'] }}</p>\n", 4, "'__dict__'"),
        ("---\nsubject: Hi\n---\n{% include 'footer.html' %}\n", 4, "not supported"),
        ("---\nsubject: Hi\n---\n{% extends 'base.html' %}\n", 4, "not supported"),
    ],
)
def test_template_errors_fail_at_load_naming_file_and_line(
    tmp_path: Path, html: str, line: int, expected: str
) -> None:
    path = write(tmp_path, "t", html)

    with pytest.raises(TemplateError) as caught:
        TemplateSet.load(tmp_path)

    assert f"{path}:{line}:" in str(caught.value)
    assert expected in str(caught.value)


def test_a_syntax_error_in_the_txt_part_names_the_txt_file(tmp_path: Path) -> None:
    write(tmp_path, "t", WELCOME, text="Hi\n{{ name }\n")

    with pytest.raises(TemplateError, match=r"t\.txt:2:"):
        TemplateSet.load(tmp_path)


def test_a_txt_part_without_its_html_fails_at_load(tmp_path: Path) -> None:
    write(tmp_path, "welcome", WELCOME)
    (tmp_path / "welcom.txt").write_text("Hi\n")

    with pytest.raises(TemplateError, match=r"welcom\.txt: text part without welcom\.html"):
        TemplateSet.load(tmp_path)


def test_load_reads_every_template_and_a_missing_folder_holds_none(tmp_path: Path) -> None:
    write(tmp_path / "templates", "welcome", WELCOME)
    write(tmp_path / "templates", "nudge", WELCOME, text="Hi {{ name }}\n")

    assert TemplateSet.load(tmp_path / "templates").names == ("nudge", "welcome")
    assert TemplateSet.load(tmp_path / "absent").names == ()


def test_errors_are_config_errors_at_load_and_permanent_errors_at_send() -> None:
    assert issubclass(TemplateError, ConfigError)
    assert issubclass(TemplateRenderError, ActivationError)
    assert not issubclass(TemplateRenderError, ConfigError)


# --- check: a loop action against the templates --------------------------------------------------


def test_check_accepts_every_contract_variable_and_field(tmp_path: Path) -> None:
    fields = " ".join(f"{{{{ user.{field} }}}}" for field in USER_FIELDS)
    html = (
        "---\nsubject: '{{ loop.id }} {{ loop.type }}'\n---\n"
        f"<p>{fields} {{{{ app_url }}}} {{{{ unsubscribe_url }}}} {{{{ name }}}}</p>\n"
        # Jinja's own `loop` inside a for, and a macro argument named `user`, are not the context.
        "{% for item in range(2) %}{{ loop.index }}{{ item }}{% endfor %}\n"
        "{% macro card(user) %}{{ user.title }}{% endmacro %}{{ card({'title': 'x'}) }}\n"
        "{{ user.public_metadata.plan | default('free') }}\n"
    )
    templates = one(tmp_path, html)

    templates.check("t", {"name": "{{ user.name }}"}, WHERE)
    email = templates.render("t", {"name": "{{ user.name }}"}, context())

    assert email.subject == "activation activation"
    assert "1021x" in email.html
    assert "pro" in email.html


@pytest.mark.parametrize(
    ("template", "personalization", "expected"),
    [
        ("missing", {}, "no template 'missing'"),
        ("t", {}, "t.html:4: unknown variable 'name'"),
        ("t", {"nam": "{{ user.name }}"}, "t.html:4: unknown variable 'name'"),
        ("t", {"name": "{{ usr.name }}"}, "personalization.name: unknown variable 'usr'"),
        ("t", {"name": "{{ user.xyz }}"}, "personalization.name: unknown field user.xyz"),
        ("t", {"name": "{{ user['nick'] }}"}, "personalization.name: unknown field user.nick"),
        ("t", {"name": "{{ ''.__class__ }}"}, "personalization.name: attribute '__class__'"),
        ("t", {"name": "{{ user.name"}, "personalization.name: unexpected end of template"),
        # A value cannot see another personalization key: values are rendered before the template.
        ("t", {"name": "{{ greeting }}", "greeting": "Hi"}, "unknown variable 'greeting'"),
        ("t", {"name": "x", "user": "{{ user.name }}"}, "key 'user' would hide the variable user"),
        ("t", {"name": "x", "loop": "x"}, "key 'loop' would hide"),
        ("t", {"name": "x", "app_url": "x"}, "key 'app_url' would hide"),
        ("t", {"name": "x", "unsubscribe_url": "x"}, "key 'unsubscribe_url' would hide"),
        ("t", {"name": "x", "first-name": "x"}, "key 'first-name' is not a variable name"),
        ("t", {"name": "x", "1st": "x"}, "key '1st' is not a variable name"),
        ("t", {"name": "x", "if": "x"}, "key 'if' is not a variable name"),
        ("t", {"name": "x", "true": "x"}, "key 'true' is not a variable name"),
    ],
)
def test_check_refuses_naming_where_the_file_and_the_variable(
    tmp_path: Path, template: str, personalization: dict[str, str], expected: str
) -> None:
    templates = one(tmp_path, "---\nsubject: Hi\n---\n<p>{{ name }}</p>\n")

    with pytest.raises(TemplateError) as caught:
        templates.check(template, personalization, WHERE)

    assert str(caught.value).startswith(f"{WHERE}: ")
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("html", "text", "file", "variable"),
    [
        ("---\nsubject: Hi {{ nme }}\n---\n<p>x</p>\n", None, "t.html:2", "'nme'"),
        ("---\nsubject: Hi\n---\n<p>x</p>\n<p>{{ a }}{{ b }}</p>\n", None, "t.html:5", "'a', 'b'"),
        ("---\nsubject: Hi\n---\n<p>x</p>\n", "Hi\n{{ first }}\n", "t.txt:2", "'first'"),
    ],
)
def test_check_finds_unknown_variables_in_subject_html_and_text(
    tmp_path: Path, html: str, text: str | None, file: str, variable: str
) -> None:
    templates = one(tmp_path, html, text)

    with pytest.raises(TemplateError) as caught:
        templates.check("t", {}, WHERE)

    assert f"{file}: unknown variable {variable}" in str(caught.value)


def test_check_reports_every_problem_of_a_use(tmp_path: Path) -> None:
    html = "---\nsubject: Hi {{ other }}\n---\n<p>{{ name }} {{ nme }}</p>\n"
    templates = one(tmp_path, html)
    personalization = {"user": "x", "name": "{{ usr.name }}"}

    with pytest.raises(TemplateError) as caught:
        templates.check("t", personalization, WHERE)

    lines = str(caught.value).splitlines()
    assert all(line.startswith(f"{WHERE}: ") for line in lines)
    assert [line.removeprefix(f"{WHERE}: ").split(": ")[0] for line in lines] == [
        "personalization key 'user' would hide the variable user",
        "personalization.name",
        f"{tmp_path / 't.html'}:2",
        f"{tmp_path / 't.html'}:4",
    ]
    assert "unknown variable 'nme'" in lines[3]


def test_every_problem_of_a_template_file_is_reported(tmp_path: Path) -> None:
    html = (
        "---\nsubject: Hi {{ user.nick }}\n---\n"
        "{% include 'footer.html' %}\n<p>{{ ''.__class__ }}</p>\n"
    )
    path = write(tmp_path, "t", html, text="Hi\n{{ name }\n")

    with pytest.raises(TemplateError) as caught:
        TemplateSet.load(tmp_path)

    assert [line.split(": ")[0] for line in str(caught.value).splitlines()] == [
        f"{path}:2",  # the subject
        f"{path}:4",  # the body, each problem
        f"{path}:5",
        f"{tmp_path / 't.txt'}:2",  # the text part
    ]


def test_read_keeps_the_good_templates_and_reports_each_bad_one(tmp_path: Path) -> None:
    write(tmp_path, "welcome", WELCOME)
    write(tmp_path, "broken", "---\nsubject: Hi\n---\n<p>{{ name | }}</p>\n")
    write(tmp_path, "empty", "---\nsubject: Hi\n---\n\n")
    (tmp_path / "orphan.txt").write_text("Hi\n")

    templates, problems = TemplateSet.read(tmp_path)

    assert templates.names == ("welcome",)
    assert [str(problem).split(": ")[0] for problem in problems] == [
        str(tmp_path / "orphan.txt"),
        f"{tmp_path / 'broken.html'}:4",
        str(tmp_path / "empty.html"),
    ]
    # a use of a template whose file did not load says nothing more: the file's problem is told
    assert templates.use_problems("broken", {}, WHERE) == []
    assert "no template 'gone'" in str(templates.use_problems("gone", {}, WHERE)[0])


TEAM_LOOP = """
    type: activation
    steps:
      - trigger: {type: database, table: users, event: insert}
        condition: {type: action, action: first_project_created, timeout: 1d}
        action:
          type: email
          template: welcome
          personalization: {name: "{{ user.name }}"}
          variants:
            - when: {public_metadata.plan: pro}
              template: welcome_pro
        on_timeout:
          type: email
          template: nudge
          personalization: {name: "{{ user.first_name }}"}
          experiment:
            - {template: nudge_a}
            - {template: nudge_b}
    """


@pytest.mark.parametrize("transport", ["embedded"])
def test_the_templates_of_variants_and_arms_are_checked_at_startup(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    body = "---\nsubject: Hi\n---\n<p>{}</p>\n"
    folder = write_files(
        tmp_path,
        {
            "team.yaml": TEAM_LOOP,
            "templates/welcome.html": body.format("{{ name }}"),
            "templates/welcome_pro.html": body.format("{{ nmae }}"),
            "templates/nudge.html": body.format("{{ name }}"),
            "templates/nudge_a.html": body.format("{{ name }}"),
            "templates/nudge_b.html": body.format("{{ nam }}"),
        },
    )

    with pytest.raises(LoopFolderError) as refused:
        build_runtime(make_settings(loops_dir=folder))

    known = "known: personalization keys (name) and user, loop, app_url, unsubscribe_url"
    assert str(refused.value).splitlines() == [
        f"{folder / 'team.yaml'}: steps[0].action.variants[0]: "
        f"{folder / 'templates/welcome_pro.html'}:4: unknown variable 'nmae'; {known}",
        f"{folder / 'team.yaml'}: steps[0].on_timeout.experiment[1]: "
        f"{folder / 'templates/nudge_b.html'}:4: unknown variable 'nam'; {known}",
    ]


# --- send time: the sandbox and data-dependent failures -----------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "{{ ''|attr('__class__') }}",  # not visible to the load-time checks: the sandbox stops it
        "{{ user.public_metadata.missing }}",  # data-dependent: StrictUndefined refuses it
        "{{ user.created_at | int // 0 }}",  # a filter or operator failing on odd data
    ],
)
def test_render_failures_are_permanent_render_errors(tmp_path: Path, body: str) -> None:
    templates = one(tmp_path, f"---\nsubject: Hi\n---\n<p>{body}</p>\n")
    templates.check("t", {}, WHERE)

    with pytest.raises(TemplateRenderError, match="template 't'"):
        templates.render("t", {}, context())


def test_rendering_an_unknown_template_is_a_render_error(tmp_path: Path) -> None:
    templates = one(tmp_path, WELCOME)

    with pytest.raises(TemplateRenderError, match="no template 'other'"):
        templates.render("other", PERSONALIZATION, context())
