"""The results store: one JSON record per benchmark job, and loaders into pandas.

Layout: ``<results>/<dataset>/<scene>/<method>/<rate>.json`` with the job's bitstream
beside it as ``<rate>.evk``. A record is written atomically, so a crashed or killed job
never leaves a half-written JSON that a later report would choke on.

Units: sizes are bytes; ``size_mb`` columns are MB = 10^6 bytes (not MiB).
Missing metrics are ``None`` in JSON and NaN in DataFrames, never zero; the reason is in
``metrics_missing``.
"""
from __future__ import annotations

import functools
import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from evalkit.codec.container import atomic_write_bytes

SCHEMA_VERSION = 1
METRIC_NAMES: tuple[str, ...] = ("psnr", "ssim", "dssim", "ms_ssim", "lpips_alex", "lpips_vgg")
TIMING_NAMES: tuple[str, ...] = ("train_s", "encode_s", "decode_s", "eval_s", "stages_s", "coding_setup_s")
STATUSES: tuple[str, ...] = ("ok", "failed")
MB = 1_000_000  # evalkit's MB is 10^6 bytes everywhere


class RecordError(ValueError):
    """A record is malformed. The message names the file (or '<memory>') and the problem."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{source}: {problem}")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


EVAL_SPLITS = ("test", "val")  # the views a run scores: the protocol's test views, or val for tuning runs


@dataclass
class Record:
    """Everything one (method, dataset, scene, rate) job produced. See module docstring."""

    method: str
    dataset: str
    scene: str
    rate: str
    status: str = "ok"  # "ok" | "failed"
    error: str | None = None
    rate_params: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    # True: ``config`` is the complete configuration the model trained with (``TrainedModel.
    # effective_config``); False (records made before it was stored): the spec's configuration.
    config_effective: bool = False
    quick: bool = False
    iterations: int = 0
    resolution: list[int] | None = None  # [W, H] of the evaluated test views
    resolution_scale: float = 1.0
    seed: int = 0
    # How the training schedule was chosen: "protocol", "quick", "--iterations N" or "--quick
    # --iterations N" (None in records made before it was stored). A resumed sweep compares it.
    schedule: str | None = None
    # The views scored: "test" (the protocol) or "val" (a tuning run; reports and gates leave it out)
    eval_split: str = "test"
    metrics: dict[str, float | None] = field(default_factory=lambda: {m: None for m in METRIC_NAMES})
    metrics_missing: dict[str, str] = field(default_factory=dict)
    per_frame: list[dict[str, Any]] = field(default_factory=list)
    size: dict[str, Any] | None = None  # {"total_bytes": int, "components": {name: bytes}}
    bitstream: str | None = None  # path relative to the results root
    num_primitives: int | None = None
    timings: dict[str, float | None] = field(default_factory=dict)
    fps: dict[str, Any] | None = None
    # Quality of the method's intermediate models (``Model.quality_stages``), label -> metrics, in
    # the order the lossy steps apply: where the PSNR between training and the bitstream goes.
    stage_metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    reused: dict[str, Any] | None = None
    env: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_now_iso)
    notes: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    # -- conversion ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A validated, JSON-ready dict (numpy scalars/arrays and Paths converted).

        Raises RecordError when a field has the wrong type or holds NaN/infinity
        (a missing metric is None, never NaN).
        """
        out = {"schema_version": self.schema_version,
               **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "schema_version"}}
        if out["eval_split"] == "test":  # the protocol's views: the key only on tuning runs (older readers)
            del out["eval_split"]
        # Always write every metric key so a reader sees null, not an absent key.
        out["metrics"] = {**{m: None for m in METRIC_NAMES}, **(self.metrics or {})}
        try:
            out = json.loads(json.dumps(out, default=_json_default, allow_nan=False))
        except ValueError as exc:
            raise RecordError("<record>", f"holds NaN or infinity ({exc}); use None for a missing value") from None
        except TypeError as exc:
            raise RecordError("<record>", f"holds a value JSON cannot store: {exc}") from None
        _validate(out, "<record>")
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "<memory>") -> "Record":
        _validate(data, source)
        kwargs = dict(data)
        kwargs["metrics"] = {**{m: None for m in METRIC_NAMES}, **kwargs.get("metrics", {})}
        if "resolution_scale" in kwargs:
            kwargs["resolution_scale"] = float(kwargs["resolution_scale"])
        return cls(**kwargs)

    # -- convenience --------------------------------------------------------------
    @property
    def draws_nothing(self) -> bool:
        """Every test render was the scene's background alone (``env.render_check.empty``, set by
        the runner, ``evalkit.metrics.flat_render``): a collapsed model, whatever its PSNR says."""
        return bool(((self.env or {}).get("render_check") or {}).get("empty"))

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.method, self.dataset, self.scene, self.rate)

    @property
    def run(self) -> tuple[str, str, str, str, int]:
        """The job key and the seed: one run of a job."""
        return (*self.key, self.seed)

    @property
    def total_bytes(self) -> int | None:
        return None if self.size is None else self.size.get("total_bytes")

    @property
    def timed_on(self) -> str | None:
        """The device its FPS (and times) were measured on: the GPU's name, "CPU", or None when it
        has no FPS. Timings are comparable only between records timed on the same device."""
        fps = self.fps or {}
        if fps.get("fps") is None:
            return None
        return fps.get("gpu_name") or ("CPU" if fps.get("device") == "cpu" else fps.get("device") or "unknown device")

    @property
    def timings_contended(self) -> bool:
        """Its times / FPS were taken on a shared GPU or host (``env.contention.contended``: the
        runner's samples, ``evalkit.metrics.contention``, or an annotation of a record made before
        the runner sampled), or by a sweep worker that shared its GPU by design
        (``env.executor.gpu_shared_by_design``: ``--jobs-per-gpu`` above 1), seen by the samples or not."""
        env = self.env or {}
        return bool((env.get("contention") or {}).get("contended")
                    or (env.get("executor") or {}).get("gpu_shared_by_design"))


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays come straight from metric code; store them as plain JSON.
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# What every note, warning, report and gate says of a record whose ``draws_nothing`` is true.
DRAWS_NOTHING = "draws nothing: every test render is the background alone (training collapsed?)"


