"""Running ``fold``, ``inspect`` and ``check`` over one model or many: collect, run with
progress, warn, print the document and the tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bnfold.cli.render import batch_table, check_line, render_one
from bnfold.cli.ui import Ui
from bnfold.errors import BnfoldError

if TYPE_CHECKING:
    from bnfold.api import VerifyOptions
    from bnfold.batch import Mode


def run_batch(
    mode: Mode,
    models: list[Path],
    ui: Ui,
    *,
    output: str | None = None,
    in_place: bool = False,
    verify: VerifyOptions | None = None,
    force: bool = False,
    jobs: int = 1,
    record: bool = True,
    fmt: str = "auto",
    junit: Path | None = None,
) -> int:
    """Collect, run and render one batch (a single model is a batch of one); the exit code.

    ``fmt`` and ``junit`` are for CIs (``bnfold.cli.ci``): GitHub annotations and job summary,
    JUnit XML.
    """
    from bnfold.batch import collect_tasks, exit_code, run_tasks
    from bnfold.cli import ci
    from bnfold.cli.documents import batch_document

    github = ci.github_enabled(fmt)
    if junit is not None:
        ci.check_writable(junit)
    try:
        tasks = collect_tasks(models, output, in_place=in_place, write=mode == "fold")
    except BnfoldError as exc:
        ci.report_command_error(mode, exc.cli_message, ui, github=github, junit=junit)
        raise
    verb = {"fold": "folding", "inspect": "inspecting", "check": "checking"}[mode]
    with ui.progress([str(t.input) for t in tasks], verb) as done:
        outcomes = run_tasks(
            tasks,
            mode,
            verify=verify,
            force=force,
            in_place=in_place,
            jobs=jobs,
            on_done=lambda i, o: done(i, o.status),
            record=record,
        )
    code = exit_code(outcomes)
    if junit is not None:
        try:
            ci.write_atomic(junit, ci.junit_xml(outcomes, mode))
        except BnfoldError as exc:  # the report a CI asked for is missing: as bad as it gets
            ui.error(exc.cli_message)
            code = exc.exit_code
    for o in outcomes:
        if o.error is not None:
            ui.error(o.error, o.trace)
        elif o.status == "unverified" and o.result and o.result.verification:
            ui.warn(f"{o.input}: written unverified: {o.result.verification.reason}")
    ui.emit(batch_document(mode, outcomes, code))
    if len(outcomes) == 1:
        render_one(outcomes[0], mode, ui)
    elif ui.quiet:
        for o in outcomes:
            if mode == "check" and o.status == "foldable":
                ui.tell(check_line(o))
    else:
        ui.show(lambda: batch_table(outcomes, mode, ui.width))
    if github:
        ci.report_github(outcomes, mode, ui)
    return code
