"""Orbax checkpoints: training state, config, vocabularies, iterator position; every file covered by a manifest.

Layout of a checkpoint directory::

    DIR/fgjax.json              the manifest: format version, what wrote it, and the
                                size and sha256 of every file below (written last,
                                atomically, each time a part is added or replaced)
    DIR/vocab/{users,items,categories}.parquet   raw ID <-> index
    DIR/train/<step>/           Orbax: params (the params to serve: the best
                                validated ones), state (the TrainState to resume:
                                current params, optimizer state, step), meta (JSON:
                                config, model name, step, epoch, data position,
                                run fingerprint, history, selection)
    DIR/serving/                Orbax: arrays a service needs besides params
                                (``fgjax.serving.ServingState``: popularity, seen
                                items, forgetting weights, states, evidence,
                                histories), written after training and analysis
    DIR/serving.json            their metadata (version, scalars, names)
    DIR/damaged/step-<N>/       training steps a resumed run found damaged or
                                unfinished and set aside (not in the manifest)

A part (the vocabularies, one training step, the serving state) counts only
once the manifest lists it: its files are written first, then the manifest is
replaced (write to a temporary file, then ``os.replace``). A reader checks
every file it reads against the manifest (size, then sha256) before Orbax
opens it, so truncation, bit flips, removed or foreign files are a
``CheckpointError`` naming the file, never a traceback or a silent result.
No file of a checkpoint is changed in place: every write creates a new file
(so a copy made of hard links, as a run's staging folder is, stays intact).

Only this module and ``fgjax.serving`` read it, and neither imports training code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import jax
import numpy as np

from fgjax.data.vocab import Vocabulary
from fgjax.errors import CheckpointError, CheckpointWarning, DataError

FORMAT_VERSION = 3  # 3: fgjax.json lists every file's size and sha256; 2: train/<step> holds params + state
_MANIFEST = "fgjax.json"
_REBUILD = "re-run the command that wrote it (fgjax train or quickstart, same --out, data and config): " \
           "it resumes from the last undamaged step and rewrites the rest"


class _Orbax:
    """``orbax.checkpoint``, imported on first use: commands that only write run folders (``fgjax analyze``
    uses this module's file helpers) start without its import (about 0.25 s)."""

    def __getattr__(self, name: str) -> Any:
        import orbax.checkpoint

        return getattr(orbax.checkpoint, name)


ocp = _Orbax()


# ---------------------------------------------------------------- files and the manifest


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` as a new file: a temporary file beside it, flushed, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (never a half-written file, never an in-place change)."""
    _atomic_write(Path(path), text.encode())


def file_digest(path: str | Path) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of one file."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        size = os.fstat(f.fileno()).st_size
    return {"size": size, "sha256": digest}


def _files_under(directory: Path, part: str) -> list[str]:
    """Relative paths (``/``-separated) of the files of ``part`` (a file or a folder) under ``directory``."""
    root = directory / part
    if root.is_file():
        return [part]
    if not root.is_dir():
        return []
    return sorted(p.relative_to(directory).as_posix() for p in root.rglob("*") if p.is_file())


def _in_part(name: str, part: str) -> bool:
    return name == part or name.startswith(part.rstrip("/") + "/")


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a checkpoint directory, after checking its format version.

    Raises:
      CheckpointError: no manifest (not a checkpoint), unreadable, or another format version.
    """
    if not isinstance(directory, (str, Path)):
        raise CheckpointError(f"a checkpoint is a folder path (str or Path), got {type(directory).__name__}")
    directory = Path(directory).absolute()
    path = directory / _MANIFEST
    if not path.is_file():
        if directory.is_file():
            raise CheckpointError(f"'{directory}' is a file, not an fgjax checkpoint folder")
        if directory.is_dir() and any(directory.iterdir()):
            raise CheckpointError(f"'{directory}' is not an fgjax checkpoint (no {_MANIFEST})")
        raise CheckpointError(f"'{directory}' is not an fgjax checkpoint (no {_MANIFEST}; the folder is "
                              f"{'empty' if directory.is_dir() else 'missing'})")
    try:
        manifest = json.loads(path.read_text())
        version = manifest["format_version"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"'{path}': unreadable checkpoint manifest, expected JSON with format_version and "
                              "files (restore the checkpoint from a copy, or train again into a new folder)") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"'{directory}': checkpoint format version {version}, this fgjax reads version {FORMAT_VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or manifest.get("files_sha256") != _files_digest(files):
        raise CheckpointError(f"'{path}' is damaged: its list of files does not match its own checksum "
                              "(restore the checkpoint from a copy, or train again into a new folder)")
    if not all(
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
            for v in files.values()):
        raise CheckpointError(f"'{path}': unreadable checkpoint manifest, its 'files' are not a map of "
                              "path -> size and sha256 (restore the checkpoint from a copy, or train again into a "
                              "new folder)")
    return manifest


def check_manifest(directory: str | Path) -> Path:
    """The checkpoint directory as an absolute path, after checking its manifest and format version."""
    read_manifest(directory)
    return Path(directory).absolute()


def _files_digest(files: Any) -> str:
    """sha256 of the manifest's file list in a canonical form (the manifest's own checksum)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_manifest(directory: Path, files: dict[str, dict[str, Any]]) -> None:
    from fgjax import __version__

    files = dict(sorted(files.items()))
    manifest = {"format_version": FORMAT_VERSION, "written_by": f"fgjax {__version__}",
                "files_sha256": _files_digest(files), "files": files}
    _atomic_write(directory / _MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


def write_manifest(directory: str | Path) -> None:
    """Create ``DIR`` and an empty manifest, or keep the one there (idempotent).

    Raises:
      CheckpointError: ``DIR`` holds a manifest of another format version, or
        files but no manifest (not a checkpoint fgjax may write into).
    """
    directory = Path(directory).absolute()
    if (directory / _MANIFEST).exists():
        read_manifest(directory)
        return
    if directory.is_dir() and any(directory.iterdir()):
        raise CheckpointError(f"'{directory}' holds files but no {_MANIFEST}: not an fgjax checkpoint this run "
                              "may write into (use a new output folder)")
    directory.mkdir(parents=True, exist_ok=True)
    _write_manifest(directory, {})


def record(directory: str | Path, *parts: str) -> None:
    """List the files now under ``parts`` (files or folders, relative) in the manifest, replacing older entries."""
    directory = Path(directory).absolute()
    files = read_manifest(directory)["files"]
    files = {k: v for k, v in files.items() if not any(_in_part(k, p) for p in parts)}
    for part in parts:
        for name in _files_under(directory, part):
            files[name] = file_digest(directory / name)
    _write_manifest(directory, files)


def forget(directory: str | Path, *parts: str) -> None:
    """Drop ``parts`` from the manifest (before they are rewritten or removed)."""
    directory = Path(directory).absolute()
    files = read_manifest(directory)["files"]
    kept = {k: v for k, v in files.items() if not any(_in_part(k, p) for p in parts)}
    if kept != files:
        _write_manifest(directory, kept)


def listed(directory: str | Path, part: str, manifest: dict[str, Any] | None = None) -> bool:
    """Whether the manifest lists any file of ``part``."""
    files = (manifest or read_manifest(directory))["files"]
    return any(_in_part(k, part) for k in files)


def manifest_steps(directory: str | Path, manifest: dict[str, Any] | None = None) -> list[int]:
    """The training steps the manifest lists, ascending."""
    files = (manifest or read_manifest(directory))["files"]
    steps = {k.split("/")[1] for k in files if k.startswith("train/") and k.count("/") >= 2}
    return sorted(int(s) for s in steps if s.isdigit())


def verify(directory: str | Path, *parts: str, skip: Iterable[str] = (), hint: str | None = _REBUILD,
           manifest: dict[str, Any] | None = None) -> None:
    """Check the files of ``parts`` (all when none are given) against the manifest: present, same size, same sha256.

    ``skip``: parts not to check (e.g. a step's optimizer state when serving).

    Raises:
      CheckpointError: the first file that is missing or differs, named, with ``hint``.
    """
    directory = Path(directory).absolute()
    files = (manifest or read_manifest(directory))["files"]
    skip = tuple(skip)
    tail = f"; {hint}" if hint else ""
    chosen = sorted(k for k in files if (not parts or any(_in_part(k, p) for p in parts))
                    and not any(_in_part(k, s) for s in skip))
    for name in chosen:
        path = directory / name
        want = files[name]
        if not path.is_file():
            gone = path  # a whole folder gone: name the top-most missing folder, not its first file
            while gone.parent != directory and not gone.parent.exists():
                gone = gone.parent
            if gone != path:
                prefix = gone.relative_to(directory).as_posix() + "/"
                count = sum(k.startswith(prefix) for k in files)
                raise CheckpointError(f"'{gone}' is missing (the checkpoint manifest lists {count} "
                                      f"file{'s' if count != 1 else ''} in it){tail}")
            raise CheckpointError(f"'{path}' is missing (the checkpoint manifest lists it){tail}")
        size = path.stat().st_size
        if size != want["size"]:
            got = "empty" if size == 0 else f"{size:,} bytes"
            raise CheckpointError(f"'{path}' is damaged: {got}, the checkpoint manifest lists {want['size']:,} "
                                  f"bytes{tail}")
        if file_digest(path)["sha256"] != want["sha256"]:
            raise CheckpointError(f"'{path}' is damaged: its content differs from the checkpoint manifest "
                                  f"(sha256){tail}")


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Orbax logs routine notes (missing optional metadata files) as absl warnings: keep them off the console."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------- vocabularies


def save_vocabularies(directory: str | Path, users: Vocabulary, items: Vocabulary, categories: Vocabulary | None) -> None:
    """Write the vocabularies (each a new file, replacing the old) and list them in the manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = Path(directory).absolute()
    vocab_dir = directory / "vocab"
    forget(directory, "vocab")
    vocab_dir.mkdir(parents=True, exist_ok=True)
    for name, vocab in (("users", users), ("items", items), ("categories", categories)):
        path = vocab_dir / f"{name}.parquet"
        if vocab is None:
            if path.exists():
                path.unlink()  # a checkpoint's own old file (the manifest no longer lists it)
            continue
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"id": vocab.values}), sink)
        _atomic_write(path, sink.getvalue().to_pybytes())
    record(directory, "vocab")


def load_vocabularies(directory: str | Path, *, verified: bool = False
                      ) -> tuple[Vocabulary, Vocabulary, Vocabulary | None]:
    """The checkpoint's vocabularies, each checked against the manifest first (unless ``verified`` just now).

    Raises:
      CheckpointError: a vocabulary missing, damaged or unreadable (named).
    """
    directory = Path(directory).absolute()
    manifest = read_manifest(directory)
    result = []
    for name in ("users", "items", "categories"):
        part = f"vocab/{name}.parquet"
        path = directory / part
        if not listed(directory, part, manifest):
            if name == "categories":
                result.append(None)
                continue
            raise CheckpointError(f"'{path}' is missing: the checkpoint manifest lists no {name} vocabulary "
                                  f"(the run stopped before writing it); {_REBUILD}")
        if not verified:
            verify(directory, part, manifest=manifest)
        try:
            vocab = Vocabulary.load(path)
        except (DataError, OSError, KeyError, ValueError) as exc:  # pyarrow errors are ValueErrors
            raise CheckpointError(f"'{path}': unreadable vocabulary ({_first_line(exc)}); {_REBUILD}") from None
        result.append(vocab)
    return result[0], result[1], result[2]


# ---------------------------------------------------------------- training steps


def _with_sharding(abstract: Any, sharding: jax.sharding.Sharding | None) -> Any:
    """``abstract`` with every leaf placed by ``sharding`` (None: the leaves' own shardings)."""
    if sharding is None:
        return abstract
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)


def latest_step(directory: str | Path, manifest: dict[str, Any] | None = None) -> int:
    """The newest training step the manifest lists.

    Raises:
      CheckpointError: none (the run stopped before its first checkpoint).
    """
    steps = manifest_steps(directory, manifest)
    if not steps:
        raise CheckpointError(f"'{Path(directory).absolute()}' holds no completed training step (the run stopped "
                              f"before its first checkpoint); {_REBUILD}")
    return steps[-1]


def _step_part(step: int) -> str:
    return f"train/{step}"


def _require_listed(directory: Path, step: int, manifest: dict[str, Any]) -> None:
    if step not in manifest_steps(directory, manifest):
        listed_steps = manifest_steps(directory, manifest)
        raise CheckpointError(f"'{directory}': no completed training step {step} (the manifest lists "
                              f"{', '.join(map(str, listed_steps)) or 'none'})")


def _listed_step(directory: str | Path, step: int | None) -> tuple[Path, dict[str, Any], int, str]:
    """(absolute directory, manifest, step, its part name) of a listed step (the latest by default)."""
    manifest = read_manifest(directory)
    directory = Path(directory).absolute()
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer))):
        raise CheckpointError(f"step={step!r}: a training step is an integer (the latest if not given)")
    step = latest_step(directory, manifest) if step is None else int(step)
    _require_listed(directory, step, manifest)
    return directory, manifest, step, _step_part(step)


def read_meta(directory: str | Path, step: int | None = None, *, verified: bool = False) -> dict[str, Any]:
    """A step's JSON metadata (latest step by default), after checking the step's files but its state
    (unless ``verified`` just now)."""
    directory, manifest, step, part = _listed_step(directory, step)
    if not verified:
        verify(directory, part, skip=[f"{part}/state"], manifest=manifest)
    checkpointer = ocp.Checkpointer(ocp.JsonCheckpointHandler())
    try:
        with _quiet_orbax():
            meta = checkpointer.restore(directory / part / "meta")
    except Exception as exc:  # verified files Orbax cannot read: name them, no traceback
        raise CheckpointError(f"'{directory / part / 'meta'}': unreadable step metadata ({_first_line(exc)})") from None
    finally:
        checkpointer.close()
    if not isinstance(meta, dict) or not {"config", "step"} <= set(meta):
        raise CheckpointError(f"'{directory / part / 'meta'}': step metadata without config and step")
    return meta


def verify_served(directory: str | Path, step: int | None = None) -> int:
    """Check every file a service reads (vocabularies, the step's params and meta, the serving state) against
    the manifest, before any is opened; returns the step (latest by default).

    Raises:
      CheckpointError: the first file missing or damaged, named.
    """
    directory, manifest, step, part = _listed_step(directory, step)
    verify(directory, "vocab", part, _SERVING_META, "serving", skip=[f"{part}/state"], manifest=manifest)
    return step


def _finite_or_raise(tree: Any, where: Path, what: str) -> None:
    """Raise ``CheckpointError`` naming the first leaf of ``tree`` with NaN or infinite values."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in flat:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not np.issubdtype(np.dtype(dtype), np.inexact):
            continue
        ok = bool(jax.numpy.isfinite(leaf).all()) if isinstance(leaf, jax.Array) else bool(np.isfinite(leaf).all())
        if not ok:
            name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            raise CheckpointError(f"'{where}': {what} '{name}' holds NaN or infinite values; the checkpoint is not "
                                  "servable (a run that diverged, or a damaged file)")


def read_params(directory: str | Path, abstract: Any, *, sharding: jax.sharding.Sharding | None = None,
                step: int | None = None, verified: bool = False) -> tuple[Any, int]:
    """``(params, step)``: the params of a step (latest by default) in the structure and dtypes of ``abstract``.

    The step's files are checked against the manifest first, the shapes
    against ``abstract`` before anything is read, and every restored array
    must be finite. ``verified``: the caller has just checked the step's files
    (``read_meta`` does), so they are not hashed twice.

    Raises:
      CheckpointError: the step is missing, damaged, of other shapes or not finite.
    """
    directory, manifest, step, part = _listed_step(directory, step)
    if not verified:
        verify(directory, part, skip=[f"{part}/state"], manifest=manifest)
    where = directory / part / "params"
    target = _with_sharding(abstract, sharding)
    checkpointer = ocp.StandardCheckpointer()
    try:
        with _quiet_orbax():
            metadata = checkpointer.metadata(where)
            stored = getattr(metadata, "item_metadata", metadata)
            _same_shapes(stored, target, where)
            params = checkpointer.restore(where, target)
    except CheckpointError:
        raise
    except Exception as exc:  # verified files Orbax cannot read: name them, no traceback
        raise CheckpointError(f"'{where}': cannot restore the params ({_first_line(exc)})") from None
    finally:
        checkpointer.close()
    _finite_or_raise(params, where, "parameter")
    return params, step


def _same_shapes(stored: Any, target: Any, where: Path) -> None:
    """Raise ``CheckpointError`` unless ``stored`` (Orbax tree metadata) has ``target``'s leaves and shapes."""
    def flat(tree):
        return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf
                for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

    try:
        have = flat(jax.tree.map(lambda x: x, dict(stored)))
    except (TypeError, ValueError):
        return  # no tree metadata to compare: Orbax's restore checks it
    want = flat(target)
    missing = sorted(set(want) - set(have))
    if missing:
        raise CheckpointError(f"'{where}': parameters {', '.join(missing[:3])} are missing from the checkpoint")
    for name, leaf in want.items():
        shape = tuple(getattr(have[name], "shape", ()) or ())
        if shape != tuple(leaf.shape):
            raise CheckpointError(f"'{where}': parameter '{name}' has shape {shape} in the checkpoint, the model "
                                  f"of its config and vocabularies expects {tuple(leaf.shape)}")


def _steps_on_disk(directory: Path) -> list[int]:
    train = directory / "train"
    if not train.is_dir():
        return []
    return sorted(int(p.name) for p in train.iterdir() if p.is_dir() and p.name.isdigit())


class TrainCheckpoints:
    """Step-numbered training checkpoints under ``DIR/train`` (Orbax CheckpointManager).

    Each step holds ``params`` (what a service loads), ``state`` (what a resumed
    run restores: any pytree, e.g. ``fgjax.training.loop.TrainState``) and
    ``meta`` (JSON). Saves are asynchronous; a step enters the manifest as
    soon as Orbax has finished it (a background thread watches for its final
    folder; the next save and ``close()``, which the context manager calls,
    also record it), so a run killed after that resumes from it.

    Opened for training (``read_only=False``), it first screens the steps on
    disk against the manifest: steps the manifest does not list (a run killed
    while saving them) and listed steps whose files are damaged, newest first
    until an intact one, are moved to ``DIR/damaged/`` with one
    ``CheckpointWarning``, so a resumed run continues from the last intact
    step (``resume_notes`` holds what was set aside). ``read_only=True``
    reads verified steps without Orbax's manager (``read_meta``, ``read_params``).
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 2, read_only: bool = False):
        self.directory = Path(directory).absolute()
        self.read_only = read_only
        self.resume_notes: list[str] = []
        self._manager = None
        self._lock = threading.Lock()  # manifest updates: the main thread and the step watchers
        self._stop = threading.Event()
        self._watchers: list[threading.Thread] = []
        if read_only:
            read_manifest(self.directory)
            return
        self._writer = jax.process_index() == 0
        if self._writer:
            write_manifest(self.directory)
            self._screen()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("fgjax checkpoint screened")
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True)
        with _quiet_orbax():
            self._manager = ocp.CheckpointManager(
                self.directory / "train", options=options, item_names=("params", "state", "meta")
            )

    def __enter__(self) -> "TrainCheckpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _screen(self) -> None:
        """Set aside unfinished steps and damaged ones (newest first, down to an intact step); warn once."""
        directory = self.directory
        manifest = read_manifest(directory)
        listed_steps = manifest_steps(directory, manifest)
        on_disk = _steps_on_disk(directory)
        notes, drop = [], []
        for step in on_disk:
            if step not in listed_steps:
                notes.append(f"step {step} was not finished (the run stopped while saving it): "
                             f"moved to '{self._set_aside(step)}'")
        good = None
        for step in reversed(listed_steps):
            part = _step_part(step)
            if step not in on_disk:
                drop.append(part)
                notes.append(f"step {step} is missing ('{directory / part}' was removed)")
                continue
            try:
                verify(directory, part, hint=None, manifest=manifest)
            except CheckpointError as exc:
                drop.append(part)
                notes.append(f"step {step} is damaged ({exc}): moved to '{self._set_aside(step)}'")
                continue
            good = step
            break
        if drop:
            forget(directory, *drop)
        if notes:
            then = f"resuming from step {good}" if good is not None else "no intact step is left: training starts over"
            self.resume_notes = notes
            warnings.warn(f"checkpoint '{directory}': {'; '.join(notes)}; {then}", CheckpointWarning, stacklevel=3)

    def _set_aside(self, step: int) -> Path:
        target = self.directory / "damaged" / f"step-{step}"
        n = 1
        while target.exists():
            n += 1
            target = self.directory / "damaged" / f"step-{step}-{n}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.directory / _step_part(step), target)
        return target

    def _commit(self) -> None:
        """Wait for Orbax's saves, then list finished steps in the manifest and drop the ones it removed."""
        self._manager.wait_until_finished()
        if self._writer:
            self._record_steps(drop_gone=True)

    def _record_steps(self, drop_gone: bool) -> None:
        """List the finished step folders the manifest lacks (and drop listed ones that are gone)."""
        with self._lock:
            listed_steps = set(manifest_steps(self.directory))
            on_disk = set(_steps_on_disk(self.directory))
            gone = [_step_part(s) for s in sorted(listed_steps - on_disk)] if drop_gone else []
            new = [_step_part(s) for s in sorted(on_disk - listed_steps)]
            if gone:
                forget(self.directory, *gone)
            if new:
                record(self.directory, *new)

    def _watch(self, step: int) -> None:
        """Record ``step`` once Orbax has renamed its temporary folder to the final one (background thread)."""
        train = self.directory / "train"
        while not self._stop.is_set():
            final = train / str(step)
            if final.is_dir() and not any(train.glob(f"{step}.*")):
                try:
                    self._record_steps(drop_gone=False)
                except (OSError, CheckpointError):
                    pass  # the next save or close() records it
                return
            self._stop.wait(0.05)

    def latest_step(self) -> int | None:
        if self.read_only:
            steps = manifest_steps(self.directory)
            return steps[-1] if steps else None
        return self._manager.latest_step()

    def save(self, step: int, params: Any, state: Any, meta: dict[str, Any]) -> None:
        if self.read_only:
            raise CheckpointError(f"'{self.directory}' was opened read-only")
        self._commit()  # Orbax waits for the previous save here anyway
        # A snapshot: Orbax writes the JSON later, in the background, when the caller's lists have grown.
        meta = json.loads(json.dumps(meta))
        self._manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                state=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave(meta),
            ),
        )
        if self._writer:
            watcher = threading.Thread(target=self._watch, args=(step,), name=f"fgjax-step-{step}", daemon=True)
            watcher.start()
            self._watchers = [w for w in self._watchers if w.is_alive()] + [watcher]

    def restore_meta(self, step: int | None = None) -> dict[str, Any]:
        if self.read_only:
            return read_meta(self.directory, step)
        step = self._require_step(step)
        try:
            with _quiet_orbax():
                return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as exc:  # a verified step Orbax cannot read: name it, no traceback
            raise CheckpointError(f"'{self.directory}' step {step}: unreadable step metadata "
                                  f"({_first_line(exc)})") from None

    def restore(
        self,
        abstract_params: Any,
        abstract_state: Any | None,
        *,
        sharding: jax.sharding.Sharding | None = None,
        step: int | None = None,
    ) -> tuple[Any, Any | None, dict[str, Any]]:
        """``(params, state or None, meta)``, the abstract trees' structure and dtypes.

        Leaves are placed with ``sharding``, or (None) with the shardings the
        abstract ``ShapeDtypeStruct`` leaves carry (e.g. row-sharded tables).
        Pass ``abstract_state=None`` to skip the training state (serving).
        """
        if self.read_only:
            if abstract_state is not None:
                raise CheckpointError(f"'{self.directory}': a read-only store restores params, not the train state")
            params, step = read_params(self.directory, abstract_params, sharding=sharding, step=step)
            return params, None, read_meta(self.directory, step)
        step = self._require_step(step)
        items = {
            "params": ocp.args.StandardRestore(_with_sharding(abstract_params, sharding)),
            "meta": ocp.args.JsonRestore(),
        }
        if abstract_state is not None:
            items["state"] = ocp.args.StandardRestore(_with_sharding(abstract_state, sharding))
        try:
            with _quiet_orbax():
                restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as exc:  # a verified step Orbax cannot read: name it, no traceback
            raise CheckpointError(f"'{self.directory}' step {step}: cannot restore ({_first_line(exc)})") from None
        return restored["params"], restored.get("state"), restored["meta"]

    def _require_step(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"'{self.directory}' holds no training checkpoint")
        return step

    def close(self) -> None:
        if self._manager is None:
            return
        try:
            self._commit()
        finally:
            self._stop.set()
            for watcher in self._watchers:
                watcher.join()
            self._manager.close()
            self._manager = None


# ---------------------------------------------------------------- serving state

SERVING_VERSION = 2
_SERVING_META = "serving.json"


def save_serving(directory: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write the serving arrays (replacing older ones) under ``DIR/serving`` and their JSON metadata.

    Arrays keep their exact dtype (float64, int64 included): they are written
    and read back as NumPy, never through JAX arrays (which without x64 would
    turn float64 into float32). Orbax cannot write empty arrays, so those are
    recorded in the metadata by shape and dtype. The old state leaves the
    manifest first and the new one enters it last, so a run stopped in
    between leaves a checkpoint that says it has no serving state.
    """
    directory = Path(directory).absolute()
    write_manifest(directory)
    forget(directory, "serving", _SERVING_META)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    empty = {k: [list(v.shape), v.dtype.str] for k, v in arrays.items() if v.size == 0}
    stored = {k: v for k, v in arrays.items() if v.size}
    checkpointer = ocp.StandardCheckpointer()
    try:
        with _quiet_orbax():
            checkpointer.save(directory / "serving", stored, force=True)
            checkpointer.wait_until_finished()
    finally:
        checkpointer.close()
    meta = {**meta, "serving_version": SERVING_VERSION, "arrays": sorted(arrays), "empty_arrays": empty}
    atomic_write_text(directory / _SERVING_META, json.dumps(meta, indent=2) + "\n")
    record(directory, "serving", _SERVING_META)


def load_serving(directory: str | Path, *, verified: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The serving arrays (exact dtypes, as NumPy) and metadata written by ``save_serving``
    (their files checked against the manifest first, unless ``verified`` just now).

    Raises:
      CheckpointError: the serving state is missing, of another version, or
        damaged (a file that differs from the manifest, unreadable metadata,
        arrays missing or unreadable).
    """
    directory = Path(directory).absolute()
    manifest = read_manifest(directory)
    meta_path = directory / _SERVING_META
    if not listed(directory, _SERVING_META, manifest):
        raise CheckpointError(
            f"'{directory}' has no serving state ({_SERVING_META} and serving/, written after training and the "
            f"forgetting analysis; the run stopped before it): {_REBUILD}"
        )
    if not verified:
        verify(directory, _SERVING_META, "serving", manifest=manifest)
    try:
        meta = json.loads(meta_path.read_text())
        names, empty = list(meta["arrays"]), dict(meta["empty_arrays"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"'{meta_path}': unreadable serving metadata, expected JSON with serving_version, arrays and empty_arrays"
        ) from None
    if meta.get("serving_version") != SERVING_VERSION:
        raise CheckpointError(
            f"'{meta_path}': serving state version {meta.get('serving_version')}, this fgjax reads version "
            f"{SERVING_VERSION} (re-run fgjax train on this output directory)"
        )
    arrays_dir = directory / "serving"
    stored = [n for n in names if n not in empty]
    arrays: dict[str, np.ndarray] = {}
    if stored:
        checkpointer = ocp.StandardCheckpointer()
        try:
            with _quiet_orbax():
                metadata = checkpointer.metadata(arrays_dir)
                tree = dict(getattr(metadata, "item_metadata", metadata))
                missing = sorted(set(stored) - set(tree))
                if missing:
                    raise CheckpointError(f"'{arrays_dir}': serving arrays {', '.join(missing)} are missing "
                                          f"(expected {', '.join(stored)})")
                # NumPy targets: Orbax restores NumPy arrays with their saved dtype (no JAX, no x64 rounding).
                target = {n: np.zeros(tuple(tree[n].shape), np.dtype(tree[n].dtype)) for n in stored}
                arrays = dict(checkpointer.restore(arrays_dir, target))
        except CheckpointError:
            raise
        except Exception as exc:  # verified files Orbax cannot read: name them, no traceback
            raise CheckpointError(
                f"'{arrays_dir}': unreadable serving arrays, expected an Orbax checkpoint of {', '.join(stored)} "
                f"({_first_line(exc)})"
            ) from None
        finally:
            checkpointer.close()
    for name, (shape, dtype) in empty.items():
        arrays[name] = np.zeros(tuple(shape), np.dtype(dtype))
    return {k: np.asarray(v) for k, v in arrays.items()}, meta


def copy_checkpoint(source: str | Path, target: str | Path) -> None:
    """``target`` as a copy of the checkpoint ``source`` made of hard links (a plain copy where links fail).

    Safe because no checkpoint file is ever changed in place: a run writing
    into ``target`` replaces files, which leaves ``source`` untouched.
    """
    source, target = Path(source), Path(target)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link, symlinks=False)
