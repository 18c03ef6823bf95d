"""The benchmark protocol as data: ``datasets/*.toml`` and ``methods/*.toml`` read into dataclasses.

Users add a scene or a rate point by editing a spec, not code. The spec folder is, in order:
``EVALKIT_SPECS_DIR``; the repository root beside the ``evalkit`` package (a source checkout or
an editable install, where users edit them); the copy shipped inside the package
(``evalkit/_specs``, made by the build from the same files) for an installed evalkit.
"""
from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.methods.base import RatePoint


class SpecError(Exception):
    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")


def _has_specs(root: Path) -> bool:
    return (root / "datasets").is_dir() and any((root / "methods").glob("*.toml"))


def specs_dir() -> Path:
    env = os.environ.get("EVALKIT_SPECS_DIR")
    if env:
        root = Path(env)
        if not _has_specs(root):
            raise SpecError(root, "EVALKIT_SPECS_DIR: no datasets/ and methods/ spec folders here")
        return root
    here = Path(__file__).resolve().parent
    for root in (here.parent, here / "_specs"):  # the checkout's top level, else the installed copy
        if _has_specs(root):
            return root
    raise SpecError(here.parent, "no datasets/ and methods/ spec folders here nor in the installed package; "
                                 "set EVALKIT_SPECS_DIR to the folder that holds them")


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpecError(path, "spec file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, f"malformed TOML: {exc}") from None


def _require(d: dict, key: str, path: Path) -> Any:
    if key not in d:
        raise SpecError(path, f"missing required key {key!r}")
    return d[key]


@dataclass
class DatasetSpec:
    key: str  # file stem, e.g. "dnerf"
    name: str
    format: str
    folder: str
    scenes: list[str]
    download: str = ""
    background: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    resolution_scale: float | None = None  # None: the loader's default for the format
    quick_resolution_scale: float = 0.25  # extra scale under --quick
    table_metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim", "lpips_vgg"])
    generated: bool = False
    split: str | None = None  # HyperNeRF: "vrig" or "interp", the split the protocol names
    notes: str = ""
    paper: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # method -> rate -> numbers
    scene_paper: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)  # scene -> method -> rate
    scene_reference: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)
    path: Path | None = None

    def report_spec(self) -> dict[str, Any]:
        """The dict shape ``evalkit.report.build_report`` reads."""
        return {"name": self.name, "table_metrics": self.table_metrics, "paper": self.paper,
                "scenes": {s: {"paper": self.scene_paper.get(s, {}),
                               "reference": self.scene_reference.get(s, {})} for s in self.scenes}}


@dataclass
class MethodSpec:
    key: str
    name: str
    title: str
    paper: str
    defaults: dict[str, Any]
    datasets: dict[str, dict[str, Any]]
    rates: dict[str, dict[str, Any]]  # rate name -> params (may hold per-dataset sub-tables)
    quick: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)  # per-job limits for executors (evalkit.sweep.resources)
    variant_options: dict[str, Any] = field(default_factory=dict)  # a variant's settings: over every table
    uncompressed: bool = False
    path: Path | None = None

    def config(self, dataset: str, scene: str) -> dict[str, Any]:
        """defaults <- datasets.<dataset> <- datasets.<dataset>.scenes.<scene> <- the variant's options
        (a variant is the method with its settings changed, on every dataset and scene)."""
        cfg = copy.deepcopy(self.defaults)
        ds = copy.deepcopy(self.datasets.get(dataset, {}))
        scenes = ds.pop("scenes", {})
        cfg.update(ds)
        cfg.update(scenes.get(scene, {}))
        cfg.update(copy.deepcopy(self.variant_options))
        return cfg

    def rate_points(self, dataset: str, names: list[str] | None = None) -> list[RatePoint]:
        """Rate points for a dataset; a rate's sub-table named after the dataset overrides its params."""
        out = []
        for rname, params in self.rates.items():
            p = {k: v for k, v in params.items() if not isinstance(v, dict)}
            p.update(params.get(dataset, {}))
            out.append(RatePoint(rname, p))
        if names:
            known = {r.name for r in out}
            missing = [n for n in names if n not in known]
            if missing:
                raise SpecError(self.path or self.key, f"unknown rate point(s) {missing}; "
                                                      f"this method has {sorted(known)}")
            out = [r for r in out if r.name in names]
        return out


