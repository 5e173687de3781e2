"""The collections a server holds: one directory each under the root, opened at start.

A collection is *in use* for the duration of every call that reaches it; deleting it (or
shutting down) waits for those calls, so a database is never closed under a search. Opening
happens on a background thread, so that the server answers (health, other collections) while
large collections load: a call to a collection still opening gets UNAVAILABLE.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from anns.config import IndexConfig, StorageConfig
from anns.errors import (
    AnnsError,
    CollectionExistsError,
    CollectionNotFoundError,
    CorruptCollectionError,
    InvalidArgumentError,
)
from anns.index import Collection
from anns.storage import COLLECTION_MARKER, Storage
from server.errors import CollectionOpeningError

log = logging.getLogger(__name__)

#: A name is one path component that is not hidden: no separators, no '..', no surprises.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")

Opener = Callable[[Path, StorageConfig], Collection]

OPENING, READY, FAILED = "opening", "ready", "failed"


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"collection name {name!r} is not allowed: use 1-128 characters of "
            f"[A-Za-z0-9._-], not starting with '.' or '-'"
        )
    return name


@dataclass
class Entry:
    """One collection of the server and the calls using it."""

    name: str
    state: str = OPENING
    collection: Collection | None = None
    error: AnnsError | None = None
    users: int = 0
    removed: bool = False
    changed: threading.Condition = field(default_factory=threading.Condition)


class Registry:
    """Name -> collection, for one root directory."""

    def __init__(
        self, root: Path, storage: StorageConfig, opener: Opener | None = None
    ) -> None:
        self.root = root
        self.storage = storage
        self._open = opener or Collection.open
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._closing = False
        self.opened = threading.Event()
        """Set when every collection found at start is open (or failed to open)."""

    # ------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Find the collections under the root and open them on a background thread."""
        self.root.mkdir(parents=True, exist_ok=True)
        names = []
        for p in sorted(self.root.iterdir()):
            if p.is_dir() and NAME.fullmatch(p.name) and (p / COLLECTION_MARKER).is_file():
                names.append(p.name)
            elif p.is_dir():
                log.warning("%s is not a collection directory; ignored", p.name)
        with self._lock:
            for name in names:
                self._entries[name] = Entry(name)
        threading.Thread(target=self._open_all, args=(names,), name="anns-open",
                         daemon=True).start()

    def _open_all(self, names: list[str]) -> None:
        for name in names:
            entry = self._entries.get(name)
            if entry is None:
                continue
            try:
                coll = self._open(self.root / name, self.storage)
            except AnnsError as e:
                log.error("collection %s could not be opened: %s", name, e)
                self._settle(entry, None, e)
            except Exception as e:  # an unexpected failure must not leave it opening forever
                log.exception("collection %s could not be opened", name)
                self._settle(entry, None, CorruptCollectionError(
                    f"collection {name!r} failed to open: {e}"))
            else:
                log.info("collection %s is open (%d vectors)", name, coll.count())
                self._settle(entry, coll, None)
        self.opened.set()

    def _settle(self, entry: Entry, coll: Collection | None, error: AnnsError | None) -> None:
        with entry.changed:
            if self._closing and coll is not None:
                coll.close()
                coll = None
            entry.collection, entry.error = coll, error
            entry.state = READY if coll is not None else FAILED
            entry.changed.notify_all()

    def close(self, timeout: float = 30.0) -> None:
        """Close every collection, after the calls using it end (at most ``timeout`` s each)."""
        with self._lock:
            self._closing = True
            entries = list(self._entries.values())
        for entry in entries:
            with entry.changed:
                entry.changed.wait_for(lambda e=entry: e.users == 0, timeout)  # type: ignore[misc]
                if entry.collection is not None:
                    entry.collection.close()
                    entry.collection = None

    # ---------------------------------------------------------------------------- calls
    @contextmanager
    def use(self, name: str) -> Iterator[Collection]:
        """The open collection ``name``, held for the duration of the block."""
        entry = self._entry(name)
        with entry.changed:
            if entry.removed:
                raise CollectionNotFoundError(f"no collection named {name!r} on this server")
            if entry.state == OPENING:
                raise CollectionOpeningError(
                    f"collection {name!r} is still being opened; retry shortly"
                )
            coll = entry.collection
            if coll is None:  # FAILED: the same error, for every call
                raise type(entry.error or AnnsError())(
                    f"collection {name!r} could not be opened: {entry.error}"
                )
            entry.users += 1
        try:
            yield coll
        finally:
            with entry.changed:
                entry.users -= 1
                entry.changed.notify_all()

    def entries(self) -> list[Entry]:
        with self._lock:
            return [self._entries[name] for name in sorted(self._entries)]

    def entry(self, name: str) -> Entry:
        return self._entry(name)

    def _entry(self, name: str) -> Entry:
        with self._lock:
            entry = self._entries.get(check_name(name))
        if entry is None:
            raise CollectionNotFoundError(f"no collection named {name!r} on this server")
        return entry

    # ------------------------------------------------------------------------ lifecycle
    def create(self, name: str, config: IndexConfig) -> Entry:
        """Create an empty collection ``name``; CollectionExistsError if the name is taken."""
        check_name(name)
        with self._lock:
            if name in self._entries:
                raise CollectionExistsError(f"collection {name!r} already exists")
            if (self.root / name).exists():
                raise CollectionExistsError(
                    f"cannot create collection {name!r}: the server root holds a directory of "
                    f"that name that is not a collection"
                )
            coll = Collection.create(self.root / name, config, self.storage)
            entry = Entry(name, READY, coll)
            self._entries[name] = entry
        log.info("created collection %s (dim %d, %s)", name, config.dim, config.metric)
        return entry

    def delete(self, name: str, timeout: float = 60.0) -> None:
        """Delete collection ``name`` and its directory once no call uses it."""
        entry = self._entry(name)
        with self._lock, entry.changed:
            if entry.state == OPENING:
                raise CollectionOpeningError(
                    f"collection {name!r} is still being opened; retry the delete shortly"
                )
            self._entries.pop(name, None)
        with entry.changed:
            entry.removed = True  # new calls see NOT_FOUND from here on
            entry.changed.wait_for(lambda: entry.users == 0, timeout)
            if entry.collection is not None:
                entry.collection.close()
                entry.collection = None
        Storage.destroy(self.root / name)
        log.info("deleted collection %s", name)
