"""crdtnb.notebook against real nbformat and jupyter_ydoc (schema version 2.0.0)."""

from __future__ import annotations

import copy
import json
import random
import warnings
from collections.abc import Callable
from typing import Any

import nbformat
import pytest
from jupyter_ydoc import YNotebook
from nbformat.v4 import (
    new_code_cell,
    new_markdown_cell,
    new_notebook,
    new_output,
    new_raw_cell,
)
from pycrdt import Array, Doc, Map, Text

from crdtnb.merge import apply_notebook_changes, merge_disk_changes
from crdtnb.notebook import export_notebook, load_notebook, new_cell_map, new_output_map

UNICODE = "Zoë — 日本語 🚀"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


# --------------------------------------------------------------------------- notebooks


def plain(value: Any) -> Any:
    """NotebookNode -> plain dicts/lists, for comparisons."""
    return json.loads(json.dumps(value))


def kernel_metadata() -> dict[str, Any]:
    return {
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {
            "name": "python",
            "version": "3.11.4",
            "codemirror_mode": {"name": "ipython", "version": 3},
            "file_extension": ".py",
            "mimetype": "text/x-python",
        },
    }


def rich_notebook() -> nbformat.NotebookNode:
    nb = new_notebook(metadata=kernel_metadata())
    nb.cells = [
        new_markdown_cell(f"# {UNICODE}\n\nSome *text*."),
        new_code_cell(
            "for i in range(3):\n    print(i)\nimport sys; print('oops', file=sys.stderr)",
            execution_count=1,
            outputs=[
                new_output("stream", name="stdout", text="0\n1\n2\n"),
                new_output("stream", name="stderr", text=f"oops {UNICODE}\n"),
            ],
        ),
        new_code_cell(
            "plot()",
            execution_count=2,
            metadata={"tags": ["figure"], "collapsed": False, "scrolled": True},
            outputs=[
                new_output(
                    "execute_result",
                    execution_count=2,
                    data={"image/png": PNG, "text/html": "<b>plot</b>\n<i>two lines</i>", "text/plain": "<Figure>"},
                    metadata={"image/png": {"width": 640, "height": 480}, "ratio": 0.75},
                ),
                new_output("display_data", data={"text/plain": "shown", "application/json": {"a": [1, 2.5, None]}}),
            ],
        ),
        new_code_cell(
            "1/0",
            execution_count=3,
            outputs=[
                new_output(
                    "error",
                    ename="ZeroDivisionError",
                    evalue="division by zero",
                    traceback=["\x1b[0;31mZeroDivisionError\x1b[0m", "division by zero"],
                )
            ],
        ),
        new_markdown_cell("![img](attachment:img.png)", attachments={"img.png": {"image/png": PNG}}),
        new_raw_cell(f"raw {UNICODE}", metadata={"format": "text/restructuredtext"}),
        new_code_cell("", execution_count=None),
    ]
    return nb


def unicode_notebook() -> nbformat.NotebookNode:
    nb = new_notebook(metadata=kernel_metadata())
    nb.cells = [
        new_code_cell(f"s = '{UNICODE}'\nprint(s * 2)", execution_count=7,
                      outputs=[new_output("stream", name="stdout", text=f"{UNICODE}{UNICODE}\n")]),
        new_markdown_cell("👩‍👩‍👧 family, e\u0301 combining, \U0001f1eb\U0001f1f7 flag"),
    ]
    return nb


def old_notebook_without_ids() -> nbformat.NotebookNode:
    """An nbformat 4.4 notebook: cells carry no id."""
    nb = rich_notebook()
    nb.nbformat_minor = 4
    for cell in nb.cells:
        del cell["id"]
    return nb


def bare_notebook() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = [new_code_cell("x = 1"), new_markdown_cell("plain")]
    return nb


def empty_notebook() -> nbformat.NotebookNode:
    return new_notebook(metadata=kernel_metadata())


NOTEBOOKS: dict[str, Callable[[], nbformat.NotebookNode]] = {
    "rich": rich_notebook,
    "unicode": unicode_notebook,
    "nbformat-4.4-no-ids": old_notebook_without_ids,
    "bare": bare_notebook,
    "empty": empty_notebook,
}


def reference(nb: Any) -> dict[str, Any]:
    """What nbformat itself makes of the notebook after a trip through a file."""
    return plain(nbformat.reads(nbformat.writes(nbformat.from_dict(copy.deepcopy(nb))), 4))