def load_dataset_spec(key: str, root: Path | None = None) -> DatasetSpec:
    root = root or specs_dir()
    path = root / "datasets" / f"{key}.toml"
    if not path.is_file():
        raise SpecError(path, f"unknown dataset {key!r}; known: {', '.join(list_specs('datasets', root))}")
    d = _read_toml(path)
    return DatasetSpec(
        key=key, name=d.get("name", key), format=_require(d, "format", path), folder=d.get("folder", key),
        scenes=list(d.get("scenes", [])), download=d.get("download", ""),
        background=list(d.get("background", [1.0, 1.0, 1.0])), resolution_scale=d.get("resolution_scale"),
        quick_resolution_scale=float(d.get("quick_resolution_scale", 0.25)),
        table_metrics=list(d.get("table_metrics", ["psnr", "ssim", "lpips_vgg"])),
        generated=bool(d.get("generated", False)), split=d.get("split"), notes=d.get("notes", ""), paper=d.get("paper", {}),
        scene_paper=d.get("scene_paper", {}), scene_reference=d.get("scene_reference", {}), path=path)


def load_method_spec(key: str, root: Path | None = None) -> MethodSpec:
    """``key`` is a spec name (``methods/<key>.toml``) or ``<name>:<variant>``, a variant declared
    in that spec's ``[variants.<variant>]`` table (e.g. an ablation): the same method and rate
    points with the variant's options over the spec's defaults and its dataset and scene tables,
    recorded under its own name. A variant's own ``[variants.<variant>.rates.<r>]`` tables replace
    the spec's rate points (e.g. one ``default`` point for a variant that is not rate-scalable)."""
    root = root or specs_dir()
    base, _, variant = key.partition(":")
    path = root / "methods" / f"{base}.toml"
    if not path.is_file():
        raise SpecError(path, f"unknown method {base!r}; known: {', '.join(list_specs('methods', root))}")
    d = _read_toml(path)
    rates = d.get("rates") or {"default": {}}
    defaults = dict(d.get("defaults", {}))
    title = d.get("title", base)
    options: dict[str, Any] = {}
    if variant:
        variants = d.get("variants", {})
        if variant not in variants:
            raise SpecError(path, f"unknown variant {variant!r} of method {base!r}; "
                                  f"known: {', '.join(sorted(variants)) or 'none'}")
        options = dict(variants[variant])
        title = f"{title} ({options.pop('title', variant)})"
        if "rates" in options:
            rates = options.pop("rates")
            if not (isinstance(rates, dict) and rates and all(isinstance(v, dict) for v in rates.values())):
                raise SpecError(path, f"variant {variant!r}: 'rates' must be one or more "
                                      f"[variants.{variant}.rates.<name>] tables")
    return MethodSpec(key=key, name=key if variant else d.get("name", key), title=title, paper=d.get("paper", ""),
                      defaults=defaults, datasets=d.get("datasets", {}), rates=rates,
                      quick=d.get("quick", {}), resources=dict(d.get("resources", {})), uncompressed=bool(d.get("uncompressed", False)) and not variant,
                      variant_options=options, path=path)


def method_variants(key: str, root: Path | None = None) -> list[str]:
    """``<name>:<variant>`` for every variant the spec declares."""
    path = (root or specs_dir()) / "methods" / f"{key}.toml"
    return [f"{key}:{v}" for v in sorted(_read_toml(path).get("variants", {}))] if path.is_file() else []


def list_specs(kind: str, root: Path | None = None) -> list[str]:
    root = root or specs_dir()
    return sorted(p.stem for p in (root / kind).glob("*.toml"))


def all_report_specs(root: Path | None = None) -> dict[str, dict[str, Any]]:
    return {k: load_dataset_spec(k, root).report_spec() for k in list_specs("datasets", root)}
