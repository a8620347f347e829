"""Completion, help and stdin through the daemon, with a real ipykernel, a real daemon
and real clients: every request goes through Kernels.request, replies are matched to
their requests, and an input request is answered once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from crdtnb.client import NotebookClient
from crdtnb.users import Role, UserStore

from .conftest import Daemon, RedisServer, write_notebook

RUN_TIMEOUT = 90


def _state(client: NotebookClient, cell_id: str) -> str | None:
    return client.cell(cell_id).get("execution_state")


def _stream_text(outputs: list[dict[str, Any]], name: str = "stdout") -> str:
    return "".join(o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == name)


async def _wait_idle(client: NotebookClient, *cell_ids: str, timeout: float = RUN_TIMEOUT) -> None:
    await client.wait_for(lambda _: all(_state(client, c) == "idle" for c in cell_ids), timeout=timeout)


async def _input_request(client: NotebookClient, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
    await client.wait_for(lambda _: bool(client.input_requests()), timeout=timeout)
    return client.input_requests()[0]


def _post(daemon: Daemon, path: str, action: str, body: Any, token: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{daemon.url}/api/notebooks/{path}/{action}",
        headers={"Authorization": f"token {token or daemon.token}"},
        json=body,
        timeout=30,
    )


@pytest.fixture
def kernel_daemon(daemon_factory: Any) -> Daemon:
    return daemon_factory("--save-delay", "0.2")


# -- completion and help ------------------------------------------------------------------


async def test_completion_and_help_come_from_the_kernel(kernel_daemon: Daemon, root: Path) -> None:
    write_notebook(root / "help.ipynb", ["alpha_value = 1\ndef documented():\n    'Says what it does.'\n    return 2"])
    client = await kernel_daemon.connect("help.ipynb")
    cell = client.cell_ids()[0]
    await client.execute([cell])
    await _wait_idle(client, cell)

    reply = await client.complete("x = alpha_")
    assert reply["status"] == "ok"
    assert "alpha_value" in reply["matches"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (4, 10)
    # The cursor may sit inside the code (in characters, not bytes).
    reply = await client.complete("é = alpha_ + 1", cursor_pos=10)
    assert "alpha_value" in reply["matches"] and reply["cursor_end"] == 10

    help_reply = await client.inspect("documented", detail_level=0)
    assert help_reply["found"] is True
    assert "Says what it does." in help_reply["data"]["text/plain"]
    missing = await client.inspect("no_such_name_anywhere")
    assert missing["found"] is False
    await client.close()


async def test_no_kernel_is_started_for_a_completion(kernel_daemon: Daemon, root: Path) -> None:
    client = await kernel_daemon.connect("nb.ipynb")
    reply = await client.complete("pri")
    assert reply == {"status": "no_kernel", "matches": [], "cursor_start": 3, "cursor_end": 3, "metadata": {}}
    assert (await client.inspect("print"))["status"] == "no_kernel"
    status = await client.kernel()
    assert status["status"] == "none" and status["kernel"] is None
    assert client.state.get("kernel_status") in (None, "none")
    await client.close()


async def test_completion_is_answered_while_a_cell_runs_and_the_cell_keeps_its_reply(kernel_daemon: Daemon, root: Path) -> None:
    code = "import time\nbeta_value = 2\nprint('started', flush=True)\ntime.sleep(6)\nprint('finished')\n'result'"
    write_notebook(root / "busy.ipynb", [code, "print(beta_value + 1)"])
    client = await kernel_daemon.connect("busy.ipynb")
    slow, after = client.cell_ids()
    await client.execute([slow, after])
    await client.wait_for(lambda _: "started" in _stream_text(client.outputs(slow)), timeout=RUN_TIMEOUT)

    # Several at once, while the cell sleeps: each gets its own reply.
    completions, helps = await asyncio.gather(
        asyncio.gather(*(client.complete(f"{prefix}_va") for prefix in ("beta", "beta", "beta"))),
        asyncio.gather(client.inspect("beta_value"), client.inspect("time.sleep")),
    )
    assert _state(client, slow) == "running"  # answered while the cell runs
    assert all("beta_value" in reply["matches"] for reply in completions)
    assert helps[0]["found"] and "int" in helps[0]["data"]["text/plain"]
    assert helps[1]["found"] and "sleep" in helps[1]["data"]["text/plain"].lower()

    # The running cell got its own execute reply: count and result, and the queue went on.
    await _wait_idle(client, slow, after)
    outputs = client.outputs(slow)
    assert _stream_text(outputs) == "started\nfinished\n"
    assert outputs[-1]["output_type"] == "execute_result" and outputs[-1]["data"]["text/plain"] == "'result'"
    assert client.cell(slow).get("execution_count") == 1
    assert _stream_text(client.outputs(after)) == "3\n"
    assert client.cell(after).get("execution_count") == 2
    await client.close()


async def test_bad_completion_requests_are_refused(kernel_daemon: Daemon) -> None:
    for action, body in [
        ("complete", {"code": "x"}),
        ("complete", {"code": "x", "cursor_pos": 2}),
        ("complete", {"code": "x", "cursor_pos": -1}),
        ("complete", {"code": 1, "cursor_pos": 0}),
        ("complete", ["x", 1]),
        ("inspect", {"code": "x", "cursor_pos": 1, "detail_level": 5}),
        ("input", {"id": "x"}),
        ("input", {"value": "x"}),
    ]:
        response = _post(kernel_daemon, "nb.ipynb", action, body)
        assert response.status_code == 400, (action, body, response.text)
        assert "error" in response.json()
    response = httpx.post(
        f"{kernel_daemon.url}/api/notebooks/nb.ipynb/complete",
        headers={"Authorization": f"token {kernel_daemon.token}", "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert response.status_code == 400


async def test_completion_help_and_input_need_the_right_to_run_code(daemon_factory: Any, root: Path) -> None:
    store = UserStore(root / ".crdtnb")
    tokens = {}
    for name, role in (("vera", Role.VIEWER), ("ed", Role.EDITOR), ("rita", Role.RUNNER)):
        store.add(name, role, "correct horse battery")
        tokens[name] = store.new_token(name)
    daemon = daemon_factory()
    bodies = {
        "complete": {"code": "pri", "cursor_pos": 3},
        "inspect": {"code": "print", "cursor_pos": 5},
        "input": {"id": "x", "value": "y"},
    }
    for action, body in bodies.items():
        for name in ("vera", "ed"):
            response = _post(daemon, "nb.ipynb", action, body, tokens[name])
            assert response.status_code == 403, (name, action, response.text)
        response = _post(daemon, "nb.ipynb", action, body, tokens["rita"])
        assert response.status_code == (409 if action == "input" else 200), (action, response.text)


# -- stdin -----------------------------------------------------------------------------------


async def test_input_is_answered_once_and_echoed_into_the_output(kernel_daemon: Daemon, root: Path) -> None:
    write_notebook(root / "ask.ipynb", ["print('before', flush=True)\nname = input('Your name? ')\nprint('hello', name)"])
    a = await kernel_daemon.connect("ask.ipynb")
    b = await kernel_daemon.connect("ask.ipynb")
    cell = a.cell_ids()[0]
    await a.execute([cell])
    request = await _input_request(a)
    assert request["cell_id"] == cell and request["prompt"] == "Your name? " and request["password"] is False
    assert (await _input_request(b)) == request  # every client sees the same request
    assert (await a.kernel())["input_request"] == request
    await a.wait_for(lambda _: "before" in _stream_text(a.outputs(cell)), timeout=10)
    assert _state(a, cell) == "running"

    # A peer cannot forge or remove the request: the server puts it back.
    b.state["input_request"] = {"id": "forged", "cell_id": cell, "prompt": "Password: ", "password": True}
    await b.roundtrip()
    await b.wait_for(lambda _: b.input_requests() == [request], timeout=10)

    # Two answers race: exactly one wins, the other is told it came too late.
    results = await asyncio.gather(a.answer_input(request["id"], "Ada"), b.answer_input(request["id"], "Bob"), return_exceptions=True)
    wins = [r for r in results if isinstance(r, dict)]
    losses = [r for r in results if isinstance(r, Exception)]
    assert len(wins) == 1 and len(losses) == 1 and "409" in str(losses[0])
    winner = "Ada" if results[0] is wins[0] else "Bob"
    await _wait_idle(a, cell)
    assert a.input_requests() == [] and b.input_requests() == []
    assert _stream_text(a.outputs(cell)) == f"before\nYour name? {winner}\nhello {winner}\n"
    response = _post(kernel_daemon, "ask.ipynb", "input", {"id": request["id"], "value": "late"})
    assert response.status_code == 409
    await a.close()
    await b.close()


async def test_a_password_is_never_written_into_the_notebook(kernel_daemon: Daemon, root: Path) -> None:
    write_notebook(root / "secret.ipynb", ["import getpass\npw = getpass.getpass('Password: ')\nprint('length', len(pw))"])
    client = await kernel_daemon.connect("secret.ipynb")
    cell = client.cell_ids()[0]
    await client.execute([cell])
    request = await _input_request(client)
    assert request["password"] is True and request["prompt"] == "Password: "
    await client.answer_input(request["id"], "hunter2-s3cret")
    await _wait_idle(client, cell)
    assert _stream_text(client.outputs(cell)) == "Password: ········\nlength 14\n"
    # Nowhere: not in the document, its REST export, nor the file on disk.
    assert "hunter2" not in json.dumps(client.notebook())
    assert "hunter2" not in kernel_daemon.get("/api/notebooks/secret.ipynb").text
    await client.roundtrip()
    await asyncio.sleep(1)  # past the save delay
    assert "Password: ········" in (root / "secret.ipynb").read_text()
    assert "hunter2" not in (root / "secret.ipynb").read_text()
    await client.close()


async def test_interrupt_while_waiting_for_input(kernel_daemon: Daemon, root: Path) -> None:
    write_notebook(root / "wait.ipynb", ["value = input('Never answered: ')", "print('queued')", "print('later')"])
    client = await kernel_daemon.connect("wait.ipynb")
    waiting, queued, later = client.cell_ids()
    await client.execute([waiting, queued])
    request = await _input_request(client)
    await client.interrupt()
    await _wait_idle(client, waiting, queued, timeout=30)
    assert client.input_requests() == []
    errors = [o for o in client.outputs(waiting) if o["output_type"] == "error"]
    assert errors and errors[0]["ename"] == "KeyboardInterrupt"
    assert client.outputs(queued) == []
    assert _post(kernel_daemon, "wait.ipynb", "input", {"id": request["id"], "value": "x"}).status_code == 409
    # The kernel lives on.
    await client.execute([later])
    await _wait_idle(client, later)
    assert _stream_text(client.outputs(later)) == "later\n"
    await client.close()


@pytest.mark.parametrize("how", ["restart", "shutdown"])
async def test_restart_or_shutdown_clears_the_input_request(kernel_daemon: Daemon, root: Path, how: str) -> None:
    write_notebook(root / f"{how}.ipynb", ["input('waiting: ')"])
    client = await kernel_daemon.connect(f"{how}.ipynb")
    cell = client.cell_ids()[0]
    await client.execute([cell])
    request = await _input_request(client)
    await (client.restart() if how == "restart" else client.shutdown_kernel())
    await client.wait_for(lambda _: not client.input_requests(), timeout=30)
    await _wait_idle(client, cell)
    assert _post(kernel_daemon, f"{how}.ipynb", "input", {"id": request["id"], "value": "x"}).status_code == 409
    assert (await client.kernel())["input_request"] is None
    await client.close()


async def test_the_kernel_dying_while_waiting_clears_the_input_request(kernel_daemon: Daemon, root: Path) -> None:
    code = "import os, threading, time\nthreading.Timer(1.5, lambda: os._exit(1)).start()\ninput('about to die: ')"
    write_notebook(root / "die.ipynb", [code])
    client = await kernel_daemon.connect("die.ipynb")
    cell = client.cell_ids()[0]
    await client.execute([cell])
    await _input_request(client)
    await _wait_idle(client, cell)
    await client.wait_for(lambda _: not client.input_requests(), timeout=30)
    assert client.outputs(cell)[-1]["ename"] == "DeadKernelError"
    await client.close()


async def test_pdb_runs_through_input_requests(kernel_daemon: Daemon, root: Path) -> None:
    code = "def f():\n    secret_number = 41\n    breakpoint()\n    return secret_number + 1\nprint('result', f())"
    write_notebook(root / "debug.ipynb", [code])
    client = await kernel_daemon.connect("debug.ipynb")
    cell = client.cell_ids()[0]
    await client.execute([cell])
    first = await _input_request(client)
    assert "pdb" in first["prompt"].lower()  # pdb, or IPython's ipdb
    await client.answer_input(first["id"], "p secret_number")
    await client.wait_for(lambda _: bool(client.input_requests()) and client.input_requests()[0]["id"] != first["id"], timeout=30)
    second = client.input_requests()[0]
    await client.answer_input(second["id"], "c")
    await _wait_idle(client, cell)
    text = _stream_text(client.outputs(cell))
    assert "p secret_number\n" in text and "41\n" in text and text.endswith("result 42\n")
    await client.close()


async def test_post_mortem_debug_runs_through_input_requests(kernel_daemon: Daemon, root: Path) -> None:
    write_notebook(root / "postmortem.ipynb", ["def g():\n    hidden_number = 7\n    return 1 / 0\ng()", "%debug"])
    client = await kernel_daemon.connect("postmortem.ipynb")
    failing, debug = client.cell_ids()
    await client.execute([failing])
    await _wait_idle(client, failing)
    await client.execute([debug])
    first = await _input_request(client)
    assert "ipdb" in first["prompt"]
    await client.answer_input(first["id"], "p hidden_number")
    await client.wait_for(lambda _: bool(client.input_requests()) and client.input_requests()[0]["id"] != first["id"], timeout=30)
    await client.answer_input(client.input_requests()[0]["id"], "q")
    await _wait_idle(client, debug)
    text = _stream_text(client.outputs(debug))
    assert "p hidden_number\n" in text and "7\n" in text
    await client.close()


# -- in a cluster -------------------------------------------------------------------------------


async def test_completion_and_input_reach_the_owner_from_any_daemon(redis_server: RedisServer, daemon_factory: Any, root: Path) -> None:
    write_notebook(root / "far.ipynb", ["gamma_value = 3\nanswer = input('Which? ')\nprint('chose', answer)"])
    daemons = [daemon_factory("--redis", redis_server.url, "--node-id", f"node{i}") for i in range(2)]
    first = await daemons[0].connect("far.ipynb")
    second = await daemons[1].connect("far.ipynb")
    cell = first.cell_ids()[0]
    await first.execute([cell])
    owner = next(d for d in daemons if "far.ipynb" in d.health()["cluster"]["owned"])
    other, asker = (daemons[1], second) if owner is daemons[0] else (daemons[0], first)
    request = await _input_request(asker)
    # Asked of the daemon that does not own the room: forwarded to the owner's kernel.
    reply = await asker.complete("gamma_")
    assert "gamma_value" in reply["matches"]
    assert (await asker.inspect("gamma_value"))["found"]
    await asker.answer_input(request["id"], "blue")
    await _wait_idle(first, cell)
    await second.wait_for(lambda _: "chose blue" in _stream_text(second.outputs(cell)), timeout=30)
    assert _stream_text(first.outputs(cell)) == "Which? blue\nchose blue\n"
    assert _post(other, "far.ipynb", "input", {"id": request["id"], "value": "late"}).status_code == 409
    # Renames and deletes are refused in a cluster, and change nothing.
    for method, route, body in [("POST", "/api/notebooks/far.ipynb/rename", {"to": "x.ipynb"}), ("DELETE", "/api/notebooks/far.ipynb", None)]:
        response = httpx.request(method, f"{other.url}{route}", headers={"Authorization": f"token {other.token}"}, json=body, timeout=30)
        assert response.status_code == 501, response.text
    assert (root / "far.ipynb").exists() and not (root / "x.ipynb").exists()
    await first.close()
    await second.close()
