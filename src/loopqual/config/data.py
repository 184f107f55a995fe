"""The data loopqual runs on: kernels, module sources, parameter sets, suites, expected
failures. Every file is TOML; every mistake in one is a DataError naming the file, the
entry and what to do, raised before any guest boots."""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError

from loopqual.common.errors import DataError
from loopqual.common.paths import KERNEL_DIR, REPO, SCENARIOS_DIR
from loopqual.config.schema import Entry as _Entry
from loopqual.config.schema import explain
from loopqual.config.schema import shown as _shown

KERNELS_FILE = KERNEL_DIR / "kernels.toml"
SOURCES_FILE = KERNEL_DIR / "sources.toml"
PARAMS_FILE = SCENARIOS_DIR / "params.toml"
SUITES_FILE = SCENARIOS_DIR / "suites.toml"
EXPECTED_FAILURES_FILE = KERNEL_DIR / "expected-failures.toml"
SPLATS_FILE = KERNEL_DIR / "splats.toml"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def load_toml(path: Path, tables: set[str]) -> dict:
    """The file's TOML, refusing top-level keys other than `tables` (a typo such as
    [suites.x] would otherwise be ignored without a word)."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{path}: malformed TOML: {exc}") from exc
    unknown = sorted(set(data) - tables)
    if unknown:
        raise DataError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; "
                        f"this file holds {', '.join(f'[{t}]' for t in sorted(tables))}")
    return data


def named_table(path: Path, data: dict, key: str) -> dict[str, dict]:
    table = data.get(key, {})
    if not isinstance(table, dict):
        raise DataError(f"{path}: [{key}] must be a table of named entries ([{key}.NAME])")
    for name, entry in table.items():
        if not _NAME.match(name):
            raise DataError(f"{path}: [{key}.{name}]: names use letters, digits, '.', '_', '-'")
        if not isinstance(entry, dict):
            raise DataError(f"{path}: [{key}.{name}] must be a table, not {_shown(entry)}")
    return table


_Seconds = Annotated[float, Field(gt=0, description="a positive number of seconds")]
_Strings = Annotated[list[str], Field(description='a list of strings, e.g. ["a", "b"]')]
_Conditions = Annotated[dict[str, int | str | bool],
                        Field(description="a table of parameter values, e.g. { exclusive_caps = 1 }")]


def _schema_error(path: Path, where: str, model: type[BaseModel], entry: dict,
                  exc: ValidationError) -> DataError:
    """One line for the first problem: file, [entry] key, the value given, what is expected."""
    key, problem = explain(model, entry, exc)
    if problem.startswith("unknown key"):
        return DataError(f"{path}: [{where}]: unknown key {key}{problem.removeprefix('unknown key')}")
    if problem.startswith("="):
        return DataError(f"{path}: [{where}] {key} {problem}")
    return DataError(f"{path}: [{where}] {key}: {problem}")


def validate_entry(path: Path, where: str, model: type[_Entry], entry: dict):
    try:
        return model.model_validate(entry)
    except ValidationError as exc:
        raise _schema_error(path, where, model, entry, exc) from None


def unknown_name(kind: str, name: str, known: list[str], path: Path) -> DataError:
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
    suite: str | None = None  # an archive kernel: the suite serving it (None: installed on the host)
    base_suite: str | None = None  # the suite its build root is made of (default: suite)
    version: str | None = None  # a pin: the image package's Debian version (None: the newest)
    debug: bool = False  # kind = "debug" in kernels.toml: built by loopqual (debugkernel.py)
    boot_timeout_s: int = 240  # to the guest runner's first sign of life (kernels.toml)
    time_factor: float = 1.0  # a cell here takes this many times a Debian kernel's (kernels.toml)
    guest_udev: bool = True  # False: the guest boots without udev's coldplug (kernels.toml)
    guest_append: str = ""  # added to the guest kernel's command line (kernels.toml)

    @property
    def kind(self) -> str:
        """host: installed on this machine with apt, built for on it; archive: downloaded
        from its suite into the cache, built for in a build root of that suite; debug: built
        by loopqual from Debian's kernel source (kernel/debug-kernels.toml)."""
        return "debug" if self.debug else "archive" if self.suite else "host"

    @property
    def arg(self) -> str:
        """How --kernel names exactly this kernel: NAME, or NAME@VERSION for a pinned one."""
        return f"{self.name}@{self.version}" if self.version else self.name


