"""A sweep's grid: the TOML file `asrq sweep` reads, validated, and expanded into points.

    name = "rtn-vs-gptq"                                # optional; the file's stem otherwise
    models = ["tiny.en"]
    data = "../shared/speech/librispeech-test-other"    # scored clips (refs.tsv or LibriSpeech layout)
    calib = "sample_audio"                              # calibration folder (never overlaps data)
    seeds = [0, 1]                                      # calibration draws
    limit = 0                                           # score only the first N clips (0: all)
    n_calib = 32                                        # calibration clips per draw
    cpus_per_point = 1                                  # threads of one point, and its Ray CPU request
    memory_gb = 3                                       # a point's Ray memory request
    [[methods]]
    method = "rtn"
    bits = [4, 8]                                       # a number or a list
    group_size = 64                                     # a number or a list
    preset = "encoder 8-bit"                            # optional layer table preset
    layers = "layers.json"                              # optional per-layer rows on top
    # any other key is the method's own setting (alpha, damping, symmetric, ...)

Every (model, method entry, bits, group size, seed) is one point; a point's key hashes everything that
decides its result, so a finished point is recognised when the sweep runs again.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

from engine.errors import UserError
from engine.quant.layer_table import PRESETS, load_overrides
from engine.quant.registry import get_method, make_config
from engine.speech.samples import SAMPLE_DIR
from engine.whisper.models import available_models

GRID_KEYS = {"name", "models", "data", "calib", "seeds", "limit", "n_calib", "cpus_per_point", "memory_gb", "methods"}
ENTRY_AXES = ("bits", "group_size")  # method keys that may be lists (the other settings are single values)
ENTRY_TABLE_KEYS = ("method", "preset", "layers")


class GridError(UserError):
    """The grid file cannot be read or names something impossible."""


@dataclass(frozen=True)
class Point:
    """One quantize-and-evaluate run of the grid. settings: the method's config fields (bits, group size
    and the entry's own); overrides: the per-layer rows of the entry's layers file, or None."""

    model: str
    method: str
    settings: dict
    seed: int
    data: str
    calib: str
    limit: int
    n_calib: int
    threads: int
    preset: str | None = None
    overrides: list | None = None

    @property
    def bits(self) -> int:
        return self.settings.get("bits", 32)

    @property
    def group_size(self) -> int:
        return self.settings.get("group_size", -1)

    @property
    def key(self) -> str:
        """What decides the result (not the thread count): the same point in another sweep has the same key."""
        identity = {k: v for k, v in asdict(self).items() if k != "threads"}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]

    def label(self) -> str:
        if self.method == "fp32":
            return f"{self.model} fp32"
        extra = f" {self.preset}" if self.preset else ""
        extra += " +layers" if self.overrides else ""
        return f"{self.model} {self.method} {self.bits}b g{self.group_size}{extra} seed {self.seed}"


@dataclass(frozen=True)
class Grid:
    name: str
    points: tuple[Point, ...]
    baselines: tuple[Point, ...]  # each model's full precision on the same clips (deltas and their intervals)
    cpus_per_point: int = 1
    memory_gb: float = 3.0


def _as_list(value, what: str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise GridError(f"{what} is an empty list.")
    return values


def _folder(value: object, key: str, base: Path) -> str:
    """A folder as given (relative to the current directory), else relative to the grid file; "sample_audio"
    also names the app's own synthetic clips from anywhere."""
    if not isinstance(value, str) or not value:
        raise GridError(f"'{key}' must be a folder path.")
    for candidate in (Path(value), base / value):
        if candidate.is_dir():
            return str(candidate.resolve())
    if value == "sample_audio" and SAMPLE_DIR.is_dir():
        return str(SAMPLE_DIR.resolve())
    raise GridError(f"'{key}' folder {value} does not exist (looked in the current directory and beside the grid file).")


