"""YAML workflows with batch steps that resume after a crash.

``Workflow.from_yaml(path).run(params)`` (or ``await ... .run_async(params)``)
runs a workflow's steps in order; ``sitq workflow run FILE`` does the same from
the shell. Items run on sitq workers when some are alive on the database, else
in this process; every run is recorded so ``--resume RUN_ID`` finishes it
without redoing what succeeded. Needs the ``sitq[workflow]`` extra.
"""

from sitq.workflow.errors import RunNotFound, TemplateError, WorkflowError, WorkflowValidationError
from sitq.workflow.progress import StepProgress
from sitq.workflow.runner import RunReport, StepReport
from sitq.workflow.workflow import Workflow

__all__ = [
    "RunNotFound",
    "RunReport",
    "StepProgress",
    "StepReport",
    "TemplateError",
    "Workflow",
    "WorkflowError",
    "WorkflowValidationError",
]