class _KernelEntry(_Entry):
    description: str = ""
    image_package: str | None = Field(default=None, description="a Debian package name (a string)")
    headers_package: str | None = Field(default=None, description="a Debian package name (a string)")
    build_needs: list[str] = Field(default=[], description='a list of Debian packages, e.g. ["dwarves"]')
    default: bool = False
    suite: str | None = Field(default=None, description='a Debian suite (a string), e.g. "sid"')
    base_suite: str | None = Field(default=None, description='a Debian suite (a string), e.g. "trixie"')
    version: str | None = Field(default=None, description='a Debian version (a string), e.g. "7.3.4-1~bpo13+1"')
    kind: Literal["debug"] | None = Field(default=None, description='"debug" (a kernel loopqual '
                                          "builds, described in kernel/debug-kernels.toml)")
    boot_timeout_s: int = Field(default=Kernel.boot_timeout_s, ge=30, le=3600,
                                description="seconds, a whole number from 30 to 3600")
    time_factor: float = Field(default=Kernel.time_factor, ge=1, le=100,
                               description="a number from 1 to 100")
    guest_udev: bool = True
    guest_append: str = Field(default="", pattern=r"^(?:[A-Za-z0-9_.-]+=[A-Za-z0-9_.,-]+ ?)*$",
                              description='kernel parameters, e.g. "kfence.sample_interval=10000"')


_SUITE = re.compile(r"^[a-z][a-z0-9-]*$")
_VERSION = re.compile(r"^(?:\d+:)?[0-9][A-Za-z0-9.+~-]*$")


def load_kernels(path: Path = KERNELS_FILE) -> dict[str, Kernel]:
    data = load_toml(path, {"kernel"})
    out = {}
    for name, e in named_table(path, data, "kernel").items():
        where = f"kernel.{name}"
        k = validate_entry(path, where, _KernelEntry, e)
        if k.kind == "debug":
            stray = [f for f in ("image_package", "headers_package", "build_needs", "suite",
                                 "base_suite", "version") if f in e]
            if stray:
                raise DataError(f"{path}: [{where}] {stray[0]} belongs to a Debian kernel; a "
                                "debug kernel is described in kernel/debug-kernels.toml")
            out[name] = Kernel(name=name, description=k.description, image_package="",
                               headers_package="", default=k.default, debug=True,
                               boot_timeout_s=k.boot_timeout_s, time_factor=k.time_factor,
                               guest_udev=k.guest_udev, guest_append=k.guest_append.strip())
            continue
        if k.image_package is None:
            raise DataError(f"{path}: [{where}] image_package: missing; expected a Debian "
                            'package name (a string), or kind = "debug"')
        if k.suite is None:
            stray = [f for f in ("base_suite", "version") if f in e]
            if stray:
                raise DataError(f"{path}: [{where}] {stray[0]} belongs to a kernel from an archive "
                                f"suite: add suite = \"...\" or remove {stray[0]}")
            if k.headers_package is None:
                raise DataError(f"{path}: [{where}] headers_package: missing; expected a Debian "
                                "package name (a string)")
        else:
            for f, value in (("suite", k.suite), ("base_suite", k.base_suite)):
                if value is not None and not _SUITE.match(value):
                    raise DataError(f"{path}: [{where}] {f} = {_shown(value)}: expected a Debian "
                                    "suite name, e.g. \"sid\" or \"trixie-backports\"")
            if k.version is not None and not _VERSION.match(k.version):
                raise DataError(f"{path}: [{where}] version = {_shown(k.version)}: expected a "
                                "Debian version, e.g. \"7.3.4-1~bpo13+1\"")
        out[name] = Kernel(name=name, description=k.description, image_package=k.image_package,
                           headers_package=k.headers_package or "linux-headers-amd64",
                           build_needs=tuple(k.build_needs), default=k.default, suite=k.suite,
                           base_suite=k.base_suite, version=k.version,
                           boot_timeout_s=k.boot_timeout_s, time_factor=k.time_factor,
                           guest_udev=k.guest_udev, guest_append=k.guest_append.strip())
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