def _positive_int(value: object, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GridError(f"'{key}' must be a whole number of at least {minimum}, not {value!r}.")
    return value


def _entry_points(entry: dict, index: int, base: Path) -> list[tuple[str, dict, str | None, list | None]]:
    """(method, settings, preset, overrides) for every bits x group size of one [[methods]] entry."""
    if not isinstance(entry, dict) or "method" not in entry:
        raise GridError(f"methods entry {index + 1} needs a 'method' key.")
    method = entry["method"]
    get_method(method)  # an unknown method is refused with the list of known ones
    preset = entry.get("preset")
    if preset is not None and preset not in PRESETS:
        raise GridError(f"methods entry {index + 1}: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    overrides = None
    if entry.get("layers"):
        layers = Path(entry["layers"])
        layers = layers if layers.is_file() else base / layers
        overrides = load_overrides(layers)
    fixed = {k: v for k, v in entry.items() if k not in ENTRY_TABLE_KEYS and k not in ENTRY_AXES}
    axes = {k: _as_list(entry[k], f"methods entry {index + 1} '{k}'") for k in ENTRY_AXES if k in entry}
    combos = []
    for values in product(*axes.values()):
        # The method refuses a setting it does not have, or a bad value, now; the point keeps every setting
        # (defaults included), so its key changes when a default does.
        settings = make_config(method, **fixed, **dict(zip(axes, values))).to_dict()
        settings.pop("method")
        combos.append((method, settings, preset, overrides))
    return combos


def parse_grid(text: str, name: str = "sweep", base: Path = Path(".")) -> Grid:
    """The grid of a TOML text; base: the grid file's folder (relative folders are also looked up there)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"The grid file is not valid TOML: {exc}.") from exc
    unknown = set(raw) - GRID_KEYS
    if unknown:
        raise GridError(f"Unknown grid key(s) {', '.join(sorted(unknown))}; the keys are {', '.join(sorted(GRID_KEYS))}.")
    for key in ("models", "data", "methods"):
        if key not in raw:
            raise GridError(f"The grid file needs '{key}'.")
    known = {m["name"] for m in available_models()}
    models = _as_list(raw["models"], "'models'")
    for model in models:
        if model not in known:
            raise GridError(f"Unknown model {model!r}; choose one of {', '.join(sorted(known))}.")
    data = _folder(raw["data"], "data", base)
    calib = _folder(raw.get("calib", "sample_audio"), "calib", base)
    seeds = [_positive_int(s, "seeds", 0) for s in _as_list(raw.get("seeds", [0]), "'seeds'")]
    limit = _positive_int(raw.get("limit", 0), "limit", 0)
    n_calib = _positive_int(raw.get("n_calib", 32), "n_calib")
    cpus = _positive_int(raw.get("cpus_per_point", 1), "cpus_per_point")
    memory_gb = raw.get("memory_gb", 3.0)
    if isinstance(memory_gb, bool) or not isinstance(memory_gb, (int, float)) or memory_gb <= 0:
        raise GridError(f"'memory_gb' must be a positive number, not {memory_gb!r}.")
    entries = _as_list(raw["methods"], "'methods'")
    combos = []
    for i, entry in enumerate(entries):
        try:
            combos += _entry_points(entry, i, base)
        except GridError:
            raise
        except UserError as exc:  # the method's, its config's or the layers file's own sentence, with the entry
            raise GridError(f"methods entry {i + 1}: {exc}") from exc
    common = dict(data=data, calib=calib, limit=limit, n_calib=n_calib, threads=cpus)
    points = tuple(Point(model, method, settings, seed, preset=preset, overrides=overrides, **common)
                   for model in models for (method, settings, preset, overrides) in combos for seed in seeds)
    if len({p.key for p in points}) != len(points):
        raise GridError("The grid names the same point twice (two method entries with the same settings).")
    baselines = tuple(Point(model, "fp32", {}, 0, **common) for model in models)
    return Grid(raw.get("name", name), points, baselines, cpus, float(memory_gb))


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise GridError(f"Cannot read the grid file {path}: {exc.strerror or exc}.") from exc
    return parse_grid(text, path.stem, path.resolve().parent)
