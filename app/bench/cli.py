"""`journeys bench …` commands."""

from __future__ import annotations

import typer

bench_cli = typer.Typer(help="Benchmarks (ratios to a baseline measured in the same run).",
                        no_args_is_help=True)
