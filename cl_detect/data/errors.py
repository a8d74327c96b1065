"""Errors raised for datasets that cannot be read or must not be trained on.

`DatasetError` is what `DoctorReport.raise_on_errors()` raises (training
refuses to start on it unless the user overrides). `DatasetFormatError` is
raised by readers only when reading is impossible; it carries a finding code so
the doctor can report it like any other finding instead of crashing.
"""
from __future__ import annotations


class DatasetError(ValueError):
    """A dataset has problems that make training or evaluation on it meaningless."""


class DatasetFormatError(DatasetError):
    """A dataset file cannot be read at all.

    Args:
        message: what is wrong, naming the file and record, and the fix.
        code: the doctor finding code this maps to (e.g. 'names_as_string').
    """

    def __init__(self, message: str, code: str = "unreadable_dataset"):
        super().__init__(message)
        self.code = code
