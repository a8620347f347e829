"""Writing kernel messages into a notebook document (docs/outputs.md).

One ``OutputWriter`` per kernel applies iopub messages in arrival order, in
batches: each ``apply`` call runs inside one transaction of the caller. Rules:

- consecutive stream messages of the same name append to one stream output's
  Text (never replacing it); ``\\r`` and ``\\b`` rewrite the current line as a
  terminal would, with minimal edits, so a progress bar does not grow the doc;
- ``clear_output(wait=True)`` clears at the next new output (not at an
  ``update_display_data``); ``wait=False`` clears now;
- ``update_display_data`` updates every output with that ``display_id``, in
  any cell;
- sizes are capped: a stream keeps its beginning and its latest output around
  a visible note; an output above the cap is replaced by a note.
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import nbformat
from pycrdt import Array, Doc, Map, Text

from .notebook import new_output_map
from .schema import CellIndex
from .settings import KernelSettings

logger = logging.getLogger("crdtnb.outputs")

# JupyterLab's rendering rules for \r and \b, applied to the line being written.
_CARRIAGE_RETURN = re.compile(r"^.*\r+(?!\n|$)", re.MULTILINE)
_BACKSPACE = re.compile(r"[^\n]\x08")
OUTPUT_TYPES = {"stream", "display_data", "execute_result", "error"}
_DEFAULTS = KernelSettings()


@dataclass(frozen=True)
class OutputLimits:
    max_stream_bytes: int = _DEFAULTS.max_stream_bytes  # per stream output
    max_output_bytes: int = _DEFAULTS.max_output_bytes  # any other single output
    stream_head_fraction: float = 0.25  # of a truncated stream, the share kept from its start


def terminal_line(text: str) -> str:
    """Resolve carriage returns and backspaces the way JupyterLab displays them."""
    previous = None
    while previous != text:
        previous = text
        text = _CARRIAGE_RETURN.sub("", text)
    previous = None
    while previous != text:
        previous = text
        text = _BACKSPACE.sub("", text)
    return text


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


@dataclass
class _Stream:
    """What we know of the stream output being appended to, so that no message
    costs work proportional to the text already written: the bytes kept at the
    start (and the truncation note), the complete lines after them as UTF-8
    chunks (one per message), and the current, unfinished line itself."""

    name: str
    ytext: Text
    head_bytes: int = 0
    lines: deque[bytes] = field(default_factory=deque)
    lines_bytes: int = 0
    last_line: str = ""
    truncated: bool = False

    @property
    def total_bytes(self) -> int:
        return self.head_bytes + self.lines_bytes + _nbytes(self.last_line)

    def take(self, text: str) -> None:
        """Account for ``text`` written at the end of the current line."""
        end = text.rfind("\n") + 1
        if end:
            chunk = text[:end].encode("utf-8")
            self.lines.append(chunk)
            self.lines_bytes += len(chunk)
        self.last_line = text[end:]

    def drop_lines(self, nbytes: int) -> int:
        """Forget whole lines from the start until ``nbytes`` are covered; return bytes dropped."""
        dropped = 0
        while self.lines and dropped < nbytes:
            chunk = self.lines[0]
            need = nbytes - dropped
            if len(chunk) <= need:
                self.lines.popleft()
                dropped += len(chunk)
                continue
            cut = chunk.find(b"\n", need - 1) + 1  # chunks end with a newline: cut > 0
            self.lines[0] = chunk[cut:]
            dropped += cut
            if not self.lines[0]:
                self.lines.popleft()
        self.lines_bytes -= dropped
        return dropped

    def keep_head(self, limit: int) -> int:
        """Move as many whole lines as fit in ``limit`` bytes from the start into the head."""
        kept = 0
        while self.lines:
            chunk = self.lines[0]
            if kept + len(chunk) <= limit:
                kept += len(chunk)
                self.lines.popleft()
                continue
            cut = chunk.rfind(b"\n", 0, limit - kept) + 1
            if cut:
                kept += cut
                self.lines[0] = chunk[cut:]
            break
        self.lines_bytes -= kept
        self.head_bytes += kept
        return kept

    @classmethod
    def adopt(cls, name: str, ytext: Text) -> _Stream:
        """Take over a stream output as it is in the document."""
        stream = cls(name, ytext)
        stream.take(str(ytext))
        return stream


@dataclass
class _CellState:
    cell_id: str
    stream: _Stream | None = None
    clear_pending: bool = False
    displays: list[tuple[str, Map]] = field(default_factory=list)


class OutputWriter:
    """Applies iopub messages to the cells of one document."""

    def __init__(
        self, doc: Doc, limits: OutputLimits | None = None, index: CellIndex | None = None, origin: object = None
    ) -> None:
        self.doc = doc
        self.limits = limits or OutputLimits()
        self.index = index or CellIndex(doc)
        self.origin = origin  # of the transactions it opens (the kernel's)
        self._cells: dict[str, _CellState] = {}
        self._displays: dict[str, list[tuple[str, Map]]] = {}

    # -- lookups -----------------------------------------------------------------

    def find_cell(self, cell_id: str) -> Map | None:
        return self.index.get(cell_id)

    def _outputs(self, cell_id: str) -> Array | None:
        cell = self.find_cell(cell_id)
        if cell is None or cell.get("cell_type") != "code":
            return None
        outputs = cell.get("outputs")
        if not isinstance(outputs, Array):
            outputs = cell["outputs"] = Array()
        return outputs

    def _state(self, cell_id: str) -> _CellState:
        state = self._cells.get(cell_id)
        if state is None:
            state = self._cells[cell_id] = _CellState(cell_id)
        return state

    # -- cell lifecycle (called by the kernel agent) ---------------------------------

    def start_cell(self, cell_id: str) -> None:
        """A cell starts: its outputs are cleared."""
        self.clear(cell_id)
        self._state(cell_id).clear_pending = False

    def set_execution_state(self, cell_id: str, state: str, execution_count: int | None = None) -> None:
        cell = self.find_cell(cell_id)
        if cell is None or cell.get("cell_type") != "code":
            return
        if execution_count is not None:
            cell["execution_count"] = execution_count
        if cell.get("execution_state") != state:
            cell["execution_state"] = state

    def forget(self, cell_id: str) -> None:
        """The cell is done: its stream ends (a rerun starts a new one)."""
        state = self._cells.pop(cell_id, None)
        if state is not None:
            state.stream = None

    # -- messages ---------------------------------------------------------------

    def apply_batch(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Apply messages in order, inside one transaction of the document.
        Consecutive stream messages to the same output are joined first, so a
        burst of tiny prints costs one edit."""
        with self.doc.transaction(origin=self.origin):
            for cell_id, msg in _join_streams(batch):
                try:
                    self.apply(cell_id, msg)
                except Exception:
                    logger.exception("could not write a %s output", msg["header"]["msg_type"])

    def apply(self, cell_id: str, msg: dict[str, Any]) -> None:
        """Apply one iopub message addressed to ``cell_id`` (inside the caller's transaction)."""
        msg_type = msg["header"]["msg_type"]
        content = msg.get("content", {})
        if msg_type == "clear_output":
            if content.get("wait"):
                self._state(cell_id).clear_pending = True
            else:
                self.clear(cell_id)
        elif msg_type == "update_display_data":
            self._update_display(content)
        elif msg_type in OUTPUT_TYPES:
            state = self._state(cell_id)
            if state.clear_pending:
                state.clear_pending = False
                self.clear(cell_id)
            if msg_type == "stream":
                self._stream(cell_id, content.get("name", "stdout"), content.get("text", ""))
            else:
                self._add_output(cell_id, msg)

    def add_error(self, cell_id: str, ename: str, evalue: str, traceback: list[str]) -> None:
        """An error the kernel could not report itself (it died)."""
        output = nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=traceback)
        self._append(cell_id, json.loads(json.dumps(output)))

    def clear(self, cell_id: str) -> None:
        outputs = self._outputs(cell_id)
        if outputs is not None and len(outputs):
            outputs.clear()
        state = self._state(cell_id)
        state.stream = None
        for display_id, _ in state.displays:
            entries = self._displays.get(display_id, [])
            entries[:] = [(cid, m) for cid, m in entries if cid != cell_id]
        state.displays.clear()

    # -- streams ----------------------------------------------------------------

    def _stream(self, cell_id: str, name: str, text: str) -> None:
        if not text:
            return
        outputs = self._outputs(cell_id)
        if outputs is None:
            return
        state = self._state(cell_id)
        stream = state.stream
        last = outputs[len(outputs) - 1] if len(outputs) else None
        if (
            stream is not None
            and stream.name == name
            and last is not None
            and last.get("output_type") == "stream"
            and last.get("name") == name
        ):
            # Always the Text now in the doc: a cell moved by a client is a copy.
            stream.ytext = last["text"]
            if len(stream.ytext) != stream.total_bytes:
                # Someone else changed it: start again from what is there.
                stream = state.stream = _Stream.adopt(name, stream.ytext)
        else:
            outputs.append(new_output_map({"output_type": "stream", "name": name, "text": ""}))
            stream = state.stream = _Stream(name, outputs[len(outputs) - 1]["text"])
        self._append_stream_text(stream, text)

    def _append_stream_text(self, stream: _Stream, text: str) -> None:
        last_line = stream.last_line
        incoming = last_line + text
        if "\r" in incoming or "\x08" in incoming:
            incoming = terminal_line(incoming)
        # Rewrite only what changed of the current line, then append.
        common = _common_prefix(last_line, incoming)
        line_start = stream.head_bytes + stream.lines_bytes
        base = line_start + _nbytes(last_line[:common])
        removed = _nbytes(last_line[common:])
        if removed:
            del stream.ytext[base : base + removed]
        added = incoming[common:]
        if added:
            stream.ytext.insert(base, added)
        stream.take(incoming)
        self._cap_stream(stream)

    def _cap_stream(self, stream: _Stream) -> None:
        limit = self.limits.max_stream_bytes
        if stream.total_bytes <= limit:
            return
        if not stream.truncated:
            # Keep the beginning (whole lines), then a visible note, then the latest output.
            head = stream.keep_head(int(limit * self.limits.stream_head_fraction))
            note = f"\n… [crdtnb: output truncated, the stream passed {_human(limit)}; the latest output follows] …\n"
            stream.ytext.insert(head, note)
            stream.head_bytes = head + _nbytes(note)
            stream.truncated = True
        excess = stream.total_bytes - limit
        if excess <= 0:
            return
        dropped = stream.drop_lines(excess)
        if dropped:
            del stream.ytext[stream.head_bytes : stream.head_bytes + dropped]
        if dropped < excess:
            # One endless line: cut its start, on a character boundary.
            cut = len(stream.last_line.encode("utf-8")[: excess - dropped].decode("utf-8", errors="ignore"))
            if cut < len(stream.last_line) and _nbytes(stream.last_line[:cut]) < excess - dropped:
                cut += 1
            start = stream.head_bytes + stream.lines_bytes
            del stream.ytext[start : start + _nbytes(stream.last_line[:cut])]
            stream.last_line = stream.last_line[cut:]

    # -- rich outputs -------------------------------------------------------------

    def _add_output(self, cell_id: str, msg: dict[str, Any]) -> None:
        try:
            output = json.loads(json.dumps(nbformat.v4.output_from_msg(msg)))
        except ValueError:
            return
        display_id = msg.get("content", {}).get("transient", {}).get("display_id")
        ymap = self._append(cell_id, output)
        if ymap is not None and display_id:
            self._displays.setdefault(display_id, []).append((cell_id, ymap))
            self._state(cell_id).displays.append((display_id, ymap))

    def _append(self, cell_id: str, output: dict[str, Any]) -> Map | None:
        outputs = self._outputs(cell_id)
        if outputs is None:
            return None
        output = self._capped(output)
        outputs.append(new_output_map(output))
        self._state(cell_id).stream = None
        appended: Map = outputs[len(outputs) - 1]
        return appended

    def _capped(self, output: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(output).encode("utf-8"))
        if size <= self.limits.max_output_bytes:
            return output
        note = (
            f"[crdtnb: a {output.get('output_type')} output of {_human(size)} was removed: "
            f"outputs are limited to {_human(self.limits.max_output_bytes)}]"
        )
        return {"output_type": "display_data", "data": {"text/plain": note}, "metadata": {}}

    def _update_display(self, content: dict[str, Any]) -> None:
        display_id = content.get("transient", {}).get("display_id")
        if not display_id:
            return
        data = self._capped(
            {"output_type": "display_data", "data": content.get("data", {}), "metadata": content.get("metadata", {})}
        )
        for _, ymap in self._displays.get(display_id, []):
            try:
                ymap["data"] = data["data"]
                ymap["metadata"] = data["metadata"]
            except Exception:
                continue  # the output was deleted by someone in the meantime


def _human(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if nbytes < 1024 or unit == "MiB":
            return f"{nbytes:.0f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.0f} MiB"


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _join_streams(batch: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    joined: list[tuple[str, dict[str, Any]]] = []
    for cell_id, msg in batch:
        if joined and msg["header"]["msg_type"] == "stream":
            prev_cell, prev = joined[-1]
            prev_content = prev["content"]
            if (
                prev_cell == cell_id
                and prev["header"]["msg_type"] == "stream"
                and prev_content.get("name") == msg["content"].get("name")
            ):
                text = prev_content.get("text", "") + msg["content"].get("text", "")
                joined[-1] = (cell_id, {"header": prev["header"], "content": {**prev_content, "text": text}})
                continue
        joined.append((cell_id, msg))
    return joined
