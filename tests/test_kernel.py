"""The kernel agent with a real ipykernel, a real daemon and real clients."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from crdtnb.client import NotebookClient

from .conftest import Daemon, eventually, write_notebook

RUN_TIMEOUT = 90


def _state(client: NotebookClient, cell_id: str) -> str | None:
    return client.cell(cell_id).get("execution_state")


def _count(client: NotebookClient, cell_id: str) -> int | None:
    count = client.cell(cell_id).get("execution_count")
    return None if count is None else int(count)


async def _wait_idle(client: NotebookClient, *cell_ids: str, timeout: float = RUN_TIMEOUT) -> None:
    await client.wait_for(lambda _: all(_state(client, c) == "idle" for c in cell_ids), timeout=timeout)


def _stream_text(outputs: list[dict[str, Any]], name: str = "stdout") -> str:
    return "".join(o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == name)


def _saved_outputs(path: Path) -> list[list[dict[str, Any]]]:
    return [cell.get("outputs", []) for cell in json.loads(path.read_text())["cells"]]


@pytest.fixture
def kernel_daemon(daemon_factory: Any) -> Daemon:
    return daemon_factory("--save-delay", "0.2")


async def test_output_of_a_cell_survives_every_client_leaving(kernel_daemon: Daemon, root: Path) -> None:
    """The headline: run, disconnect everyone, come back later: the whole output is there."""
    write_notebook(root / "long.ipynb", ["import time\nfor i in range(6):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.5)\n'done'"])
    client = await kernel_daemon.connect("long.ipynb")
    cell = client.cell_ids()[0]
    await client.execute([cell])
    await client.wait_for(lambda _: "tick 0" in _stream_text(client.outputs(cell)), timeout=RUN_TIMEOUT)
    await client.close()
    assert kernel_daemon.health()["connections"] == 0

    # Nobody is connected while the cell finishes; the room stays loaded for its kernel.
    await eventually(lambda: _saved_outputs(root / "long.ipynb")[0] != [] and "tick 5" in str(_saved_outputs(root / "long.ipynb")[0]), timeout=30)
    later = await kernel_daemon.connect("long.ipynb")
    await _wait_idle(later, cell)
    outputs = later.outputs(cell)
    assert _stream_text(outputs) == "".join(f"tick {i}\n" for i in range(6))
    assert outputs[-1]["output_type"] == "execute_result"
    assert outputs[-1]["data"]["text/plain"] == "'done'"
    assert _count(later, cell) == 1
    # The .ipynb on disk has the same, as one stream output.
    await eventually(lambda: len(_saved_outputs(root / "long.ipynb")[0]) == 2, timeout=10)
    saved = json.loads((root / "long.ipynb").read_text())["cells"][0]
    assert "".join(saved["outputs"][0]["text"]) == "".join(f"tick {i}\n" for i in range(6))
    assert saved["execution_count"] == 1 and "execution_state" not in saved
    await later.close()


async def test_two_clients_see_output_arrive_live(kernel_daemon: Daemon, root: Path) -> None:
    write_notebook(root / "live.ipynb", ["import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second')"])
    a = await kernel_daemon.connect("live.ipynb")
    b = await kernel_daemon.connect("live.ipynb")
    cell = a.cell_ids()[0]
    await a.execute([cell])
    for client in (a, b):
        # The first line arrives while the cell is still running.
        await client.wait_for(lambda _, c=client: "first" in _stream_text(c.outputs(cell)), timeout=RUN_TIMEOUT)
        assert _state(client, cell) == "running"
        assert "second" not in _stream_text(client.outputs(cell))
    for client in (a, b):
        await _wait_idle(client, cell)
        assert _stream_text(client.outputs(cell)) == "first\nsecond\n"
        assert len(client.outputs(cell)) == 1  # appended to one stream output
    await a.close()
    await b.close()


async def test_carriage_return_progress_bar_does_not_grow_the_document(kernel_daemon: Daemon, root: Path) -> None:
    code = "import time\nfor i in range(1, 3001):\n    print(f'\\rprogress {i:5d}/3000', end='', flush=True)\n    time.sleep(0.0005)\nprint()\nprint('finished')"
    write_notebook(root / "bar.ipynb", [code])
    client = await kernel_daemon.connect("bar.ipynb")
    cell = client.cell_ids()[0]
    await client.execute([cell])
    await _wait_idle(client, cell)
    assert _stream_text(client.outputs(cell)) == "progress  3000/3000\nfinished\n"
    # 3000 rewrites of one line: the document holds a line, not 3000 of them.
    assert len(client.doc.get_update()) < 60_000
    await client.close()


async def test_hundred_thousand_lines_stay_bounded_and_other_rooms_answer(daemon_factory: Any, root: Path) -> None:
    daemon = daemon_factory("--save-delay", "0.2")
    write_notebook(root / "flood.ipynb", ["for i in range(100_000):\n    print(f'line {i:06d} of the flood')"])
    client = await daemon.connect("flood.ipynb")
    other = await daemon.connect("nb.ipynb")
    cell = client.cell_ids()[0]
    await client.execute([cell])
    await client.wait_for(lambda _: len(client.outputs(cell)) > 0, timeout=RUN_TIMEOUT)
    # While the flood runs, another room still syncs and stores edits.
    answered = 0
    while _state(client, cell) == "running" and answered < 50:
        other.insert_text(other.cell_ids()[0], 0, "x")
        await other.roundtrip(timeout=10)
        answered += 1
    assert answered > 0
    await _wait_idle(client, cell)
    text = _stream_text(client.outputs(cell))
    assert len(text.encode()) <= 2**20
    assert text.startswith("line 000000 of the flood\n")
    assert text.endswith("line 099999 of the flood\n")
    assert "output truncated" in text
    assert len(client.doc.get_update()) < 4 * 2**20
    await client.close()
    await other.close()


async def test_update_display_data_updates_outputs_in_other_cells(kernel_daemon: Daemon, root: Path) -> None:
    write_notebook(
        root / "display.ipynb",
        [
            "handle = display('version one', display_id=True)",
            "handle.update('version two')\nprint('updated')",
            "display('again', display_id=handle.display_id)",
        ],
    )
    client = await kernel_daemon.connect("display.ipynb")
    first, second, third = client.cell_ids()
    await client.execute([first, second])
    await _wait_idle(client, first, second)
    assert client.outputs(first)[0]["data"]["text/plain"] == "'version two'"
    assert _stream_text(client.outputs(second)) == "updated\n"
    await client.execute([third])
    await _wait_idle(client, third)
    await client.execute([second])
    await _wait_idle(client, second)
    # Both displays with the id were updated, in both cells.
    assert client.outputs(first)[0]["data"]["text/plain"] == "'version two'"
    assert client.outputs(third)[0]["data"]["text/plain"] == "'version two'"
    await client.close()


async def test_clear_output_wait_clears_at_the_next_output(kernel_daemon: Daemon, root: Path) -> None:
    code = (
        "from IPython.display import clear_output\nimport time\n"
        "for i in range(5):\n    clear_output(wait=True)\n    print(f'frame {i}', flush=True)\n    time.sleep(0.05)\n"
        "clear_output(wait=True)"
    )
    write_notebook(root / "clear.ipynb", [code, "from IPython.display import clear_output\nprint('gone')\nclear_output()\nprint('kept')"])
    client = await kernel_daemon.connect("clear.ipynb")
    waiting, now = client.cell_ids()
    await client.execute([waiting, now])
    await _wait_idle(client, waiting, now)
    # A pending clear with no output after it leaves the last frame in place.
    assert client.outputs(waiting) == [{"output_type": "stream", "name": "stdout", "text": "frame 4\n"}]
    assert _stream_text(client.outputs(now)) == "kept\n"
    await client.close()


async def test_interrupt_ends_the_running_cell_and_drops_the_queue(kernel_daemon: Daemon, root: Path) -> None:
    write_notebook(root / "int.ipynb", ["import time\nprint('sleeping', flush=True)\ntime.sleep(60)", "print('queued')"])
    client = await kernel_daemon.connect("int.ipynb")
    sleeper, queued = client.cell_ids()
    await client.execute([sleeper, queued])
    await client.wait_for(lambda _: "sleeping" in _stream_text(client.outputs(sleeper)), timeout=RUN_TIMEOUT)
    assert _state(client, queued) == "running"  # waiting in the queue
    await client.interrupt()
    await _wait_idle(client, sleeper, queued, timeout=30)
    errors = [o for o in client.outputs(sleeper) if o["output_type"] == "error"]
    assert errors and errors[0]["ename"] == "KeyboardInterrupt"
    assert client.outputs(queued) == [] and _count(client, queued) is None
    status = await client.kernel()
    assert status["queue"] == [] and status["running"] is None and status["status"] == "idle"
    await client.close()


async def test_kernel_death_is_reported_and_the_next_run_starts_a_new_kernel(kernel_daemon: Daemon, root: Path) -> None:
    write_notebook(root / "crash.ipynb", ["import os\nprint('before', flush=True)\nos._exit(1)", "print('after')", "print('fresh kernel')"])
    client = await kernel_daemon.connect("crash.ipynb")
    crash, after, fresh = client.cell_ids()
    await client.execute([crash, after])
    await _wait_idle(client, crash, after)
    outputs = client.outputs(crash)
    assert outputs[-1]["output_type"] == "error"
    assert outputs[-1]["ename"] == "DeadKernelError"
    assert "died" in outputs[-1]["evalue"]
    assert client.outputs(after) == []
    await client.wait_for(lambda _: client.state.get("kernel_status") == "dead", timeout=30)
    await client.execute([fresh])
    await _wait_idle(client, fresh)
    assert _stream_text(client.outputs(fresh)) == "fresh kernel\n"
    assert _count(client, fresh) == 1
    await client.close()


async def test_restart_gives_a_fresh_kernel(kernel_daemon: Daemon, root: Path) -> None:
    write_notebook(root / "restart.ipynb", ["x = 41", "print(x + 1)"])
    client = await kernel_daemon.connect("restart.ipynb")
    set_x, use_x = client.cell_ids()
    await client.execute([set_x, use_x])
    await _wait_idle(client, set_x, use_x)
    assert _stream_text(client.outputs(use_x)) == "42\n"
    await client.restart()
    assert (await client.kernel())["status"] == "idle"
    await client.execute([use_x])
    await _wait_idle(client, use_x)
    assert client.outputs(use_x)[0]["ename"] == "NameError"
    assert _count(client, use_x) == 1  # counting starts again
    await client.close()


async def test_cells_run_in_request_order_and_an_error_stops_the_queue(kernel_daemon: Daemon, root: Path) -> None:
    write_notebook(root / "order.ipynb", ["order = ['a']", "order.append('b'); print(order)", "raise ValueError('stop here')", "print('not run')"])
    client = await kernel_daemon.connect("order.ipynb")
    a, b, error, skipped = client.cell_ids()
    # Requests append to the queue; a cell already queued is not queued twice.
    first = await client.execute([a, b])
    second = await client.execute([b, error, skipped])
    assert first["queued"] == [a, b]
    assert second["queued"] == [error, skipped]
    await _wait_idle(client, a, b, error, skipped)
    assert _stream_text(client.outputs(b)) == "['a', 'b']\n"
    assert [_count(client, c) for c in (a, b, error)] == [1, 2, 3]
    assert client.outputs(error)[0]["evalue"] == "stop here"
    assert client.outputs(skipped) == [] and _count(client, skipped) is None
    await client.close()


async def test_code_is_the_source_when_the_cell_starts(kernel_daemon: Daemon, root: Path) -> None:
    write_notebook(root / "edit.ipynb", ["import time; time.sleep(1)", "print('old')"])
    client = await kernel_daemon.connect("edit.ipynb")
    slow, edited = client.cell_ids()
    await client.execute([slow, edited])
    client.set_source(edited, "print('new')")
    await _wait_idle(client, slow, edited)
    assert _stream_text(client.outputs(edited)) == "new\n"
    await client.close()


async def test_daemon_shutdown_leaves_no_kernel_process(kernel_daemon: Daemon, root: Path) -> None:
    write_notebook(root / "pid.ipynb", ["print('running')"])
    client = await kernel_daemon.connect("pid.ipynb")
    cell = client.cell_ids()[0]
    await client.execute([cell])
    await _wait_idle(client, cell)
    # The kernel's processes as the host sees them (a sandboxed kernel's own
    # os.getpid() is a pid of its namespace).
    assert kernel_daemon.process is not None
    pids = _descendants(kernel_daemon.process.pid)
    assert pids and all(_alive(pid) for pid in pids)
    await client.close()
    assert kernel_daemon.stop() == 0
    await eventually(lambda: not any(_alive(pid) for pid in pids), timeout=10)


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                # The command name may hold spaces: the fields after its ')' are fixed.
                parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_an_empty_cell_is_not_run_and_keeps_no_execution_count(kernel_daemon: Daemon, root: Path) -> None:
    """As in JupyterLab and nbclient: an empty cell is skipped, its outputs cleared."""
    write_notebook(root / "empty.ipynb", ["", "  \n\t", "print('ran')"])
    client = await kernel_daemon.connect("empty.ipynb")
    blank, spaces, code = client.cell_ids()
    await client.execute([blank, spaces, code])
    await _wait_idle(client, blank, spaces, code)
    assert [_count(client, c) for c in (blank, spaces, code)] == [None, None, 1]
    assert client.outputs(blank) == [] and client.outputs(spaces) == []
    await client.close()


@pytest.mark.parametrize("stop", ["kill", "term"])
async def test_a_cell_cut_off_by_a_server_stop_gets_a_note(kernel_daemon: Daemon, root: Path, stop: str) -> None:
    write_notebook(root / "cut.ipynb", ["import time\nprint('started', flush=True)\ntime.sleep(60)"])
    client = await kernel_daemon.connect("cut.ipynb")
    cell = client.cell_ids()[0]
    await client.execute([cell])
    await client.wait_for(lambda _: "started" in _stream_text(client.outputs(cell)), timeout=RUN_TIMEOUT)
    await client.close()
    if stop == "kill":
        kernel_daemon.kill()
    else:
        assert kernel_daemon.stop() == 0
    kernel_daemon.restart()
    later = await kernel_daemon.connect("cut.ipynb")
    await _wait_idle(later, cell, timeout=10)
    outputs = later.outputs(cell)
    assert _stream_text(outputs) == "started\n"  # what it printed is kept ...
    assert outputs[-1]["output_type"] == "error" and outputs[-1]["ename"] == "KernelLost"  # ... with a note
    assert later.state.get("kernel_status") in (None, "none")
    await later.close()


async def test_an_idle_kernel_is_culled_and_its_room_can_go(daemon_factory: Any, root: Path) -> None:
    daemon = daemon_factory("--cull-idle-kernels", "1", "--idle-timeout", "0.5", "--save-delay", "0.2")
    write_notebook(root / "cull.ipynb", ["print('first')", "print('again')"])
    client = await daemon.connect("cull.ipynb")
    first, again = client.cell_ids()
    await client.execute([first])
    await _wait_idle(client, first)
    assert (await client.kernel())["cull_idle"] == 1
    await client.wait_for(lambda _: client.state.get("kernel_status") == "culled", timeout=15)
    assert (await client.kernel())["status"] == "culled"
    await client.close()
    await eventually(lambda: daemon.health()["rooms"] == 0, timeout=15)  # nobody holds it now
    client = await daemon.connect("cull.ipynb")
    await client.execute([again])  # a fresh kernel
    await _wait_idle(client, again)
    assert _stream_text(client.outputs(again)) == "again\n" and _count(client, again) == 1
    await client.close()