class _MirrorEntry(_Entry):
    url: str | None = Field(default=None, description='a URL, e.g. "http://deb.debian.org/debian"')
    from_: Literal["apt"] | None = Field(default=None, alias="from")
    components: _Strings = ["main"]


class _SourceEntry(_Entry):
    package: str | None = None
    version: str | None = None
    suite: str | None = None
    base: str | None = None
    patches: str | None = Field(default=None, description="a series file path (a string), "
                                                          "relative to this file")
    gated: bool = False
    description: str = ""


def load_sources(path: Path = SOURCES_FILE) -> tuple[Mirror, dict[str, Source]]:
    data = load_toml(path, {"mirror", "source"})
    m = data.get("mirror")
    if not isinstance(m, dict):
        raise DataError(f"{path}: needs a [mirror] table with url = \"http://...\" or from = \"apt\"")
    mirror_entry = validate_entry(path, "mirror", _MirrorEntry, m)
    if mirror_entry.url is None and mirror_entry.from_ is None:
        raise DataError(f"{path}: [mirror] needs url = \"http://...\" or from = \"apt\"")
    url = os.environ.get("LOOPQUAL_MIRROR") or mirror_entry.url or ""
    mirror = Mirror(url.rstrip("/"), tuple(mirror_entry.components))
    out: dict[str, Source] = {}
    for name, e in named_table(path, data, "source").items():
        s = validate_entry(path, f"source.{name}", _SourceEntry, e)
        if s.base is not None:
            if s.patches is None:
                raise DataError(f"{path}: [source.{name}] has base but no patches (series file)")
            stray = [k for k in ("package", "version", "suite") if k in e]
            if stray:
                raise DataError(f"{path}: [source.{name}] is built from base '{s.base}': "
                                f"{', '.join(stray)} belong to archive sources; remove them")
            src = Source(name=name, description=s.description, base=s.base,
                         patches=(path.parent / s.patches).resolve(), gated=s.gated)
        else:
            missing = {"package", "version", "suite"} - set(e)
            if missing:
                raise DataError(
                    f"{path}: [source.{name}] needs package, version and suite "
                    f"(missing {', '.join(sorted(missing))}), or base + patches"
                )
            if s.patches is not None:
                raise DataError(f"{path}: [source.{name}] has patches but no base source")
            src = Source(name=name, description=s.description, package=s.package,
                         version=s.version, suite=s.suite, gated=s.gated)
        out[name] = src
    for s in out.values():
        if s.base is not None and (s.base not in out or out[s.base].base is not None):
            raise DataError(f"{path}: [source.{s.name}] base '{s.base}' must name an archive source")
    return mirror, out


def default_modules(sources: dict[str, Source]) -> list[Source]:
    """What qualify and build run without --module: the series' stock base, then patched."""
    patched = sources["patched"]
    return [sources[patched.base], patched] if patched.base else [patched]


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
    raise unknown_name("module source", name, list(sources), SOURCES_FILE)


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


class _KnownEntry(_Entry):
    module_parameters: list[str] = Field(min_length=1, description="a non-empty list of module "
                                         'parameter names, e.g. ["exclusive_caps"]')
    controls: list[str] = Field(min_length=1, description="a non-empty list of V4L2 control "
                                'names, e.g. ["keep_format"]')


class _SetEntry(_Entry):
    description: str = ""
    module: dict[str, int | str | bool] = Field(
        default={}, description="a table of module parameters, e.g. { exclusive_caps = 1 }")
    controls: dict[str, int] = Field(
        default={}, description="a table of integer V4L2 controls, e.g. { keep_format = 1 }")
    default: bool = False