# -- validation ------------------------------------------------------------------------
_REQUIRED = ("schema_version", "method", "dataset", "scene", "rate", "status")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _type_name(v: Any) -> str:
    return type(v).__name__


def _validate(data: Any, src: str | Path) -> None:
    def bad(problem: str) -> RecordError:
        return RecordError(src, problem)

    if not isinstance(data, dict):
        raise bad(f"a record must be a JSON object, got {_type_name(data)}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise bad(f"missing required key(s) {missing}")
    known = {f.name for f in fields(Record)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise bad(f"unknown key(s) {unknown} (schema version {SCHEMA_VERSION} knows {sorted(known)})")
    if not _is_int(data["schema_version"]):
        raise bad(f"'schema_version' must be an int, got {_type_name(data['schema_version'])}")
    if data["schema_version"] != SCHEMA_VERSION:
        raise bad(f"schema_version {data['schema_version']} is not supported (this evalkit reads {SCHEMA_VERSION})")

    def want(key: str, ok: bool, what: str) -> None:
        if key in data and not ok:
            raise bad(f"'{key}' must be {what}, got {_type_name(data[key])} {data[key]!r:.60}")

    for k in ("method", "dataset", "scene", "rate"):
        want(k, isinstance(data[k], str) and bool(data[k]), "a non-empty string")
    want("status", data["status"] in STATUSES, f"one of {list(STATUSES)}")
    g = data.get
    want("error", g("error") is None or isinstance(g("error"), str), "a string or null")
    want("rate_params", isinstance(g("rate_params"), dict), "an object")
    want("config", isinstance(g("config"), dict), "an object")
    want("config_effective", isinstance(g("config_effective", False), bool), "a bool")
    want("quick", isinstance(g("quick"), bool), "a bool")
    want("iterations", _is_int(g("iterations")), "an int")
    want("seed", _is_int(g("seed")), "an int")
    want("schedule", g("schedule") is None or isinstance(g("schedule"), str), "a string or null")
    want("eval_split", g("eval_split", "test") in EVAL_SPLITS, " or ".join(repr(x) for x in EVAL_SPLITS))
    want("resolution_scale", _is_num(g("resolution_scale")), "a number")
    want("resolution", g("resolution") is None or (
        isinstance(g("resolution"), list) and len(g("resolution")) == 2
        and all(_is_int(x) for x in g("resolution"))), "[W, H] (two ints) or null")
    want("metrics", isinstance(g("metrics"), dict) and all(
        isinstance(k, str) and (v is None or _is_num(v)) for k, v in g("metrics", {}).items()),
        "an object of metric name -> number or null")
    want("metrics_missing", isinstance(g("metrics_missing"), dict) and all(
        isinstance(v, str) for v in g("metrics_missing", {}).values()), "an object of metric name -> reason")
    if "per_frame" in data:
        if not isinstance(data["per_frame"], list):
            raise bad(f"'per_frame' must be a list, got {_type_name(data['per_frame'])}")
        for i, row in enumerate(data["per_frame"]):
            if not isinstance(row, dict) or not isinstance(row.get("name"), str):
                raise bad(f"per_frame[{i}] must be an object with a string 'name'")
            for k, v in row.items():
                if k != "name" and not (v is None or _is_num(v)):
                    raise bad(f"per_frame[{i}].{k} must be a number or null, got {v!r:.40}")
    size = g("size")
    want("size", size is None or isinstance(size, dict), "an object or null")
    if isinstance(size, dict):
        if not (_is_int(size.get("total_bytes")) and size["total_bytes"] >= 0):
            raise bad("'size.total_bytes' must be a non-negative int")
        comps = size.get("components", {})
        if not isinstance(comps, dict) or not all(_is_int(v) and v >= 0 for v in comps.values()):
            raise bad("'size.components' must be an object of name -> non-negative int bytes")
    if data["status"] == "ok" and size is None:
        raise bad("status 'ok' needs 'size' (the bitstream's byte count)")
    want("bitstream", g("bitstream") is None or isinstance(g("bitstream"), str), "a string or null")
    want("num_primitives", g("num_primitives") is None or _is_int(g("num_primitives")), "an int or null")
    want("timings", isinstance(g("timings"), dict) and all(
        v is None or _is_num(v) for v in g("timings", {}).values()), "an object of name -> seconds or null")
    fps = g("fps")
    want("fps", fps is None or isinstance(fps, dict), "an object or null")
    if isinstance(fps, dict):
        for k in ("fps", "ms_per_frame"):
            if fps.get(k) is not None and not _is_num(fps[k]):
                raise bad(f"'fps.{k}' must be a number or null")
        if fps.get("frames") is not None and not _is_int(fps["frames"]):
            raise bad("'fps.frames' must be an int or null")
    want("stage_metrics", isinstance(g("stage_metrics"), dict) and all(
        isinstance(m, dict) and all(v is None or _is_num(v) for v in m.values())
        for m in g("stage_metrics", {}).values()), "an object of stage -> {metric: number or null}")
    want("reused", g("reused") is None or isinstance(g("reused"), dict), "an object or null")
    want("env", isinstance(g("env"), dict), "an object")
    want("notes", isinstance(g("notes"), list) and all(isinstance(n, str) for n in g("notes", [])),
         "a list of strings")
    want("created", isinstance(g("created"), str), "an ISO time string")
    if isinstance(g("created"), str):
        try:
            datetime.fromisoformat(data["created"])
        except ValueError:
            raise bad(f"'created' is not an ISO time: {data['created']!r}") from None


# -- files -----------------------------------------------------------------------------
def path_component(name: str) -> str:
    """A method / rate name as a portable folder or file name: a variant's ':' ("4dgs-cc:wo-nv")
    and any other character outside [A-Za-z0-9._-] become '_' (Windows and many sync and transfer
    tools reject ':'). The record itself keeps the real name. ("a:b" and "a_b" share a folder:
    do not give a method and a variant such names.)"""
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in name)


def record_path(out_dir: str | Path, dataset: str, scene: str, method: str, rate: str) -> Path:
    return Path(out_dir) / dataset / scene / path_component(method) / f"{path_component(rate)}.json"


def bitstream_path(out_dir: str | Path, dataset: str, scene: str, method: str, rate: str) -> Path:
    return record_path(out_dir, dataset, scene, method, rate).with_suffix(".evk")


def write_record(record: Record, path: str | Path) -> Path:
    """Validate, serialise, then write atomically: either the whole new file or nothing."""
    path = Path(path)
    try:
        text = json.dumps(record.to_dict(), indent=2, allow_nan=False)
    except RecordError as exc:
        raise RecordError(path, exc.problem) from None
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))
    return path


