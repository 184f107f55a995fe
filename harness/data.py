"""The data loopqual runs on: kernels, module sources, parameter sets, suites, expected
failures. Every file is TOML; every mistake in one is a DataError naming the file, the
entry and what to do, raised before any guest boots."""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .paths import KERNEL_DIR, REPO, SCENARIOS_DIR

KERNELS_FILE = KERNEL_DIR / "kernels.toml"
SOURCES_FILE = KERNEL_DIR / "sources.toml"
PARAMS_FILE = SCENARIOS_DIR / "params.toml"
SUITES_FILE = SCENARIOS_DIR / "suites.toml"
EXPECTED_FAILURES_FILE = KERNEL_DIR / "expected-failures.toml"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _load(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{path}: malformed TOML: {exc}") from exc


def _table(path: Path, data: dict, key: str) -> dict[str, dict]:
    table = data.get(key, {})
    if not isinstance(table, dict):
        raise DataError(f"{path}: [{key}] must be a table of named entries")
    for name, entry in table.items():
        if not _NAME.match(name):
            raise DataError(f"{path}: [{key}.{name}]: names use letters, digits, '.', '_', '-'")
        if not isinstance(entry, dict):
            raise DataError(f"{path}: [{key}.{name}] must be a table")
    return table


def _check_keys(path: Path, where: str, entry: dict, allowed: set[str], required: set[str]):
    unknown = set(entry) - allowed
    if unknown:
        raise DataError(
            f"{path}: [{where}]: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    missing = required - set(entry)
    if missing:
        raise DataError(f"{path}: [{where}]: missing key(s) {', '.join(sorted(missing))}")


def _unknown(kind: str, name: str, known: list[str], path: Path) -> DataError:
    close = fnmatch.filter(known, f"*{name}*") if name else []
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return DataError(
        f"unknown {kind} '{name}'{hint}; known: {', '.join(known)} (from {path.relative_to(REPO)})"
    )


# ---------------------------------------------------------------------------- kernels
@dataclass(frozen=True)
class Kernel:
    name: str
    description: str
    image_package: str
    headers_package: str
    build_needs: tuple[str, ...] = ()
    default: bool = False


def load_kernels(path: Path = KERNELS_FILE) -> dict[str, Kernel]:
    data = _load(path)
    out = {}
    for name, e in _table(path, data, "kernel").items():
        _check_keys(
            path, f"kernel.{name}", e,
            {"description", "image_package", "headers_package", "build_needs", "default"},
            {"image_package", "headers_package"},
        )
        out[name] = Kernel(
            name=name,
            description=e.get("description", ""),
            image_package=e["image_package"],
            headers_package=e["headers_package"],
            build_needs=tuple(e.get("build_needs", [])),
            default=bool(e.get("default", False)),
        )
    if not out:
        raise DataError(f"{path}: no [kernel.NAME] entries")
    return out


# ---------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Source:
    name: str
    description: str = ""
    package: str | None = None  # Debian package (archive sources)
    version: str | None = None
    suite: str | None = None
    base: str | None = None  # another source (patched sources)
    patches: Path | None = None  # series file
    path: Path | None = None  # a local tree
    gated: bool = False

    @property
    def kind(self) -> str:
        if self.path is not None:
            return "local"
        if self.base is not None:
            return "patched"
        return "debian"


@dataclass(frozen=True)
class Mirror:
    url: str
    components: tuple[str, ...]


def load_sources(path: Path = SOURCES_FILE) -> tuple[Mirror, dict[str, Source]]:
    data = _load(path)
    m = data.get("mirror")
    if not isinstance(m, dict) or ("url" not in m and m.get("from") != "apt"):
        raise DataError(f"{path}: needs a [mirror] table with url = \"http://...\" or from = \"apt\"")
    url = os.environ.get("LOOPQUAL_MIRROR") or m.get("url") or ""
    mirror = Mirror(url.rstrip("/"), tuple(m.get("components", ["main"])))
    out: dict[str, Source] = {}
    for name, e in _table(path, data, "source").items():
        _check_keys(
            path, f"source.{name}", e,
            {"package", "version", "suite", "base", "patches", "gated", "description"}, set(),
        )
        if "base" in e:
            if "patches" not in e:
                raise DataError(f"{path}: [source.{name}] has base but no patches (series file)")
            src = Source(
                name=name, description=e.get("description", ""), base=e["base"],
                patches=(path.parent / e["patches"]).resolve(), gated=bool(e.get("gated", False)),
            )
        else:
            missing = {"package", "version", "suite"} - set(e)
            if missing:
                raise DataError(
                    f"{path}: [source.{name}] needs package, version and suite "
                    f"(missing {', '.join(sorted(missing))}), or base + patches"
                )
            src = Source(
                name=name, description=e.get("description", ""), package=e["package"],
                version=e["version"], suite=e["suite"], gated=bool(e.get("gated", False)),
            )
        out[name] = src
    for s in out.values():
        if s.base is not None and (s.base not in out or out[s.base].base is not None):
            raise DataError(f"{path}: [source.{s.name}] base '{s.base}' must name an archive source")
    return mirror, out


def resolve_source(name: str, sources: dict[str, Source]) -> Source:
    """A named source, or a local tree given as a path (must hold v4l2loopback.c)."""
    if name in sources:
        return sources[name]
    p = Path(name).expanduser()
    if "/" in name or p.exists():
        p = p.resolve()
        if not (p / "v4l2loopback.c").is_file():
            raise DataError(f"local module source {p}: no v4l2loopback.c there")
        return Source(name=str(p), description=f"local tree {p}", path=p)
    raise _unknown("module source", name, list(sources), SOURCES_FILE)


# ---------------------------------------------------------------------------- parameter sets
@dataclass(frozen=True)
class ParamSet:
    name: str
    description: str
    module: dict = field(default_factory=dict)
    controls: dict = field(default_factory=dict)
    default: bool = False

    @property
    def all_params(self) -> dict:
        return {**self.module, **self.controls}


def load_params(path: Path = PARAMS_FILE) -> dict[str, ParamSet]:
    data = _load(path)
    known = data.get("known", {})
    mod_known = set(known.get("module_parameters", []))
    ctl_known = set(known.get("controls", []))
    if not mod_known or not ctl_known:
        raise DataError(f"{path}: [known] must list module_parameters and controls")
    out = {}
    for name, e in _table(path, data, "set").items():
        _check_keys(path, f"set.{name}", e, {"description", "module", "controls", "default"}, set())
        module, controls = e.get("module", {}), e.get("controls", {})
        validate_param_names(module, controls, mod_known, ctl_known, f"{path}: [set.{name}]")
        out[name] = ParamSet(name, e.get("description", ""), dict(module), dict(controls),
                             bool(e.get("default", False)))
    if not out:
        raise DataError(f"{path}: no [set.NAME] entries")
    return out


def validate_param_names(module: dict, controls: dict, mod_known: set, ctl_known: set,
                         where: str) -> None:
    for k, v in module.items():
        if k in ctl_known:
            raise DataError(f"{where}: '{k}' is a V4L2 control, not a module parameter: "
                            f"put it under controls")
        if k not in mod_known:
            raise DataError(f"{where}: unknown module parameter '{k}' (the kernel would ignore "
                            f"it); known: {', '.join(sorted(mod_known))}")
        if not isinstance(v, (int, str, bool)):
            raise DataError(f"{where}: module parameter '{k}' must be a number, boolean or string")
    for k, v in controls.items():
        if k in mod_known:
            raise DataError(f"{where}: '{k}' is a module parameter, not a control: "
                            f"put it under module")
        if k not in ctl_known:
            raise DataError(f"{where}: unknown control '{k}'; known: {', '.join(sorted(ctl_known))}")
        if not isinstance(v, int) or isinstance(v, bool):
            raise DataError(f"{where}: control '{k}' must be an integer")


def known_param_names(path: Path = PARAMS_FILE) -> tuple[set[str], set[str]]:
    known = _load(path).get("known", {})
    return set(known.get("module_parameters", [])), set(known.get("controls", []))


def parse_inline_params(text: str, path: Path = PARAMS_FILE) -> ParamSet:
    """An ad-hoc set from the command line: 'exclusive_caps=1,keep_format=1'."""
    mod_known, ctl_known = known_param_names(path)
    module, controls = {}, {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        if "=" not in item:
            raise DataError(f"parameter set '{text}': '{item}' is not NAME=VALUE")
        k, v = (x.strip() for x in item.split("=", 1))
        value: int | str = int(v) if re.fullmatch(r"-?\d+", v) else v
        (controls if k in ctl_known else module)[k] = value
    validate_param_names(module, controls, mod_known, ctl_known, f"parameter set '{text}'")
    name = text.replace(",", "+")
    return ParamSet(name=name, description="given on the command line", module=module,
                    controls=controls)


def resolve_params(name: str, sets: dict[str, ParamSet]) -> ParamSet:
    if name in sets:
        return sets[name]
    if "=" in name:
        return parse_inline_params(name)
    raise _unknown("parameter set", name, list(sets), PARAMS_FILE)


# ---------------------------------------------------------------------------- suites
@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    args: tuple[str, ...]
    producer: bool
    timeout_s: float
    idle_s: float
    requires: dict = field(default_factory=dict)
    not_applicable_because: str = ""
    typical_s: float = 15  # usual duration under TCG: only balances parallel guests (--jobs)

    def applies_to(self, params: ParamSet) -> str | None:
        for k, v in self.requires.items():
            if params.all_params.get(k, 0) != v:
                return f"needs {k}={v}: {self.not_applicable_because}".strip()
        return None


@dataclass(frozen=True)
class Suite:
    name: str
    kind: str  # pytest | compliance
    description: str
    paths: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    default: bool = False
    timeout_s: float = 900
    requires: dict = field(default_factory=dict)
    strict: bool = False  # compliance: run profiles even where they do not apply
    param_sets: tuple[str, ...] = ()  # run only in cells of these sets (empty: every cell)
    env: dict = field(default_factory=dict)  # environment for the scenarios (pytest suites)
    typical_s: float = 60  # usual duration under TCG: only balances parallel guests (--jobs)

    def applies_to(self, params: ParamSet) -> str | None:
        """None if the suite applies to this parameter set, else the reason it does not."""
        if self.param_sets and params.name not in self.param_sets:
            return (f"suite {self.name} runs only with parameter sets "
                    f"{', '.join(self.param_sets)} (scenarios/suites.toml)")
        for k, v in self.requires.items():
            if params.all_params.get(k, 0) != v:
                return f"suite {self.name} needs {k}={v}"
        return None


def _seconds(path: Path, where: str, entry: dict, key: str, default: float) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise DataError(f"{path}: [{where}] {key} = {value!r}: give a positive number of seconds")
    return float(value)


def load_suites(path: Path = SUITES_FILE) -> tuple[dict[str, Suite], dict[str, Profile]]:
    data = _load(path)
    profiles = {}
    for name, e in _table(path, data, "profile").items():
        _check_keys(path, f"profile.{name}", e,
                    {"description", "args", "producer", "timeout_s", "idle_s", "requires",
                     "not_applicable_because", "typical_s"}, {"timeout_s"})
        if e.get("requires") and not e.get("not_applicable_because"):
            raise DataError(f"{path}: [profile.{name}] has requires but no "
                            f"not_applicable_because: say why it cannot apply elsewhere")
        profiles[name] = Profile(
            name, e.get("description", ""), tuple(e.get("args", [])),
            bool(e.get("producer", False)), float(e["timeout_s"]),
            float(e.get("idle_s", e["timeout_s"])), dict(e.get("requires", {})),
            " ".join(str(e.get("not_applicable_because", "")).split()),
            _seconds(path, f"profile.{name}", e, "typical_s", 15),
        )
    suites = {}
    for name, e in _table(path, data, "suite").items():
        _check_keys(path, f"suite.{name}", e,
                    {"kind", "description", "paths", "profiles", "default", "timeout_s",
                     "requires", "strict", "param_sets", "env", "typical_s"}, {"kind"})
        kind = e["kind"]
        if kind not in ("pytest", "compliance"):
            raise DataError(f"{path}: [suite.{name}] kind must be 'pytest' or 'compliance'")
        for prof in e.get("profiles", []):
            if prof not in profiles:
                raise DataError(f"{path}: [suite.{name}] names unknown profile '{prof}'")
        suites[name] = Suite(
            name=name, kind=kind, description=e.get("description", ""),
            paths=tuple(e.get("paths", [])), profiles=tuple(e.get("profiles", [])),
            default=bool(e.get("default", False)), timeout_s=float(e.get("timeout_s", 900)),
            requires=dict(e.get("requires", {})), strict=bool(e.get("strict", False)),
            param_sets=tuple(e.get("param_sets", [])),
            env={str(k): str(v) for k, v in e.get("env", {}).items()},
            typical_s=_seconds(path, f"suite.{name}", e, "typical_s", 60),
        )
    return suites, profiles


# ---------------------------------------------------------------------------- expected failures
@dataclass(frozen=True)
class ExpectedFailure:
    kind: str  # scenario | compliance
    id: str  # glob: scenario node id, or "<profile>::<test name>"
    reason: str
    rule: str
    issue: str
    inherent: bool = False  # true: a property of the device type, not a pending fix
    param_sets: tuple[str, ...] = ()  # globs; empty = every set
    kernels: tuple[str, ...] = ()
    detail: str = ""  # regex the failure's text must contain (its fail: lines, or message)

    def matches(self, kind: str, item_id: str, param_set: str, kernel: str,
                text: str | None = None) -> bool:
        """Does the entry cover this item? text: the failure's text, checked against detail;
        None for an item that passes (it is listed whatever its detail would have been)."""
        # An exact id first: parametrized scenario ids hold brackets, which globs read as sets.
        if kind != self.kind or not (item_id == self.id or fnmatch.fnmatchcase(item_id, self.id)):
            return False
        if self.param_sets and not any(fnmatch.fnmatchcase(param_set, p) for p in self.param_sets):
            return False
        if self.kernels and kernel not in self.kernels:
            return False
        return text is None or not self.detail or re.search(self.detail, text) is not None


def load_expected_failures(path: Path = EXPECTED_FAILURES_FILE) -> list[ExpectedFailure]:
    if not path.exists():
        return []
    data = _load(path)
    out = []
    for i, e in enumerate(data.get("failure", []), 1):
        where = f"failure #{i}"
        if not isinstance(e, dict):
            raise DataError(f"{path}: [[failure]] #{i} must be a table")
        _check_keys(path, where, e,
                    {"kind", "id", "reason", "rule", "issue", "inherent", "param_sets", "kernels",
                     "detail"},
                    {"kind", "id", "reason", "rule", "issue"})
        if e["kind"] not in ("scenario", "compliance"):
            raise DataError(f"{path}: [{where}] kind must be 'scenario' or 'compliance'")
        if not str(e["reason"]).strip() or str(e["reason"]).lstrip().upper().startswith("TODO"):
            raise DataError(f"{path}: [{where}] needs a reason (a drafted 'TODO' is not one)")
        out.append(ExpectedFailure(
            kind=e["kind"], id=e["id"], reason=e["reason"], rule=str(e["rule"]),
            issue=str(e["issue"]), inherent=bool(e.get("inherent", False)),
            param_sets=tuple(e.get("param_sets", [])), kernels=tuple(e.get("kernels", [])),
            detail=_regex(path, where, e.get("detail", "")),
        ))
    return out


def _regex(path: Path, where: str, text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise DataError(f"{path}: [{where}] detail is not a valid regex: {exc}") from exc
    return text


def resolve_kernel(name: str, kernels: dict[str, Kernel]) -> Kernel:
    if name in kernels:
        return kernels[name]
    raise _unknown("kernel", name, list(kernels), KERNELS_FILE)