def _known(path: Path, data: dict) -> _KnownEntry:
    known = data.get("known")
    if not isinstance(known, dict):
        raise DataError(f"{path}: [known] must list module_parameters and controls")
    return validate_entry(path, "known", _KnownEntry, known)


def load_params(path: Path = PARAMS_FILE) -> dict[str, ParamSet]:
    data = load_toml(path, {"known", "set"})
    known = _known(path, data)
    mod_known, ctl_known = set(known.module_parameters), set(known.controls)
    out = {}
    for name, e in named_table(path, data, "set").items():
        ps = validate_entry(path, f"set.{name}", _SetEntry, e)
        validate_param_names(ps.module, ps.controls, mod_known, ctl_known, f"{path}: [set.{name}]")
        out[name] = ParamSet(name, ps.description, dict(ps.module), dict(ps.controls), ps.default)
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
    known = _known(path, load_toml(path, {"known", "set"}))
    return set(known.module_parameters), set(known.controls)


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
    raise unknown_name("parameter set", name, list(sets), PARAMS_FILE)


# ---------------------------------------------------------------------------- suites
@dataclass(frozen=True)
class NotApplicable:
    """Where a suite or profile is not run, and why (shown in the report): parameter values
    (`when`; a parameter a set does not give counts as 0) and/or parameter sets (globs)."""
    because: str
    when: dict = field(default_factory=dict)
    param_sets: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()  # compliance profiles: only when run by these tools

    def matches(self, params: ParamSet, tool: str | None = None) -> bool:
        if self.param_sets and not any(fnmatch.fnmatchcase(params.name, g) for g in self.param_sets):
            return False
        if self.tools and tool not in self.tools:
            return False
        return all(params.all_params.get(k, 0) == v for k, v in self.when.items())

    def reason(self) -> str:
        where = [f"{k}={v}" for k, v in self.when.items()]
        if self.param_sets:
            where.append(f"parameter set {'/'.join(self.param_sets)}")
        if self.tools:
            where.append(f"tool {'/'.join(self.tools)}")
        return f"not applicable with {', '.join(where)}: {self.because}"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    args: tuple[str, ...]
    producer: bool
    timeout_s: float
    idle_s: float
    not_applicable: tuple[NotApplicable, ...] = ()
    typical_s: float = 15  # usual duration under TCG: only balances parallel guests (--jobs)

    def applies_to(self, params: ParamSet, tool: str | None = None) -> str | None:
        """None if the profile applies (run by the host's v4l2-compliance, or by tool)."""
        return next((x.reason() for x in self.not_applicable if x.matches(params, tool)), None)


@dataclass(frozen=True)
class Tool:
    """A v4l2-compliance other than the host's: it runs from a Debian root of its suite
    (made with mmdebstrap, cached), chrooted in the guest."""
    name: str
    description: str
    suite: str  # the Debian suite the root is made of
    packages: tuple[str, ...]  # what the root holds beyond the essential set
    program: str = "v4l2-compliance"


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
    # starts the desktop programs (browsers, OBS): the lane planner keeps cells running such
    # suites apart in time (src/loopqual/run/qualify.py stagger)
    heavy: bool = False
    not_applicable: tuple[NotApplicable, ...] = ()
    tool: str | None = None  # compliance: a [tool.NAME] instead of the host's v4l2-compliance
    # False: the suite judges the harness or the kernel, not the module (a cell that runs only
    # such suites is not gated: its failures are its purpose, checked by whoever asked for it)
    judges_module: bool = True
    # (tree, module file, LOOPQUAL_* variable): a test module built on the host for each
    # kernel before its guest boots, its path given to the scenarios in that variable
    kmod: tuple[str, str, str] | None = None

    def applies_to(self, params: ParamSet) -> str | None:
        """None if the suite applies to this parameter set, else the reason it does not."""
        if self.param_sets and params.name not in self.param_sets:
            return (f"suite {self.name} runs only with parameter sets "
                    f"{', '.join(self.param_sets)} (scenarios/suites.toml)")
        for k, v in self.requires.items():
            if params.all_params.get(k, 0) != v:
                return f"suite {self.name} needs {k}={v}"
        return next((f"suite {self.name} {x.reason()}" for x in self.not_applicable
                     if x.matches(params)), None)