def read_record(path: str | Path) -> Record:
    path = Path(path)
    if not path.is_file():
        raise RecordError(path, "no such record file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(path, f"not valid JSON: {exc}") from None
    return Record.from_dict(data, source=path)


def json_plain(x: Any) -> Any:
    """JSON-normalised (tuples -> lists, keys sorted): compares a spec's or a record's settings as stored."""
    return json.loads(json.dumps(x, sort_keys=True, default=str))


def record_files(results_dir: str | Path) -> list[Path]:
    """Record JSONs in the store layout (dataset/scene/method/rate.json), skipping temp files."""
    root = Path(results_dir)
    return sorted(p for p in root.glob("*/*/*/*.json") if not p.name.startswith("."))


def _is_record(path: Path) -> bool:
    """Whether a JSON file in the store layout is a record (not a dataset's camera file or a spec)."""
    try:
        read_record(path)
        return True
    except (RecordError, OSError):
        return False


def _nested_stores_hint(root: Path, limit: int = 20) -> str:
    """For a folder without records: '; these folders below it have records: a, b' naming the
    folders one or two levels down that hold stores (e.g. ``seed1/`` or ``h200/seed1/``), at most
    ``limit`` (then ', ...'); '' when there are none. It looks no deeper, so pointing a command at a
    data folder or a repository stays cheap."""
    found: set[Path] = set()
    for pattern in ("*/*/*/*/*.json", "*/*/*/*/*/*.json"):
        for p in sorted(root.glob(pattern)):
            if p.name.startswith(".") or p.parents[3] in found or not _is_record(p):
                continue
            found.add(p.parents[3])
            if len(found) > limit:
                break
    if not found:
        return ""
    shown = sorted(found)[:limit]
    return "; these folders below it have records: " + ", ".join(map(str, shown)) + (", ..." if len(found) > limit else "")


def read_records(results_dir: str | Path) -> list[Record]:
    return read_stores([results_dir])[0]


# What makes two records runs of one experiment besides the job key (as ``runner.settings_changed``):
# seeds of a job are averaged (``evalkit report``) or compared (``evalkit.bench.seed_spread``) only
# when these agree. The code version is not among them (a copy of the tree can name a stale commit).
RUN_SETTINGS = ("quick", "schedule", "eval_split", "iterations", "resolution_scale", "config", "rate_params")


def settings_diff(a: Record, b: Record) -> list[str]:
    """The ``RUN_SETTINGS`` in which two records of one job differ. Configuration keys that are the
    method's ``speed_options`` (e.g. CUDA graphs on or off: the same computation) do not count, as in
    ``runner.settings_changed``."""
    fast = speed_options(a.method)

    def plain(r: Record, name: str) -> Any:
        v = json_plain(getattr(r, name))
        return {k: x for k, x in v.items() if k not in fast} if name == "config" and isinstance(v, dict) else v

    return [name for name in RUN_SETTINGS if plain(a, name) != plain(b, name)]


@functools.lru_cache(maxsize=None)
def speed_options(method: str) -> frozenset[str]:
    """The registered method's ``speed_options``; none for a method this install cannot load."""
    from evalkit.methods.registry import get_method  # imported here: the registry imports every method

    try:
        return frozenset(get_method(method).speed_options)
    except Exception:  # noqa: BLE001 - unknown, or a plugin that fails to load: every key counts
        return frozenset()


def _is_seed_folder(p: Path) -> bool:
    n = p.name[4:]
    return p.name.startswith("seed") and n.isascii() and n.isdigit() and p.is_dir()


def seed_stores(root: Path) -> list[Path]:
    """The ``seed<N>`` folders directly below ``root`` whose files in the store layout include a
    record (``evalkit run --seed 0 --seed 1 ...`` writes one store per seed there), by seed number."""
    return sorted((p for p in root.glob("seed*") if _is_seed_folder(p) and any(map(_is_record, record_files(p)))),
                  key=lambda p: int(p.name[4:]))


def _stores(roots: Sequence[str | Path], seeds: bool) -> list[tuple[Path, list[Path]]]:
    """(store, its record files) for each root; with ``seeds``, a root without records of its own
    whose ``seed<N>`` folders hold records stands for those stores."""
    out = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise RecordError(root, "results directory does not exist")
        files = record_files(root)
        per_seed = seed_stores(root) if seeds else []
        if per_seed and files:  # ambiguous: neither alone is the whole set of runs
            raise RecordError(root, f"holds records of its own ({files[0]}, ...) and seed stores "
                                    f"({', '.join(p.name for p in per_seed)}): move its records into a seed<N>/ "
                                    "store (their seed), or give the stores to read")
        out += [(p, record_files(p)) for p in per_seed] or [(root, files)]
    return out


def read_stores(roots: Sequence[str | Path], seeds: bool = False
                ) -> tuple[list[Record], dict[tuple[str, str, str, str, int], Path]]:
    """The records of one or more stores (e.g. one per machine) and the file each came from, by
    ``Record.run`` (job key and seed). A job (method, dataset, scene, rate) recorded twice, in one store
    or across two, is an error naming both; with ``seeds``, records of one job with different seeds
    are kept (a report averages them) if they agree in ``RUN_SETTINGS``; the same seed twice is an error,
    and a root that holds only ``seed<N>`` stores (``seed_stores``) is read as those stores."""
    records, first, in_store, runs = [], {}, {}, {}
    for root, files in _stores(roots, seeds):
        if not files and (hint := _nested_stores_hint(root)):  # e.g. a folder of seed folders: not an empty store
            raise RecordError(root, "no records in the store layout (<dataset>/<scene>/<method>/<rate>.json)" + hint
                              + " (give them all to average their seeds, or one of them)")
        for p in files:
            r = read_record(p)
            if r.key in first:
                job = "/".join(r.key)
                # A second record: in the same store (any seed), of the same run, or of the job at all
                # when seeds are not read.
                clash = in_store.get((root, r.key)) or runs.get(r.run) or (None if seeds else first[r.key])
                if clash is not None:
                    clash_p, clash_r = clash
                    seeds_note = (f"; seeds {clash_r.seed} and {r.seed}: this reader takes one seed per job (`evalkit "
                                  "report` averages seeds; `python -m evalkit.bench.seed_spread` compares them)"
                                  if clash_r.seed != r.seed else f" with the same seed {r.seed}")
                    raise RecordError(p, f"a second record of job {job} (the other: {clash_p}); keep one"
                                         + (f", the runner writes {record_path(root, r.dataset, r.scene, r.method, r.rate)}"
                                            if clash_p.is_relative_to(root) else " (two stores given)") + seeds_note)
                other_p, other = first[r.key]
                if diff := settings_diff(other, r):
                    raise RecordError(p, f"job {job} with seed {r.seed} ran with other settings than seed {other.seed} "
                                         f"in {other_p} ({', '.join(diff)} differ): not seeds of one experiment, so "
                                         "they are not averaged; report them apart")
            else:
                first[r.key] = (p, r)
            runs[r.run] = in_store[(root, r.key)] = (p, r)
            records.append(r)
    return records, {run: p for run, (p, _) in runs.items()}


# -- DataFrames ------------------------------------------------------------------------
RECORD_COLUMNS: tuple[str, ...] = (
    "method", "dataset", "scene", "rate", "status", "quick", "eval_split", *METRIC_NAMES,
    "size_bytes", "size_mb", "num_primitives", "fps", "ms_per_frame", "timed_on",
    *TIMING_NAMES, "timings_contended", "draws_nothing", "iterations", "seed", "error")


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def records_to_frame(records: list[Record]) -> pd.DataFrame:
    """One row per record; metric means as columns (NaN when missing).

    ``dssim`` falls back to (1 - ms_ssim) / 2 when only MS-SSIM was stored.
    """
    rows = []
    for r in records:
        size = r.total_bytes
        fps = r.fps or {}
        metrics = {m: _nan(r.metrics.get(m)) for m in METRIC_NAMES}
        if math.isnan(metrics["dssim"]) and not math.isnan(metrics["ms_ssim"]):
            metrics["dssim"] = (1.0 - metrics["ms_ssim"]) / 2.0  # D-SSIM's definition (4DGaussians)
        rows.append({
            "method": r.method, "dataset": r.dataset, "scene": r.scene, "rate": r.rate,
            "status": r.status, "quick": r.quick, "eval_split": r.eval_split,
            **metrics,
            "size_bytes": _nan(size), "size_mb": _nan(size) / MB,
            "num_primitives": _nan(r.num_primitives),
            "fps": _nan(fps.get("fps")), "ms_per_frame": _nan(fps.get("ms_per_frame")),
            "timed_on": r.timed_on,
            **{t: _nan(r.timings.get(t)) for t in TIMING_NAMES},
            "timings_contended": r.timings_contended,
            "draws_nothing": r.draws_nothing,
            "iterations": r.iterations, "seed": r.seed, "error": r.error,
        })
    return pd.DataFrame(rows, columns=list(RECORD_COLUMNS))


def per_frame_frame(records: list[Record]) -> pd.DataFrame:
    """One row per (record, test frame): method/dataset/scene/rate, frame name, time, metrics."""
    rows = []
    for r in records:
        for fr in r.per_frame:
            rows.append({"method": r.method, "dataset": r.dataset, "scene": r.scene, "rate": r.rate,
                         "frame": fr["name"], "time": _nan(fr.get("time")),
                         **{k: _nan(v) for k, v in fr.items() if k not in ("name", "time")}})
    base = ["method", "dataset", "scene", "rate", "frame", "time"]
    df = pd.DataFrame(rows)
    return df if rows else pd.DataFrame(columns=base)


def components_frame(records: list[Record]) -> pd.DataFrame:
    """One row per (record, bitstream component): bytes and MB (10^6 bytes)."""
    rows = []
    for r in records:
        if r.size is None:
            continue
        for name, nbytes in r.size.get("components", {}).items():
            rows.append({"method": r.method, "dataset": r.dataset, "scene": r.scene, "rate": r.rate,
                         "component": name, "bytes": int(nbytes), "mb": nbytes / MB})
    return pd.DataFrame(rows, columns=["method", "dataset", "scene", "rate", "component", "bytes", "mb"])


def load_records(results_dir: str | Path) -> pd.DataFrame:
    return records_to_frame(read_records(results_dir))


def load_per_frame(results_dir: str | Path) -> pd.DataFrame:
    return per_frame_frame(read_records(results_dir))


def load_components(results_dir: str | Path) -> pd.DataFrame:
    return components_frame(read_records(results_dir))


# -- environment -----------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit(directory: str | Path | None = None) -> str | None:
    """HEAD of the git checkout holding ``directory`` (default: this package), None if not a repo."""
    cwd = Path(directory) if directory is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


CODE_PATHS = ("evalkit", "methods", "datasets", "pyproject.toml")  # what decides a run's numbers


def git_dirty(directory: str | Path | None = None) -> bool | None:
    """Whether the code of that checkout (``CODE_PATHS``, untracked files included; results and
    reports do not count) differs from HEAD, so a record made from uncommitted code says so next
    to ``git_commit``; None if not a repository. Takes no git lock."""
    cwd = Path(directory) if directory is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--",
                              *(f":/{p}" for p in CODE_PATHS)], cwd=cwd,
                             capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


