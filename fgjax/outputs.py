"""Output folders that a failed, refused or killed run cannot corrupt.

A job (``quickstart``, ``train``, ``analyze``, ``evaluate``, ``generate``, the
detection report) writes into a **staging folder beside OUT**
(``OUT/../.OUT.fgjax-staging``) and moves its files into OUT only when it
succeeds. OUT then gets a small manifest, ``OUT/fgjax-run.json``: what kind of
folder it is, and per command the config, package versions, times and every
file that command wrote (size and sha256; ``checkpoint/`` by its own
manifest).

Rules:

- A run never deletes or reads a file it did not write: it reads its own
  staged files; at commit it replaces the files it writes and removes only
  files an earlier run of the same command listed and this one no longer
  writes. Files fgjax did not write stay where they are (and are named in a
  warning).
- A non-empty OUT that is not an fgjax output folder, or one of another kind,
  is refused unless ``overwrite`` (``--overwrite``), which replaces the
  earlier run's outputs (never foreign files). ``evaluate`` may write beside
  the checkpoint of a ``train`` or ``quickstart`` folder.
- Training resumes: the staging folder starts with a copy of
  ``OUT/checkpoint`` made of hard links (checkpoint files are never changed in
  place, so OUT's copy stays intact) and trains on from there. A run that is
  killed leaves its staging folder; the next run of the same command and
  config resumes from its checkpoint, any other run removes it (fgjax wrote it).
  A run that fails removes it; OUT is then exactly as before. When its error
  points at the rows it rejected, they are kept beside OUT as
  ``OUT.failed-rejects.parquet``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from fgjax.checkpoint import atomic_write_text, copy_checkpoint, file_digest
from fgjax.errors import FgjaxError, FgjaxWarning, OutputError

RUN_MANIFEST = "fgjax-run.json"
OUTPUT_VERSION = 1
_MARKER = ".fgjax-staging.json"
_CHECKPOINT = "checkpoint"
#: Commands that may add their outputs to a folder of another kind.
COMPATIBLE = {"evaluate": frozenset({"train", "quickstart"})}
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "pyarrow")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """The fgjax, Python and main package versions of this process."""
    from fgjax import __version__

    found = {"fgjax": __version__, "python": sys.version.split()[0]}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def shown_as_final(report: Callable[[str], None], stage: Path, out: Path) -> Callable[[str], None]:
    """``report`` with the staging folder's paths shown as the final ones."""
    return lambda message: report(message.replace(str(stage), str(out)))


def staging_path(out: str | Path) -> Path:
    """Where a run into ``out`` stages its files: a hidden folder beside it."""
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}.fgjax-staging"


def read_run_manifest(out: str | Path) -> dict[str, Any] | None:
    """``OUT/fgjax-run.json`` as a dict, or None if absent or unreadable."""
    path = Path(out) / RUN_MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), dict) or "kind" not in manifest:
        return None
    return manifest


def _listing(folder: Path, limit: int = 3) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owned(manifest: dict[str, Any] | None, commands: set[str] | None = None) -> set[str]:
    """Files (relative paths) the manifest's runs wrote (of ``commands``, or of every run)."""
    if manifest is None:
        return set()
    return {name for command, run in manifest["runs"].items() if commands is None or command in commands
            for name in run.get("files", {}) if name != f"{_CHECKPOINT}/"}


