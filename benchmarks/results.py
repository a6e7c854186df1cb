"""Writes one benchmark's section of ``benchmarks/RESULTS.md`` (replaced on each run)."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmark results\n\nEvery figure here is written by the command quoted with it.\n"


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.processor() or platform.machine()}, {cores} cores, Python {sys.version.split()[0]}"


def write_section(name: str, command: str, body: str) -> None:
    """Replace the section ``name`` of RESULTS.md with ``body`` (Markdown), stamped with the
    command, date and machine; other sections are kept. Written atomically."""
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    stamp = (
        f"Command: `{command}`  \nDate: {datetime.date.today().isoformat()}; machine: {machine()}"
    )
    section = f"{start}\n## {name}\n\n{stamp}\n\n{body.strip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    tmp = RESULTS.with_name(".RESULTS.md.tmp")
    tmp.write_text(text)
    tmp.replace(RESULTS)


def add_test_set_arguments(parser, data_help: str, model_default: str | None = None) -> None:
    """The options of a benchmark that evaluates one model on the first stamps of a test set:
    --data, --model (required without a default), --limit, --note, --record."""
    parser.add_argument("--data", type=Path, required=True, help=data_help)
    parser.add_argument("--model", default=model_default, required=model_default is None,
                        help="model directory or shipped name")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="first stamps only")
    parser.add_argument("--note", default="", help="recorded under the table")
    parser.add_argument("--record", action="store_true", help="write to benchmarks/RESULTS.md")


def check_at_least_one(parser, **counts) -> None:
    """Refuse (usage line, exit 2) any given count below 1; None means not given."""
    for name, value in counts.items():
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")


def table_body(intro: str, columns: list[str], rows: list[str]) -> str:
    """A section body: ``intro`` (a paragraph), then a Markdown table with these column
    headers and ``rows`` (each already a ``| ... |`` line)."""
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "---|" * len(columns)
    return "\n".join([intro, "", header, rule, *rows])


def report(name: str, body: str, record: bool) -> None:
    """Print a benchmark's ``body``; with ``record``, also write it as section ``name`` with
    the command line that ran it (``python`` + this process's arguments)."""
    print(body)
    if record:
        write_section(name, " ".join(["python", *sys.argv]), body)
