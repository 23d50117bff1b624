"""`ember-bot db copy --from sqlite:///… --to postgresql://…`: move an installation's data to
PostgreSQL and verify it (storage/copy.py)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from storage.copy import copy_database
from storage.database import database_label
from storage.opening import DatabaseProblem


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ember-bot db", description="Database tools.")
    tools = parser.add_subparsers(dest="tool", required=True)
    copy = tools.add_parser(
        "copy",
        help="copy sessions, variants, history and audit log from SQLite into PostgreSQL",
        description="Copy an SQLite database (the bot may keep running on it) into an empty "
        "PostgreSQL database, then compare every table's row count.",
    )
    copy.add_argument("--from", dest="source", required=True, metavar="sqlite:///PATH")
    copy.add_argument("--to", dest="target", required=True, metavar="postgresql://…")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        tables = asyncio.run(copy_database(args.source, args.target))
    except DatabaseProblem as error:
        print(error, file=sys.stderr)
        return 2
    print(f"{'table':<10} {'source':>10} {'copied':>10}")
    for table in tables:
        mark = "" if table.verified else "  MISMATCH"
        print(f"{table.name:<10} {table.source_rows:>10} {table.target_rows:>10}{mark}")
    if not all(table.verified for table in tables):
        print("database error: the row counts differ; the copy is not usable.", file=sys.stderr)
        return 1
    print(f"copied and verified: {database_label(args.source)} -> {database_label(args.target)}")
    return 0
