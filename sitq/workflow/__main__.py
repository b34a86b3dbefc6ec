"""``python -m sitq.workflow run|status ...``: the same commands as ``sitq workflow``."""

from sitq.workflow.cli import workflow

if __name__ == "__main__":
    workflow(prog_name="sitq workflow")
