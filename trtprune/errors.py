"""The one exception type for user mistakes: what happened, why, and what to do."""

from __future__ import annotations

# Exit statuses of the CLI besides 0 (done) and 1 (a bug: a traceback): documented in the README.
USER_ERROR = 2  # a TrtpruneError: what, why, what to do; nothing half-written
BUDGET_MISSED = 3  # run/report: the delivered model misses its latency budget in the report's own measurement
TOP1_GATE = 4  # run/report: top-1 dropped more than --max-top1-drop (both: 3 | 4 = 7)


class TrtpruneError(Exception):
    """A problem the user can fix. The CLI prints it without a traceback and exits 2.

    ``what`` says what went wrong (naming the file, model or value), ``why`` what was
    expected or found, ``fix`` what to do about it.
    """

    def __init__(self, what: str, why: str = "", fix: str = ""):
        super().__init__(what)
        self.what = what
        self.why = why
        self.fix = fix

    def __str__(self) -> str:
        lines = [self.what]
        if self.why:
            lines.append(f"  why: {self.why}")
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)
