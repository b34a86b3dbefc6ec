"""``python -m sitq.dashboard``: the same as ``sitq dashboard``."""

from sitq.dashboard.cli import dashboard

if __name__ == "__main__":  # pragma: no cover
    dashboard(prog_name="sitq dashboard")