def upgraded(exported: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """``ref`` as crdtnb exports it: nbformat 4.5 at least, with the export's cell ids
    given to a notebook that had none (as JupyterLab saves an older notebook)."""
    ref = copy.deepcopy(ref)
    if ref["nbformat_minor"] < 5:
        ref["nbformat_minor"] = 5
        assert len(exported["cells"]) == len(ref["cells"])
        for cell, out in zip(ref["cells"], exported["cells"]):
            assert "id" not in cell and out["id"]
            cell["id"] = out["id"]
    return ref


def loaded(nb: Any) -> Doc:
    doc = Doc()
    load_notebook(doc, nb)
    return doc


def validate(nb: dict[str, Any]) -> None:
    nbformat.validate(nbformat.from_dict(copy.deepcopy(nb)))


def ycells(doc: Doc) -> Array:
    return doc.get("cells", type=Array)


def append_text(ymap: Map, key: str, text: str) -> None:
    """Append to the Text at ymap[key].  Not `ymap[key] += text`: pycrdt then assigns the
    integrated Text back to the key, which leaves an empty Text (pycrdt 0.14.13)."""
    ytext = ymap[key]
    ytext += text


def cell_ids(nb: dict[str, Any]) -> list[str]:
    return [cell["id"] for cell in nb["cells"]]


def source_of(nb: dict[str, Any], cell_id: str) -> str:
    return next(c["source"] for c in nb["cells"] if c["id"] == cell_id)


# --------------------------------------------------------------------------- load / export


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_load_matches_ynotebook_and_nbformat(name: str) -> None:
    nb = NOTEBOOKS[name]()
    ref = reference(nb)
    doc = loaded(nb)
    exported = export_notebook(doc)
    assert exported == upgraded(exported, ref)
    assert plain(YNotebook(doc).get()) == exported
    validate(exported)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_load_from_split_lines_json(name: str) -> None:
    """A raw .ipynb (multiline strings stored as lists of lines) loads to the same doc."""
    nb = NOTEBOOKS[name]()
    raw = json.loads(nbformat.writes(nb))
    assert any(isinstance(c["source"], list) for c in raw["cells"]) or not raw["cells"]
    doc = loaded(raw)
    exported = export_notebook(doc)
    assert exported == upgraded(exported, reference(nb))
    assert plain(YNotebook(doc).get()) == exported


@pytest.mark.parametrize("name", ["rich", "unicode", "nbformat-4.4-no-ids"])
def test_doc_written_by_ynotebook_exports_same(name: str) -> None:
    ref = reference(NOTEBOOKS[name]())
    doc = Doc()
    YNotebook(doc).set(copy.deepcopy(ref))
    exported = export_notebook(doc)
    assert exported == upgraded(exported, ref)
    validate(exported)


@pytest.mark.parametrize("name", ["bare", "empty"])
def test_doc_written_by_ynotebook_exports_what_ynotebook_reads(name: str) -> None:
    # YNotebook.set adds default kernelspec/language_info and a cell to an empty notebook.
    doc = Doc()
    YNotebook(doc).set(reference(NOTEBOOKS[name]()))
    exported = export_notebook(doc)
    assert exported == plain(YNotebook(doc).get())
    validate(exported)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_round_trip_through_update_encoding(name: str) -> None:
    nb = NOTEBOOKS[name]()
    doc = loaded(nb)
    other = Doc()
    other.apply_update(doc.get_update())
    exported = export_notebook(doc)
    assert export_notebook(other) == exported == upgraded(exported, reference(nb))


def test_schema_types() -> None:
    doc = loaded(rich_notebook())
    assert set(doc.keys()) >= {"cells", "meta"}
    assert "state" not in doc.keys()  # load leaves state alone
    meta = doc.get("meta", type=Map)
    assert isinstance(meta["metadata"], Map)
    assert meta["nbformat"] == 4 and meta["nbformat_minor"] == 5
    assert isinstance(meta["metadata"]["kernelspec"], dict)  # nested values are plain JSON

    cells = ycells(doc)
    assert len(cells) == 7
    for ycell in cells:
        assert isinstance(ycell, Map)
        assert isinstance(ycell["id"], str) and ycell["id"]
        assert isinstance(ycell["source"], Text)
        assert isinstance(ycell["metadata"], Map)
        if ycell["cell_type"] == "code":
            assert set(ycell.keys()) == {
                "id", "cell_type", "source", "metadata", "outputs", "execution_count", "execution_state",
            }
            assert ycell["execution_state"] == "idle"
            assert isinstance(ycell["outputs"], Array)
            for youtput in ycell["outputs"]:
                assert isinstance(youtput, Map)
                if youtput["output_type"] == "stream":
                    assert isinstance(youtput["text"], Text)
                else:
                    for value in youtput.values():
                        assert not isinstance(value, (Map, Array, Text))
        else:
            assert "outputs" not in ycell and "execution_state" not in ycell

    markdown, attached = cells[0], cells[4]
    assert "attachments" not in markdown  # left out when empty
    assert attached["attachments"] == {"img.png": {"image/png": PNG}}
    assert isinstance(cells[2]["metadata"]["tags"], list)
    stdout = cells[1]["outputs"][0]
    assert str(stdout["text"]) == "0\n1\n2\n"


def test_a_notebook_older_than_4_5_gets_ids_and_becomes_4_5() -> None:
    # As JupyterLab saves it; REST and curl users need the ids to run cells.
    doc = loaded(old_notebook_without_ids())
    ids = [ycell["id"] for ycell in ycells(doc)]
    assert all(isinstance(i, str) and i for i in ids)
    assert len(set(ids)) == len(ids)
    exported = export_notebook(doc)
    assert [cell["id"] for cell in exported["cells"]] == ids
    assert exported["nbformat_minor"] == 5
    assert doc.get("meta", type=Map)["nbformat_minor"] == 5
    validate(exported)


def test_load_refuses_a_non_empty_doc() -> None:
    doc = loaded(bare_notebook())
    with pytest.raises(ValueError):
        load_notebook(doc, bare_notebook())
    assert len(ycells(doc)) == 2


def test_load_is_one_transaction() -> None:
    doc = Doc()
    transactions: list[Any] = []
    doc.observe(transactions.append)
    load_notebook(doc, rich_notebook())
    assert len(transactions) == 1


def test_numbers_are_cast_back() -> None:
    nb = rich_notebook()
    doc = loaded(nb)
    # Inside the doc every number is a double...
    assert type(ycells(doc)[1]["execution_count"]) is float
    exported = export_notebook(doc)
    # ...on export whole numbers are ints again, fractions stay floats.
    assert type(exported["nbformat"]) is int and type(exported["nbformat_minor"]) is int
    assert type(exported["cells"][1]["execution_count"]) is int
    result = exported["cells"][2]["outputs"][0]
    assert type(result["metadata"]["image/png"]["width"]) is int
    assert result["metadata"]["ratio"] == 0.75
    assert type(exported["metadata"]["language_info"]["codemirror_mode"]["version"]) is int
    assert exported["cells"][2]["outputs"][1]["data"]["application/json"] == {"a": [1, 2.5, None]}
    assert exported["cells"][6]["execution_count"] is None


def test_new_output_map_and_new_cell_map() -> None:
    doc = Doc()
    cells = ycells(doc)
    cell = new_code_cell("x", outputs=[new_output("stream", name="stdout", text=["a\n", "b\n"])])
    with doc.transaction():
        cells.append(new_cell_map(cell))
        cells[0]["outputs"].append(new_output_map(new_output("stream", name="stdout", text="c")))
        cells[0]["outputs"].append(new_output_map({"output_type": "display_data", "metadata": {},
                                                   "data": {"text/plain": ["l1\n", "l2"]}}))
    outputs = cells[0]["outputs"]
    assert isinstance(outputs[0]["text"], Text) and str(outputs[0]["text"]) == "a\nb\n"
    append_text(outputs[1], "text", "d")  # the way JupyterLab appends a chunk
    assert export_notebook(doc)["cells"][0]["outputs"][1]["text"] == "cd"
    assert outputs[2]["data"] == {"text/plain": "l1\nl2"}
    no_id = new_cell_map({"cell_type": "markdown", "source": ["a", "b"], "metadata": {}, "attachments": {}})
    cells.append(no_id)
    assert cells[1]["id"] and str(cells[1]["source"]) == "ab" and "attachments" not in cells[1]


# --------------------------------------------------------------------------- duplicates


def test_export_drops_identical_duplicates_and_reids_differing_ones() -> None:
    nb = bare_notebook()
    doc = loaded(nb)
    first = nb.cells[0]
    changed = copy.deepcopy(first)
    changed.source = "x = 2"
    with doc.transaction():
        ycells(doc).append(new_cell_map(first))  # identical copy, same id
        ycells(doc).append(new_cell_map(changed))  # differing copy, same id
    state = doc.get_state()
    exported = export_notebook(doc)
    validate(exported)
    ids = cell_ids(exported)
    assert len(exported["cells"]) == 3 and len(set(ids)) == 3
    assert exported["cells"][0]["id"] == first.id and exported["cells"][0]["source"] == "x = 1"
    assert exported["cells"][2]["source"] == "x = 2" and exported["cells"][2]["id"] != first.id
    assert export_notebook(doc) == exported  # the fresh id is stable across saves
    assert doc.get_state() == state  # exporting does not write
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # YNotebook warns about the duplicate
        ynb = YNotebook(doc).get()
    assert [c["source"] for c in ynb["cells"]] == [c["source"] for c in exported["cells"]]


# --------------------------------------------------------------------------- text edits


def text_events(ytext: Text) -> tuple[list[list[dict[str, Any]]], Any]:
    events: list[list[dict[str, Any]]] = []
    subscription = ytext.observe(lambda event: events.append(event.delta))
    return events, subscription


def with_source(nb: dict[str, Any], index: int, source: str) -> dict[str, Any]:
    new = copy.deepcopy(nb)
    new["cells"][index]["source"] = source
    return new


def test_appending_a_line_to_a_large_source_is_a_small_edit() -> None:
    big = "".join(f"value_{i:05d} = compute({i}, 'abcdefghij')\n" for i in range(250))
    assert len(big) > 10_000
    nb = plain(new_notebook(cells=[new_code_cell(big)]))
    doc = loaded(nb)
    ytext = ycells(doc)[0]["source"]
    events, _sub = text_events(ytext)
    state = doc.get_state()
    apply_notebook_changes(doc, nb, with_source(nb, 0, big + "print('done')\n"))
    update = doc.get_update(state)
    assert str(ytext) == big + "print('done')\n"
    assert events == [[{"retain": len(big)}, {"insert": "print('done')\n"}]]
    assert len(update) < 200 < len(big) // 50


def test_edit_in_the_middle_keeps_the_rest() -> None:
    lines = [f"line {i}\n" for i in range(400)]
    old_source = "".join(lines)
    lines[200] = "line two hundred\n"
    del lines[300]
    new_source = "".join(lines)
    nb = plain(new_notebook(cells=[new_code_cell(old_source)]))
    doc = loaded(nb)
    state = doc.get_state()
    apply_notebook_changes(doc, nb, with_source(nb, 0, new_source))
    assert str(ycells(doc)[0]["source"]) == new_source
    assert len(doc.get_update(state)) < 100


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (UNICODE, UNICODE + "!"),
        (UNICODE, "¡" + UNICODE),
        (f"a {UNICODE} b", f"a {UNICODE.replace('日本語', 'にほんご')} b"),
        ("🚀🚀🚀", "🚀x🚀🚀"),
        ("🚀🚀🚀", "🚀🚀"),
        ("🚀", "🛸"),
        ("Zoë\nZoë\n", "Zoe\u0308\nZoë\n"),  # composed vs decomposed ë
        ("👩‍👩‍👧 family", "👩‍👩‍👦 family"),  # a ZWJ sequence that differs in its last code point
        ("x = '€'\ny = 1\n", "x = '€€'\ny = 2\n"),
        ("", UNICODE),
        (UNICODE, ""),
    ],
)
def test_non_ascii_edits(old: str, new: str) -> None:
    nb = plain(new_notebook(cells=[new_markdown_cell(old)]))
    doc = loaded(nb)
    apply_notebook_changes(doc, nb, with_source(nb, 0, new))
    assert str(ycells(doc)[0]["source"]) == new
    assert export_notebook(doc)["cells"][0]["source"] == new


