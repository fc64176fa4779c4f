"""What the job runner, `skynet worker` and `skynet job status/retry/report` need
from a job's item table: the interface both tables serve.

ItemTable (skynet/jobs/table.py) keeps one job's items in a SQLite file in the
state folder (`job run` on one machine); PgItemTable (skynet/jobs/pgtable.py)
keeps them in PostgreSQL ([skynet] jobs_dsn), where every machine of a fleet
reads and writes the same rows. The CLI only talks to this Protocol, so status,
retry and report read the same either way.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from skynet.jobs.table import NewItem, Outcome


class ItemStore(Protocol):
    # job_info: key -> JSON (intake's progress, the list's identity, the run's progress)
    def get(self, key: str) -> dict | None: ...

    def set(self, key: str, value: dict) -> None: ...

    # intake
    def add(self, rows: list[NewItem], gen: int, info: dict[str, dict],
            problems: list[tuple[int, str, str]] = ()) -> list[tuple[int, str]]: ...  # type: ignore[assignment]

    def add_problems(self, problems: Iterable[tuple[int, str, str]]) -> None: ...

    def start_pass(self, gen: int) -> None: ...

    def drop_unseen(self, gen: int) -> int: ...

    # running items
    def record(self, outcomes: list[Outcome]) -> int | None: ...

    def save_resume(self, item_id: int, state: dict | None) -> None: ...

    def requeue_failed(self, classes: list[str] | None = None) -> int: ...

    # status and report
    def counts(self) -> dict[tuple[str, str | None], int]: ...

    def bytes_done(self) -> int: ...

    def problem_counts(self) -> dict[str, int]: ...

    def rows(self, batch: int = 1000) -> Iterator[tuple]: ...

    def problems(self) -> Iterator[tuple[int, str, str]]: ...

    def item(self, dest: str) -> dict | None: ...

    def close(self) -> None: ...
