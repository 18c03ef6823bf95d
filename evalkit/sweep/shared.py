"""Shared training stages across workers: ``TrainContext.cache`` stored beside the records.

A method shares work between the rate points of one scene through ``TrainContext.cache`` (4DGS-CC:
its coarse stage, under ``"4dgs-cc/coarse-stage"``, with the 4DGS configuration and seed inside the
entry so a method checks it matches). In one process that is a dict. Under a sweep, the worker's
scene cache (``SceneCache``) gives each scene a ``SharedStages`` mapping instead, which

* stores every entry a method sets as an artefact file,
  ``<results>/<dataset>/<scene>/_shared/<key>.pt`` (``torch.save``, written atomically), and adds
  ``"artefact": <its path relative to the results>`` to a dict entry, which a method can name in
  its record's ``reused`` (4DGS-CC does);
* on a miss, loads the artefact another worker (another GPU, another node) stored; when none is
  stored it claims the stage (``<key>.pt.claim``, as jobs are claimed) so that one worker computes
  it while the others wait for the file, then fan out; a worker whose claim goes stale (dead,
  or past its time limit) no longer holds the others;
* a lost or unreadable artefact is a miss: the stage is computed again and stored again.

Entries that cannot be pickled stay in memory only.
"""
from __future__ import annotations

import io
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Callable, Iterator

from evalkit.codec.container import atomic_write_bytes
from evalkit.results import path_component
from evalkit.sweep.claims import Claim, try_claim

STAGE_TIME_LIMIT_S = 2 * 3600.0  # a stage claim older than this is stale (its worker is gone)
POLL_S = 1.0


class SharedStages(MutableMapping):
    def __init__(self, folder: Path, root: Path, device: str | None = None, initial: dict | None = None,
                 log: Callable[[str], None] = lambda msg: None, wait_s: float = STAGE_TIME_LIMIT_S) -> None:
        self.folder, self.root, self.device = Path(folder), Path(root), device
        self._mem: dict[str, Any] = dict(initial or {})
        self._claims: dict[str, Claim] = {}
        self.log = log
        self.wait_s = wait_s

    def path(self, key: str) -> Path:
        return self.folder / f"{path_component(key)}.pt"

    def _load(self, key: str) -> Any:
        import torch

        p = self.path(key)
        try:
            value = torch.load(p, map_location=self.device or "cpu", weights_only=False)
        except FileNotFoundError:
            raise KeyError(key) from None
        except Exception as exc:  # a torn or foreign file: recompute
            self.log(f"shared stage {key}: artefact {p} unreadable ({type(exc).__name__}: {exc}); recomputing")
            raise KeyError(key) from None
        self.log(f"shared stage {key}: loaded {p}")
        return value

    def __getitem__(self, key: str) -> Any:
        if key in self._mem:
            return self._mem[key]
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                value = self._load(key)
            except KeyError:
                pass
            else:
                self._mem[key] = value
                return value
            if key in self._claims:
                raise KeyError(key)
            claim, holder = try_claim(self.path(key).with_suffix(".pt.claim"), time_limit_s=STAGE_TIME_LIMIT_S)
            if claim is not None:  # ours to compute; released when the method stores it (or the job ends)
                self._claims[key] = claim
                try:
                    value = self._load(key)  # stored between our miss and our claim?
                except KeyError:
                    raise KeyError(key) from None
                self._mem[key] = value
                self._release(key)
                return value
            if time.monotonic() > deadline:
                raise KeyError(key)
            self.log(f"shared stage {key}: computed by {holder.describe() if holder else 'another worker'}; waiting")
            time.sleep(POLL_S)

    def __setitem__(self, key: str, value: Any) -> None:
        import torch

        p = self.path(key)
        rel = str(p.relative_to(self.root)) if p.is_relative_to(self.root) else str(p)
        if isinstance(value, dict):
            value = {**value, "artefact": rel}
        self._mem[key] = value
        try:
            buf = io.BytesIO()
            torch.save(value, buf)
            atomic_write_bytes(p, buf.getvalue())
            self.log(f"shared stage {key}: stored {p} ({buf.tell() / 1e6:.1f} MB)")
        except Exception as exc:  # not picklable: shared in this process only
            self.log(f"shared stage {key}: kept in memory only ({type(exc).__name__}: {exc})")
        finally:
            self._release(key)

    def __delitem__(self, key: str) -> None:
        self._mem.pop(key, None)
        self.path(key).unlink(missing_ok=True)

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._mem, *(p.stem for p in self.folder.glob("*.pt"))]))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def _release(self, key: str) -> None:
        claim = self._claims.pop(key, None)
        if claim is not None:
            claim.release()

    def release_claims(self) -> None:
        """Release the stages this worker claimed and did not store (its job failed before)."""
        for key in list(self._claims):
            self._release(key)


class SceneCache(dict):
    """A worker's ``scene_cache`` for ``runner.run_job``: as the plain dict it replaces (one scene in
    memory at a time, ``{"scene": Scene, "shared": dict}`` per (dataset, scene)), but the ``shared``
    dict of each scene becomes a ``SharedStages`` stored under the results folder."""

    def __init__(self, opts) -> None:
        super().__init__()
        self.opts = opts

    def __setitem__(self, key, value) -> None:
        if (isinstance(key, tuple) and len(key) == 2 and isinstance(value, dict)
                and isinstance(value.get("shared"), dict)):
            root = Path(self.opts.out)
            value = {**value, "shared": SharedStages(root / key[0] / key[1] / "_shared", root,
                                                     device=_map_device(self.opts.device), initial=value["shared"])}
        super().__setitem__(key, value)

    def release_claims(self) -> None:
        for v in self.values():
            if isinstance(v, dict) and isinstance(v.get("shared"), SharedStages):
                v["shared"].release_claims()


def _map_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