def test_non_ascii_edit_is_minimal() -> None:
    old = f"# {UNICODE}\n" * 50
    new = old.replace("🚀", "🛸", 1)
    nb = plain(new_notebook(cells=[new_markdown_cell(old)]))
    doc = loaded(nb)
    events, _sub = text_events(ycells(doc)[0]["source"])
    apply_notebook_changes(doc, nb, with_source(nb, 0, new))
    assert str(ycells(doc)[0]["source"]) == new
    # Positions are UTF-8 bytes in pycrdt: "# Zoë — 日本語 " is 21 bytes, 🚀 is 4.
    prefix_bytes = len(f"# {UNICODE[:-1]}".encode())
    assert events == [[{"retain": prefix_bytes}, {"delete": 4}, {"insert": "🛸"}]]


def test_random_edits_round_trip() -> None:
    rng = random.Random(1234)
    alphabet = "ab \nxyzë日本🚀👩‍👧é€"
    for _ in range(200):
        old = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        chars = list(old)
        for _ in range(rng.randint(1, 5)):
            position = rng.randint(0, len(chars))
            if chars and rng.random() < 0.5:
                del chars[min(position, len(chars) - 1)]
            else:
                chars.insert(position, rng.choice(alphabet))
        new = "".join(chars)
        nb = plain(new_notebook(cells=[new_code_cell(old)]))
        doc = loaded(nb)
        apply_notebook_changes(doc, nb, with_source(nb, 0, new))
        assert str(ycells(doc)[0]["source"]) == new, (old, new)