class _NotApplicableEntry(_Entry):
    when: _Conditions = {}
    param_sets: _Strings = []
    tools: _Strings = []
    because: str = Field(description="a string: why the suite or profile cannot apply there")


_NotApplicableList = Annotated[
    list[_NotApplicableEntry],
    Field(description='a list of tables, e.g. [{ when = { exclusive_caps = 0 }, because = "..." }]')]


class _ProfileEntry(_Entry):
    description: str = ""
    args: list[str] = Field(default=[], description='a list of v4l2-compliance arguments, e.g. ["-s"]')
    producer: bool = False
    timeout_s: _Seconds
    idle_s: _Seconds | None = Field(default=None, description="a positive number of seconds")
    not_applicable: _NotApplicableList = []
    typical_s: _Seconds = 15


class _KmodEntry(_Entry):
    path: str = Field(description='a kernel module tree in this repository, e.g. "tests/kmod"')
    ko: str = Field(description='the module file it makes, e.g. "loopqual_detectors.ko"')
    env: str = Field(description='the LOOPQUAL_* variable that gives the scenarios its path')


class _SuiteEntry(_Entry):
    kind: Literal["pytest", "compliance"] = Field(description='"pytest" or "compliance"')
    description: str = ""
    paths: list[str] = Field(default=[], description='a list of scenario paths, e.g. ["scenarios/contract"]')
    profiles: list[str] = Field(default=[], description='a list of profile names, e.g. ["output"]')
    default: bool = False
    timeout_s: _Seconds = 900
    requires: _Conditions = {}
    strict: bool = False
    param_sets: list[str] = Field(default=[], description='a list of parameter set names, e.g. ["ec1"]')
    env: dict[str, str] = Field(default={}, description='a table of strings, e.g. { NAME = "value" }')
    typical_s: _Seconds = 60
    heavy: bool = False
    not_applicable: _NotApplicableList = []
    tool: str | None = Field(default=None, description='a tool name from [tool.NAME], e.g. "sid"')
    judges_module: bool = True
    kmod: _KmodEntry | None = None


class _ToolEntry(_Entry):
    description: str = ""
    suite: str = Field(description='a Debian suite (a string), e.g. "sid"')
    packages: list[str] = Field(description='a list of Debian packages, e.g. ["v4l-utils"]',
                                min_length=1)


def load_tools(path: Path | None = None) -> dict[str, Tool]:
    """The [tool.NAME] tables of scenarios/suites.toml: other v4l2-compliance builds."""
    path = path or SUITES_FILE
    data = load_toml(path, {"suite", "profile", "tool"})
    tools = {}
    for name, e in named_table(path, data, "tool").items():
        t = validate_entry(path, f"tool.{name}", _ToolEntry, e)
        tools[name] = Tool(name, t.description, t.suite, tuple(t.packages))
    return tools


def _exclusions(path: Path, where: str, entries: list[_NotApplicableEntry],
                known: set[str]) -> tuple[NotApplicable, ...]:
    out = []
    for i, x in enumerate(entries):
        because = " ".join(x.because.split())
        if not because:
            raise DataError(f"{path}: [{where}] not_applicable[{i}].because is empty: say why it "
                            f"cannot apply there")
        if not x.when and not x.param_sets:
            raise DataError(f"{path}: [{where}] not_applicable[{i}] needs when = {{ PARAMETER = "
                            f"VALUE }} or param_sets = [...]: where it does not apply")
        _known_conditions(path, where, f"not_applicable[{i}].when", x.when, known)
        out.append(NotApplicable(because, dict(x.when), tuple(x.param_sets), tuple(x.tools)))
    return tuple(out)


def _known_conditions(path: Path, where: str, key: str, conditions: dict, known: set[str]) -> None:
    for k in conditions:
        if k not in known:
            raise DataError(f"{path}: [{where}] {key} names '{k}', which is neither a module "
                            f"parameter nor a control (known: {', '.join(sorted(known))})")


