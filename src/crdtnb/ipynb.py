"""The .ipynb format on disk, read and written like nbformat does it, faster and in
short stretches.

- ``parse(data)`` accepts exactly the files ``nbformat.reads(text, as_version=4)`` and
  ``nbformat.validate`` accept, and returns the same notebook as plain dicts. A v4 file is
  parsed by json's C scanner a cell at a time, and validated with nbformat's own schema
  and validator (fastjsonschema), dispatched by ``cell_type`` and ``output_type`` instead
  of trying every ``oneOf`` alternative (the alternatives each require their own value of
  that key, so exactly the matching one can pass). Anything else, and every file this
  path would refuse, goes through nbformat itself: refusals and their messages are
  nbformat's.
- ``serialize(nb)`` gives exactly the bytes of ``nbformat.writes(nb) + "\\n"`` (indent 1,
  sorted keys, ``ensure_ascii=False``, multiline strings split into lists of lines,
  transient keys stripped). nbformat deep-copies the notebook, then runs json's pure-Python
  indented encoder item by item; here only the containers that change are copied, and a
  list of lines (a stream of a million prints) is escaped and joined by json's own C
  functions a few thousand lines per call.

Long C calls hold the GIL for their whole length, and a save runs on a worker thread
while the event loop serves every other room: every call here is bounded (a slice of
lines, a slice of a long string, a batch of output), so the loop gets the GIL back
within a fraction of a millisecond of asking for it.

This module depends only on the standard library (and nbformat's schema, for reading).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

import nbformat
from nbformat.corpus.words import generate_corpus_id
from nbformat.validator import get_validator

__all__ = ["parse", "prepare", "serialize", "serialize_json", "validated"]

# json.dumps(ensure_ascii=False) escapes strings with this function (C when available).
_escape: Callable[[str], str] = json.encoder.encode_basestring
_INFINITY = float("inf")

LINES_PER_CALL = 2048  # lines escaped and joined per C call
CHARS_PER_CALL = 1 << 19  # a long string is escaped (or split into lines) in slices of this
BYTES_PER_CHUNK = 1 << 18  # serialize() returns the file in pieces of about this size

# Mime types whose string values nbformat writes as lists of lines (besides text/*).
_SPLIT_MIMES = frozenset({"application/javascript", "image/svg+xml"})
_MIMEBUNDLE_OUTPUTS = frozenset({"execute_result", "display_data"})
_TRANSIENT_METADATA = frozenset({"orig_nbformat", "orig_nbformat_minor", "signature"})


# --------------------------------------------------------------------------- reading

WINDOW_BYTES = 1 << 20  # a file's text is decoded this much at a time (more for a longer value)


def parse(data: bytes | memoryview) -> dict[str, Any]:
    """The notebook in ``data`` (an .ipynb file's bytes) as nbformat v4 in plain dicts:
    what ``nbformat.reads(data.decode(), as_version=4)`` gives once ``nbformat.validate``
    accepts it. Raises what nbformat raises for a file it refuses."""
    try:
        nb = _loads(data)
        if _fast_version(nb):
            _to_notebook(nb)
            _normalize_ids(nb)
            if _schema(nb["nbformat_minor"]).check(nb):
                fast: dict[str, Any] = nb
                return fast
    except Exception:
        pass  # nbformat decides, and says why
    node = nbformat.reads(str(data, "utf-8"), as_version=4)
    nbformat.validate(node)
    plain: dict[str, Any] = json.loads(json.dumps(node))
    return plain


def prepare() -> None:
    """Compile every validator of the current nbformat version now (else each one is,
    when first needed: Python's compiler holds the GIL for ~10 ms a validator)."""
    schema = _schema(nbformat.v4.nbformat_minor)
    for kind, value in list(schema.refs):
        schema.part(kind, value)


def validated(nb: Mapping[str, Any]) -> Mapping[str, Any]:
    """``nb`` once nbformat.validate accepts it (faster for a v4 notebook, see ``parse``).
    Where nbformat's validation would change it first (a 4.5 cell without id gets one), a
    copy so changed (raises nbformat's error if it is invalid)."""
    if _fast_version(nb) and _schema(nb["nbformat_minor"]).check(nb):
        return nb
    node = nbformat.from_dict(nb)
    nbformat.validate(node)
    plain: dict[str, Any] = json.loads(json.dumps(node))
    return plain


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_scanstring: Callable[..., tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


class _Reader:
    """The text of UTF-8 bytes, decoded a window at a time: a 50 MB file as one str is a
    50 MB allocation made and filled by one call that holds the GIL all along. A value
    that does not end inside the window is read again from a window twice as long."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data
        self.view = memoryview(data)
        self.text = ""
        self.at = 0  # the reader's position in text
        self.start = 0  # the byte of data where text starts
        self.stop = 0  # the byte of data where text ends
        self._window(0, WINDOW_BYTES)

    @property
    def complete(self) -> bool:
        return self.stop == len(self.data)

    def _window(self, start: int, size: int) -> None:
        stop = min(len(self.data), start + size)
        while stop < len(self.data) and 0x80 <= self.data[stop] < 0xC0:
            stop -= 1  # a window ends before a character, not inside one
        self.text = str(self.view[start:stop], "utf-8")
        self.start, self.stop, self.at = start, stop, 0

    def _move(self, size: int) -> None:
        """A new window of at least ``size`` bytes, starting at the reader's position."""
        done = self.at if self.text.isascii() else len(self.text[: self.at].encode("utf-8"))
        self._window(self.start + done, max(size, WINDOW_BYTES))

    def char(self) -> str:
        """The next character that is not whitespace ("" at the end)."""
        while True:
            self.at = _WHITESPACE.match(self.text, self.at).end()  # type: ignore[union-attr]
            if self.at < len(self.text) or self.complete:
                return self.text[self.at : self.at + 1]
            self._move(WINDOW_BYTES)

    def value(self) -> Any:
        """json's reading of the next value."""
        self.char()
        return self._read(lambda text, at: _DECODER.raw_decode(text, at))

    def key(self) -> str:
        """The string at the reader's position (it must be at its opening quote)."""
        key: str = self._read(lambda text, at: _scanstring(text, at + 1, True))
        return key

    def _read(self, read: Callable[[str, int], tuple[Any, int]]) -> Any:
        size = WINDOW_BYTES
        while True:
            if len(self.text) - self.at < size // 4 and not self.complete:
                self._move(size)
            try:
                value, end = read(self.text, self.at)
            except ValueError:
                if self.complete:
                    raise
                size *= 2  # cut off by the window's end, or really broken: read more
                self._move(size)
                continue
            if end == len(self.text) and not self.complete:
                size *= 2  # a number or a word may go on after the window
                self._move(size)
                continue
            self.at = end
            return value


def _loads(data: bytes | memoryview) -> Any:
    """json.loads(data.decode()), with the top object and its "cells" array read member by
    member (one C call per cell rather than one for the whole file)."""
    reader = _Reader(data)
    if reader.char() == "{":
        reader.at += 1
        value = _object(reader, cells=True)
    else:
        value = reader.value()
    if reader.char() != "":
        raise ValueError("extra data after the JSON value")
    return value


def _object(reader: _Reader, cells: bool) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if reader.char() == "}":
        reader.at += 1
        return result
    while True:
        if reader.char() != '"':
            raise ValueError("expected a key")
        key = reader.key()
        if reader.char() != ":":
            raise ValueError("expected ':'")
        reader.at += 1
        if cells and key == "cells" and reader.char() == "[":
            reader.at += 1
            result[key] = _array(reader, _joined_early)
        else:
            result[key] = reader.value()
        separator = reader.char()
        reader.at += 1
        if separator == "}":
            return result
        if separator != ",":
            raise ValueError("expected ',' or '}'")


def _array(reader: _Reader, each: Callable[[Any], None]) -> list[Any]:
    result: list[Any] = []
    if reader.char() == "]":
        reader.at += 1
        return result
    while True:
        item = reader.value()
        each(item)
        result.append(item)
        separator = reader.char()
        reader.at += 1
        if separator == "]":
            return result
        if separator != ",":
            raise ValueError("expected ',' or ']'")


def _fast_version(nb: Any) -> bool:
    """A v4 notebook of a minor version this nbformat knows (others: nbformat converts,
    or relaxes its schema for a notebook from the future)."""
    if not isinstance(nb, dict) or type(nb.get("nbformat")) is not int or nb["nbformat"] != 4:
        return False
    minor = nb.get("nbformat_minor")
    return type(minor) is int and 0 <= minor <= nbformat.v4.nbformat_minor


def _rejoin(bundle: Any) -> None:
    # nbformat.v4.rwbase._rejoin_mimebundle
    for mime, value in list(bundle.items()):
        is_json = mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))
        if not is_json and isinstance(value, list) and all(isinstance(line, str) for line in value):
            bundle[mime] = "".join(value)


def _rejoin_cell(cell: dict[str, Any]) -> None:
    if "source" in cell and isinstance(cell["source"], list):
        cell["source"] = "".join(cell["source"])
    for attachment in cell.get("attachments", {}).values():
        _rejoin(attachment)
    if cell.get("cell_type", None) == "code":
        for output in cell.get("outputs", []):
            output_type = output.get("output_type", "")
            if output_type in _MIMEBUNDLE_OUTPUTS:
                _rejoin(output.get("data", {}))
            elif output_type and isinstance(output.get("text", ""), list):
                output["text"] = "".join(output["text"])


def _joined_early(cell: Any) -> None:
    """A v4 cell's multiline strings joined as soon as it is read: its lists of lines,
    a million strings for 50 MB of outputs, then die at once instead of living on
    until the whole file is read, where every garbage collection meanwhile (run
    inside json's decoding, holding the GIL) walked them all (13-50 ms a time). A
    cell this cannot handle is left for _to_notebook, which says what is wrong."""
    try:
        _rejoin_cell(cell)
    except Exception:
        pass


def _to_notebook(nb: dict[str, Any]) -> None:
    """nbformat's JSONReader.to_notebook on plain dicts: multiline strings joined
    (``rejoin_lines``), transient keys dropped (``strip_transient``). Raises where
    nbformat would fail."""
    for cell in nb["cells"]:
        _rejoin_cell(cell)
    metadata = nb["metadata"]
    for key in _TRANSIENT_METADATA:
        metadata.pop(key, None)
    for cell in nb["cells"]:
        cell["metadata"].pop("trusted", None)


def _normalize_ids(nb: dict[str, Any]) -> None:
    """What nbformat.validate does to a 4.5 notebook first: a cell without id, or
    repeating one, gets a new id."""
    if nb["nbformat_minor"] < 5:
        return
    seen: set[str] = set()
    cells = nb["cells"]
    for cell in cells:
        if "id" not in cell:
            cell["id"] = generate_corpus_id()
    for cell in cells:
        if cell["id"] in seen:
            cell["id"] = generate_corpus_id()
        seen.add(cell["id"])


class _Schema:
    """nbformat's v4.x schema, checked with its own validator a cell and an output at a
    time: ``oneOf`` alternatives that each require a distinct value of one key are tried
    by that key's value alone. Each part is compiled when first needed (~10 ms each)."""

    def __init__(self, minor: int) -> None:
        self.full = get_validator(4, minor)._schema  # the schema nbformat validates with
        definitions = self.full["definitions"]
        self.refs = {
            **{("cell", value): ref for value, ref in _alternatives(definitions["cell"], definitions, "cell_type").items()},
            **{("output", value): ref for value, ref in _alternatives(definitions["output"], definitions, "output_type").items()},
        }
        self.shallow = {**definitions, "cell": {"type": "object"}, "output": {"type": "object"}}
        self.top = _compile({**self.full, "definitions": self.shallow})
        self.parts: dict[tuple[str, str], Callable[[Any], Any]] = {}
        self.lock = threading.Lock()

    def part(self, kind: str, value: str) -> Callable[[Any], Any]:
        """The validator of one kind of cell or output (KeyError: no such kind)."""
        validator = self.parts.get((kind, value))
        if validator is None:
            ref = self.refs[(kind, value)]
            with self.lock:
                validator = self.parts.get((kind, value)) or _compile(_part(self.full, self.shallow, ref))
                self.parts[(kind, value)] = validator
        return validator

    def check(self, nb: Mapping[str, Any]) -> bool:
        try:
            self.top(nb)
            for cell in nb["cells"]:
                self.part("cell", cell["cell_type"])(cell)
                if cell["cell_type"] == "code":
                    for output in cell["outputs"]:
                        self.part("output", output["output_type"])(output)
        except Exception:
            return False
        return True


def _alternatives(union: Mapping[str, Any], definitions: Mapping[str, Any], key: str) -> dict[str, str]:
    """{value of ``key``: $ref} for a ``oneOf`` whose alternatives each require ``key`` to
    be one value of their own (else ValueError: the schema is not what this relies on)."""
    refs: dict[str, str] = {}
    if set(union) != {"type", "oneOf"} or union["type"] != "object":
        raise ValueError(f"unexpected schema for {key}")
    for alternative in union["oneOf"]:
        ref = alternative["$ref"]
        definition = definitions[ref.rsplit("/", 1)[-1]]
        values = definition["properties"][key]["enum"]
        if key not in definition["required"] or len(values) != 1 or values[0] in refs:
            raise ValueError(f"{ref} is not told apart by {key}")
        refs[values[0]] = ref
    return refs


def _part(full: Mapping[str, Any], definitions: dict[str, Any], ref: str) -> dict[str, Any]:
    return {"$schema": full["$schema"], "definitions": definitions, "$ref": ref}


def _compile(schema: dict[str, Any]) -> Callable[[Any], Any]:
    import fastjsonschema  # nbformat's default validator: a dependency of nbformat

    validator: Callable[[Any], Any] = fastjsonschema.compile(schema)
    return validator


_schemas: dict[int, _Schema] = {}
_schemas_lock = threading.Lock()


def _schema(minor: int) -> _Schema:
    with _schemas_lock:  # parses run on worker threads
        schema = _schemas.get(minor)
        if schema is None:
            schema = _schemas[minor] = _Schema(minor)
        return schema


# --------------------------------------------------------------------------- lines


class _Lines:
    """A string nbformat writes as a list of lines (``text.splitlines(True)``)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _split_mimebundle(bundle: Any) -> Any:
    if not isinstance(bundle, dict):
        return bundle
    split = dict(bundle)
    for mime, value in bundle.items():
        if isinstance(value, str) and (mime.startswith("text/") or mime in _SPLIT_MIMES):
            split[mime] = _Lines(value)
    return split


def _split_output(output: Any) -> Any:
    if not isinstance(output, dict):
        return output
    output_type = output.get("output_type")
    if output_type in _MIMEBUNDLE_OUTPUTS and "data" in output:
        return {**output, "data": _split_mimebundle(output["data"])}
    if output_type == "stream" and isinstance(output.get("text"), str):
        return {**output, "text": _Lines(output["text"])}
    return output


def _on_disk(nb: Mapping[str, Any]) -> dict[str, Any]:
    """What nbformat.writes serializes: multiline strings as lists of lines (nbformat's
    ``split_lines``), transient keys gone (``strip_transient``). ``nb`` is not changed:
    the containers that change are copied, the rest is shared."""
    out = dict(nb)
    metadata = out.get("metadata")
    if isinstance(metadata, dict):
        out["metadata"] = {k: v for k, v in metadata.items() if k not in _TRANSIENT_METADATA}
    if not isinstance(nb.get("cells"), list):
        return out
    cells: list[Any] = []
    for cell in nb["cells"]:
        if not isinstance(cell, dict):
            cells.append(cell)
            continue
        cell = dict(cell)
        if isinstance(cell.get("source"), str):
            cell["source"] = _Lines(cell["source"])
        attachments = cell.get("attachments")
        if isinstance(attachments, dict):
            cell["attachments"] = {name: _split_mimebundle(bundle) for name, bundle in attachments.items()}
        if cell.get("cell_type") == "code" and isinstance(cell.get("outputs"), list):
            cell["outputs"] = [_split_output(output) for output in cell["outputs"]]
        metadata = cell.get("metadata")
        if isinstance(metadata, dict) and "trusted" in metadata:
            cell["metadata"] = {k: v for k, v in metadata.items() if k != "trusted"}
        cells.append(cell)
    out["cells"] = cells
    return out


# --------------------------------------------------------------------------- JSON


def _float(value: float) -> str:
    # json's floatstr (allow_nan=True, as nbformat leaves it).
    if value != value:
        return "NaN"
    if value == _INFINITY:
        return "Infinity"
    if value == -_INFINITY:
        return "-Infinity"
    return float.__repr__(value)


def _default(value: Any) -> Any:
    # nbformat's BytesEncoder: ASCII bytes (base64) become strings.
    if isinstance(value, bytes):
        return value.decode("ascii")
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, float):
        return _float(key)
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, int):
        return int.__repr__(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {key.__class__.__name__}")


class _Encoder:
    """json.dumps(indent=1, sort_keys=True, separators=(",", ": "), ensure_ascii=False),
    built up in a list of str parts and handed out as UTF-8 chunks as it grows."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0  # characters in parts
        self.chunks: list[bytes] = []
        self.markers: set[int] = set()  # containers being encoded: json refuses cycles

    def emit(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size >= BYTES_PER_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.chunks.append("".join(self.parts).encode("utf-8"))
            self.parts = []
            self.size = 0

    def string(self, text: str) -> None:
        if len(text) <= CHARS_PER_CALL:
            self.emit(_escape(text))
            return
        # Escaping works character by character: slices escape to the same text.
        self.emit('"')
        for start in range(0, len(text), CHARS_PER_CALL):
            self.emit(_escape(text[start : start + CHARS_PER_CALL])[1:-1])
        self.emit('"')

    def value(self, value: Any, level: int) -> None:
        if isinstance(value, str):
            self.string(value)
        elif value is None:
            self.emit("null")
        elif value is True:
            self.emit("true")
        elif value is False:
            self.emit("false")
        elif isinstance(value, int):
            self.emit(int.__repr__(value))
        elif isinstance(value, float):
            self.emit(_float(value))
        elif isinstance(value, (list, tuple)):
            self.array(value, level)
        elif isinstance(value, dict):
            self.object(value, level)
        elif type(value) is _Lines:
            self.lines(value.text, level)
        else:
            self.enter(value)
            self.value(_default(value), level)
            self.markers.discard(id(value))

    def enter(self, container: Any) -> None:
        if id(container) in self.markers:
            raise ValueError("Circular reference detected")
        self.markers.add(id(container))

    def array(self, items: list[Any] | tuple[Any, ...], level: int) -> None:
        if not items:
            self.emit("[]")
            return
        self.enter(items)
        separator = "," + "\n" + " " * (level + 1)
        self.emit("[" + separator[1:])
        for i, item in enumerate(items):
            if i:
                self.emit(separator)
            self.value(item, level + 1)
        self.emit("\n" + " " * level + "]")
        self.markers.discard(id(items))

    def object(self, mapping: dict[Any, Any], level: int) -> None:
        if not mapping:
            self.emit("{}")
            return
        self.enter(mapping)
        separator = "," + "\n" + " " * (level + 1)
        self.emit("{" + separator[1:])
        for i, (key, item) in enumerate(sorted(mapping.items())):
            if i:
                self.emit(separator)
            self.string(_key(key))
            self.emit(": ")
            self.value(item, level + 1)
        self.emit("\n" + " " * level + "}")
        self.markers.discard(id(mapping))

    def lines(self, text: str, level: int) -> None:
        """``text.splitlines(True)`` as a JSON array, without making a str per line when
        "\\n" is the only line break in ``text`` (as good as always)."""
        if not text:
            self.emit("[]")
            return
        separator = "," + "\n" + " " * (level + 1)
        self.emit("[" + separator[1:])
        if _plain_newlines(text):
            self._newline_lines(text, separator)
        else:
            self._split_lines(text, separator)
        self.emit("\n" + " " * level + "]")

    def _newline_lines(self, text: str, separator: str) -> None:
        # Character by character, the array is the escaped text in which every "\\n" but
        # a final one also ends a string and starts the next one. A slice at a time, each
        # "\\n" is swapped for a character the slice lacks and json leaves as it is, the
        # slice escaped in C, and the stand-in swapped for that ending.
        between = '\\n"' + separator + '"'
        last = len(text) - 1 if text.endswith("\n") else len(text)
        self.emit('"')
        for start in range(0, last, CHARS_PER_CALL):
            piece = text[start : min(start + CHARS_PER_CALL, last)]
            stand_in = _stand_in(piece)
            if stand_in is None:
                escaped = between.join(_escape(line)[1:-1] for line in piece.split("\n"))
            else:
                escaped = _escape(piece.replace("\n", stand_in))[1:-1].replace(stand_in, between)
            self.emit(escaped)
        self.emit('\\n"' if last < len(text) else '"')

    def _split_lines(self, text: str, separator: str) -> None:
        first = True
        start = 0
        while start < len(text):
            # A slice ends right after a "\n": a "\r\n" is never cut, and no other line
            # break pairs with what follows a "\n".
            cut = text.find("\n", start + CHARS_PER_CALL - 1)
            end = len(text) if cut == -1 else cut + 1
            lines = text[start:end].splitlines(True)
            start = end
            for begin in range(0, len(lines), LINES_PER_CALL):
                batch = lines[begin : begin + LINES_PER_CALL]
                if not first:
                    self.emit(separator)
                first = False
                if max(map(len, batch)) > CHARS_PER_CALL:
                    for i, line in enumerate(batch):
                        if i:
                            self.emit(separator)
                        self.string(line)
                else:
                    self.emit(separator.join(map(_escape, batch)))


# Line breaks of str.splitlines besides "\n" (a "\r\n" included).
_OTHER_BREAKS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
# Stand in for "\n" while a text is escaped: json leaves them as they are (ensure_ascii=False).
# DEL first: an ASCII text stays ASCII (compact, fast) with it.
_STAND_INS = ("\x7f", "\ue000", "\U0010fffd")


def _stand_in(piece: str) -> str | None:
    return next((char for char in _STAND_INS if char not in piece), None)


def _plain_newlines(text: str) -> bool:
    """Whether "\\n" is the only line break in ``text`` (checked a slice at a time)."""
    for start in range(0, len(text), CHARS_PER_CALL):
        piece = text[start : start + CHARS_PER_CALL]
        # One fast search per character beats a regular expression's class by far.
        if any(brk in piece for brk in _OTHER_BREAKS):
            return False
    return True


def serialize_json(value: Any) -> list[bytes]:
    """``json.dumps(value, indent=1, sort_keys=True, separators=(",", ": "),
    ensure_ascii=False)`` followed by a newline, as UTF-8 in chunks."""
    encoder = _Encoder()
    encoder.value(value, 0)
    encoder.emit("\n")
    encoder.flush()
    return encoder.chunks


def serialize(nb: Mapping[str, Any]) -> list[bytes]:
    """The bytes nbformat writes for the notebook ``nb`` (``nbformat.writes(nb) + "\\n"``,
    UTF-8), as a list of chunks of about BYTES_PER_CHUNK."""
    return serialize_json(_on_disk(nb))
