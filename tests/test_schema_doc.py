"""The CSV columns a run writes are the ones experiments/README.md documents, in the same order."""

import re
from pathlib import Path

import pytest

from flashspec.harness.runner import COLUMNS

README = Path(__file__).resolve().parent.parent / "experiments" / "README.md"


def documented_columns(file: str) -> list[str]:
    """The backticked names in the `columns` cell of the README's row for `file`, notes in parentheses dropped."""
    rows = [line for line in README.read_text().splitlines() if line.startswith(f"| `{file}` |")]
    assert len(rows) == 1, f"experiments/README.md should have one table row for {file}"
    columns = rows[0].split(" | ")[2]
    return re.findall(r"`([^`]+)`", re.sub(r"\([^)]*\)", "", columns))


@pytest.mark.parametrize("table", sorted(COLUMNS))
def test_csv_columns_match_the_documented_table(table):
    assert documented_columns(f"{table}.csv") == COLUMNS[table]
