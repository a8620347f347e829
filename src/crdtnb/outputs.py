"""Writing kernel messages into a notebook document (REFERENCE §4).

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
import re
from dataclasses import dataclass, field
from typing import Any

import nbformat
from pycrdt import Array, Doc, Map, Text

from .notebook import new_output_map

# JupyterLab's rendering rules for \r and \b, applied to the line being written.
_CARRIAGE_RETURN = re.compile(r"^.*\r+(?!\n|$)", re.MULTILINE)
_BACKSPACE = re.compile(r"[^\n]\x08")
OUTPUT_TYPES = {"stream", "display_data", "execute_result", "error"}


@dataclass(frozen=True)
class OutputLimits:
    max_stream_bytes: int = 2**20  # per stream output
    max_output_bytes: int = 8 * 2**20  # any other single output
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
    """Mirror of the stream output being appended to, so we never read the Text back."""

    name: str
    ytext: Text
    head: str = ""  # kept start (after truncation) + the note
    body: str = ""  # everything after head
    truncated: bool = False

    @property
    def head_bytes(self) -> int:
        return _nbytes(self.head)


@dataclass
class _CellState:
    cell_id: str
    stream: _Stream | None = None
    clear_pending: bool = False
    displays: list[tuple[str, Map]] = field(default_factory=list)


class OutputWriter:
    """Applies iopub messages to the cells of one document."""

    def __init__(self, doc: Doc, limits: OutputLimits | None = None) -> None:
        self.doc = doc
        self.limits = limits or OutputLimits()
        self._cells: dict[str, _CellState] = {}
        self._displays: dict[str, list[tuple[str, Map]]] = {}

    # -- lookups -----------------------------------------------------------------

    def find_cell(self, cell_id: str) -> Map | None:
        for cell in self.doc.get("cells", type=Array):
            if cell.get("id") == cell_id:
                return cell
        return None

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
            if len(stream.ytext) != stream.head_bytes + _nbytes(stream.body):
                # Someone else changed it: start again from what is there.
                stream.head, stream.body = "", str(stream.ytext)
        else:
            outputs.append(new_output_map({"output_type": "stream", "name": name, "text": ""}))
            stream = state.stream = _Stream(name, outputs[len(outputs) - 1]["text"])
        self._append_stream_text(stream, text)

    def _append_stream_text(self, stream: _Stream, text: str) -> None:
        body = stream.body
        line_start = body.rfind("\n") + 1
        last_line = body[line_start:]
        incoming = last_line + text
        if "\r" in incoming or "\x08" in incoming:
            new_tail = terminal_line(incoming)
        else:
            new_tail = incoming
        # Minimal edit of the current line: keep the common prefix.
        common = _common_prefix(last_line, new_tail)
        base = stream.head_bytes + _nbytes(body[:line_start]) + _nbytes(last_line[:common])
        removed = _nbytes(last_line[common:])
        if removed:
            del stream.ytext[base : base + removed]
        added = new_tail[common:]
        if added:
            stream.ytext.insert(base, added)
        stream.body = body[:line_start] + new_tail
        self._cap_stream(stream)

    def _cap_stream(self, stream: _Stream) -> None:
        limit = self.limits.max_stream_bytes
        total = stream.head_bytes + _nbytes(stream.body)
        if total <= limit:
            return
        if not stream.truncated:
            # Keep the beginning, then a visible note, then the latest output.
            keep = int(limit * self.limits.stream_head_fraction)
            head = _cut_at_line(stream.body, keep)
            note = f"\n… [crdtnb: output truncated, the stream passed {_human(limit)}; the latest output follows] …\n"
            stream.ytext.insert(_nbytes(head), note)
            stream.head = head + note
            stream.body = stream.body[len(head) :]
            stream.truncated = True
        excess = stream.head_bytes + _nbytes(stream.body) - limit
        if excess <= 0:
            return
        # Drop whole lines from the start of the body where possible.
        cut = _cut_after_bytes(stream.body, excess)
        del stream.ytext[stream.head_bytes : stream.head_bytes + _nbytes(stream.body[:cut])]
        stream.body = stream.body[cut:]

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
        return outputs[len(outputs) - 1]

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


def _cut_at_line(text: str, max_bytes: int) -> str:
    """The longest prefix of whole lines within max_bytes (at least something)."""
    prefix = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    newline = prefix.rfind("\n")
    return prefix[: newline + 1] if newline >= 0 else prefix


def _cut_after_bytes(text: str, nbytes: int) -> int:
    """A character index past at least ``nbytes`` bytes of text, moved to the next line start."""
    chars = len(text.encode("utf-8")[:nbytes].decode("utf-8", errors="ignore"))
    if chars < nbytes and chars < len(text):
        chars += 1  # the cut fell inside a multibyte character
    newline = text.find("\n", chars)
    if newline != -1 and newline - chars < 4096:
        return newline + 1
    return chars
