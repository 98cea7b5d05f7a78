"""Errors that name what went wrong and where: the study, the file, the row, the column."""
from __future__ import annotations


class MedAlignError(Exception):
    """Base class for user-facing errors (the CLI prints these as one line, no traceback)."""


class CohortError(MedAlignError):
    """Bad input data: always says which study and which file (or row/column)."""

    def __init__(self, message: str, *, study_id: str | None = None, path: str | None = None,
                 row: int | None = None, column: str | None = None) -> None:
        self.study_id, self.path, self.row, self.column = study_id, path, row, column
        where = []
        if study_id is not None:
            where.append(f"study {study_id}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        if path is not None:
            where.append(f"file {path}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
