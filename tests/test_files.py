"""Notebook names and files (in process, real files): one canonical name per file,
hidden and odd spellings refused, atomic writes that never replace an unseen change."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import unicodedata
from pathlib import Path

import nbformat
import pytest

from crdtnb.files import READ_CHUNK, FileChanged, NotebookFiles, NotebookNotFound, PathError

from .conftest import write_notebook

NFC = unicodedata.normalize("NFC", "café.ipynb")
NFD = unicodedata.normalize("NFD", "café.ipynb")


@pytest.fixture
def files(tmp_path: Path) -> NotebookFiles:
    root = tmp_path / "root"
    write_notebook(root / "intro.ipynb", ["a = 1"])
    write_notebook(root / "demo" / "x.ipynb", ["b = 2"])
    return NotebookFiles(root)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd.ipynb",
        "../x.ipynb",
        "demo/../intro.ipynb",
        "./intro.ipynb",
        "demo//x.ipynb",
        "demo/./x.ipynb",
        "demo/x.ipynb/",
        ".hidden/x.ipynb",
        ".x.ipynb",
        ".crdtnb/crdtnb.ipynb",
        "node_modules/x.ipynb",
        "a\\b.ipynb",
        "nul\x00.ipynb",
        "tab\there.ipynb",
        "notes.txt",
        ".ipynb",
        "a" * 300 + ".ipynb",
        "/".join(["d" * 200] * 6) + "/x.ipynb",
    ],
)
def test_odd_spellings_are_refused(files: NotebookFiles, path: str) -> None:
    with pytest.raises(PathError):
        files.canonical(path)


def test_unicode_names_are_one_name_in_nfc(files: NotebookFiles) -> None:
    assert files.canonical(NFD) == NFC == files.canonical(NFC)
    files.create(NFD)
    assert [p.name for p in files.root.glob("caf*.ipynb")] == [NFC]  # stored in NFC
    with pytest.raises(FileExistsError):
        files.create(NFC)
    assert [e.path for e in files.list()].count(NFC) == 1


def test_a_file_stored_in_nfd_is_found_by_its_nfc_name(files: NotebookFiles) -> None:
    write_notebook(files.root / NFD, ["made on a Mac"])
    assert files.canonical(NFD) == NFC
    nb, _ = files.read(NFC)
    assert "".join(nb["cells"][0]["source"]) == "made on a Mac"
    with pytest.raises(FileExistsError):
        files.create(NFC)
    assert [e.path for e in files.list()].count(NFC) == 1


def test_a_symlink_is_known_by_its_target(files: NotebookFiles) -> None:
    (files.root / "alias.ipynb").symlink_to("intro.ipynb")
    (files.root / "linked").symlink_to("demo", target_is_directory=True)
    assert files.canonical("alias.ipynb") == "intro.ipynb"
    assert files.canonical("linked/x.ipynb") == "demo/x.ipynb"


def test_symlinks_out_of_the_root_or_into_hidden_places_are_refused(files: NotebookFiles, tmp_path: Path) -> None:
    write_notebook(tmp_path / "outside.ipynb", ["secret"])
    (files.root / "out.ipynb").symlink_to(tmp_path / "outside.ipynb")
    (files.root / ".crdtnb").mkdir()
    (files.root / ".crdtnb" / "key.ipynb").write_text("{}")
    (files.root / "key.ipynb").symlink_to(files.root / ".crdtnb" / "key.ipynb")
    (files.root / "loop.ipynb").symlink_to("loop.ipynb")
    for path in ("out.ipynb", "key.ipynb", "loop.ipynb"):
        with pytest.raises(PathError):
            files.canonical(path)


def test_a_file_used_as_a_directory_is_not_found_nor_created(files: NotebookFiles) -> None:
    with pytest.raises(NotebookNotFound):
        files.read("intro.ipynb/x.ipynb")
    with pytest.raises(PathError):
        files.create("intro.ipynb/x.ipynb")


def test_new_notebooks_follow_the_umask(files: NotebookFiles) -> None:
    previous = os.umask(0o022)
    try:
        fresh = NotebookFiles(files.root)
        fresh.create("new.ipynb")
    finally:
        os.umask(previous)
    assert (files.root / "new.ipynb").stat().st_mode & 0o777 == 0o644


def test_an_existing_file_keeps_its_mode(files: NotebookFiles) -> None:
    path = files.root / "intro.ipynb"
    os.chmod(path, 0o640)
    nb, stamp = files.read("intro.ipynb")
    nb["cells"][0]["source"] = "changed"
    files.write("intro.ipynb", nb, stamp)
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_write_never_replaces_a_file_changed_since_it_was_read(files: NotebookFiles) -> None:
    nb, stamp = files.read("intro.ipynb")
    outside = nbformat.read(str(files.root / "intro.ipynb"), as_version=4)
    outside.cells[0].source = "edited outside"
    tmp = files.root / "intro.tmp"
    nbformat.write(outside, str(tmp))
    os.replace(tmp, files.root / "intro.ipynb")  # an atomic rewrite, as editors do
    nb["cells"][0]["source"] = "ours"
    with pytest.raises(FileChanged):
        files.write("intro.ipynb", nb, stamp)
    again, _ = files.read("intro.ipynb")
    assert again["cells"][0]["source"] == "edited outside"


def test_writing_what_the_file_holds_leaves_it_alone(files: NotebookFiles) -> None:
    nb, stamp = files.read("intro.ipynb")
    first = files.write("intro.ipynb", nb, stamp)
    assert files.write("intro.ipynb", nb, first) == first
    assert (files.root / "intro.ipynb").stat().st_mtime_ns == first.mtime_ns


def test_a_big_file_is_read_whole_and_hashed_in_chunks(files: NotebookFiles) -> None:
    """Files above READ_CHUNK are read a chunk at a time (each read short enough for the
    kernel to let the event loop in): the bytes and the hash are still the file's, and
    a character cut by a chunk's end is read whole."""
    cells = [nbformat.v4.new_code_cell(f"print('é∑ 😀 {i}')", outputs=[nbformat.v4.new_output("stream", text="ü" * 7001)]) for i in range(400)]
    nb = nbformat.v4.new_notebook(cells=cells)
    path = Path(files.root) / "big.ipynb"
    nbformat.write(nb, str(path))
    raw = path.read_bytes()
    assert len(raw) > 3 * READ_CHUNK
    data, stamp = files.read_bytes("big.ipynb")
    assert bytes(data) == raw
    assert stamp.sha256 == hashlib.sha256(raw).hexdigest() and stamp.size == len(raw)
    read, _ = files.read("big.ipynb")
    assert read == json.loads(json.dumps(nbformat.reads(raw.decode(), as_version=4)))


def test_a_notebook_name_that_is_not_a_regular_file_is_refused_at_once(files: NotebookFiles) -> None:
    """A FIFO (or device) spelled like a notebook must not leave a worker thread waiting
    for a writer forever: it is refused like a missing notebook."""
    os.mkfifo(Path(files.root) / "pipe.ipynb")
    result: list[BaseException | None] = []

    def read() -> None:
        try:
            files.read_bytes("pipe.ipynb")
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    assert result, "reading a FIFO blocked"
    assert isinstance(result[0], NotebookNotFound)