def load_suites(path: Path = SUITES_FILE, params_path: Path = PARAMS_FILE
                ) -> tuple[dict[str, Suite], dict[str, Profile]]:
    data = load_toml(path, {"suite", "profile", "tool"})
    tools = load_tools(path)
    mod_known, ctl_known = known_param_names(params_path)
    known = mod_known | ctl_known
    profiles = {}
    for name, e in named_table(path, data, "profile").items():
        where = f"profile.{name}"
        p = validate_entry(path, where, _ProfileEntry, e)
        profiles[name] = Profile(
            name, p.description, tuple(p.args), p.producer, p.timeout_s,
            p.idle_s if p.idle_s is not None else p.timeout_s,
            _exclusions(path, where, p.not_applicable, known), p.typical_s)
    for prof in profiles.values():
        for x in prof.not_applicable:
            unknown = [t for t in x.tools if t not in tools]
            if unknown:
                raise DataError(f"{path}: [profile.{prof.name}] not_applicable names unknown tool "
                                f"'{unknown[0]}'; known: {', '.join(tools) or 'none'}")
    suites = {}
    raw = named_table(path, data, "suite")
    for name, e in raw.items():
        where = f"suite.{name}"
        if isinstance(e, dict) and "like" in e:
            like = e["like"]
            base = raw.get(like) if isinstance(like, str) else None
            if not isinstance(base, dict) or "like" in base:
                raise DataError(f"{path}: [{where}] like = {like!r}: name a suite of this file "
                                f"that is not itself like another (known: {', '.join(raw)})")
            e = {**base, **{k: v for k, v in e.items() if k != "like"}}
        s = validate_entry(path, where, _SuiteEntry, e)
        for prof in s.profiles:
            if prof not in profiles:
                raise DataError(f"{path}: [{where}] names unknown profile '{prof}'; "
                                f"known: {', '.join(profiles)}")
        if s.kind == "pytest" and (not s.paths or s.profiles):
            raise DataError(f"{path}: [{where}] kind = \"pytest\" runs scenario files: give "
                            f"paths = [...] and no profiles")
        if s.kind == "compliance" and (not s.profiles or s.paths):
            raise DataError(f"{path}: [{where}] kind = \"compliance\" runs v4l2-compliance: give "
                            f"profiles = [...] and no paths")
        if s.tool is not None and s.kind != "compliance":
            raise DataError(f"{path}: [{where}] tool = {s.tool!r}: only a compliance suite runs a "
                            f"tool")
        if s.tool is not None and s.tool not in tools:
            raise DataError(f"{path}: [{where}] names unknown tool '{s.tool}'; known: "
                            f"{', '.join(tools) or 'none ([tool.NAME] tables)'}")
        _known_conditions(path, where, "requires", s.requires, known)
        suites[name] = Suite(
            name=name, kind=s.kind, description=s.description, paths=tuple(s.paths),
            profiles=tuple(s.profiles), default=s.default, timeout_s=s.timeout_s,
            requires=dict(s.requires), strict=s.strict, param_sets=tuple(s.param_sets),
            env=dict(s.env), typical_s=s.typical_s, heavy=s.heavy,
            not_applicable=_exclusions(path, where, s.not_applicable, known), tool=s.tool,
            judges_module=s.judges_module,
            kmod=(s.kmod.path, s.kmod.ko, s.kmod.env) if s.kmod else None,
        )
    return suites, profiles


# ---------------------------------------------------------------------------- expected failures
# Why a listed failure is not fixed, in three kinds (shown grouped in the report):
CATEGORIES = {
    "inherent": "a property of the device type or of a tool/kernel pair: no module that keeps "
                "the contract can pass",
    "policy": "the contract's deliberate choice, where the test expects another behaviour",
    "pending": "a fix still to come",
}


