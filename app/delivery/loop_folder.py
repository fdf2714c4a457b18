"""The loop folder (LOOPS_DIR) as the service uses it: its loop files and templates, read and
every use of a template checked (variants' and experiment arms' too), every mistake of every
file reported at once (`LoopFolderError`): what startup and `activation check` load."""

import logging
from collections.abc import Iterator

from app.delivery.templates import TemplateSet
from app.engine.loop_loading import read_loops
from app.engine.loops import Loop
from app.errors import ConfigError, LoopFolderError, TemplateError
from app.settings import Settings, environment

logger = logging.getLogger(__name__)


def load_loop_files(settings: Settings) -> tuple[dict[str, Loop], TemplateSet]:
    """Loops and their templates, every use of a template checked (variants' and experiment
    arms' too): every mistake in every file is reported at once, in a `LoopFolderError` that
    stops startup."""
    loops, problems = read_loops(settings.loops_dir, environment(settings))
    templates, broken = TemplateSet.read(settings.loops_dir / "templates")
    found: list[ConfigError] = [*problems, *broken]
    for loop in loops.values():
        found += template_problems(loop, templates)
    if found:
        raise LoopFolderError(found)
    logger.info("loaded %d loop(s) from %s: %s", len(loops), settings.loops_dir, ", ".join(loops))
    return loops, templates


def template_problems(loop: Loop, templates: TemplateSet) -> Iterator[TemplateError]:
    """What is wrong with each email of the loop: its personalization, and each template it
    may send (its own, its variants', its experiment's arms'), at `<file>: <field path>`; and
    with each webhook's text."""
    for field, email in loop.emails():
        where = f"{loop.source}: {field}"
        yield from templates.value_problems(email.personalization, where)
        uses = [
            (email.template, where),
            *((v.template, f"{where}.variants[{i}]") for i, v in enumerate(email.variants)),
            *((a.template, f"{where}.experiment[{i}]") for i, a in enumerate(email.experiment)),
        ]
        for template, at in uses:
            yield from templates.use_problems(template, email.personalization, at)
    for field, webhook in loop.webhooks():
        if webhook.text is not None:
            yield from templates.text_problems(webhook.text, f"{loop.source}: {field}")
