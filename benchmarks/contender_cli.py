"""The command line the baseline and dlt contenders share: the API, the database, the days."""

from __future__ import annotations

import argparse
from datetime import date


def contender_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the options `benchmarks.e2e` passes every contender but the pipeline."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", default="sim-key")
    parser.add_argument("--api-secret", default="sim-secret")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--first-day", type=date.fromisoformat, required=True)
    parser.add_argument("--last-day", type=date.fromisoformat, required=True)
    return parser
