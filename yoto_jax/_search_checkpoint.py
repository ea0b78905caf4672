"""A search's checkpoint directory: what it resumes, who may write it, and a fallback.

The directory holds

* ``yoto_jax_search.json``: the search's fingerprint (written once, when it starts):
  the configurations' values, the plan, the key and the state's structure. A search
  resumes only a directory with its own fingerprint;
* ``yoto_jax_search.lock``: locked (``fcntl.flock``) while a process runs the search,
  so a second process is refused at once; the kernel releases the lock when its
  holder exits, even by ``kill -9``;
* orbax steps ``1``, ``2``, ...: after rung r, step r holds the survivors' states and
  the history as JSON. The last two are kept: a latest step that cannot be read is
  moved aside (``<r>.unreadable``) with a warning, and the search resumes from the one
  before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from yoto_jax._population import leaf_type

MARKER = "yoto_jax_search.json"
LOCK = "yoto_jax_search.lock"
KEPT = 2
"""Checkpoints kept: the latest and the one to fall back to."""


def describe(tree: Any, values: bool) -> list[str]:
    """One line per leaf of ``tree``: its path, dtype and shape, e.g.
    ``['weights'] float32[9,2]``, and with ``values`` the SHA-256 of its bytes."""
    lines = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        line = f"{jax.tree_util.keystr(path) or 'root'} {leaf_type(leaf)}"
        if values:
            line += " sha256:" + hashlib.sha256(np.ascontiguousarray(leaf).tobytes()).hexdigest()
        lines.append(line)
    return lines


def key_record(key: jax.Array) -> list[Any]:
    """A typed ``key`` as JSON: its implementation's name and its raw bits."""
    return [str(jax.random.key_impl(key)), np.asarray(jax.random.key_data(key)).tolist()]


def _differences(saved: dict, now: dict) -> list[str]:
    """The fields whose values differ, each with both values (only the differing lines
    of a description)."""
    found = []
    for field in sorted(set(saved) | set(now)):
        old, new = saved.get(field), now.get(field)
        if old == new:
            continue
        if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
            pairs = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
            if all(isinstance(a, str) for pair in pairs for a in pair):
                old, new = [a for a, _ in pairs], [b for _, b in pairs]
        found.append(f"{field}: saved {old}, now {new}")
    return found


def _check_directory(path: str) -> None:
    """Creates ``path``; raises when it is a file or holds files that are not a search's."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"checkpoint_dir {path} is a file; pass a directory.")
    os.makedirs(path, exist_ok=True)
    entries = sorted(set(os.listdir(path)) - {LOCK})
    if entries and MARKER not in entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ValueError(
            f"checkpoint_dir {path} holds files that are not a yoto_jax search checkpoint "
            f"({shown}); pass a new or empty directory."
        )


@contextlib.contextmanager
def _lock(path: str) -> Iterator[None]:
    """Holds ``path``'s lock file while the search runs; raises if another process
    (or another search in this one) holds it."""
    import fcntl  # POSIX

    lock_path = os.path.join(path, LOCK)
    with open(lock_path, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            raise RuntimeError(
                f"checkpoint_dir {path} is in use by {holder}, which holds {lock_path}: two "
                "searches cannot share a directory. Wait for that search to finish, or pass "
                "another directory."
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        file.flush()
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _check_fingerprint(path: str, fingerprint: dict) -> None:
    """Writes ``fingerprint`` to a new directory's marker; raises when the marker holds
    another search's, naming what differs."""
    marker = os.path.join(path, MARKER)
    if not os.path.exists(marker):
        with open(marker + ".tmp", "w") as file:
            json.dump({"fingerprint": fingerprint}, file)
        os.replace(marker + ".tmp", marker)  # atomic: a marker is whole or absent
        return
    with open(marker) as file:
        saved = json.load(file)["fingerprint"]
    differences = _differences(saved, fingerprint)
    if differences:
        raise ValueError(
            f"checkpoint_dir {path} holds another search; pass a new directory, or the "
            "arguments it was started with. What differs:\n  " + "\n  ".join(differences)
        )


@contextlib.contextmanager
def checkpoint_manager(directory: str | os.PathLike | None, fingerprint: dict) -> Iterator[Any]:
    """An orbax ``CheckpointManager`` on ``directory`` for the search ``fingerprint``,
    locked for this process (None without a directory). Closing it waits for a save
    still being written."""
    if directory is None:
        yield None
        return
    import orbax.checkpoint as ocp  # optional: only checkpointing needs orbax

    path = os.path.abspath(os.fspath(directory))
    _check_directory(path)
    with _lock(path):
        _check_fingerprint(path, fingerprint)
        options = ocp.CheckpointManagerOptions(max_to_keep=KEPT)
        with ocp.CheckpointManager(path, options=options) as manager:
            yield manager


def save(manager: Any, step: int, record: dict, states: Any) -> None:
    """Checkpoint ``step``: ``states`` with orbax, ``record`` as JSON."""
    import orbax.checkpoint as ocp

    manager.save(
        step,
        args=ocp.args.Composite(
            population=ocp.args.StandardSave(states), search=ocp.args.JsonSave(record)
        ),
    )


def restore(manager: Any, abstract_states: Callable[[dict], Any]) -> tuple[dict, Any] | None:
    """The latest readable checkpoint as ``(record, states)``, or None if there is none;
    ``abstract_states(record)`` gives the shapes and placement of its states. Unreadable
    later steps are moved aside with a warning; raises if no kept step can be read."""
    import orbax.checkpoint as ocp

    failures = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            record = manager.restore(step, args=ocp.args.Composite(search=ocp.args.JsonRestore()))
            record = record.search
            target = ocp.args.StandardRestore(abstract_states(record))
            states = manager.restore(step, args=ocp.args.Composite(population=target))
        except (OSError, ValueError, KeyError) as error:  # what orbax raises for a damaged step
            failures.append((step, f"{type(error).__name__}: {error}"))
            continue
        for failed, reason in failures:
            aside = os.path.join(os.fspath(manager.directory), f"{failed}.unreadable")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(os.path.join(os.fspath(manager.directory), str(failed)), aside)
            warnings.warn(
                f"the checkpoint of rung {failed} could not be read ({reason[:300]}); moved it "
                f"to {aside} and resumed from rung {step}.",
                stacklevel=3,
            )
        if failures:
            manager.reload()
        return record, states.population
    if failures:
        raise ValueError(
            f"no checkpoint in {manager.directory} can be read: "
            + "; ".join(f"rung {step}: {reason[:300]}" for step, reason in failures)
            + ". Delete the directory to start the search over."
        )
    return None