class RunFolder:
    """One job's output folder and its staging folder (see the module docstring).

    Use ``run_folder`` (a context manager) rather than this class directly.
    """

    def __init__(self, out: str | Path, command: str, config: dict[str, Any], *, overwrite: bool = False,
                 resume_checkpoint: bool = False, report: Callable[[str], None] = lambda _: None):
        self.out = Path(os.path.abspath(out))
        self.command = command
        self.config = json.loads(json.dumps(config, default=str))
        self.overwrite = overwrite
        self.resume_checkpoint = resume_checkpoint
        self.report = report
        self.staging = staging_path(self.out)
        self.started = _now()
        self._previous: dict[str, Any] | None = None

    # -------------------------------------------------------------- open

    def open(self) -> Path:
        """Check OUT, prepare the staging folder; returns it."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out '{out}' is a file, expected a folder")
        blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:  # else the staging folder's mkdir names its own path, not the user's
            raise OutputError(f"--out '{out}': '{blocking}' is a file, so no folder can be made under it")
        previous = read_run_manifest(out) if out.is_dir() else None
        if out.is_dir() and any(out.iterdir()) and not self.overwrite:
            if previous is None:
                unreadable = " (its fgjax-run.json is unreadable)" if (out / RUN_MANIFEST).exists() else ""
                raise OutputError(
                    f"'{out}' is not empty and is not an fgjax output folder{unreadable}: it holds {_listing(out)}; "
                    "choose an empty or new folder, or pass --overwrite to write there (files fgjax did not write "
                    "are left in place)"
                )
            kind = previous["kind"]
            if kind != self.command and kind not in COMPATIBLE.get(self.command, ()):
                raise OutputError(
                    f"'{out}' holds the outputs of fgjax {kind}, not of {self.command}: choose another folder, or "
                    f"pass --overwrite to replace the {kind} run's outputs"
                )
        self._previous = previous
        adopted = self._clear_staging()
        if not adopted:
            self.staging.mkdir(parents=True)
        atomic_write_text(self.staging / _MARKER, json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "config": self.config,
             "out": str(out), "started": self.started}) + "\n")
        checkpoint = out / _CHECKPOINT
        if self.resume_checkpoint and not adopted and not self.overwrite and (checkpoint / "fgjax.json").is_file():
            copy_checkpoint(checkpoint, self.staging / _CHECKPOINT)
        return self.staging

    def _clear_staging(self) -> bool:
        """Handle a staging folder left by another run; True if its checkpoint is kept to resume from."""
        staging = self.staging
        if not staging.exists():
            return False
        try:
            marker = json.loads((staging / _MARKER).read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            marker = {}
        if not isinstance(marker, dict):
            marker = {}
        pid = marker.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and marker.get("host") == socket.gethostname() \
                and _pid_alive(pid):
            raise OutputError(f"another fgjax run (process {pid}) is writing into '{self.out}' through "
                              f"'{staging}': wait for it to finish, or stop it first")
        keep = (self.resume_checkpoint and not self.overwrite and marker.get("command") == self.command
                and marker.get("config") == self.config and (staging / _CHECKPOINT / "fgjax.json").is_file())
        if not keep:
            shutil.rmtree(staging)
            return False
        for entry in staging.iterdir():  # the stopped run's other outputs: this run writes its own
            if entry.name != _CHECKPOINT:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        self.report(f"resuming the checkpoint of a run into '{self.out}' that was stopped on "
                    f"{marker.get('started', 'an earlier date')}")
        return True

    # -------------------------------------------------------------- commit

    def commit(self) -> dict[str, Any]:
        """Move the staged files into OUT, write its manifest, remove the staging folder; returns the manifest."""
        out, staging = self.out, self.staging
        staged = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*")
                        if p.is_file() and p.name != _MARKER and p.relative_to(staging).parts[0] != _CHECKPOINT)
        # The digests in threads (hashlib lets go of the GIL): a run's tables are read back once, side by side.
        with ThreadPoolExecutor(max(1, min(len(staged), os.cpu_count() or 1)), "fgjax-digest") as pool:
            files: dict[str, Any] = dict(zip(staged, pool.map(lambda name: file_digest(staging / name), staged)))
        has_checkpoint = (staging / _CHECKPOINT).is_dir()
        if has_checkpoint:
            files[f"{_CHECKPOINT}/"] = {"manifest": file_digest(staging / _CHECKPOINT / "fgjax.json")}
        previous = self._previous
        same_kind = previous is not None and (previous["kind"] == self.command
                                              or previous["kind"] in COMPATIBLE.get(self.command, ()))
        if previous is not None and same_kind:
            kind, runs = previous["kind"], dict(previous["runs"])
            stale = _owned(previous, {self.command})
        else:  # a new folder, or --overwrite over another kind: the earlier run's outputs are replaced
            kind, runs = self.command, {}
            stale = _owned(previous)
        for command, run in list(runs.items()):  # files this run now writes change owner
            if command != self.command:
                kept = {k: v for k, v in run.get("files", {}).items() if k not in files}
                runs[command] = {**run, "files": kept}
        runs[self.command] = {"config": self.config, "versions": versions(), "started": self.started,
                              "finished": _now(), "files": files}
        owned = _owned(previous)
        # An output that was one file and is now a folder of parts (or the reverse, e.g. forgetting.parquet
        # from one process, then from several): the earlier run's file or folder of files goes first.
        in_the_way: set[Path] = set()
        for name in staged:  # checked before anything moves: a refused commit changes nothing
            target = out / name
            for parent in list(Path(name).parents)[:-1]:
                if (out / parent).is_file():
                    if parent.as_posix() not in stale - set(files):
                        raise OutputError(f"'{out / parent}' is a file fgjax did not write, where this run writes "
                                          f"its {parent.as_posix()}/ folder: move it away")
                    in_the_way.add(out / parent)
            if target.is_dir():
                inside = {p.relative_to(out).as_posix() for p in target.rglob("*") if not p.is_dir()}
                if not inside <= stale - set(files):
                    raise OutputError(f"'{target}' is a folder, where this run writes its {name}: move it away")
                in_the_way.add(target)
            elif target.exists() and name not in owned and not self.overwrite:
                raise OutputError(f"'{target}' is a file fgjax did not write, where this run writes its {name}: "
                                  "move it away (or pass --overwrite to replace files fgjax did not write)")
        for path in sorted(in_the_way):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        out.mkdir(parents=True, exist_ok=True)
        for name in staged:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, target)
        if has_checkpoint:
            old = out / _CHECKPOINT
            if old.exists():
                os.rename(old, staging / ".replaced-checkpoint")
            os.rename(staging / _CHECKPOINT, old)
        for name in sorted(stale - set(files)):  # an earlier run's file this run no longer writes
            path = out / name
            if path.is_file():
                path.unlink()
                self._prune(path.parent)
        manifest = {"fgjax_output_version": OUTPUT_VERSION, "kind": kind, "runs": runs}
        atomic_write_text(out / RUN_MANIFEST, json.dumps(manifest, indent=1) + "\n")
        shutil.rmtree(staging)
        foreign = self._foreign(manifest)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f", ... ({len(foreign)} files)" if len(foreign) > 3 else "")
            warnings.warn(f"'{out}' also holds files fgjax did not write, left in place: {shown}", FgjaxWarning,
                          stacklevel=2)
        return manifest

    def _prune(self, folder: Path) -> None:
        """Remove ``folder`` and its parents up to OUT while they are empty."""
        while folder != self.out and self.out in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def _foreign(self, manifest: dict[str, Any]) -> list[str]:
        """Files in OUT no run of the manifest wrote (a checkpoint no run lists counts as one entry)."""
        owned = _owned(manifest) | {RUN_MANIFEST}
        checkpoint_owned = any(f"{_CHECKPOINT}/" in run.get("files", {}) for run in manifest["runs"].values())
        found = sorted(name for p in self.out.rglob("*") if p.is_file()
                       for name in [p.relative_to(self.out).as_posix()]
                       if name not in owned and not name.startswith(f"{_CHECKPOINT}/"))
        if (self.out / _CHECKPOINT).exists() and not checkpoint_owned:
            found.insert(0, f"{_CHECKPOINT}/")
        return found

    def discard(self) -> None:
        """Remove the staging folder (a failed or refused run): OUT stays as it was."""
        shutil.rmtree(self.staging, ignore_errors=True)


@contextlib.contextmanager
def run_folder(out: str | Path, command: str, config: dict[str, Any], *, overwrite: bool = False,
               resume_checkpoint: bool = False, report: Callable[[str], None] = lambda _: None) -> Iterator[Path]:
    """Stage a job's outputs and move them into ``out`` when the block succeeds; yields the staging folder.

    Args:
      command: the job (the kind of folder it makes).
      config: the job's config as a plain dict (recorded in the manifest).
      overwrite: write into a non-empty folder that is not this kind of
        fgjax output folder, replacing an earlier run's outputs.
      resume_checkpoint: the job trains: start from OUT's checkpoint (or a
        stopped run's) so training resumes.

    On an exception the staging folder is removed and OUT is untouched; on
    ``KeyboardInterrupt`` it is kept, like after a kill, so the next run of
    the same command and config resumes from its checkpoint.
    """
    folder = RunFolder(out, command, config, overwrite=overwrite, resume_checkpoint=resume_checkpoint, report=report)
    staging = folder.open()

    def final(text: str) -> str:  # what the user sees names the folder the files end up in
        return text.replace(str(staging), str(folder.out))

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, FgjaxWarning):
            message = category(final(str(message)))
        shown(message, category, filename, lineno, file, line)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield staging
    except KeyboardInterrupt:
        raise
    except FgjaxError as exc:
        message = str(exc)
        rejects = staging / "rejects.parquet"
        if f"'{rejects}'" in message and rejects.is_file():  # what the user needs to see why: kept beside OUT
            kept = folder.out.parent / f"{folder.out.name}.failed-rejects.parquet"
            os.replace(rejects, kept)
            message = message.replace(f"'{rejects}'", f"'{kept}' (this failed run's)")
        folder.discard()
        raise type(exc)(final(message)) from None
    except BaseException:
        folder.discard()
        raise
    folder.commit()


@contextlib.contextmanager
def shared_run_folder(out: str | Path, command: str, config: dict[str, Any], *,
                      overwrite: bool = False) -> Iterator[Path]:
    """``run_folder`` for one job run by several ``jax.distributed`` processes; yields the staging folder.

    Process 0 checks OUT and makes the staging folder (the others wait for it); every process writes its
    own files there (parts, e.g. ``forgetting.parquet/part-00001.parquet``); once every process has
    left the block, process 0 moves them all into OUT with one manifest, with the guarantees of
    ``run_folder``. With processes on several machines OUT must be on a file system they share.

    Every process calls it with the same arguments. An error raised by every process at the same point
    (e.g. after ``fgjax.processes.agree``) discards the staging folder and OUT stays as it was; a process
    that fails alone leaves the others waiting in their next collective until ``jax.distributed`` stops
    them (its heartbeat), and the next run into OUT clears the staging folder.
    """
    import jax

    from fgjax.processes import agree

    lead = jax.process_index() == 0
    folder = RunFolder(out, command, config, overwrite=overwrite)
    error = None
    if lead:
        try:
            folder.open()
        except FgjaxError as exc:
            error = exc
    agree(error, f"to open the output folder '{folder.out}'")

    def final(text: str) -> str:
        return text.replace(str(folder.staging), str(folder.out))

    try:
        yield folder.staging
    except FgjaxError as exc:
        if lead:
            folder.discard()
        raise type(exc)(final(str(exc))) from None
    except BaseException:
        if lead:
            folder.discard()
        raise
    agree(None, "before the commit")  # every process has written its files
    if lead:
        try:
            folder.commit()
        except FgjaxError as exc:
            folder.discard()
            error = exc
    agree(error, f"to commit the outputs into '{folder.out}'")