def test_source_edit_is_rebased_on_concurrent_doc_edits() -> None:
    old_source = f"alpha\nbeta {UNICODE}\ngamma\n"
    nb = plain(new_notebook(cells=[new_code_cell(old_source)]))
    doc = loaded(nb)
    ytext = ycells(doc)[0]["source"]
    ytext.insert(0, "# live 🚀\n")  # an edit the doc has and `old` does not
    new = with_source(nb, 0, old_source.replace("gamma", "GAMMA") + "delta\n")
    apply_notebook_changes(doc, nb, new)
    assert str(ytext) == f"# live 🚀\nalpha\nbeta {UNICODE}\nGAMMA\ndelta\n"


# --------------------------------------------------------------------------- structure changes


def three_cells() -> dict[str, Any]:
    nb = new_notebook(metadata=kernel_metadata())
    nb.cells = [
        new_code_cell("a = 1", execution_count=1, outputs=[new_output("stream", name="stdout", text="A\n")]),
        new_markdown_cell("## B"),
        new_code_cell("c = 3"),
    ]
    return plain(nb)


def test_insert_delete_and_move_cells() -> None:
    nb = three_cells()
    a, b, c = cell_ids(nb)
    doc = loaded(nb)
    new = copy.deepcopy(nb)
    inserted = plain(new_code_cell(f"inserted {UNICODE}"))
    new["cells"] = [new["cells"][2], inserted, new["cells"][0]]  # C moves first, B deleted
    transactions: list[Any] = []
    doc.observe(transactions.append)
    apply_notebook_changes(doc, nb, new)
    assert len(transactions) == 1
    exported = export_notebook(doc)
    assert exported == new
    validate(exported)
    assert [y["id"] for y in ycells(doc)] == [c, inserted["id"], a]
    assert isinstance(ycells(doc)[2]["outputs"][0]["text"], Text)