EXECUTOR_ENV = "EVALKIT_EXECUTOR_INFO"  # JSON set by a sweep's worker (evalkit.sweep.worker)


def executor_info() -> dict[str, Any]:
    """Which executor, sweep, host, worker and GPU ran the job (``env.executor``): what a sweep's
    worker put in ``$EVALKIT_EXECUTOR_INFO``, else an in-process run on this host."""
    try:
        info = json.loads(os.environ.get(EXECUTOR_ENV) or "{}")
    except ValueError:
        info = {}
    return {"name": "inline", "host": platform.node(), **(info if isinstance(info, dict) else {})}


def collect_env() -> dict[str, Any]:
    """Versions of what produced a record, and what ran it (``executor``). Reads package metadata
    (does not import torch)."""
    from evalkit import __version__

    return {
        "evalkit": __version__,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "gsplat": _version("gsplat"),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "executor": executor_info(),
    }


__all__ = [
    "EVAL_SPLITS", "MB", "METRIC_NAMES", "RECORD_COLUMNS", "Record", "RecordError", "SCHEMA_VERSION",
    "bitstream_path", "collect_env", "components_frame", "git_commit", "git_dirty", "load_components",
    "load_per_frame", "load_records", "per_frame_frame", "read_record", "read_records",
    "path_component", "record_files", "record_path", "records_to_frame", "write_record",
]

