"""``eventmail``: the entry point. Sub-commands live in their own modules and are mounted here."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from consumer import __version__
from consumer.cli.common import EXIT_USAGE, CliState, report_error


@click.group(
    name="eventmail",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--config",
    "-c",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML settings file (EVENTMAIL_* environment variables win over it).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(__version__, prog_name="eventmail")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, debug: bool) -> None:
    """Rule-driven email from Kafka event streams.

    Settings come from EVENTMAIL_* environment variables (``__`` for nesting, JSON for maps) or a
    YAML file given with --config. See README.md for the full list.
    """
    ctx.obj = CliState(config_file=config_file, debug=debug)


def _mount() -> None:
    """Attach every command module (imported here so ``--help`` lists them all)."""
    from consumer.cli import commands

    commands.register(cli)


def main(argv: list[str] | None = None) -> int:
    _mount()
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="eventmail", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("eventmail: aborted", err=True)
        return 130
    except click.UsageError as exc:
        exc.show()
        return EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        return report_error(exc, debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