@dataclass(frozen=True)
class ExpectedFailure:
    kind: str  # scenario | compliance
    id: str  # glob: scenario node id, or "<profile>::<section>/<test name>"
    reason: str
    rule: str
    issue: str
    category: str = "pending"  # inherent | policy | pending (CATEGORIES)
    param_sets: tuple[str, ...] = ()  # globs; empty = every set
    kernels: tuple[str, ...] = ()
    detail: str = ""  # regex the failure's text must contain (its fail: lines, or message)
    tool_versions: tuple[str, ...] = ()  # compliance: globs over v4l2-compliance's version

    @property
    def inherent(self) -> bool:
        """Kept for readers of the former boolean field."""
        return self.category == "inherent"

    def matches(self, kind: str, item_id: str, param_set: str, kernel: str,
                text: str | None = None, tool_version: str | None = None) -> bool:
        """Does the entry cover this item? text: the failure's text, checked against detail;
        None for an item that passes (it is listed whatever its detail would have been).
        tool_version: the v4l2-compliance version that ran (an entry scoped to versions
        never covers a run whose version is unknown)."""
        # An exact id first: parametrized scenario ids hold brackets, which globs read as sets.
        if kind != self.kind or not (item_id == self.id or fnmatch.fnmatchcase(item_id, self.id)):
            return False
        if self.param_sets and not any(fnmatch.fnmatchcase(param_set, p) for p in self.param_sets):
            return False
        if self.kernels and kernel not in self.kernels:
            return False
        if self.tool_versions and not (
                tool_version and any(fnmatch.fnmatchcase(tool_version, v) for v in self.tool_versions)):
            return False
        return text is None or not self.detail or re.search(self.detail, text) is not None


class _FailureEntry(_Entry):
    kind: Literal["scenario", "compliance"] = Field(description='"scenario" or "compliance"')
    id: str = Field(description='a string: "<profile>::<section>/<test>" or a scenario id (globs)')
    detail: str = Field(description="a regex (a string) the failure's text must contain")
    category: Literal["inherent", "policy", "pending"] = Field(
        description='"inherent", "policy" or "pending" (the kinds of reason: see the file\'s header)')
    rule: str = Field(description='a contract rule (a string), e.g. "A3"')
    issue: str = Field(description='an issue number (a string), e.g. "4"')
    reason: str = Field(description="a string: why the failure is expected")
    param_sets: list[str] = Field(default=[], description='a list of parameter set globs, e.g. ["ec0*"]')
    kernels: list[str] = Field(default=[], description='a list of kernel names, e.g. ["debian-6.1"]')
    tool_versions: list[str] = Field(
        default=[], description='compliance only: v4l2-compliance version globs, e.g. ["1.22.*"]')


_GLOB_SET = re.compile(r"\[[^]]*\]")
_PLACEHOLDER = re.compile(r"\b(TODO|TBD|FIXME|XXX)\b", re.IGNORECASE)
MIN_REASON_WORDS = 4


def _literal(part: str) -> bool:
    """Does a glob part name something, rather than match anything ('*', '?', '[ab]*')?"""
    return bool(_GLOB_SET.sub("", part).replace("*", "").replace("?", "").strip())


def _check_id(path: Path, where: str, kind: str, item_id: str) -> None:
    """An id names at least one literal part: the profile or test name (compliance,
    "<profile>::<section>/<test>"), the file or test name (scenario, "<file>::<test>")."""
    head, sep, tail = item_id.partition("::")
    if kind == "compliance":
        _section, slash, test = tail.partition("/")
        if not sep or not slash:
            raise DataError(f"{path}: [{where}] id = {item_id!r}: expected "
                            f"\"<profile>::<section>/<test>\", e.g. \"output::Required ioctls/VIDIOC_QUERYCAP\"")
        named = _literal(head) or _literal(test)
    else:
        if not sep:
            raise DataError(f"{path}: [{where}] id = {item_id!r}: expected a scenario id "
                            f"\"<file>::<test>\", e.g. \"contract/test_1_claims.py::test_a3_second_claim\"")
        named = _literal(head) or _literal(tail)
    if not named:
        raise DataError(f"{path}: [{where}] id = {item_id!r} matches every test: name the profile "
                        f"or the test (or, for scenarios, the file or the test)")


