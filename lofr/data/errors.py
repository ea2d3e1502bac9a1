"""The one exception lofr's data code raises for bad input.

A ``DataError`` always says *where* the problem is (the file, and the annotation / image id when
there is one) and *what* is wrong, so a user can open the file and fix it. It is a
``lofr.errors.LofrUserError`` (the command line prints it on one line and exits 2) and a
``ValueError``, so generic ``except ValueError`` handlers still catch it.
"""

from __future__ import annotations

from pathlib import Path

from lofr.errors import LofrUserError

__all__ = ["DataError"]


class DataError(LofrUserError, ValueError):
    """Bad input data: ``DataError(problem, file=..., ann_id=..., image_id=...)``.

    The message reads ``"<file>: annotation id 7 (image id 3): <problem>"``; the parts are also kept
    as attributes (``file``, ``ann_id``, ``image_id``, ``problem``) for code that wants to count or
    skip bad instances.
    """

    def __init__(self, problem: str, *, file: str | Path | None = None, ann_id=None, image_id=None):
        self.problem = problem
        self.file = None if file is None else str(file)
        self.ann_id = ann_id
        self.image_id = image_id
        where = []
        if self.file is not None:
            where.append(self.file)
        ids = []
        if ann_id is not None:
            ids.append(f"annotation id {ann_id}")
        if image_id is not None:
            ids.append(f"image id {image_id}" if not ids else f"(image id {image_id})")
        if ids:
            where.append(" ".join(ids))
        self.where = where
        super().__init__(": ".join(where + [problem]))

    def user_message(self) -> str:
        """``<problem> (<file>, annotation id 7 (image id 3))``: what is wrong first, then where."""
        problem = " ".join(self.problem.split())
        return f"{problem} ({', '.join(self.where)})" if self.where else problem
