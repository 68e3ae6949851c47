"""Errors and reports for preference data that cannot be used as is.

Every problem is named by its source (file path or hub id), its row (a 1-based *line* number for
JSON Lines files, a 1-based *row* number otherwise: element of a JSON array, data row of a CSV
file after its header, row of a parquet file or hub split) and a reason code from `REASONS`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from mrpo.errors import InputError

REASONS: dict[str, str] = {
    "not_json": "not valid JSON",
    "not_object": "not a JSON object",
    "missing_field": "missing field",
    "not_text": "value is not text or a list of chat messages",
    "malformed_transcript": "malformed Human/Assistant transcript",
    "diverging_transcripts": "chosen and rejected differ before the final Assistant turn",
    "empty_prompt": "empty prompt",
    "prompt_not_user": "prompt does not end with a user turn",
    "response_not_assistant": "response is not an assistant message",
    "empty_response": "empty response",
    "identical_responses": "chosen identical to rejected",
}
"""Reason code -> short human-readable description, in the order rows are checked."""

_MAX_ROWS_LISTED = 10  # row numbers listed per reason in messages before "+N more"


class DataValidationError(InputError):
    """Preference data that cannot be loaded: a file-level problem or invalid rows.

    Attributes:
        source: the file path or hub id the problem is in.
        report: for invalid rows, the `DropReport` listing them (None for file-level problems).
    """

    kind = "data error"

    def __init__(self, message: str, *, source: str, report: DropReport | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.report = report


class RowError(Exception):
    """Raised by row normalizers for one row that cannot be used; carries a `REASONS` code."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(
                f"unknown invalid-row reason {reason!r}; expected one of {list(REASONS)}"
            )
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class InvalidRow:
    """One row that cannot be used: its 1-based row number, reason code and a detail message."""

    row: int
    reason: str
    detail: str


@dataclass
class DropReport:
    """Rows of one source that were rejected, with counts per reason.

    Attributes:
        source: file path or hub id (with subset and split) the rows come from.
        unit: ``"line"`` for JSON Lines files (row numbers are line numbers), else ``"row"``.
        num_rows: number of rows read from the source (blank lines of JSON Lines files
            excluded).
        invalid: the rejected rows, in source order.
    """

    source: str
    unit: str = "row"
    num_rows: int = 0
    invalid: list[InvalidRow] = field(default_factory=list)

    @property
    def num_dropped(self) -> int:
        """Number of rejected rows."""
        return len(self.invalid)

    @property
    def counts(self) -> dict[str, int]:
        """Reason code -> number of rows, most frequent first (ties in `REASONS` order)."""
        counter = Counter(r.reason for r in self.invalid)
        order = list(REASONS)
        return dict(sorted(counter.items(), key=lambda kv: (-kv[1], order.index(kv[0]))))

    def rows(self, reason: str) -> list[int]:
        """Row numbers rejected for ``reason``."""
        return [r.row for r in self.invalid if r.reason == reason]

    def _rows_text(self, reason: str) -> str:
        rows = self.rows(reason)
        shown = ", ".join(str(n) for n in rows[:_MAX_ROWS_LISTED])
        more = f", +{len(rows) - _MAX_ROWS_LISTED} more" if len(rows) > _MAX_ROWS_LISTED else ""
        return f"{self.unit}s {shown}{more}" if len(rows) > 1 else f"{self.unit} {shown}"

    def reason_lines(self) -> list[str]:
        """One line per reason: description, count and row numbers."""
        return [
            f"{REASONS[reason]}: {n} ({self._rows_text(reason)})"
            for reason, n in self.counts.items()
        ]

    def summary(self) -> str:
        """A one-line account for logs, e.g. ``dropped 4 of 2312 rows from x: empty response: 4
        (lines 87, 517, 926, 1104)``."""
        if not self.invalid:
            return f"dropped 0 of {self.num_rows} rows from {self.source}"
        reasons = "; ".join(self.reason_lines())
        return f"dropped {self.num_dropped} of {self.num_rows} rows from {self.source}: {reasons}"

    def error_message(self, max_examples: int = 5) -> str:
        """The multi-line message of the error raised when invalid rows are not dropped."""
        lines = [
            f"{self.source}: {self.num_dropped} of {self.num_rows} rows cannot be used as "
            "preference pairs:"
        ]
        lines += [f"  - {line}" for line in self.reason_lines()]
        lines.append("First invalid rows:")
        lines += [f"  {self.unit} {r.row}: {r.detail}" for r in self.invalid[:max_examples]]
        lines.append(
            "Fix the data, or drop these rows with drop_invalid=True "
            "(mrpo-train: data.drop_invalid=true)."
        )
        return "\n".join(lines)
