"""``sitq workflow run`` and ``sitq workflow status``: the click group ``workflow``."""

from __future__ import annotations

import asyncio
import csv
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import yaml

from sitq import TaskQueue
from sitq.display import terminal_safe
from sitq.errors import SitqError
from sitq.workflow.errors import WorkflowValidationError
from sitq.workflow.executors import EXECUTORS
from sitq.workflow.loader import load_yaml
from sitq.workflow.names import pairs
from sitq.workflow.parse import parse_workflow
from sitq.workflow.progress import LineReporter
from sitq.workflow.runner import DEFAULT_MAX_PARALLEL, RunReport
from sitq.workflow.state import StateStore, preview
from sitq.workflow.store import WorkflowItemRecord, WorkflowRunRecord, WorkflowStepRecord
from sitq.workflow.workflow import Workflow


def db_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--db``: the sitq database, as everywhere in sitq ($SITQ_DB, else sitq.db)."""
    return click.option(
        "--db", envvar="SITQ_DB", default="sitq.db", show_default=True, help=help_text
    )


@click.group()
def workflow() -> None:
    """Run YAML workflows whose batch steps resume after a crash."""


def load_param_file(path: str) -> Any:
    """A ``--param key=@FILE`` value: JSON, YAML, CSV (a list of row mappings) or text."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror or exc}") from None
    suffix = file.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(text)
        if suffix in (".yaml", ".yml"):
            return load_yaml(text, path, loader=yaml.SafeLoader)
    except WorkflowValidationError as exc:
        raise click.BadParameter(str(exc)) from None
    except ValueError as exc:
        raise click.BadParameter(f"{path} is not valid {suffix[1:].upper()}: {exc}") from None
    if suffix == ".csv":
        return [dict(row) for row in csv.DictReader(text.splitlines())]
    return text


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value``: the value as JSON when it parses (numbers, lists, true), else
    as text; ``key=@FILE`` reads a JSON, YAML, CSV or text file."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="--param")
    if value.startswith("@"):
        return key.strip(), load_param_file(value[1:])
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


@workflow.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A param: a JSON value, else text; @FILE reads JSON/YAML/CSV (repeatable).",
)
@click.option("--resume", metavar="RUN_ID", help="Continue this run; redo only what is unfinished.")
@click.option(
    "--force",
    is_flag=True,
    help="With --resume: take the run over even if another process seems to run it.",
)
@db_option(
    "sitq database that records the run and whose workers run the items, created if "
    "missing (defaults to $SITQ_DB)."
)
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default="auto",
    show_default=True,
    help="auto: on workers when some are alive on --db, else in this process.",
)
@click.option("--queue", "-q", default="default", show_default=True, help="Queue for the items.")
@click.option(
    "--max-parallel",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PARALLEL,
    show_default=True,
    help="Items at once for `parallel: true` steps without max_parallel.",
)
@click.option(
    "--http-base",
    envvar="SITQ_WORKFLOW_HTTP_BASE",
    default=None,
    help="Base URL for relative http_request URLs.",
)
@click.option(
    "--http-rewrite",
    multiple=True,
    metavar="FROM=TO",
    help="Send URLs starting with FROM to TO instead (repeatable).",
)
def run(
    file: str,
    params: tuple[str, ...],
    resume: str | None,
    force: bool,
    db: str,
    executor: str,
    queue: str,
    max_parallel: int,
    http_base: str | None,
    http_rewrite: tuple[str, ...],
) -> None:
    """Run the workflow in FILE, printing its run id and a progress line per step."""
    values = dict(parse_param(p) for p in params)
    try:
        report = Workflow.from_yaml(file).run(
            values,
            resume=resume,
            force=force,
            db=db,
            executor=executor,
            queue=queue,
            max_parallel=max_parallel,
            http_base=http_base,
            http_rewrite=pairs(
                http_rewrite,
                lambda e: click.BadParameter(f"{e!r} is not FROM=TO", param_hint="--http-rewrite"),
            )
            or None,
            reporter=LineReporter(sys.stdout),
        )
    except SitqError as exc:
        raise click.ClickException(str(exc)) from None
    _print_summary(report, file)
    if not report.ok:
        sys.exit(1)


def _print_summary(report: RunReport, file: str) -> None:
    for name, step in report.steps.items():
        label = f"{name} (outputs: {step.outputs})" if step.outputs else name
        if step.status != "failed":
            click.echo(terminal_safe(f"result of {label}: {preview(step.result)}"))
    for failure in report.failures[:20]:
        # An error may span lines (a command's stderr): indent its later ones.
        text = terminal_safe(
            f"failed {_failed_item(failure)}: {failure['error']}", keep_newlines=True
        )
        click.echo(text.replace("\n", "\n    "))
    if len(report.failures) > 20:
        click.echo(f"... and {len(report.failures) - 20} more failed items")
    if report.ok:
        click.echo(f"run {report.run_id} succeeded")
        return
    count = len(report.failures)
    what = report.error or f"{count} item{'' if count == 1 else 's'} failed (continue_on_error)"
    click.echo(
        f"run {report.run_id} {report.status}: {terminal_safe(what, keep_newlines=True)}\n"
        f"fix the cause, then redo what failed or did not run with: "
        f"sitq workflow run {file} --resume {report.run_id}"
    )


def _failed_item(failure: dict[str, Any]) -> str:
    """``step[index] item`` for an item of a batch or for_each step; ``step`` alone
    for a plain step (it has no item)."""
    if failure["index"] is None:
        return failure["step"]
    return f"{failure['step']}[{failure['index']}] {preview(failure['item'], 80)}"