def _check_reason(path: Path, where: str, reason: str) -> str:
    text = " ".join(reason.split())
    words = re.findall(r"[A-Za-z0-9]+", text)
    if _PLACEHOLDER.search(text) or len(words) < MIN_REASON_WORDS:
        raise DataError(f"{path}: [{where}] reason = {_shown(text)} is a placeholder: say why the "
                        f"failure is expected, in at least {MIN_REASON_WORDS} words (a drafted "
                        f"'TODO' is not a reason)")
    return reason


def _check_detail(path: Path, where: str, detail: str) -> str:
    try:
        pattern = re.compile(detail)
    except re.error as exc:
        raise DataError(f"{path}: [{where}] detail is not a valid regex: {exc}") from exc
    if pattern.search("") is not None:
        raise DataError(f"{path}: [{where}] detail = {detail!r} matches any text: give the part of "
                        f"the failure's fail: line (or message) that this entry excuses")
    return detail


def load_expected_failures(path: Path = EXPECTED_FAILURES_FILE) -> list[ExpectedFailure]:
    if not path.exists():
        return []
    data = load_toml(path, {"failure"})
    entries = data.get("failure", [])
    if not isinstance(entries, list):
        raise DataError(f"{path}: failures are [[failure]] tables (a list), not {_shown(entries)}")
    out = []
    for i, e in enumerate(entries, 1):
        where = f"failure #{i}"
        if not isinstance(e, dict):
            raise DataError(f"{path}: [[failure]] #{i} must be a table")
        f = validate_entry(path, where, _FailureEntry, e)
        where = f"failure #{i}, id {f.id!r}"
        _check_id(path, where, f.kind, f.id)
        if f.tool_versions and f.kind != "compliance":
            raise DataError(f"{path}: [{where}] tool_versions scopes v4l2-compliance results: "
                            f"a scenario entry cannot have it")
        out.append(ExpectedFailure(
            kind=f.kind, id=f.id, reason=_check_reason(path, where, f.reason), rule=f.rule,
            issue=f.issue, category=f.category, param_sets=tuple(f.param_sets),
            kernels=tuple(f.kernels), detail=_check_detail(path, where, f.detail),
            tool_versions=tuple(f.tool_versions),
        ))
    return out


# ---------------------------------------------------------------------------- splat patterns
class _SplatEntry(_Entry):
    regex: str = Field(description="a regular expression (a string), e.g. 'kernel BUG at '")


def check_splats(path: Path = SPLATS_FILE) -> int:
    """Check kernel/splats.toml on the host before any guest boots (the guest's reader,
    health.load_splat_patterns, stays free of the schema library). Returns the deny count."""
    data = load_toml(path, {"deny", "allow"})
    deny = 0
    for table in ("deny", "allow"):
        for name, e in named_table(path, data, table).items():
            entry = validate_entry(path, f"{table}.{name}", _SplatEntry, e)
            try:
                re.compile(entry.regex)
            except re.error as exc:
                raise DataError(f"{path}: [{table}.{name}] regex is not a valid regular expression: "
                                f"{exc}") from None
            deny += table == "deny"
    if not deny:
        raise DataError(f"{path}: no [deny.NAME] entries: the kernel log would never be judged")
    return deny


def resolve_kernel(name: str, kernels: dict[str, Kernel]) -> Kernel:
    """A named kernel; NAME@VERSION pins an archive kernel to one Debian version of its
    image package (what every reproduce line of such a kernel says)."""
    if name in kernels:
        return kernels[name]
    base, sep, version = name.partition("@")
    if sep and base in kernels:
        k = kernels[base]
        if k.kind != "archive":
            raise DataError(f"kernel '{base}' is installed on this machine with apt: it has no "
                            f"version to pin (give --kernel {base})")
        if not _VERSION.match(version):
            raise DataError(f"kernel '{name}': {version!r} is not a Debian version "
                            f"(e.g. {base}@7.2.13-1)")
        return replace(k, version=version)
    raise unknown_name("kernel", base, list(kernels), KERNELS_FILE)
