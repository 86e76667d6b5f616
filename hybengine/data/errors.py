"""The one error the data modules raise for bad inputs: it lists every problem, with file names."""
from __future__ import annotations


class DatasetError(ValueError):
    """Bad dataset folder or data setting. The message lists every problem found, one per line,
    each with the file it concerns, and ends with what to do."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])

    @classmethod
    def listing(cls, where: str, problems: list[str], advice: str) -> DatasetError:
        """One message for many problems: a header naming `where`, one line each, then `advice`."""
        n = len(problems)
        lines = [f"{where}: {n} problem{'s' if n != 1 else ''} found:"]
        lines += [f"  - {p}" for p in problems]
        lines.append(advice)
        return cls("\n".join(lines), problems)