# -- status ------------------------------------------------------------------------------


def _when(value: float | None) -> str:
    return "-" if value is None else datetime.fromtimestamp(value).isoformat(timespec="seconds")


def _run_status(record: WorkflowRunRecord, now: float) -> str:
    """The run's status, "interrupted" for a run recorded as running whose process is
    gone (on this host) or whose lease expired (on another host)."""
    why = record.interrupted(now)
    if why is not None:
        return f"interrupted ({why}; continue it with --resume)"
    return record.status


def _planned_steps(record: WorkflowRunRecord) -> list[str]:
    try:
        return [s.name for s in parse_workflow(record.text, record.source).steps]
    except SitqError:
        return []


def _step_json(step: WorkflowStepRecord, records: list[WorkflowItemRecord]) -> dict[str, Any]:
    processed = sum(r.status in ("succeeded", "failed") for r in records)
    return {
        "name": step.name,
        "status": step.status,
        "processed": processed,
        "failed": sum(r.status == "failed" for r in records),
        "total": step.total,
        "percent": round(100.0 * processed / step.total, 1) if step.total else 100.0,
        "result": step.result_preview,
        "error": step.error,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
    }


def _item_json(record: WorkflowItemRecord) -> dict[str, Any]:
    return {
        "index": record.index,
        "item": record.item_preview,
        "status": record.status,
        "attempts": record.attempts,
        "result": record.result_preview,
        "error": record.error,
        "task_id": record.task_id,
        "ran_on": record.ran_on,
    }


async def _read_status(
    db: str, run_id: str | None, items: bool
) -> tuple[str, float, list[WorkflowRunRecord], list[dict[str, Any]]]:
    """(where, now, runs, steps): the recent runs without ``run_id``, else that run and
    its steps as JSON-ready dicts; ``now`` by the database's clock (that of the
    leases). The database must exist already."""
    async with TaskQueue(db, create=False) as queue:
        store = StateStore(queue)
        now = queue.now()
        if run_id is None:
            return store.where, now, await store.list_workflow_runs(), []
        record = await store.run(run_id)
        started = {s.name: s for s in await store.list_workflow_steps(run_id)}
        steps = []
        for name in _planned_steps(record) or list(started):
            if name not in started:
                steps.append(
                    {"name": name, "status": "pending", "processed": 0, "failed": 0, "total": None}
                )
                continue
            records = await store.items(run_id, name)
            data = _step_json(started[name], records)
            if items:
                data["items"] = [_item_json(r) for r in records]
            steps.append(data)
        return store.where, now, [record], steps


@workflow.command()
@click.argument("run_id", required=False)
@db_option("sitq database the runs are recorded in (defaults to $SITQ_DB).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--items/--no-items", default=True, show_default=True, help="List each item.")
def status(run_id: str | None, db: str, as_json: bool, items: bool) -> None:
    """Show a run's steps and items (or, without RUN_ID, the recent runs)."""
    try:
        where, now, runs, steps = asyncio.run(_read_status(db, run_id, items))
    except SitqError as exc:
        raise click.ClickException(str(exc)) from None
    if run_id is None:
        _list_runs(where, now, runs, as_json)
        return
    record = runs[0]
    if as_json:
        run_data = {
            "id": record.id,
            "file": record.source,
            "status": record.status,
            "process_alive": record.process_alive(),
            "interrupted": record.interrupted(now),
            "last_heartbeat_at": record.updated_at,
            "error": record.error,
            "params": record.params_preview,
            "created_at": record.created_at,
            "finished_at": record.finished_at,
        }
        click.echo(json.dumps({"run": run_data, "steps": steps}, indent=2, default=str))
        return
    _print_run(record, now, steps)


def _list_runs(where: str, now: float, runs: list[WorkflowRunRecord], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([{"id": r.id, "file": r.source, "status": r.status,
                                "created_at": r.created_at} for r in runs], indent=2))  # fmt: skip
        return
    if not runs:
        click.echo(f"no workflow runs recorded in {where}")
    for r in runs:
        line = f"{r.id}  {_run_status(r, now):<12} {_when(r.created_at)}  {r.source}"
        click.echo(terminal_safe(line))


def _echo(line: str) -> None:
    """Print one line of text read from the database, its control characters (in an
    item's error, a preview) escaped so that they cannot drive the terminal."""
    click.echo(terminal_safe(line))


def _print_run(record: WorkflowRunRecord, now: float, steps: list[dict[str, Any]]) -> None:
    _echo(f"run {record.id}: {_run_status(record, now)}")
    _echo(f"  file {record.source}, started {_when(record.created_at)}, "
         f"finished {_when(record.finished_at)}")  # fmt: skip
    _echo(f"  params {record.params_preview}")
    if record.error:
        click.echo(f"  error: {terminal_safe(record.error, keep_newlines=True)}")
    for step in steps:
        if step["total"] is None:
            _echo(f"step {step['name']}: pending")
            continue
        _echo(
            f"step {step['name']}: {step['status']}, {step['processed']}/{step['total']} "
            f"processed, {step['failed']} failed ({step['percent']:.0f}%)"
        )
        if step.get("error"):
            click.echo(f"  error: {terminal_safe(step['error'], keep_newlines=True)}")
        for item in step.get("items", []):
            label = f"[{item['index']}]" + (f" {item['item']}" if item["item"] is not None else "")
            line = f"  {label}: {item['status']}, {item['attempts']} attempt(s)"
            if item["status"] == "succeeded":
                line += f" -> {item['result']}"
            elif item["error"]:
                line += f": {item['error'].splitlines()[0]}"
            _echo(line)
