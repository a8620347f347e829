"""The output writer on a real pycrdt document, message by message."""

from __future__ import annotations

import json
from typing import Any

import nbformat
import pytest
from pycrdt import Doc

from crdtnb.notebook import export_notebook, load_notebook
from crdtnb.outputs import OutputLimits, OutputWriter, terminal_line


def _doc(*ids: str) -> Doc:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("", id=cell_id) for cell_id in ids]
    doc = Doc()
    load_notebook(doc, json.loads(json.dumps(nb)))
    return doc


def _msg(msg_type: str, **content: Any) -> dict[str, Any]:
    return {"header": {"msg_type": msg_type}, "parent_header": {}, "metadata": {}, "content": content}


def _outputs(doc: Doc, index: int = 0) -> list[dict[str, Any]]:
    return export_notebook(doc)["cells"][index]["outputs"]


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("abc\rxyz", "xyz"),
        ("10%\r20%\r30%", "30%"),
        ("line\r\nnext", "line\r\nnext"),  # \r\n is a newline, not a rewrite
        ("ab\x08c", "ac"),
        ("one\ntwo\rTWO\nthree", "one\nTWO\nthree"),
    ],
)
def test_terminal_line(raw: str, shown: str) -> None:
    assert terminal_line(raw) == shown


def test_streams_append_to_one_text_and_split_by_name() -> None:
    doc = _doc("c")
    writer = OutputWriter(doc)
    for msg in (
        _msg("stream", name="stdout", text="a\n"),
        _msg("stream", name="stdout", text="b\n"),
        _msg("stream", name="stderr", text="warn\n"),
        _msg("stream", name="stdout", text="c\n"),
    ):
        with doc.transaction():
            writer.apply("c", msg)
    assert [(o["name"], o["text"]) for o in _outputs(doc)] == [("stdout", "a\nb\n"), ("stderr", "warn\n"), ("stdout", "c\n")]


def test_progress_rewrites_are_minimal_edits_with_non_ascii() -> None:
    doc = _doc("c")
    writer = OutputWriter(doc)
    sizes = []
    for i in range(200):
        with doc.transaction():
            writer.apply("c", _msg("stream", name="stdout", text=f"\rétape {i:3d} ▓▓▓ 🚀"))
        sizes.append(len(doc.get_update()))
    assert _outputs(doc)[0]["text"] == "étape 199 ▓▓▓ 🚀"
    # Tombstones of rewrites are tiny: the document does not grow with the number of frames.
    assert sizes[-1] - sizes[10] < 2_000


def test_stream_cap_keeps_the_beginning_a_note_and_the_latest_output() -> None:
    doc = _doc("c")
    writer = OutputWriter(doc, OutputLimits(max_stream_bytes=4096))
    for i in range(2000):
        with doc.transaction():
            writer.apply("c", _msg("stream", name="stdout", text=f"ligne {i} — ü\n"))
    text = _outputs(doc)[0]["text"]
    assert len(text.encode()) <= 4096
    assert text.startswith("ligne 0 — ü\n")
    assert text.endswith("ligne 1999 — ü\n")
    assert "output truncated" in text
    # Only whole lines after the note.
    after = text.split("follows] …\n", 1)[1]
    assert after.splitlines()[0].startswith("ligne ") and after.splitlines()[0].endswith(" — ü")


def test_an_output_above_the_cap_is_replaced_by_a_note() -> None:
    doc = _doc("c")
    writer = OutputWriter(doc, OutputLimits(max_output_bytes=10_000))
    big = _msg("display_data", data={"text/plain": "x" * 20_000}, metadata={}, transient={})
    small = _msg("execute_result", data={"text/plain": "42"}, metadata={}, execution_count=1)
    with doc.transaction():
        writer.apply("c", big)
        writer.apply("c", small)
    outputs = _outputs(doc)
    assert "was removed" in outputs[0]["data"]["text/plain"]
    assert outputs[1]["data"]["text/plain"] == "42"


def test_clear_output_wait_is_not_flushed_by_update_display_data() -> None:
    doc = _doc("a", "b")
    writer = OutputWriter(doc)
    with doc.transaction():
        writer.apply("a", _msg("display_data", data={"text/plain": "v1"}, metadata={}, transient={"display_id": "d"}))
        writer.apply("b", _msg("stream", name="stdout", text="old\n"))
        writer.apply("b", _msg("clear_output", wait=True))
        writer.apply("b", _msg("update_display_data", data={"text/plain": "v2"}, metadata={}, transient={"display_id": "d"}))
    assert _outputs(doc, 0)[0]["data"]["text/plain"] == "v2"
    assert _outputs(doc, 1)[0]["text"] == "old\n"  # still pending
    with doc.transaction():
        writer.apply("b", _msg("stream", name="stdout", text="new\n"))
    assert [o["text"] for o in _outputs(doc, 1)] == ["new\n"]


def test_clearing_a_cell_forgets_its_displays() -> None:
    doc = _doc("a")
    writer = OutputWriter(doc)
    with doc.transaction():
        writer.apply("a", _msg("display_data", data={"text/plain": "v1"}, metadata={}, transient={"display_id": "d"}))
        writer.apply("a", _msg("clear_output", wait=False))
        writer.apply("a", _msg("update_display_data", data={"text/plain": "v2"}, metadata={}, transient={"display_id": "d"}))
    assert _outputs(doc) == []


def test_stream_output_text_is_a_shared_text() -> None:
    from pycrdt import Array, Text

    doc = _doc("c")
    writer = OutputWriter(doc)
    with doc.transaction():
        writer.apply("c", _msg("stream", name="stdout", text="x"))
    output = doc.get("cells", type=Array)[0]["outputs"][0]
    assert isinstance(output["text"], Text)


def test_a_burst_of_tiny_prints_in_one_batch_is_one_edit() -> None:
    doc = _doc("c")
    writer = OutputWriter(doc, OutputLimits(max_stream_bytes=50_000))
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    writer.apply_batch([("c", _msg("stream", name="stdout", text=f"{i}\n")) for i in range(20_000)])
    text = _outputs(doc)[0]["text"]
    assert len(updates) == 1
    assert text.startswith("0\n1\n") and text.endswith("19999\n")
    assert len(text.encode()) <= 50_000


def test_an_endless_line_is_cut_from_its_start() -> None:
    doc = _doc("c")
    writer = OutputWriter(doc, OutputLimits(max_stream_bytes=4096))
    for i in range(200):
        writer.apply_batch([("c", _msg("stream", name="stdout", text=f"é{i:04d}" + "x" * 95))])
    text = _outputs(doc)[0]["text"]
    assert len(text.encode()) <= 4096
    assert text.endswith("é0199" + "x" * 95)
    assert "output truncated" in text


def test_a_stream_changed_by_someone_else_is_taken_over() -> None:
    from pycrdt import Array

    doc = _doc("c")
    writer = OutputWriter(doc)
    writer.apply_batch([("c", _msg("stream", name="stdout", text="one\ntw"))])
    text = doc.get("cells", type=Array)[0]["outputs"][0]["text"]
    text.insert(0, "ß")  # not the agent
    writer.apply_batch([("c", _msg("stream", name="stdout", text="o\rTWO\n"))])
    assert _outputs(doc)[0]["text"] == "ßone\nTWO\n"
