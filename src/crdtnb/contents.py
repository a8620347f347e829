"""Notebooks as files, as an extension: rename (move), delete, duplicate, download,
upload, and folders.

Every route is authorized on canonical names (files.py): a rename or a duplicate needs
``write`` on the source and on the destination, a delete or an upload ``write``, a
download ``read``; a folder is authorized as its name with a trailing "/" ("demo/").

A notebook is one file, one room, one log and at most one kernel, and they move
together. A rename holds both names (no room of either loads meanwhile) and pauses the
room's file sync; the room, its log (``Store.rename_room``) and its kernel take the new
name while its document, peers and running cell carry on; then ``state.moved_to`` tells
every client the new path and their sockets are closed with 4410 so that they reconnect
there. A delete shuts the kernel, closes the peers (4404), unloads the room without
saving it, removes the file and forgets the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import nbformat
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from .api import RequestError, json_object
from .auth import Action
from .bodies import UPLOAD_BODY_BYTES
from .extensions import DaemonStarted, Extension, RoomDeleting, RoomRenamed
from .files import InvalidNotebook, NotebookNotFound
from .filesync import FileSyncExtension
from .origins import SERVER
from .ownership import LocalOwnership
from .schema import MOVED_TO, state_of
from .store import RenameUnsupported
from .transport import CloseCode

if TYPE_CHECKING:
    from .api import Api
    from .daemon import Daemon

logger = logging.getLogger("crdtnb.contents")

NOTEBOOK_MEDIA_TYPE = "application/x-ipynb+json"


class Contents(Extension):
    def __init__(self) -> None:
        self._daemon: Daemon | None = None

    @property
    def daemon(self) -> Daemon:
        assert self._daemon is not None, "the daemon has not started"
        return self._daemon

    async def on_daemon_started(self, event: DaemonStarted) -> None:
        self._daemon = event.daemon

    def routes(self, api: Api) -> Sequence[BaseRoute]:
        write, read = Action.WRITE, Action.READ
        return [
            api.route("/api/notebooks/{path:path}/rename", self._rename, methods=["POST"], action=write),
            api.route("/api/notebooks/{path:path}/duplicate", self._duplicate, methods=["POST"], action=write),
            api.route("/api/notebooks/{path:path}/download", self._download, methods=["GET"], action=read),
            api.route(
                "/api/notebooks/{path:path}", self._upload, methods=["PUT"], action=write, max_body_size=UPLOAD_BODY_BYTES
            ),
            api.route("/api/notebooks/{path:path}", self._delete, methods=["DELETE"], action=write),
            api.route("/api/contents", self._list, methods=["GET"], action=read, folder=True),
            api.route("/api/contents/{path:path}", self._list, methods=["GET"], action=read, folder=True),
            api.route("/api/folders/{path:path}", self._make_folder, methods=["POST"], action=write, folder=True),
        ]

    # -- operations (names are canonical and authorized) ----------------------------------

    async def rename(self, old: str, new: str) -> None:
        """Move the notebook ``old`` to ``new`` with its room, log and kernel;
        FileExistsError if ``new`` exists, NotebookNotFound if ``old`` does not."""
        self._single_daemon("renaming")
        daemon = self.daemon
        files, rooms, store = daemon.files, daemon.rooms, daemon.store
        if old == new:
            raise RequestError(400, f"{old} already has that name")
        async with rooms.exclusive(old, new):
            if await asyncio.to_thread(files.stat, old) is None:
                raise NotebookNotFound(f"no notebook at {old}")
            if rooms.get(new) is not None or await asyncio.to_thread(files.stat, new) is not None:
                raise FileExistsError(f"{new} already exists")
            # This daemon owns both names while the notebook moves (in a cluster, the
            # room's owner does the move).
            async with self._owning(old), self._owning(new, keep=True):
                async with self._file_paused(old):
                    # The room takes the new name and its log is renamed in the same step:
                    # every update stored before goes to the old name, every one after to the new.
                    room = rooms.rename(old, new)
                    try:
                        await store.rename_room(old, new)
                    except RenameUnsupported as exc:
                        rooms.rename(new, old)
                        raise RequestError(501, str(exc)) from None
                    except BaseException:
                        rooms.rename(new, old)
                        raise
                    try:
                        await asyncio.to_thread(files.rename, old, new)
                    except BaseException:
                        rooms.rename(new, old)
                        await store.rename_room(new, old)
                        raise
                    await daemon.hooks.run("on_room_renamed", RoomRenamed(old, new, room))
            if room is None:
                await daemon.ownership.release(new)  # nothing open to own under the new name
            if daemon.ownership.owns(old):
                await daemon.ownership.release(old)  # no room has that name any more
        logger.info("renamed %s to %s", old, new)
        if room is not None:
            state = state_of(room.doc)
            with room.doc.transaction(origin=SERVER):
                state[MOVED_TO] = new
            await room.flushed()  # relayed: every peer has the new path before its close
            room.disconnect(CloseCode.MOVED, f"moved to {new}")

    def _single_daemon(self, what: str) -> None:
        # Other daemons of a cluster would keep the room open, and its peers writing to it.
        if not isinstance(self.daemon.ownership, LocalOwnership):
            raise RequestError(501, f"{what} a notebook is not supported in a cluster (yet)")

    async def delete(self, name: str) -> None:
        """Delete the notebook ``name``: its kernel, room (unsaved), file and log."""
        self._single_daemon("deleting")
        daemon = self.daemon
        files, rooms = daemon.files, daemon.rooms
        async with rooms.exclusive(name):
            room = rooms.get(name)
            if room is None and await asyncio.to_thread(files.stat, name) is None:
                raise NotebookNotFound(f"no notebook at {name}")
            async with self._owning(name):
                await daemon.hooks.run("on_room_deleting", RoomDeleting(name, room))
                if room is not None:
                    room.disconnect(CloseCode.NOT_FOUND, f"{name} was deleted")
                    await rooms.unload(name)
                try:
                    await asyncio.to_thread(files.delete, name)
                except NotebookNotFound:
                    pass  # only its room was left
                except OSError as exc:
                    raise RequestError(409, f"{name} could not be deleted: {exc.strerror or exc}") from None
                await daemon.store.delete_room(name)
        logger.info("deleted %s", name)

    async def create(self, name: str, nb: dict[str, Any], overwrite: bool = False) -> bool:
        """Write ``nb`` as the notebook ``name``; returns whether the file is new. An
        existing file is replaced only with ``overwrite``, and its open room merges it
        as an edit made outside (FileExistsError otherwise)."""
        daemon = self.daemon
        files, rooms = daemon.files, daemon.rooms
        async with rooms.exclusive(name):
            exists = await asyncio.to_thread(files.stat, name) is not None
            if exists and not overwrite:
                raise FileExistsError(f"{name} already exists")
            if not exists:
                if rooms.get(name) is None:
                    # A log left under this name by a file that is gone must not be
                    # loaded over the new file.
                    await daemon.store.delete_room(name)
                await asyncio.to_thread(files.create, name, nb)
                return True
            async with self._file_paused(name):
                await asyncio.to_thread(files.write, name, nb)
        files_extension = daemon.extension(FileSyncExtension)
        sync = files_extension.syncs.get(name) if files_extension else None
        if sync is not None:
            await sync.check_disk()  # merged now rather than at the next poll
        return False

    async def export(self, name: str) -> dict[str, Any]:
        """The current document of ``name`` as nbformat, outputs included."""
        async with self.daemon.rooms.hold(name) as room:
            await room.index.warm()
            return room.index.export()

    @asynccontextmanager
    async def _owning(self, name: str, keep: bool = False) -> AsyncIterator[None]:
        """Own ``name`` for the block (409 if another daemon does); given up after it
        unless it was owned before or ``keep``."""
        ownership = self.daemon.ownership
        owned = ownership.owns(name)
        if not owned and not await ownership.claim(name):
            raise RequestError(409, f"{name} is in use on another server: try again there")
        try:
            yield
        except BaseException:
            if not owned:
                await ownership.release(name)
            raise
        if not owned and not keep and ownership.owns(name):
            await ownership.release(name)

    @asynccontextmanager
    async def _file_paused(self, name: str) -> AsyncIterator[None]:
        files_extension = self.daemon.extension(FileSyncExtension)
        if files_extension is None:
            yield
            return
        async with files_extension.paused(name):
            yield

    # -- routes ------------------------------------------------------------------------------

    async def _rename(self, api: Api, request: Request, path: str) -> Response:
        new = await _destination(api, request, (await json_object(request)).get("to"))
        await self.rename(path, new)
        return JSONResponse({"path": new, "from": path})

    async def _delete(self, api: Api, request: Request, path: str) -> Response:
        await self.delete(path)
        return JSONResponse({"deleted": path})

    async def _duplicate(self, api: Api, request: Request, path: str) -> Response:
        target = (await json_object(request)).get("to")
        if target is None:
            target = await asyncio.to_thread(api.daemon.files.copy_name, path)
        new = await _destination(api, request, target)
        nb = await self.export(path)
        await self.create(new, nb)
        return JSONResponse({"path": new, "from": path}, status_code=201)

    async def _download(self, api: Api, request: Request, path: str) -> Response:
        nb = await self.export(path)
        text = await asyncio.to_thread(lambda: nbformat.writes(nbformat.from_dict(nb)) + "\n")
        headers = {"Content-Disposition": attachment(path.rsplit("/", 1)[-1]), "Cache-Control": "no-store"}
        return Response(text, media_type=NOTEBOOK_MEDIA_TYPE, headers=headers)

    async def _upload(self, api: Api, request: Request, path: str) -> Response:
        overwrite = request.query_params.get("overwrite", "") in ("1", "true", "yes")
        nb = await asyncio.to_thread(read_upload, await request.body(), path)
        created = await self.create(path, nb, overwrite=overwrite)
        return JSONResponse({"path": path, "created": created}, status_code=201 if created else 200)

    async def _list(self, api: Api, request: Request, path: str) -> Response:
        folders, notebooks = await asyncio.to_thread(api.daemon.files.list_folder, path)
        user = await api.user(request)
        assert user is not None  # the route authenticated it
        # Only what the caller may open is listed.
        shown_folders = [f for f in folders if await api.allowed(user, f"{f.path}/", Action.READ)]
        shown_notebooks = [n for n in notebooks if await api.allowed(user, n.path, Action.READ)]
        return JSONResponse(
            {
                "path": path,
                "folders": [{"path": f.path, "name": f.name, "last_modified": f.last_modified} for f in shown_folders],
                "notebooks": [
                    {"path": n.path, "name": n.name, "size": n.size, "last_modified": n.last_modified}
                    for n in shown_notebooks
                ],
            }
        )

    async def _make_folder(self, api: Api, request: Request, path: str) -> Response:
        await asyncio.to_thread(api.daemon.files.make_folder, path)
        return JSONResponse({"path": path}, status_code=201)


async def _destination(api: Api, request: Request, target: Any) -> str:
    """The canonical name of a destination the caller may write (RequestError if not)."""
    if not isinstance(target, str):
        raise RequestError(400, 'expected a JSON body {"to": "<notebook path>"}')
    new = api.daemon.files.canonical(target)
    await api.check(request, new, Action.WRITE)
    return new


def read_upload(data: bytes, name: str) -> dict[str, Any]:
    """An uploaded .ipynb as a valid nbformat 4 notebook (InvalidNotebook if it is not)."""
    try:
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # nbformat raises many kinds: JSON, validation, version
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
        raise InvalidNotebook(f"{name}: the upload is not a valid notebook: {first}") from None
    plain: dict[str, Any] = json.loads(json.dumps(nb))  # NotebookNode -> plain dicts and lists
    return plain


def attachment(filename: str) -> str:
    """A Content-Disposition for ``filename`` (RFC 6266: an ASCII fallback and the UTF-8 name)."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(filename, safe='')}"


__all__ = ["Contents", "attachment", "read_upload"]
