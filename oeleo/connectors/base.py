"""The connector contract, and the transfer engine every store shares.

A connector knows one place (a folder, a server path, a bucket). It declares what its store
can do in one ``Features`` value and writes through an ``Upload`` (``send``, ``finish``,
``commit``, ``abort``). ``Connector`` is the abstract base (``list_files``, ``stat``,
``checksum``, and ``open_upload``); ``FolderConnector`` is the base of folder-like stores
(``write_stream``, ``rename``, ``remove``: a temporary name, then rename). The engine here
(``stage``, ``commit``, ``commit_many``, ``put``) owns the rule, once for every store: the
source is read once and hashed while it is sent (``oeleo.source``), must not change
meanwhile, the copy must verify, and only then is it committed; a failed, changed or
abandoned upload is aborted and never touches the real name.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    ClassVar,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    TypeVar,
    Union,
)

from oeleo.compress import GzipStream, stored_name
from oeleo.connectors.values import (  # noqa: F401 - also names of this module, as before
    _TURN_BACKSLASHES,
    NOT_TRIED,
    STOPPED_BEFORE_COMMIT,
    TEMP_SUFFIX,
    Failed,
    Features,
    FileEntry,
    FoundWrongInPlace,
    PutResult,
    SkipCallback,
    Skipped,
    Stored,
    _disk_full,
    _failed,
    _lowered,
    _Unreachable,
    _without_name,
    describe_error,
    has_extension,
    kept_by_filters,
    matches,
    safe_relpath,
    temp_relpath,
    upload_tag,
)
from oeleo.errors import (
    Aborted,
    Behaviour,
    ConfigError,
    FileChangedError,
    OeleoError,
    VerificationError,
    behaviour_of,
    first_line,
)
from oeleo.retries import pause_and_reconnect
from oeleo.source import (  # noqa: F401 - also names of this module, as before
    CHUNK_SIZE,
    HASH_THREAD_MIN_SIZE,
    ProgressCallback,
    SourceReader,
    StopCheck,
)
from oeleo.units import counted

if TYPE_CHECKING:
    from oeleo.checkers import StreamCheck
    from oeleo.settings import Settings

log = logging.getLogger("oeleo")
T = TypeVar("T")


def _abort_quietly(upload: Upload, relpath: str) -> None:
    """Abort an upload whose copy failed; an abort that fails too is said, never raised: the
    first error is the one that counts."""
    try:
        upload.abort()
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the first error
        log.warning("cannot abort the upload of %s: %s", relpath, first_line(exc))


class Upload:
    """One file on its way into a store: the engine hands it every byte (``send``), asks
    what the store now holds (``finish``), and then either ``commit``s it (it appears under
    its real name) or ``abort``s it. ``abort`` never touches the real name: a failed,
    changed or abandoned upload leaves the previous good copy as it was.

    A connector returns one from ``open_upload``; object stores subclass this (initiate,
    send parts, complete or abort a multipart upload), folder-like stores get ``FolderUpload``.

    ``recommit``: ``commit`` may be called again after it raised a dropped connection (it
    keeps what it sends until the store took it); the engine then tries it again after a
    reconnect. False by default: such a commit fails its file, tried again next run.
    """

    recommit: ClassVar[bool] = False
    # True: ``finish`` gives no hash because the connector's ``commit_many`` verifies the
    # batch's copies on the store before any is committed (the ssh connector's tar streams).
    verified_at_commit: ClassVar[bool] = False

    def __init__(self, connector: Connector, relpath: str, size: int, mtime_ns: int) -> None:
        self.connector = connector
        self.relpath = relpath
        self.size = size
        self.mtime_ns = mtime_ns
        self.staging = relpath  # the name the bytes go to before the commit, where there is one

    def send(self, chunks: Iterable[bytes]) -> None:
        """Take every chunk of the source (an iterable that hashes as it is read)."""
        raise NotImplementedError

    def finish(self, algorithm: Optional[str] = None) -> Stored:
        """What the store holds now, before the commit: its size and the hashes it has
        (``algorithm`` is the one the engine compares; a store gives it when it can)."""
        raise NotImplementedError

    def commit(self) -> None:
        """Make the upload visible under its real name, replacing an older version."""
        raise NotImplementedError

    def abort(self) -> None:
        """Forget the upload; never touches the real name. Must not raise."""


class FolderUpload(Upload):
    """A file written under a hidden temporary name next to its real one, and renamed into
    place by ``commit`` (local folders, SFTP): the store's ``write_stream``, ``checksum``,
    ``set_mtime``, ``rename`` and ``remove`` do the work; durability comes per batch."""

    # A rename whose answer was lost with the connection is sent again after a reconnect (or
    # alone, when it went out with its batch's); when the temporary name is gone by then, the
    # copy under the real name is hashed: the rename went through if it is the copy that was
    # verified (``_landed``).
    recommit = True

    def __init__(self, connector: Connector, relpath: str, size: int, mtime_ns: int) -> None:
        super().__init__(connector, relpath, size, mtime_ns)
        self.staging = temp_relpath(relpath, connector.upload_tag)
        self._written = False
        self.verified_hashes: Dict[str, str] = {}  # what the copy hashed to, once verified

    def send(self, chunks: Iterable[bytes]) -> None:
        self._written = True  # even half written: abort() removes what is there
        self.connector.write_stream(self.staging, chunks, self.size)
        # The bytes written: the source's reader (or the gzip stream) counts them; ``size``
        # was only announced (and is the source's size when the copy is compressed).
        self.size = getattr(chunks, "size", self.size)

    def finish(self, algorithm: Optional[str] = None) -> Stored:
        hashes = {algorithm: self.connector.checksum(self.staging, algorithm)} if algorithm else {}
        self.connector.set_mtime(self.staging, self.mtime_ns)
        self.verified_hashes = dict(hashes)
        return Stored(self.size, hashes)

    def commit(self) -> None:
        try:
            self.connector.rename(self.staging, self.relpath)
        except Exception as exc:
            if behaviour_of(exc) is Behaviour.RETRY or not self._landed():
                raise
        self._written = False

    def _landed(self) -> bool:
        """After a rename whose answer was lost: whether the real name holds the copy verified
        (its hash), so that the first rename went through."""
        for algorithm, digest in self.verified_hashes.items():
            try:
                return self.connector.checksum(self.relpath, algorithm).lower() == digest.lower()
            except (OSError, OeleoError):
                return False
        return False

    def abort(self) -> None:
        if self._written:
            self.connector._discard(self.staging)
            self._written = False


SPOOL_IN_MEMORY = 8 * 1024 * 1024  # a spooled upload keeps this much in memory, the rest on disk


class SpooledUpload(Upload):
    """For a store whose one write is the commit (``write_stream`` writes the real name and
    the store swaps the version in whole): the bytes are held back (in memory, then in a
    local temporary file) until the engine has confirmed the source did not change, and
    written only by ``commit``. A change or a failure before that sends nothing at all."""

    def __init__(self, connector: Connector, relpath: str, size: int, mtime_ns: int) -> None:
        import tempfile  # here: its import costs a few ms, and few stores need a spool

        super().__init__(connector, relpath, size, mtime_ns)
        self._spool: Optional[Any] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)

    def send(self, chunks: Iterable[bytes]) -> None:
        assert self._spool is not None
        for chunk in chunks:
            self._spool.write(chunk)

    def finish(self, algorithm: Optional[str] = None) -> Stored:
        assert self._spool is not None
        return Stored(self._spool.tell())  # nothing is in the store yet: the commit verifies

    def commit(self) -> None:
        spool = self._spool
        assert spool is not None, "an upload is committed once"
        size = spool.tell()
        spool.seek(0)
        try:
            self.connector.write_stream(self.relpath, iter(lambda: spool.read(CHUNK_SIZE), b""), size)
        finally:
            self.abort()
        self.connector.set_mtime(self.relpath, self.mtime_ns)

    def abort(self) -> None:
        if self._spool is not None:
            spool, self._spool = self._spool, None
            spool.close()


_LEGACY_DECLARATIONS = ("hashes", "readback_hash", "thread_safe", "atomic_rename")


class Connector(abc.ABC):
    """Base class of every connector. Subclass it to add a store (see docs/connectors.md).

    Class attributes a subclass sets to declare its store's abilities:

    - ``name``: the short name used by ``OELEO_CONNECTOR``.
    - ``hashes``: hash algorithms the store computes itself (verification without reading
      the file back through this process); empty when ``checksum`` must read the file.
    - ``readback_hash``: when the store computes no hash and the copy is read back, the
      algorithm to compare it with (``crc32``: cheap, and catches accidental damage as well
      as md5); ``None`` compares with the books' algorithm.
    - ``thread_safe``: ``True`` when ``stage``/``put`` may run in several threads at once;
      then, unless ``OELEO_WORKERS`` says otherwise, two files are copied at a time.
    - ``atomic_rename``: ``True`` when ``rename`` replaces the target atomically, so
      ``put`` writes a temporary name first; ``False`` for stores that commit an upload
      atomically themselves (then ``write_stream`` writes the final name directly).
    """

    name: ClassVar[str] = "base"
    features: Features = Features()  # what the store can do; narrowed per instance in connect()
    # The declarations of oeleo 1.0's first connectors, still read from a subclass that sets
    # them instead of ``features`` (see __init_subclass__); the engine reads only ``features``.
    hashes: ClassVar[FrozenSet[str]] = frozenset()
    readback_hash: ClassVar[Optional[str]] = None
    thread_safe: ClassVar[bool] = False
    atomic_rename: ClassVar[bool] = True

    directory: Any = None
    upload_tag: str = ""  # set by the worker: whose temporary names this connector writes
    # Set by the worker for its pass: whether a stop was asked (``commit_many`` sends no more).
    stop_asked: Optional[Callable[[], bool]] = None
    # How many times a commit is tried again after a dropped connection (a small file's PUT
    # is its commit); set by the worker from OELEO_RETRIES.
    commit_retries: int = 3
    # The most files in one durability batch (``oeleo.batches``; a batch also ends at 64 MiB
    # or after 1 s). Small batches let a store's work on one batch (a remote hash, a sync)
    # overlap the sending of the next; a local folder takes larger ones (LocalConnector).
    commit_files: int = 256
    # Commits running at once share one reconnect after a drop (``_again_after_drops``): the
    # count of reconnects done, the lock that makes one thread do the next, and why the store
    # was last found away for good (the commits that come after give up at once).
    _reconnects = 0
    _failed_reconnects = 0
    _away: Optional[str] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "features" in own:
            return
        declared = {name: own[name] for name in _LEGACY_DECLARATIONS if name in own}
        if not declared:
            return
        changes: Dict[str, Any] = {}
        if "hashes" in declared:
            changes["hashes"] = frozenset(declared["hashes"])
        if "readback_hash" in declared:
            changes["readback_hash"] = declared["readback_hash"]
        if "thread_safe" in declared:
            changes["max_uploads"] = 2 if declared["thread_safe"] else 1
        if "atomic_rename" in declared:
            changes["staged_uploads"] = bool(declared["atomic_rename"])
        cls.features = replace(cls.features, **changes)

    # -- life cycle -------------------------------------------------------------------
    def connect(self, **kwargs: Any) -> None:  # noqa: B027 - a hook: doing nothing is right for many stores
        """Open the connection. Idempotent: called again after a dropped connection."""

    def reconnect(self, **kwargs: Any) -> None:
        self.close()
        self.connect(**kwargs)

    def close(self) -> None:  # noqa: B027 - a hook: doing nothing is right for many stores
        """Release the connection. Idempotent."""

    def prepare(self) -> None:  # noqa: B027 - a hook: doing nothing is right for many stores
        """Make the base location ready to receive files (create it, check it is writable)."""

    def prepare_for(self, relpaths: Sequence[str]) -> None:  # noqa: B027 - a hook: doing nothing is right for many stores
        """Before the first copy of a pass, with the (stored) names the pass will copy: refuse
        here, with a ``ConfigError``, what a setting the store lacks would refuse at the
        first file (an Arcsecond organisation without a telescope, to create a dataset)."""

    def check_base(self) -> bool:
        """Whether the base location exists (False: not yet, every file is missing there);
        ``ConfigError`` when it cannot be listed (permission denied, unreachable), since
        comparing with a store that cannot be reached must not find "every file missing"."""
        return True

    def __enter__(self) -> Connector:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def from_settings(cls, settings: Settings, role: str = "external") -> Connector:
        """Build the connector from the settings. ``role`` is ``"local"`` or ``"external"``.

        Override this in a subclass that needs more than a folder.
        """
        from oeleo.errors import ConfigError

        folder = settings.base_dir_from if role == "local" else settings.base_dir_to
        if folder is None or not str(folder).strip():
            name, what = (
                ("OELEO_BASE_DIR_FROM", "from (or --from)")
                if role == "local"
                else ("OELEO_BASE_DIR_TO", "to (or --to)")
            )
            raise ConfigError(f"{name} is not set: the folder to copy {what}")
        try:
            return cls(directory=folder)
        except TypeError as exc:
            if "argument" not in str(exc):  # not the call's arguments: an error of its own
                raise
            # An __init__ that needs more than the folder, or takes no ``directory``.
            raise ConfigError(
                f"{cls.__name__}(directory=...) cannot be made from the settings ({exc}): give it a "
                "classmethod from_settings(settings, role) that reads what it needs (docs/connectors.md)"
            ) from None

    def __new__(cls, *args: Any, **kwargs: Any) -> Connector:
        # Said when the connector is made, every method it lacks at once (the read side's and
        # a way to write), not with a bare NotImplementedError in the middle of a run.
        missing = cls._unimplemented()
        if missing:
            raise TypeError(
                f"{cls.__name__} cannot be created: it does not implement {', '.join(missing)}; "
                "see docs/connectors.md"
            )
        return super().__new__(cls)

    @classmethod
    def _unimplemented(cls) -> List[str]:
        """What this class lacks to be made: its abstract methods, and a way to write."""
        missing = [f"{method}()" for method in sorted(getattr(cls, "__abstractmethods__", ()))]
        if (
            cls.open_upload is Connector.open_upload
            and cls.write_stream is Connector.write_stream
            and cls.put is Connector.put
        ):
            missing.append("open_upload() (an object store) or write_stream() and rename() (a folder)")
        return missing

    # -- read side (a subclass implements) ------------------------------------------------
    @abc.abstractmethod
    def list_files(
        self,
        extensions: Sequence[str] = (),
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        recursive: bool = True,
    ) -> Iterator[FileEntry]:
        """The stored files, in relative-path order. A base folder that cannot be listed
        raises (``ConfigError`` or ``ConnectorError``): it is never an empty folder."""
        raise NotImplementedError

    def list_temporaries(self) -> Iterator[str]:
        """Relative names of oeleo's own temporary files under the base folder (left by a
        run that was killed); the worker removes them. Default: the store keeps none."""
        return iter(())

    @abc.abstractmethod
    def stat(self, relpath: str) -> Optional[FileEntry]:
        """Size and mtime of a stored file, or ``None`` when it is not there."""
        raise NotImplementedError

    @abc.abstractmethod
    def checksum(self, relpath: str, algorithm: str = "md5") -> str:
        """Hex digest of a stored file, computed where the file is when the store can; read
        back through this process where it cannot."""
        raise NotImplementedError

    def stats(self, relpaths: Sequence[str]) -> Dict[str, Optional[FileEntry]]:
        """``stat`` of many stored files (``check`` compares whole folders): each name with
        its entry, or ``None`` when it is not there; a file that cannot be asked about is left
        out (``check`` asks ``stat`` for it alone, which says why). Override when the store
        answers for many files at once (one listing of an S3 prefix); the default asks
        ``stat`` for each."""
        found: Dict[str, Optional[FileEntry]] = {}
        for relpath in relpaths:
            try:
                found[relpath] = self.stat(relpath)
            except (OSError, OeleoError):
                continue
        return found

    def checksums(self, relpaths: Sequence[str], algorithm: str = "md5") -> Dict[str, str]:
        """Hex digests of many stored files (``check`` compares whole folders). A file that
        cannot be hashed is left out. Override when the store hashes many files in one
        request (one ``md5sum`` over SSH); the default asks ``checksum`` for each."""
        digests = {}
        for relpath in relpaths:
            try:
                digests[relpath] = self.checksum(relpath, algorithm)
            except (OSError, OeleoError):
                continue
        return digests

    # -- write side (a subclass implements) -----------------------------------------------
    def write_stream(self, relpath: str, chunks: Iterable[bytes], size: int) -> None:
        """Write all ``chunks`` to ``relpath``, creating folders as needed, durably."""
        raise NotImplementedError

    def rename(self, src_relpath: str, dst_relpath: str) -> None:
        """Move ``src`` onto ``dst``, replacing it."""
        raise NotImplementedError

    def remove(self, relpath: str) -> None:
        """Delete a stored file; a missing file is not an error."""
        raise NotImplementedError

    def set_mtime(self, relpath: str, mtime_ns: int) -> None:  # noqa: B027 - a hook: doing nothing is right for many stores
        """Give the stored file the source's modification time, where the store can."""

    def external_name(self, relpath: str) -> str:
        """How the file is named in the store, for the bookkeeper and for people."""
        return relpath

    # -- durability (a subclass may implement) ------------------------------------------
    def sync_data(self, staged: Sequence[PutResult]) -> None:  # noqa: B027 - a hook: doing nothing is right for many stores
        """Make the bytes of these staged (written, not yet renamed) files durable.

        Called once for a batch of files, so a store can group the work (one journal commit
        for many files instead of one per file). Default: nothing to do.
        """

    def sync_names(self, committed: Sequence[PutResult]) -> None:  # noqa: B027 - a hook: doing nothing is right for many stores
        """Make the renames of these committed files durable (their folders). Default: nothing."""

    # -- the shared copy engine -----------------------------------------------------------
    def put(
        self,
        local_path: Path,
        relpath: str,
        *,
        algorithm: str = "md5",
        expected_checksum: Optional[str] = None,
        verify: bool = True,
        progress: Optional[ProgressCallback] = None,
        should_stop: Optional[StopCheck] = None,
        compress: str = "",
        stream_check: Optional[Callable[[int], Optional[StreamCheck]]] = None,
    ) -> PutResult:
        """Copy one local file into the store, whole, verified and durable, or not at all.

        The file is read once, hashed while it is sent, written under a temporary name,
        verified, synced and renamed into place. On any failure the temporary file is removed
        and the error raised; nothing is left under the real name. (The worker does the same
        in batches: ``stage`` many files, ``sync_data`` once, ``commit`` each, ``sync_names``.)
        """
        staged = self.stage(
            local_path,
            relpath,
            algorithm=algorithm,
            expected_checksum=expected_checksum,
            verify=verify,
            progress=progress,
            should_stop=should_stop,
            compress=compress,
            stream_check=stream_check,
        )
        try:
            (result,) = self.commit_many([staged])
        except BaseException:
            self.discard(staged)
            raise
        if isinstance(result, Failed):
            raise result.error
        return result

    def commit_many(self, staged: Sequence[PutResult]) -> List[Union[PutResult, Failed]]:
        """Commit a batch of staged uploads and make them durable; per file, the committed
        result or why it failed. A file is reported committed only once it is durable.

        Staged uploads (temporary names): their bytes are synced once for the batch, then each
        is committed, then the commits (renames) are synced once. Uploads that the store takes
        with the commit itself: committed, then synced.
        """
        results: List[Union[PutResult, Failed]] = list(staged)
        staged_first = self.features.staged_uploads
        batch = f"a batch of {len(staged)} files"
        if staged_first:
            try:
                # Synced again after a dropped connection: the staged copies are on the store.
                self._again_after_drops(batch, lambda: self.sync_data(staged))
            except Exception as exc:  # noqa: BLE001 - the batch fails, the run goes on
                for item in staged:
                    self.discard(item)
                failed = _failed(exc, "cannot make the copies durable")
                return [failed for _ in staged]
        done: List[int] = []
        refusal: List[Failed] = []  # refused for a setting, or a store away: the next ones would be too

        def commit_one(index: int) -> None:
            item = staged[index]
            if not self.features.batch_sync and self.stop_asked is not None and self.stop_asked():
                # An object store's commit is a request per file, the upload itself for some
                # (a PutObject, an Arcsecond POST): after a stop the rest of the batch is not
                # sent (up to 64 MiB after "stopping cleanly"), but left for the next run.
                self.discard(item)
                results[index] = Failed(STOPPED_BEFORE_COMMIT, False, Aborted(STOPPED_BEFORE_COMMIT))
                return
            if refusal:  # not asked again: the pass stops with the refusal (Failed.kind "config"),
                # or with the store that stays away (fatal)
                self.discard(item)
                first = refusal[0]
                results[index] = Failed(f"{NOT_TRIED}{first.reason}", first.fatal, first.error)
                return
            try:
                results[index] = self._commit_with_retries(item)
                done.append(index)
            except Exception as exc:  # noqa: BLE001 - this file fails, the others go on
                self.discard(item)
                # A store whose one request is the upload (an Arcsecond POST) has nothing but
                # that to commit: its own words; the line names the file ("failed NAME: ...").
                # (A copy found wrong once in place was committed: its own words too.)
                staged_first_words = self.features.staged_uploads and not isinstance(exc, FoundWrongInPlace)
                failed = _failed(exc, "cannot commit" if staged_first_words else "")
                failed = replace(failed, reason=_without_name(failed.reason, item.relpath))
                if failed.kind == "config":
                    failed = Failed(str(exc), False, exc)
                    refusal.append(failed)
                elif isinstance(exc, _Unreachable):  # the store stays away: the run stops
                    failed = Failed(str(exc), True, exc)
                    refusal.append(failed)
                elif failed.fatal:  # a full destination, a store that refuses: the run stops
                    refusal.append(failed)
                results[index] = failed

        parallel = min(self.features.max_uploads, len(staged))
        if parallel > 1 and not self.features.batch_sync:
            # An object store's commit is a request (a PUT, CompleteMultipartUpload, a move):
            # as many at once as the store allows. A folder's is a rename: one by one.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(parallel, thread_name_prefix="oeleo-commit-many") as pool:
                list(pool.map(commit_one, range(len(staged))))
            done.sort()
        else:
            for index in range(len(staged)):
                commit_one(index)
        committed = [results[index] for index in done]
        try:
            if not staged_first:
                self._again_after_drops(batch, lambda: self.sync_data(committed))  # type: ignore[arg-type]
            self._again_after_drops(batch, lambda: self.sync_names(committed))  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - in place but not proven durable: not booked
            failed = _failed(exc, "cannot make the copies in place durable")
            for index in done:
                results[index] = failed
        return results

    def _commit_with_retries(self, staged: PutResult) -> PutResult:
        """``commit``, tried again after a dropped connection (``commit_retries`` times,
        waiting 0.5 s, 1 s, 2 s ... and reconnecting in between), as the engine tries a file
        again whose upload dropped: a short network blip does not fail a batch of small
        files. When every reconnect failed too, ``_Unreachable``: the run stops."""
        if staged.upload is None or not type(staged.upload).recommit:
            return self.commit(staged)
        return self._again_after_drops(staged.relpath, lambda: self.commit(staged))

    def _again_after_drops(self, what: str, step: Callable[[], T]) -> T:
        """``step()``, tried again after a dropped connection: ``commit_retries`` times, waiting
        0.5 s, 1 s, 2 s ... and reconnecting in between. When every reconnect failed too,
        ``_Unreachable``: the run stops.

        Commits that run at once (an object store's batch) share the reconnect: one thread
        waits, says so and reconnects; one whose drop came before that reconnect tries again
        at once, saying nothing. After a store found away for good, the next drop gives up at
        once (``_away``)."""
        attempt = 0
        # One lock per connector, made at first need (a connector of one's own may not call
        # this class's __init__); setdefault is one step for other threads.
        lock = self.__dict__.get("_reconnect_lock") or self.__dict__.setdefault(
            "_reconnect_lock", threading.Lock()
        )
        while True:
            seen = self._reconnects
            try:
                done = step()
            except Exception as exc:
                if behaviour_of(exc) is not Behaviour.RETRY:
                    raise
                if self._away is not None:
                    raise _Unreachable(self._away) from None
                if attempt >= self.commit_retries:
                    raise
                with lock:
                    if self._reconnects != seen:  # reconnected meanwhile by another commit: again,
                        if self._away is not None:  # not counted (its reconnect was counted)
                            raise _Unreachable(self._away) from None
                        continue
                    attempt += 1
                    # The waits and their count are the store's: reconnects that failed in a
                    # row, whichever commit made them (0.5 s, 1 s, 2 s ... then it is away).
                    tried = self._failed_reconnects + 1
                    _, failed = pause_and_reconnect(what, exc, tried, self.commit_retries, self.reconnect)
                    self._reconnects = seen + 1
                    if failed is None:
                        self._failed_reconnects = 0
                        continue
                    self._failed_reconnects = tried
                    if tried >= self.commit_retries:
                        self._away = f"{first_line(failed)} (gave up after {counted(tried, 'reconnect')})"
                        raise _Unreachable(self._away) from None
            else:
                return done

    def _forget_outage(self) -> None:
        """A new pass (a scheduler's next): a store found away in an earlier one is tried
        again, with the full retries."""
        self._away = None
        self._failed_reconnects = 0

    def open_upload(self, relpath: str, size: int, mtime_ns: int) -> Upload:
        """Start an upload of ``size`` bytes to ``relpath`` (a safe relative name).

        Override it for an object store (return your ``Upload``). The default serves the
        folder-like primitives: a ``FolderUpload`` (temporary name, then ``rename``), or,
        for a store declaring ``staged_uploads=False`` whose ``write_stream`` writes the real
        name, a ``SpooledUpload`` that writes it only once the source is confirmed.
        """
        if type(self).write_stream is Connector.write_stream:
            raise NotImplementedError(
                f"{type(self).__name__} must implement open_upload() (or write_stream() and rename())"
            )
        if self.features.staged_uploads:
            return FolderUpload(self, relpath, size, mtime_ns)
        return SpooledUpload(self, relpath, size, mtime_ns)

    def stage(
        self,
        local_path: Union[str, os.PathLike],
        relpath: str,
        *,
        algorithm: str = "md5",
        expected_checksum: Optional[str] = None,
        verify: bool = True,
        progress: Optional[ProgressCallback] = None,
        should_stop: Optional[StopCheck] = None,
        compress: str = "",
        stream_check: Optional[Callable[[int], Optional[StreamCheck]]] = None,
    ) -> PutResult:
        """Send one file through an upload and verify it; ``commit`` makes it visible.

        The rule, for every store: the source is read once and hashed while it is sent; it
        must not have changed meanwhile; what the store holds must verify; only then may the
        upload be committed. On any failure the upload is aborted (never touching the real
        name) and the error raised.

        With ``compress="gzip"`` a FITS or XISF file is sent in gzip form and stored as
        ``relpath + ".gz"`` (``oeleo.compress``): the books get the source's checksum, and the
        store's copy is compared with a hash of the compressed bytes.

        ``stream_check(size)`` gives a checker's check of the file (``Checker.stream_check``):
        fed the chunks as they are read, and finished before the upload is; what it raises
        (``FileIncomplete``, a refusal) aborts the upload.
        """
        relpath = safe_relpath(relpath)
        target = stored_name(relpath, compress)
        features = self.features
        # What the copy is compared with: the books' algorithm when the store computes it;
        # else a hash the store does compute (md5 where it can: rclone's common hash), the
        # source being hashed with it too; else the connector's cheap read-back hash.
        check_algorithm: Optional[str] = None
        # A store that compares each chunk as it writes it needs no second hash at all.
        compare = verify and features.compares_writes and algorithm not in features.hashes
        if verify and not compare and algorithm not in features.hashes:
            common = sorted(features.hashes, key=lambda name: (name != "md5", name))
            check_algorithm = common[0] if common else features.readback_hash
        gzipped: Optional[GzipStream] = None
        if target != relpath:
            # The store holds other bytes than the source: they get a hash of their own.
            reader = SourceReader(local_path, algorithm, progress, should_stop)
            gzipped = GzipStream(reader, check_algorithm or algorithm)
        else:
            reader = SourceReader(
                local_path, algorithm, progress, should_stop, check_algorithm=check_algorithm
            )
        reader.name = relpath  # "run/a.fits changed while it was copied", not its full path
        upload: Optional[Upload] = None
        try:
            check = stream_check(reader.expected_size) if stream_check is not None else None
            if check is not None:
                reader.observer = check.update
            upload = self.open_upload(target, reader.expected_size, reader.mtime_ns)
            if not isinstance(upload, Upload):
                bad, upload = upload, None
                raise ConfigError(
                    f"{type(self).__name__}.open_upload() returned {type(bad).__name__}, not an "
                    "oeleo.connectors.Upload"
                )
            try:
                upload.send(reader if gzipped is None else gzipped)
            except OSError as exc:
                raise _disk_full(exc, target) from None
            digest = reader.finish()  # FileChangedError: nothing is committed
            if check is not None:
                check.finish()  # FileIncomplete, a refusal: nothing is committed
            if expected_checksum is not None and digest != expected_checksum:
                raise FileChangedError(f"{local_path} changed since it was checked")
            if gzipped is not None:
                used, wanted, size = check_algorithm or algorithm, gzipped.check_digest, gzipped.size
            elif check_algorithm:
                used, wanted, size = check_algorithm, reader.check_digest or "", reader.size
            else:
                used, wanted, size = algorithm, digest, reader.size
            stored = upload.finish(None if compare else used if verify else None)
            if not isinstance(stored, Stored):
                raise ConfigError(
                    f"{type(upload).__name__}.finish() returned {type(stored).__name__}, not an "
                    "oeleo.connectors.Stored"
                )
            stored = _lowered(stored)
            # No hash of the copy from the store, which can compute one (``checksum``, where
            # the file is) and does not verify the batch itself at the commit: asked for it.
            ask = (
                verify
                and used not in stored.hashes
                and not (compare and stored.compared)
                and not type(upload).verified_at_commit
                and (compare or not features.checksum_downloads)
            )
            if ask and upload.staging != target:  # under its temporary name, before the commit
                stored = replace(
                    stored, hashes={**stored.hashes, used: self.checksum(upload.staging, used).lower()}
                )
                ask = False
            verified = compare and stored.compared
            if verify and not verified and used in stored.hashes:
                if stored.hashes[used] != wanted:
                    what = "the compressed source" if gzipped is not None else "the source"
                    raise VerificationError(
                        f"{target}: {used} of the copy is {stored.hashes[used]}, of {what} {wanted}"
                    )
                verified = True
            if stored.size != size:
                raise VerificationError(f"{target}: the store holds {stored.size} bytes, not {size}")
        except BaseException:
            reader.close()
            if upload is not None:
                _abort_quietly(upload, target)
            raise
        if ask and features.staged_uploads and features.overwrite and not verified:
            self._warn_verified_in_place(used)
        return PutResult(
            relpath=target,
            external_name=self.external_name(target),
            size=reader.size,
            checksum=digest,
            algorithm=algorithm,
            verified=verified,
            mtime_ns=reader.mtime_ns,
            staging=upload.staging,
            upload=upload,
            # Not verified yet (a store that received the bytes only with the commit, or gave
            # no hash of them and has no temporary name): hashed once committed, before booked.
            verify_after_commit=verify and not verified and (not features.staged_uploads or ask),
            stored_hash=(used, wanted) if gzipped is not None else None,
            stored_size=size,
        )

    def _warn_verified_in_place(self, algorithm: str) -> None:
        """Once per connector: its uploads give no hash before their commit and have no
        temporary name, so a copy is verified only in place, after it replaced the one before."""
        if getattr(self, "_warned_in_place", False):
            return
        self._warned_in_place = True
        log.warning(
            "%s: its uploads give no %s of the copy before the commit (finish() returns none), so a "
            "copy is verified only once in place, and one that arrives damaged replaces the copy "
            "before it: return the store's hash from finish() (docs/connectors.md)",
            type(self).__name__,
            algorithm,
        )

    def commit(self, staged: PutResult) -> PutResult:
        """Make a staged upload visible under its real name (replacing an older version).

        An upload that the store received only now (``staged_uploads=False``) is verified
        here, after the fact: a mismatch is an error, never a success.
        """
        upload = staged.upload
        if upload is None:  # a PutResult made by hand: a temporary name to rename
            if staged.staging and staged.staging != staged.relpath:
                self.rename(staged.staging, staged.relpath)
            return replace(staged, staging=staged.relpath)
        try:
            upload.commit()
        except OSError as exc:
            raise _disk_full(exc, staged.relpath) from None
        verified = staged.verified
        if staged.verify_after_commit:
            used, wanted = staged.stored_hash or (staged.algorithm, staged.checksum)
            stored = self.checksum(staged.relpath, used).lower()
            if stored != wanted:
                what = "the compressed source" if staged.stored_hash else "the source"
                # In place already: the store gave no hash before the commit. Said as it is.
                replaced = "; it replaced the copy before it" if self.features.overwrite else ""
                raise FoundWrongInPlace(
                    f"{staged.relpath}: {used} of the copy is {stored} once in place, of {what} "
                    f"{wanted}{replaced}; sent again on the next run"
                )
            verified = True
        elif not self.features.confirms_commit:
            self._confirm_commit(staged, upload.staging)
        return replace(
            staged, staging=staged.relpath, upload=None, verified=verified, verify_after_commit=False
        )

    def _confirm_commit(self, staged: PutResult, staging: str) -> None:
        """A store that does not say its commits put the copy in place (``confirms_commit``):
        the copy under its real name, asked for and compared by size, and its temporary name
        (where it had one) gone: a rename that did nothing leaves it, and maybe an older copy
        of the same size under the real name."""
        if staging and staging != staged.relpath and self.stat(staging) is not None:
            self._discard(staging)
            raise VerificationError(
                f"{staged.relpath}: its temporary name {staging} was still there after the commit"
            )
        entry = self.stat(staged.relpath)
        size = staged.stored_size if staged.stored_size >= 0 else staged.size
        if entry is None:
            raise VerificationError(f"{staged.relpath}: not in the store after its commit")
        if not isinstance(entry, FileEntry):
            raise ConfigError(
                f"{type(self).__name__}.stat() returned {type(entry).__name__}, not a FileEntry"
            )
        if entry.size != size:
            raise VerificationError(
                f"{staged.relpath}: the store holds {entry.size} bytes after the commit, not {size}"
            )
        # The same size may be an older copy a commit that did nothing left there (a changed
        # file of the same size): a store that gives a hash of what it holds is asked for it.
        used, wanted = staged.stored_hash or (staged.algorithm, staged.checksum)
        if used and wanted and used in self.features.hashes:
            held = str(self.checksum(staged.relpath, used)).lower()
            if held != wanted.lower():
                raise VerificationError(
                    f"{staged.relpath}: the store holds other bytes after the commit ({used} {held}, "
                    f"sent {wanted}): an older copy of the same size?"
                )

    def discard(self, staged: PutResult) -> None:
        """Forget a staged upload that will not be committed (never the real name)."""
        if staged.upload is not None:
            _abort_quietly(staged.upload, staged.relpath)
        elif staged.staging and staged.staging != staged.relpath:
            self._discard(staged.staging)

    def _discard(self, relpath: str) -> None:
        try:
            self.remove(relpath)
        except Exception:  # noqa: BLE001 - cleanup must not hide the first error
            pass

    # -- oeleo 0.7 names ------------------------------------------------------------------
    def base_filter_sub_method(self, glob_pattern: str = "", **kwargs: Any) -> list:
        """The 0.7 listing call: matching files as ``Path`` objects under ``directory``."""
        from oeleo.settings import normalise_extensions

        include_subdirs = getattr(self, "include_subdirs", False)
        entries = self.list_files(extensions=normalise_extensions(glob_pattern), recursive=include_subdirs)
        base = Path(str(self.directory)) if self.directory is not None else Path()
        files = [base / PurePosixPath(e.relpath) for e in entries]
        for extra in kwargs.get("additional_filters") or []:
            files = [f for f in files if extra(f)]
        return files

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.directory!r})"


class FolderConnector(Connector):
    """The base of folder-like stores (a local folder, a folder on an SFTP server): a file
    is written under a hidden temporary name next to its real one (``write_stream``), made
    durable per batch (``sync_data``), renamed into place (``rename``, atomic, replacing the
    old version) and the renames made durable (``sync_names``). A subclass fills in those
    primitives and the read side; ``open_upload`` comes from here."""

    features = Features(batch_sync=True)

    @abc.abstractmethod
    def write_stream(self, relpath: str, chunks: Iterable[bytes], size: int) -> None:
        """Write all ``chunks`` to ``relpath``, creating folders as needed (durability is
        asked for per batch: ``sync_data``)."""

    @abc.abstractmethod
    def rename(self, src_relpath: str, dst_relpath: str) -> None:
        """Move ``src`` onto ``dst``, replacing it atomically."""

    @abc.abstractmethod
    def remove(self, relpath: str) -> None:
        """Delete a stored file; a missing file is not an error."""

    def open_upload(self, relpath: str, size: int, mtime_ns: int) -> Upload:
        return FolderUpload(self, relpath, size, mtime_ns)
