"""The task verbs against a remote engine: ``--server URL`` (or
``$KOS_SEE_SERVER``) sends them through ``kos_see.client``.

The caller is ``$KOS_SEE_PRINCIPAL`` (default ``local``) and requests are
signed with the private key file ``$KOS_SEE_KEY``; without a key they go
unsigned, which an engine accepts only with ``security.allow_unsigned``.
Exit codes are the local verbs': the server's errors arrive as the same
engine errors.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from kos_see.cli.output import console, emit_json, id_column, plain, state_text, when
from kos_see.errors import TaskFailed

if TYPE_CHECKING:
    from kos_see.client import Client

EXIT_PENDING = 5

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="KOS_SEE_SERVER",
        help="Send the command to the engine's API at this URL instead of the "
        "local home (signed as $KOS_SEE_PRINCIPAL with the key $KOS_SEE_KEY).",
        show_envvar=False,
    ),
]


def client(server: str) -> Client:
    # Imported here: the HTTP stack is not loaded for the local verbs.
    from kos_see.client import Client
    from kos_see.security.keys import load_private

    principal = os.environ.get("KOS_SEE_PRINCIPAL", "local")
    key_path = os.environ.get("KOS_SEE_KEY")
    key = load_private(Path(key_path)) if key_path else None
    return Client(server, principal, key)


def exit_for(task: dict[str, Any]) -> None:
    if task["state"] == "succeeded":
        return
    finished = task["state"] in ("failed", "timed_out", "cancelled", "dead")
    raise typer.Exit(TaskFailed.exit_code if finished else EXIT_PENDING)


def print_task(task: dict[str, Any]) -> None:
    line = f"{task['id']}  {task['service']}@{task['version']}  "
    console.print(line, state_text(task["state"]), highlight=False, end="")
    console.print(f"  attempts {task['attempts']}", markup=False, highlight=False)
    if task.get("error"):
        console.print(f"  error: {task['error']}", markup=False, highlight=False)
    if task.get("result") is not None:
        console.print_json(json.dumps(task["result"]))


def print_table(tasks: list[dict[str, Any]]) -> None:
    table = Table(
        id_column("task", (t["id"] for t in tasks)),
        "service",
        "tenant",
        "state",
        "attempts",
        "created",
    )
    for t in tasks:
        table.add_row(
            plain(t["id"]),
            plain(f"{t['service']}@{t['version']}"),
            plain(t["tenant"]),
            state_text(t["state"]),
            str(t["attempts"]),
            when(t["created_at"]),
        )
    console.print(table)


def submit(server: str, fields: dict[str, Any], wait: bool, as_json: bool) -> None:
    with client(server) as remote:
        reply = remote.submit(fields.pop("service"), fields.pop("input"), **fields)
        task = reply["task"]
        if wait:
            task = remote.wait(task["id"])
    if as_json:
        emit_json({**task, "created": reply["created"]})
    elif wait:
        print_task(task)
    else:
        console.print(task["id"], highlight=False, markup=False)
    if wait:
        exit_for(task)


def status(server: str, task_id: str, as_json: bool) -> None:
    with client(server) as remote:
        task = remote.get(task_id)
    if as_json:
        emit_json(task)
    else:
        print_task(task)


def list_tasks(server: str, as_json: bool, **filters: Any) -> None:
    with client(server) as remote:
        page = remote.list(**filters)
    if as_json:
        emit_json(page["items"])
    else:
        print_table(page["items"])


def result(server: str, task_id: str, as_json: bool) -> None:
    with client(server) as remote:
        task = remote.get(task_id)
    if as_json:
        emit_json({k: task[k] for k in ("id", "state", "result", "error")})
    elif task["state"] == "succeeded":
        console.print_json(json.dumps(task["result"]))
    else:
        print_task(task)
    exit_for(task)


def cancel(server: str, task_id: str, as_json: bool) -> None:
    with client(server) as remote:
        task = remote.cancel(task_id)
    if as_json:
        emit_json(task)
    else:
        console.print(f"{task['id']} {task['state']}", markup=False, highlight=False)


def retry(server: str, task_id: str, as_json: bool) -> None:
    with client(server) as remote:
        task = remote.retry(task_id)
    if as_json:
        emit_json(task)
    else:
        left = task["max_attempts"] - task["attempts"]
        console.print(f"{task['id']} requeued: {left} more attempts", markup=False)


def events(server: str, task_ids: list[str], as_json: bool) -> None:
    """watch and logs: each task's events in turn, until each ends."""
    final = []
    with client(server) as remote:
        for task_id in task_ids:
            for event in remote.events(task_id):
                if as_json:
                    sys.stdout.write(json.dumps(event) + "\n")
                    sys.stdout.flush()
                elif event["kind"] != "end":
                    text = event.get("message") or event.get("state") or ""
                    console.print(
                        f"{when(event['at'])} {task_id[-8:]} #{event['attempt']} "
                        f"{event['kind']:<8} {text}",
                        markup=False,
                        highlight=False,
                    )
            final.append(remote.get(task_id))
    if not as_json:
        print_table(final)
    if any(t["state"] != "succeeded" for t in final):
        raise typer.Exit(TaskFailed.exit_code)


def dead_letters(server: str, as_json: bool, **filters: Any) -> None:
    with client(server) as remote:
        page = remote.dead_letters(**filters)
    if as_json:
        emit_json(page["items"])
    else:
        print_table(page["items"])
