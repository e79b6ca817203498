"""Orbax checkpoints: training state, config, vocabularies, iterator position.

Layout of a checkpoint directory::

    DIR/fgjax.json              format version and what wrote it
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

Only this module and ``fgjax.serving`` read it, and neither imports training code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from fgjax.data.vocab import Vocabulary
from fgjax.errors import CheckpointError

FORMAT_VERSION = 2  # 2: train/<step> holds params (served) + state (resume); any model
_MANIFEST = "fgjax.json"


def _manifest_path(directory: Path) -> Path:
    return directory / _MANIFEST


def write_manifest(directory: str | Path) -> None:
    """Create ``DIR`` and its manifest (idempotent)."""
    from fgjax import __version__

    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {"format_version": FORMAT_VERSION, "written_by": f"fgjax {__version__}"}
    _manifest_path(directory).write_text(json.dumps(manifest, indent=2) + "\n")


def check_manifest(directory: str | Path) -> Path:
    """The checkpoint directory as an absolute path, after checking its format version."""
    directory = Path(directory).absolute()
    manifest = _manifest_path(directory)
    if not manifest.is_file():
        raise CheckpointError(f"'{directory}' is not an fgjax checkpoint (no {_MANIFEST})")
    try:
        version = json.loads(manifest.read_text())["format_version"]
    except (ValueError, KeyError):
        raise CheckpointError(f"'{manifest}': unreadable manifest, expected JSON with format_version") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"'{directory}': checkpoint format version {version}, this fgjax reads version {FORMAT_VERSION}"
        )
    return directory


def save_vocabularies(directory: str | Path, users: Vocabulary, items: Vocabulary, categories: Vocabulary | None) -> None:
    vocab_dir = Path(directory) / "vocab"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    users.save(vocab_dir / "users.parquet")
    items.save(vocab_dir / "items.parquet")
    if categories is not None:
        categories.save(vocab_dir / "categories.parquet")


def load_vocabularies(directory: str | Path) -> tuple[Vocabulary, Vocabulary, Vocabulary | None]:
    vocab_dir = Path(directory) / "vocab"
    categories = vocab_dir / "categories.parquet"
    return (
        Vocabulary.load(vocab_dir / "users.parquet"),
        Vocabulary.load(vocab_dir / "items.parquet"),
        Vocabulary.load(categories) if categories.is_file() else None,
    )


def _with_sharding(abstract: Any, sharding: jax.sharding.Sharding | None) -> Any:
    """``abstract`` with every leaf placed by ``sharding`` (None: the leaves' own shardings)."""
    if sharding is None:
        return abstract
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)


class TrainCheckpoints:
    """Step-numbered training checkpoints under ``DIR/train`` (Orbax CheckpointManager).

    Each step holds ``params`` (what a service loads), ``state`` (what a resumed
    run restores: any pytree, e.g. ``fgjax.training.loop.TrainState``) and
    ``meta`` (JSON). Saves are asynchronous; ``close()`` (or the context
    manager) waits for them.
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 2, read_only: bool = False):
        self.directory = Path(directory).absolute()
        # A reader opens with create=False and never saves; Orbax's own
        # read_only mode would log three warnings on every load.
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only)
        self._manager = ocp.CheckpointManager(
            self.directory / "train", options=options, item_names=("params", "state", "meta")
        )

    def __enter__(self) -> "TrainCheckpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, params: Any, state: Any, meta: dict[str, Any]) -> None:
        self._manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                state=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave(meta),
            ),
        )

    def restore_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self._require_step(step)
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

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
        step = self._require_step(step)
        items = {
            "params": ocp.args.StandardRestore(_with_sharding(abstract_params, sharding)),
            "meta": ocp.args.JsonRestore(),
        }
        if abstract_state is not None:
            items["state"] = ocp.args.StandardRestore(_with_sharding(abstract_state, sharding))
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, FileNotFoundError) as exc:
            raise CheckpointError(f"'{self.directory}' step {step}: cannot restore ({str(exc).splitlines()[0]})") from None
        return restored["params"], restored.get("state"), restored["meta"]

    def _require_step(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"'{self.directory}' holds no training checkpoint")
        return step

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


SERVING_VERSION = 2
_SERVING_META = "serving.json"


def save_serving(directory: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write the serving arrays (replacing older ones) under ``DIR/serving`` and their JSON metadata.

    Arrays keep their exact dtype (float64, int64 included): they are written
    and read back as NumPy, never through JAX arrays (which without x64 would
    turn float64 into float32). Orbax cannot write empty arrays, so those are
    recorded in the metadata by shape and dtype.
    """
    directory = Path(directory).absolute()
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    empty = {k: [list(v.shape), v.dtype.str] for k, v in arrays.items() if v.size == 0}
    stored = {k: v for k, v in arrays.items() if v.size}
    checkpointer = ocp.StandardCheckpointer()
    try:
        checkpointer.save(directory / "serving", stored, force=True)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()
    meta = {**meta, "serving_version": SERVING_VERSION, "arrays": sorted(arrays), "empty_arrays": empty}
    (directory / _SERVING_META).write_text(json.dumps(meta, indent=2) + "\n")


def load_serving(directory: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The serving arrays (exact dtypes, as NumPy) and metadata written by ``save_serving``.

    Raises:
      CheckpointError: the serving state is missing, of another version, or
        damaged (unreadable metadata, arrays missing or unreadable).
    """
    directory = Path(directory).absolute()
    meta_path = directory / _SERVING_META
    if not meta_path.is_file():
        raise CheckpointError(
            f"'{meta_path}' is missing: expected the serving state that fgjax train writes after training "
            "(re-run fgjax train on this output directory)"
        )
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
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise CheckpointError(
                f"'{arrays_dir}': unreadable serving arrays, expected an Orbax checkpoint of {', '.join(stored)} "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
            ) from None
        finally:
            checkpointer.close()
    for name, (shape, dtype) in empty.items():
        arrays[name] = np.zeros(tuple(shape), np.dtype(dtype))
    return {k: np.asarray(v) for k, v in arrays.items()}, meta
