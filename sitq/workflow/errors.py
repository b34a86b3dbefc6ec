"""The errors of the workflow layer; each derives from :class:`sitq.SitqError`."""

from __future__ import annotations

from collections.abc import Sequence

from sitq.errors import SitqError


class WorkflowError(SitqError):
    """Something about a workflow or one of its runs that sitq cannot do."""


class WorkflowValidationError(WorkflowError, ValueError):
    """The workflow file is wrong; nothing ran. ``problems`` holds one line per
    problem, each naming the file, the line and the step."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "".join(f"\n  {problem}" for problem in self.problems)
        many = f"{len(self.problems)} problems in the workflow:{lines}"
        super().__init__(self.problems[0] if len(self.problems) == 1 else many)


class TemplateError(WorkflowError):
    """A template could not be rendered; the message names the step and the field."""


class RunNotFound(WorkflowError, KeyError):
    """No run with this id in the sitq database."""

    def __init__(self, run_id: str, where: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id
        self.where = where

    def __str__(self) -> str:
        return (
            f"no workflow run {self.run_id!r} in {self.where}; check the id "
            "(`sitq workflow status` lists runs) and --db / $SITQ_DB"
        )