def test_moved_cell_keeps_current_doc_content() -> None:
    nb = three_cells()
    a, b, c = cell_ids(nb)
    doc = loaded(nb)
    append_text(ycells(doc)[0], "source", "  # unsaved")
    ycells(doc)[0]["execution_state"] = "running"
    new = copy.deepcopy(nb)
    new["cells"] = [new["cells"][1], new["cells"][2], new["cells"][0]]
    apply_notebook_changes(doc, nb, new)
    assert [y["id"] for y in ycells(doc)] == [b, c, a]
    moved = ycells(doc)[2]
    assert str(moved["source"]) == "a = 1  # unsaved"
    assert moved["execution_state"] == "running"
    assert isinstance(moved["outputs"][0]["text"], Text)


def test_insert_is_relative_to_neighbours_and_keeps_doc_only_cells() -> None:
    nb = three_cells()
    a, b, c = cell_ids(nb)
    doc = loaded(nb)
    live = new_code_cell("live")
    ycells(doc).insert(2, new_cell_map(live))  # A B live C
    new = copy.deepcopy(nb)
    disk = plain(new_markdown_cell("disk"))
    new["cells"].insert(1, disk)  # A disk B C
    apply_notebook_changes(doc, nb, new)
    assert [y["id"] for y in ycells(doc)] == [a, disk["id"], b, live.id, c]


def test_never_inserts_a_cell_the_doc_already_has() -> None:
    nb = three_cells()
    doc = loaded(nb)
    extra = plain(new_code_cell("extra"))
    ycells(doc).append(new_cell_map(extra))  # the doc has it, `old` does not
    new = copy.deepcopy(nb)
    new["cells"].insert(0, extra)
    apply_notebook_changes(doc, nb, new)
    apply_notebook_changes(doc, nb, new)  # applying twice changes nothing more
    ids = [y["id"] for y in ycells(doc)]
    assert len(ids) == len(set(ids)) == 4
    assert ids.count(extra["id"]) == 1


def test_deleted_cell_removes_every_copy() -> None:
    nb = three_cells()
    doc = loaded(nb)
    ycells(doc).append(new_cell_map(nb["cells"][1]))  # a duplicate of B
    new = copy.deepcopy(nb)
    del new["cells"][1]
    apply_notebook_changes(doc, nb, new)
    assert export_notebook(doc) == new


