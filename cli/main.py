"""The `grpo` command line."""

from __future__ import annotations

import sys

import typer

from . import compare as compare_cmd
from . import doctor as doctor_cmd
from . import export as export_cmd
from . import plan as plan_cmd
from . import plugins as plugins_cmd
from . import report as report_cmd
from . import run as run_cmd
from . import validate as validate_cmd

app = typer.Typer(
    name="grpo",
    help="Group-relative policy optimization for diffusion and flow-matching models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run_cmd.run)
app.command("validate")(validate_cmd.validate)
app.command("plan")(plan_cmd.plan)
app.command("report")(report_cmd.report)
app.command("compare")(compare_cmd.compare)
app.command("export")(export_cmd.export)
app.command("doctor")(doctor_cmd.doctor)
app.add_typer(plugins_cmd.app, name="plugins")


def main() -> None:
    try:
        app(standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":
    main()