def test_type_changes() -> None:
    nb = three_cells()
    doc = loaded(nb)
    new = copy.deepcopy(nb)
    new["cells"][0] = plain(new_markdown_cell("a = 1", attachments={"x.png": {"image/png": PNG}}))
    new["cells"][0]["id"] = nb["cells"][0]["id"]
    new["cells"][1] = plain(new_code_cell("## B"))
    new["cells"][1]["id"] = nb["cells"][1]["id"]
    ytext = ycells(doc)[0]["source"]
    apply_notebook_changes(doc, nb, new)
    exported = export_notebook(doc)
    assert exported == new
    validate(exported)
    assert ycells(doc)[0]["source"] is not None and str(ytext) == "a = 1"  # same Text kept
    assert set(ycells(doc)[0].keys()) == {"id", "cell_type", "source", "metadata", "attachments"}
    assert ycells(doc)[1]["execution_state"] == "idle"
    assert isinstance(ycells(doc)[1]["outputs"], Array)


def test_metadata_outputs_and_execution_count_changes() -> None:
    nb = three_cells()
    doc = loaded(nb)
    ycells(doc)[2]["metadata"]["live_key"] = "kept"  # concurrent doc edit of another key
    new = copy.deepcopy(nb)
    new["metadata"]["authors"] = [{"name": UNICODE}]
    del new["metadata"]["language_info"]
    new["cells"][0]["outputs"] = [plain(new_output("execute_result", execution_count=5, data={"text/plain": "5"}))]
    new["cells"][0]["execution_count"] = 5
    new["cells"][1]["metadata"] = {"tags": ["x"]}
    new["cells"][2]["metadata"] = {"collapsed": True}
    new["cells"][2]["outputs"] = [plain(new_output("stream", name="stdout", text="new\n"))]
    apply_notebook_changes(doc, nb, new)
    exported = export_notebook(doc)
    expected = copy.deepcopy(new)
    expected["cells"][2]["metadata"]["live_key"] = "kept"
    assert exported == expected
    validate(exported)
    assert isinstance(doc.get("meta", type=Map)["metadata"], Map)
    assert isinstance(ycells(doc)[2]["outputs"][0]["text"], Text)


def test_unchanged_notebook_writes_nothing() -> None:
    nb = reference(rich_notebook())
    doc = loaded(nb)
    state = doc.get_state()
    apply_notebook_changes(doc, nb, copy.deepcopy(nb))
    assert doc.get_state() == state


def test_changes_to_a_notebook_without_ids_keep_cell_identity() -> None:
    # The file on disk stays 4.4 (no ids): an outside tool rewrote it.
    nb = reference(old_notebook_without_ids())
    doc = loaded(nb)
    ids = [y["id"] for y in ycells(doc)]
    old = copy.deepcopy(nb)
    new = copy.deepcopy(old)
    new["cells"][1]["source"] += "\nprint('more')"
    new["cells"].insert(3, plain(new_markdown_cell("inserted")))
    del new["cells"][3]["id"]
    del new["cells"][5]
    apply_notebook_changes(doc, old, new)
    exported = export_notebook(doc)
    assert exported == upgraded(exported, new)
    after = [y["id"] for y in ycells(doc)]
    assert after[:3] == ids[:3]  # the edited cell was edited in place, not replaced
    assert after[4:] == [ids[3], ids[5], ids[6]]


# --------------------------------------------------------------------------- merge from disk


def live_doc(base: bytes) -> Doc:
    """A doc as a server holds it: rebuilt from the stored update."""
    doc = Doc()
    doc.apply_update(base)
    return doc


def test_merge_disk_changes_keeps_both_sides() -> None:
    nb = plain(new_notebook(metadata=kernel_metadata()))
    nb["cells"] = [plain(new_code_cell(f"cell {name} {UNICODE}")) for name in "ABC"]
    a, b, c = cell_ids(nb)
    base = loaded(nb).get_update()
    doc = live_doc(base)
    peer = live_doc(base)  # a connected client that mirrors the doc

    # unsaved live edits: A edited, X added at the end
    append_text(ycells(doc)[0], "source", " live-edit")
    x = new_code_cell("X live")
    ycells(doc).append(new_cell_map(x))

    # the file changed on disk: B edited, Y added after B, C deleted, metadata changed
    disk = copy.deepcopy(nb)
    disk["cells"][1]["source"] = "cell B changed on disk"
    y = plain(new_markdown_cell("Y disk"))
    disk["cells"] = [disk["cells"][0], disk["cells"][1], y]
    disk["metadata"]["tags"] = ["disk"]

    new_base = merge_disk_changes(doc, base, nbformat.from_dict(disk))
    merged = export_notebook(doc)
    validate(merged)
    assert cell_ids(merged) == [a, b, y["id"], x.id]
    assert source_of(merged, a) == f"cell A {UNICODE} live-edit"
    assert source_of(merged, b) == "cell B changed on disk"
    assert source_of(merged, x.id) == "X live"
    assert merged["metadata"]["tags"] == ["disk"]
    assert plain(YNotebook(doc).get()) == merged

    # the new base is the disk version
    assert export_notebook(live_doc(new_base)) == disk

    peer.apply_update(doc.get_update(peer.get_state()))
    assert export_notebook(peer) == merged


def test_merge_concurrent_edits_of_one_source_keeps_both() -> None:
    nb = plain(new_notebook(cells=[new_code_cell("x = 1\ny = 2\n")]))
    base = loaded(nb).get_update()
    doc = live_doc(base)
    ycells(doc)[0]["source"].insert(0, "# live 🚀\n")
    disk = with_source(nb, 0, "x = 1\ny = 2\nz = 'disk ë'\n")
    merge_disk_changes(doc, base, disk)
    assert str(ycells(doc)[0]["source"]) == "# live 🚀\nx = 1\ny = 2\nz = 'disk ë'\n"
    # even at the same spot both insertions survive
    base2 = loaded(nb).get_update()
    doc2 = live_doc(base2)
    ycells(doc2)[0]["source"].insert(5, "LIVE")
    merge_disk_changes(doc2, base2, with_source(nb, 0, "x = 1DISK\ny = 2\n"))
    text = str(ycells(doc2)[0]["source"])
    assert "LIVE" in text and "DISK" in text and text.startswith("x = 1") and text.endswith("\ny = 2\n")


def test_merging_the_same_file_twice_changes_nothing() -> None:
    nb = reference(rich_notebook())
    base = loaded(nb).get_update()
    doc = live_doc(base)
    append_text(ycells(doc)[1], "source", "\n# unsaved")
    disk = copy.deepcopy(nb)
    disk["cells"][0]["source"] += "\nMore text from disk."
    disk["cells"].append(plain(new_raw_cell("disk raw")))
    new_base = merge_disk_changes(doc, base, disk)
    state = doc.get_state()
    merged = export_notebook(doc)

    newer_base = merge_disk_changes(doc, new_base, copy.deepcopy(disk))
    assert doc.get_state() == state
    assert export_notebook(doc) == merged
    assert export_notebook(live_doc(newer_base)) == export_notebook(live_doc(new_base)) == disk


def test_merge_a_notebook_without_ids() -> None:
    nb = reference(old_notebook_without_ids())
    base = loaded(nb).get_update()
    doc = live_doc(base)
    ids = [y["id"] for y in ycells(doc)]
    append_text(ycells(doc)[0], "source", " live")
    disk = copy.deepcopy(nb)
    disk["cells"][2]["source"] = "plot(disk=True)"
    new_base = merge_disk_changes(doc, base, disk)
    assert [y["id"] for y in ycells(doc)] == ids  # no cell was replaced
    merged = export_notebook(doc)
    validate(merged)
    assert merged["cells"][0]["source"].endswith(" live")
    assert merged["cells"][2]["source"] == "plot(disk=True)"
    state = doc.get_state()
    merge_disk_changes(doc, new_base, disk)
    assert doc.get_state() == state


def test_merge_into_an_empty_base_loads_the_file() -> None:
    doc = Doc()
    base = doc.get_update()
    nb = reference(rich_notebook())
    new_base = merge_disk_changes(doc, base, nb)
    assert export_notebook(doc) == nb
    assert export_notebook(live_doc(new_base)) == nb


def test_merge_with_a_disk_move_and_a_live_delete() -> None:
    nb = three_cells()
    a, b, c = cell_ids(nb)
    base = loaded(nb).get_update()
    doc = live_doc(base)
    del ycells(doc)[1]  # live deletes B
    disk = copy.deepcopy(nb)
    disk["cells"] = [disk["cells"][2], disk["cells"][0], disk["cells"][1]]  # C moved to the top
    disk["cells"][2]["source"] = "## B edited"  # edits the cell the doc deleted
    merge_disk_changes(doc, base, disk)
    merged = export_notebook(doc)
    validate(merged)
    assert cell_ids(merged) == [c, a]


def test_rebased_insertions_keep_their_order_where_the_doc_deleted() -> None:
    nb = plain(new_notebook(cells=[new_markdown_cell("ab©d€f")]))
    doc = loaded(nb)
    ytext = ycells(doc)[0]["source"]
    del ytext[2:5]  # the doc deletes "©d" (UTF-8 bytes 2..5)
    assert str(ytext) == "ab€f"
    apply_notebook_changes(doc, nb, with_source(nb, 0, "abX©dYë€f"))
    assert str(ytext) == "abXYë€f"


def test_rebased_deletion_spares_text_the_doc_rewrote() -> None:
    nb = plain(new_notebook(cells=[new_markdown_cell("one two three four")]))
    doc = loaded(nb)
    ytext = ycells(doc)[0]["source"]
    ytext[4:7] = "TWO"  # the doc rewrites "two"
    apply_notebook_changes(doc, nb, with_source(nb, 0, "one four"))  # disk drops "two three "
    assert str(ytext) == "one TWOfour"


def random_change(rng: random.Random, nb: dict[str, Any]) -> dict[str, Any]:
    """A random mix of inserts, deletes, moves, source edits and type changes."""
    new = copy.deepcopy(nb)
    cells = new["cells"]
    for _ in range(rng.randint(1, 6)):
        action = rng.choice(["insert", "delete", "move", "edit", "type"])
        if action == "insert" or not cells:
            cell = rng.choice([new_code_cell, new_markdown_cell, new_raw_cell])(f"new {rng.random()} ë🚀")
            cells.insert(rng.randint(0, len(cells)), plain(cell))
        elif action == "delete":
            del cells[rng.randrange(len(cells))]
        elif action == "move":
            cells.insert(rng.randint(0, len(cells) - 1), cells.pop(rng.randrange(len(cells))))
        elif action == "edit":
            cell = rng.choice(cells)
            cell["source"] = cell["source"][: rng.randint(0, len(cell["source"]))] + "✏️ edit\n"
        else:
            index = rng.randrange(len(cells))
            old_cell = cells[index]
            maker = new_markdown_cell if old_cell["cell_type"] == "code" else new_code_cell
            cells[index] = plain(maker(old_cell["source"]))
            cells[index]["id"] = old_cell["id"]
    return new


def test_random_structure_changes() -> None:
    rng = random.Random(42)
    for _ in range(100):
        nb = reference(rich_notebook())
        doc = loaded(nb)
        new = random_change(rng, nb)
        apply_notebook_changes(doc, nb, new)
        exported = export_notebook(doc)
        assert exported == new
        assert plain(YNotebook(doc).get()) == new


def reordered(before: list[str], after: list[str]) -> set[str]:
    """Ids whose order relative to some other cell (kept on both sides) changed: the only
    cells a change may move, i.e. delete and re-create."""
    kept = [i for i in after if i in set(before)]
    position = {cell_id: index for index, cell_id in enumerate(before)}
    return {
        x for n, x in enumerate(kept) for y in kept[n + 1 :] if position[x] > position[y]
    } | {
        y for n, x in enumerate(kept) for y in kept[n + 1 :] if position[x] > position[y]
    }


def test_random_merges_stay_valid_and_unique() -> None:
    rng = random.Random(7)
    for _ in range(60):
        nb = reference(rich_notebook())
        base = loaded(nb).get_update()
        doc = live_doc(base)
        live = random_change(rng, nb)
        apply_notebook_changes(doc, nb, live)  # unsaved live edits, made by "clients"
        disk = random_change(rng, nb)
        new_base = merge_disk_changes(doc, base, disk)
        merged = export_notebook(doc)
        validate(merged)
        live_moved = reordered(cell_ids(nb), cell_ids(live))
        disk_moved = reordered(cell_ids(nb), cell_ids(disk))
        ids = [y["id"] for y in ycells(doc)]
        # A cell is in the doc twice only if both sides moved it (each re-created it).
        assert {i for i in ids if ids.count(i) > 1} <= live_moved & disk_moved
        # every cell either side added is there
        for cell_id in (set(cell_ids(disk)) | set(cell_ids(live))) - set(cell_ids(nb)):
            assert cell_id in ids
        # every cell the disk deleted is gone, unless the live doc re-created it by a move
        for cell_id in set(cell_ids(nb)) - set(cell_ids(disk)) - live_moved:
            assert cell_id not in ids
        # a source edited only on disk (in a cell neither side moved) has the disk version
        for cell in disk["cells"]:
            old = next((c for c in nb["cells"] if c["id"] == cell["id"]), None)
            live_cell = next((c for c in live["cells"] if c["id"] == cell["id"]), None)
            untouched_live = live_cell == old and cell["id"] not in live_moved
            if old and untouched_live and cell["id"] not in disk_moved and cell["id"] in ids:
                assert source_of(merged, cell["id"]) == cell["source"]
        state = doc.get_state()
        merge_disk_changes(doc, new_base, disk)
        assert doc.get_state() == state
