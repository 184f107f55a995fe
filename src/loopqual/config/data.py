"""The data loopqual runs on: kernels, module sources, parameter sets, suites, expected
failures. Every file is TOML; every mistake in one is a DataError naming the file, the
entry and what to do, raised before any guest boots.

Each entity (Kernel, Source, Suite, ...) is one frozen pydantic model: its fields are the
keys of its table, its validators the rules of one entry. The loaders then check what spans
entries or files (a suite's profiles, a patched source's base, parameter names)."""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from loopqual.common.errors import DataError
from loopqual.common.paths import KERNEL_DIR, REPO, SCENARIOS_DIR
from loopqual.config.schema import Entity, dotted, explain, file_keys
from loopqual.config.schema import Entry as _Entry
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


def _as_tuple(value):
    """A TOML list, kept as a tuple: entities are immutable."""
    return tuple(value) if isinstance(value, list) else value


_Seconds = Annotated[float, Field(gt=0, description="a positive number of seconds")]
_Strings = Annotated[tuple[str, ...], BeforeValidator(_as_tuple)]
_SOME_STRINGS = 'a list of strings, e.g. ["a", "b"]'
_Conditions = Annotated[dict[str, int | str | bool],
                        Field(description="a table of parameter values, e.g. { exclusive_caps = 1 }")]


def _entry_error(path: Path, where: str, rule_where: str, model: type[BaseModel], entry: dict,
                 exc: ValidationError) -> DataError:
    """One line for the first problem: file, [entry] key, the value given, what is expected;
    or, when every value has its type, the first rule broken, in the rule's own words."""
    errors = exc.errors()
    if all(e["type"] == "value_error" for e in errors):
        key = dotted(errors[0]["loc"])
        return DataError(f"{path}: [{rule_where}] {key}{' ' if key else ''}{errors[0]['ctx']['error']}")
    key, problem = explain(model, entry, exc)
    if problem.startswith("unknown key"):
        return DataError(f"{path}: [{where}]: unknown key {key}{problem.removeprefix('unknown key')}")
    if problem.startswith("="):
        return DataError(f"{path}: [{where}] {key} {problem}")
    return DataError(f"{path}: [{where}] {key}: {problem}")


def validate_entry(path: Path, where: str, model: type[_Entry], entry: dict,
                   rule_where: str | None = None, **not_in_file):
    """The entry as a `model`, or a DataError naming the file, [where] and the problem.
    not_in_file: values the loader gives rather than the file (name=, from [kernel.NAME]);
    rule_where: how a broken rule names the entry once its values have their types."""
    # the file's first unknown key, as pydantic names one: a field the loader sets is one too
    allowed = file_keys(model)
    stray = next((k for k in entry if k not in allowed), None)
    if stray in getattr(model, "not_in_file", ()):
        raise DataError(f"{path}: [{where}]: unknown key {stray}; allowed: {', '.join(allowed)}")
    entry = {**entry, **not_in_file}
    try:
        return model.model_validate(entry, context={"file": path})
    except ValidationError as exc:
        raise _entry_error(path, where, rule_where or where, model, entry, exc) from None


def _in_file(info: ValidationInfo) -> bool:
    """Do the rules of the data files apply? They do to an entry read by validate_entry; an
    entity built in Python (a test, a command line's parameter set, a local tree) is taken as
    it is given, as long as its values have their types."""
    return info.context is not None


def unknown_name(kind: str, name: str, known: list[str], path: Path) -> DataError:
    close = fnmatch.filter(known, f"*{name}*") if name else []
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return DataError(
        f"unknown {kind} '{name}'{hint}; known: {', '.join(known)} (from {path.relative_to(REPO)})"
    )


# ---------------------------------------------------------------------------- kernels
_SUITE = re.compile(r"^[a-z][a-z0-9-]*$")
_VERSION = re.compile(r"^(?:\d+:)?[0-9][A-Za-z0-9.+~-]*$")
_PACKAGE = "a Debian package name (a string)"


class Kernel(Entity):
    """A kernel modules are built for and booted on: [kernel.NAME] of kernel/kernels.toml."""
    not_in_file: ClassVar = frozenset({"name"})

    name: str
    description: str = ""
    image_package: str = Field(default="", description=_PACKAGE)
    headers_package: str = Field(default="", description=_PACKAGE)
    build_needs: _Strings = Field(default=(), description='a list of Debian packages, e.g. ["dwarves"]')
    default: bool = False
    # an archive kernel: the suite serving it (None: installed on the host)
    suite: str | None = Field(default=None, description='a Debian suite (a string), e.g. "sid"')
    # the suite its build root is made of (default: suite)
    base_suite: str | None = Field(default=None, description='a Debian suite (a string), e.g. "trixie"')
    # a pin: the image package's Debian version (None: the newest)
    version: str | None = Field(default=None,
                                description='a Debian version (a string), e.g. "7.3.4-1~bpo13+1"')
    # kind = "debug" in kernels.toml: built by loopqual (debugkernel.py); the kind property
    # also tells the two kinds of Debian kernel apart
    declared_kind: Literal["debug"] | None = Field(
        default=None, alias="kind",
        description='"debug" (a kernel loopqual builds, described in kernel/debug-kernels.toml)')
    # to the guest runner's first sign of life
    boot_timeout_s: int = Field(default=240, ge=30, le=3600,
                                description="seconds, a whole number from 30 to 3600")
    # a cell here takes this many times a Debian kernel's
    time_factor: float = Field(default=1.0, ge=1, le=100, description="a number from 1 to 100")
    guest_udev: bool = True  # False: the guest boots without udev's coldplug
    # added to the guest kernel's command line
    guest_append: str = Field(default="", pattern=r"^(?:[A-Za-z0-9_.-]+=[A-Za-z0-9_.,-]+ ?)*$",
                              description='kernel parameters, e.g. "kfence.sample_interval=10000"')

    @property
    def kind(self) -> str:
        """host: installed on this machine with apt, built for on it; archive: downloaded
        from its suite into the cache, built for in a build root of that suite; debug: built
        by loopqual from Debian's kernel source (kernel/debug-kernels.toml)."""
        return self.declared_kind or ("archive" if self.suite else "host")

    @property
    def arg(self) -> str:
        """How --kernel names exactly this kernel: NAME, or NAME@VERSION for a pinned one."""
        return f"{self.name}@{self.version}" if self.version else self.name

    @model_validator(mode="before")
    @classmethod
    def _metapackage(cls, entry: dict, info: ValidationInfo) -> dict:
        """A Debian kernel's headers_package, empty or left out by an archive kernel, is
        linux-headers-amd64 (a host kernel names its own; a debug kernel has none)."""
        if not _in_file(info) or entry.get("kind") == "debug":
            return entry
        if entry.get("headers_package") == "" or ("suite" in entry and "headers_package" not in entry):
            return {**entry, "headers_package": "linux-headers-amd64"}
        return entry

    @field_validator("guest_append")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @model_validator(mode="after")
    def _check_kind(self, info: ValidationInfo) -> Kernel:
        """Which keys an entry gives decides its kind: each kind has its own."""
        if not _in_file(info):
            return self
        given = self.model_fields_set
        if self.declared_kind == "debug":
            stray = [f for f in ("image_package", "headers_package", "build_needs", "suite",
                                 "base_suite", "version") if f in given]
            if stray:
                raise ValueError(f"{stray[0]} belongs to a Debian kernel; a debug kernel is "
                                 "described in kernel/debug-kernels.toml")
            return self
        if "image_package" not in given:
            raise ValueError(f'image_package: missing; expected {_PACKAGE}, or kind = "debug"')
        if self.suite is None:
            stray = [f for f in ("base_suite", "version") if f in given]
            if stray:
                raise ValueError(f"{stray[0]} belongs to a kernel from an archive suite: add "
                                 f"suite = \"...\" or remove {stray[0]}")
            if "headers_package" not in given:
                raise ValueError(f"headers_package: missing; expected {_PACKAGE}")
            return self
        for f, value in (("suite", self.suite), ("base_suite", self.base_suite)):
            if value is not None and not _SUITE.match(value):
                raise ValueError(f"{f} = {_shown(value)}: expected a Debian suite name, e.g. "
                                 "\"sid\" or \"trixie-backports\"")
        if self.version is not None and not _VERSION.match(self.version):
            raise ValueError(f"version = {_shown(self.version)}: expected a Debian version, "
                             "e.g. \"7.3.4-1~bpo13+1\"")
        return self


def load_kernels(path: Path = KERNELS_FILE) -> dict[str, Kernel]:
    out = {name: validate_entry(path, f"kernel.{name}", Kernel, e, name=name)
           for name, e in named_table(path, load_toml(path, {"kernel"}), "kernel").items()}
    if not out:
        raise DataError(f"{path}: no [kernel.NAME] entries")
    return out


# ---------------------------------------------------------------------------- sources
class Mirror(Entity):
    """The Debian archive sources, archive kernels and build roots come from: [mirror] of
    kernel/sources.toml."""
    url: str = Field(default="", description='a URL, e.g. "http://deb.debian.org/debian"')
    components: _Strings = Field(default=("main",), description=_SOME_STRINGS)
    # the file's from = "apt": the URL of the machine's apt configuration (debian/apt.py)
    from_: Literal["apt"] | None = Field(default=None, alias="from")

    @model_validator(mode="after")
    def _check_url(self, info: ValidationInfo) -> Mirror:
        if _in_file(info) and "url" not in self.model_fields_set and self.from_ is None:
            raise ValueError("needs url = \"http://...\" or from = \"apt\"")
        return self


class Source(Entity):
    """A module source: [source.NAME] of kernel/sources.toml (a Debian package, or another
    source with patches), or a local tree named on the command line."""
    not_in_file: ClassVar = frozenset({"name", "path"})

    name: str
    package: str | None = None  # Debian package (archive sources)
    version: str | None = None
    suite: str | None = None
    base: str | None = None  # another source (patched sources)
    # series file
    patches: Path | None = Field(default=None, description="a series file path (a string), "
                                                           "relative to this file")
    gated: bool = False
    description: str = ""
    path: Path | None = None  # a local tree

    @property
    def kind(self) -> str:
        if self.path is not None:
            return "local"
        if self.base is not None:
            return "patched"
        return "debian"

    @field_validator("patches", mode="before")
    @classmethod
    def _beside_the_file(cls, value, info: ValidationInfo):
        """sources.toml names a series file relative to itself."""
        if _in_file(info) and isinstance(value, str):
            return (info.context["file"].parent / value).resolve()
        return value

    @model_validator(mode="after")
    def _check_kind(self, info: ValidationInfo) -> Source:
        if not _in_file(info):
            return self
        given = self.model_fields_set
        if self.base is not None:
            if self.patches is None:
                raise ValueError("has base but no patches (series file)")
            stray = [k for k in ("package", "version", "suite") if k in given]
            if stray:
                raise ValueError(f"is built from base '{self.base}': {', '.join(stray)} belong to "
                                 "archive sources; remove them")
            return self
        missing = {"package", "version", "suite"} - given
        if missing:
            raise ValueError(f"needs package, version and suite (missing "
                             f"{', '.join(sorted(missing))}), or base + patches")
        if self.patches is not None:
            raise ValueError("has patches but no base source")
        return self


def load_sources(path: Path = SOURCES_FILE) -> tuple[Mirror, dict[str, Source]]:
    data = load_toml(path, {"mirror", "source"})
    m = data.get("mirror")
    if not isinstance(m, dict):
        raise DataError(f"{path}: needs a [mirror] table with url = \"http://...\" or from = \"apt\"")
    mirror = validate_entry(path, "mirror", Mirror, m)
    url = os.environ.get("LOOPQUAL_MIRROR") or mirror.url  # the environment's mirror wins
    mirror = Mirror(url.rstrip("/"), mirror.components)
    out = {name: validate_entry(path, f"source.{name}", Source, e, name=name)
           for name, e in named_table(path, data, "source").items()}
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
class ParamSet(Entity):
    """Module parameters and controls a cell runs with: [set.NAME] of scenarios/params.toml,
    or NAME=VALUE,... on the command line."""
    not_in_file: ClassVar = frozenset({"name"})

    name: str
    description: str = ""
    module: dict[str, int | str | bool] = Field(
        default={}, description="a table of module parameters, e.g. { exclusive_caps = 1 }")
    controls: dict[str, int] = Field(
        default={}, description="a table of integer V4L2 controls, e.g. { keep_format = 1 }")
    default: bool = False

    @property
    def all_params(self) -> dict:
        return {**self.module, **self.controls}


class _KnownEntry(_Entry):
    module_parameters: list[str] = Field(min_length=1, description="a non-empty list of module "
                                         'parameter names, e.g. ["exclusive_caps"]')
    controls: list[str] = Field(min_length=1, description="a non-empty list of V4L2 control "
                                'names, e.g. ["keep_format"]')


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
        ps = validate_entry(path, f"set.{name}", ParamSet, e, name=name)
        validate_param_names(ps.module, ps.controls, mod_known, ctl_known, f"{path}: [set.{name}]")
        out[name] = ps
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
class NotApplicable(Entity):
    """Where a suite or profile is not run, and why (shown in the report): parameter values
    (`when`; a parameter a set does not give counts as 0) and/or parameter sets (globs)."""
    when: _Conditions = {}
    param_sets: _Strings = Field(default=(), description=_SOME_STRINGS)
    # compliance profiles: only when run by these tools
    tools: _Strings = Field(default=(), description=_SOME_STRINGS)
    because: str = Field(description="a string: why the suite or profile cannot apply there")

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

    @field_validator("because")
    @classmethod
    def _one_line(cls, because: str, info: ValidationInfo) -> str:
        """The report shows the reason on one line."""
        because = " ".join(because.split())
        if not because and _in_file(info):
            raise ValueError("is empty: say why it cannot apply there")
        return because

    @model_validator(mode="after")
    def _check_where(self, info: ValidationInfo) -> NotApplicable:
        if _in_file(info) and not self.when and not self.param_sets:
            raise ValueError("needs when = { PARAMETER = VALUE } or param_sets = [...]: where it "
                             "does not apply")
        return self


_NotApplicables = Annotated[
    tuple[NotApplicable, ...], BeforeValidator(_as_tuple),
    Field(description='a list of tables, e.g. [{ when = { exclusive_caps = 0 }, because = "..." }]')]


class Profile(Entity):
    """A v4l2-compliance run of a compliance suite: [profile.NAME] of scenarios/suites.toml."""
    not_in_file: ClassVar = frozenset({"name"})

    name: str
    description: str = ""
    args: _Strings = Field(default=(), description='a list of v4l2-compliance arguments, e.g. ["-s"]')
    producer: bool = False
    timeout_s: _Seconds
    idle_s: _Seconds = Field(default_factory=lambda given: given["timeout_s"])  # default: timeout_s
    not_applicable: _NotApplicables = ()
    typical_s: _Seconds = 15  # usual duration under TCG: only balances parallel guests (--jobs)

    def applies_to(self, params: ParamSet, tool: str | None = None) -> str | None:
        """None if the profile applies (run by the host's v4l2-compliance, or by tool)."""
        return next((x.reason() for x in self.not_applicable if x.matches(params, tool)), None)


class Tool(Entity):
    """A v4l2-compliance other than the host's: it runs from a Debian root of its suite
    (made with mmdebstrap, cached), chrooted in the guest. [tool.NAME] of scenarios/suites.toml."""
    not_in_file: ClassVar = frozenset({"name", "program"})

    name: str
    description: str = ""
    # the Debian suite the root is made of
    suite: str = Field(description='a Debian suite (a string), e.g. "sid"')
    # what the root holds beyond the essential set
    packages: _Strings = Field(min_length=1, description='a list of Debian packages, e.g. ["v4l-utils"]')
    program: str = "v4l2-compliance"


class _KmodTable(_Entry):
    path: str = Field(description='a kernel module tree in this repository, e.g. "tests/kmod"')
    ko: str = Field(description='the module file it makes, e.g. "loopqual_detectors.ko"')
    env: str = Field(description='the LOOPQUAL_* variable that gives the scenarios its path')


class Suite(Entity):
    """What a cell runs: scenario files (pytest) or v4l2-compliance profiles (compliance).
    [suite.NAME] of scenarios/suites.toml."""
    not_in_file: ClassVar = frozenset({"name"})

    name: str
    kind: Literal["pytest", "compliance"] = Field(description='"pytest" or "compliance"')
    description: str = ""
    paths: _Strings = Field(default=(), description='a list of scenario paths, e.g. ["scenarios/contract"]')
    profiles: _Strings = Field(default=(), description='a list of profile names, e.g. ["output"]')
    default: bool = False
    timeout_s: _Seconds = 900
    requires: _Conditions = {}
    strict: bool = False  # compliance: run profiles even where they do not apply
    # run only in cells of these sets (empty: every cell)
    param_sets: _Strings = Field(default=(), description='a list of parameter set names, e.g. ["ec1"]')
    # environment for the scenarios (pytest suites)
    env: dict[str, str] = Field(default={}, description='a table of strings, e.g. { NAME = "value" }')
    typical_s: _Seconds = 60  # usual duration under TCG: only balances parallel guests (--jobs)
    # starts the desktop programs (browsers, OBS): the lane planner keeps cells running such
    # suites apart in time (src/loopqual/run/qualify.py stagger)
    heavy: bool = False
    # browsers the guest starts in the background when a cell running this suite begins, for
    # its scenarios to take over (src/loopqual/guest/programs/prestart.py); the cell runs
    # such a suite after its others
    prestart: _Strings = Field(default=(), description='a list of "chromium" and "firefox"')
    not_applicable: _NotApplicables = ()
    # compliance: a [tool.NAME] instead of the host's v4l2-compliance
    tool: str | None = Field(default=None, description='a tool name from [tool.NAME], e.g. "sid"')
    # False: the suite judges the harness or the kernel, not the module (a cell that runs only
    # such suites is not gated: its failures are its purpose, checked by whoever asked for it)
    judges_module: bool = True
    # a test module built on the host for each kernel before its guest boots, its path given
    # to the scenarios in a variable: a table in the file, (tree, module file, variable) here
    kmod: Annotated[_KmodTable, AfterValidator(lambda t: (t.path, t.ko, t.env))] | None = None

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

    @model_validator(mode="after")
    def _check_kind(self, info: ValidationInfo) -> Suite:
        if not _in_file(info):
            return self
        if self.kind == "pytest" and (not self.paths or self.profiles):
            raise ValueError("kind = \"pytest\" runs scenario files: give paths = [...] and no "
                             "profiles")
        if self.kind == "compliance" and (not self.profiles or self.paths):
            raise ValueError("kind = \"compliance\" runs v4l2-compliance: give profiles = [...] "
                             "and no paths")
        if unknown := [n for n in self.prestart if n not in ("chromium", "firefox")]:
            raise ValueError(f"prestart names {', '.join(unknown)}: give \"chromium\" and/or "
                             "\"firefox\"")
        if self.tool is not None and self.kind != "compliance":
            raise ValueError(f"tool = {self.tool!r}: only a compliance suite runs a tool")
        return self


def load_tools(path: Path | None = None) -> dict[str, Tool]:
    """The [tool.NAME] tables of scenarios/suites.toml: other v4l2-compliance builds."""
    path = path or SUITES_FILE
    data = load_toml(path, {"suite", "profile", "tool"})
    return {name: validate_entry(path, f"tool.{name}", Tool, e, name=name)
            for name, e in named_table(path, data, "tool").items()}


def _known_conditions(path: Path, where: str, key: str, conditions: dict, known: set[str]) -> None:
    for k in conditions:
        if k not in known:
            raise DataError(f"{path}: [{where}] {key} names '{k}', which is neither a module "
                            f"parameter nor a control (known: {', '.join(sorted(known))})")


def _known_exclusions(path: Path, where: str, exclusions: tuple[NotApplicable, ...],
                      known: set[str]) -> None:
    for i, x in enumerate(exclusions):
        _known_conditions(path, where, f"not_applicable[{i}].when", x.when, known)


def load_suites(path: Path = SUITES_FILE, params_path: Path = PARAMS_FILE
                ) -> tuple[dict[str, Suite], dict[str, Profile]]:
    data = load_toml(path, {"suite", "profile", "tool"})
    tools = load_tools(path)
    mod_known, ctl_known = known_param_names(params_path)
    known = mod_known | ctl_known
    profiles = {}
    for name, e in named_table(path, data, "profile").items():
        where = f"profile.{name}"
        profiles[name] = validate_entry(path, where, Profile, e, name=name)
        _known_exclusions(path, where, profiles[name].not_applicable, known)
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
        s = validate_entry(path, where, Suite, e, name=name)
        for prof in s.profiles:
            if prof not in profiles:
                raise DataError(f"{path}: [{where}] names unknown profile '{prof}'; "
                                f"known: {', '.join(profiles)}")
        if s.tool is not None and s.tool not in tools:
            raise DataError(f"{path}: [{where}] names unknown tool '{s.tool}'; known: "
                            f"{', '.join(tools) or 'none ([tool.NAME] tables)'}")
        _known_conditions(path, where, "requires", s.requires, known)
        _known_exclusions(path, where, s.not_applicable, known)
        suites[name] = s
    return suites, profiles


# ---------------------------------------------------------------------------- expected failures
# Why a listed failure is not fixed, in three kinds (shown grouped in the report):
CATEGORIES = {
    "inherent": "a property of the device type or of a tool/kernel pair: no module that keeps "
                "the contract can pass",
    "policy": "the contract's deliberate choice, where the test expects another behaviour",
    "pending": "a fix still to come",
}

_GLOB_SET = re.compile(r"\[[^]]*\]")
_PLACEHOLDER = re.compile(r"\b(TODO|TBD|FIXME|XXX)\b", re.IGNORECASE)
MIN_REASON_WORDS = 4


class ExpectedFailure(Entity):
    """A failure known not to be the module's fault: [[failure]] of kernel/expected-failures.toml."""
    kind: Literal["scenario", "compliance"] = Field(description='"scenario" or "compliance"')
    # glob: scenario node id, or "<profile>::<section>/<test name>"
    id: str = Field(description='a string: "<profile>::<section>/<test>" or a scenario id (globs)')
    # regex the failure's text must contain (its fail: lines, or message)
    detail: str = Field(description="a regex (a string) the failure's text must contain")
    category: Literal["inherent", "policy", "pending"] = Field(
        description='"inherent", "policy" or "pending" (the kinds of reason: see the file\'s header)')
    rule: str = Field(description='a contract rule (a string), e.g. "A3"')
    issue: str = Field(description='an issue number (a string), e.g. "4"')
    reason: str = Field(description="a string: why the failure is expected")
    # globs; empty = every set
    param_sets: _Strings = Field(default=(), description='a list of parameter set globs, e.g. ["ec0*"]')
    kernels: _Strings = Field(default=(), description='a list of kernel names, e.g. ["debian-6.1"]')
    tool_versions: _Strings = Field(
        default=(), description='compliance only: v4l2-compliance version globs, e.g. ["1.22.*"]')

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

    @model_validator(mode="after")
    def _check_entry(self, info: ValidationInfo) -> ExpectedFailure:
        """An entry excuses only the failure it names, and says why."""
        if not _in_file(info):
            return self
        self._check_id()
        if self.tool_versions and self.kind != "compliance":
            raise ValueError("tool_versions scopes v4l2-compliance results: a scenario entry "
                             "cannot have it")
        text = " ".join(self.reason.split())
        if _PLACEHOLDER.search(text) or len(re.findall(r"[A-Za-z0-9]+", text)) < MIN_REASON_WORDS:
            raise ValueError(f"reason = {_shown(text)} is a placeholder: say why the failure is "
                             f"expected, in at least {MIN_REASON_WORDS} words (a drafted 'TODO' is "
                             f"not a reason)")
        try:
            pattern = re.compile(self.detail)
        except re.error as exc:
            raise ValueError(f"detail is not a valid regex: {exc}") from exc
        if pattern.search("") is not None:
            raise ValueError(f"detail = {self.detail!r} matches any text: give the part of the "
                             f"failure's fail: line (or message) that this entry excuses")
        return self

    def _check_id(self) -> None:
        """An id names at least one literal part: the profile or test name (compliance,
        "<profile>::<section>/<test>"), the file or test name (scenario, "<file>::<test>")."""
        head, sep, tail = self.id.partition("::")
        if self.kind == "compliance":
            _section, slash, test = tail.partition("/")
            if not sep or not slash:
                raise ValueError(f"id = {self.id!r}: expected \"<profile>::<section>/<test>\", "
                                 f"e.g. \"output::Required ioctls/VIDIOC_QUERYCAP\"")
            named = _literal(head) or _literal(test)
        else:
            if not sep:
                raise ValueError(f"id = {self.id!r}: expected a scenario id \"<file>::<test>\", "
                                 f"e.g. \"contract/test_1_claims.py::test_a3_second_claim\"")
            named = _literal(head) or _literal(tail)
        if not named:
            raise ValueError(f"id = {self.id!r} matches every test: name the profile or the test "
                             f"(or, for scenarios, the file or the test)")


def _literal(part: str) -> bool:
    """Does a glob part name something, rather than match anything ('*', '?', '[ab]*')?"""
    return bool(_GLOB_SET.sub("", part).replace("*", "").replace("?", "").strip())


def load_expected_failures(path: Path = EXPECTED_FAILURES_FILE) -> list[ExpectedFailure]:
    if not path.exists():
        return []
    data = load_toml(path, {"failure"})
    entries = data.get("failure", [])
    if not isinstance(entries, list):
        raise DataError(f"{path}: failures are [[failure]] tables (a list), not {_shown(entries)}")
    out = []
    for i, e in enumerate(entries, 1):
        if not isinstance(e, dict):
            raise DataError(f"{path}: [[failure]] #{i} must be a table")
        out.append(validate_entry(path, f"failure #{i}", ExpectedFailure, e,
                                  rule_where=f"failure #{i}, id {e.get('id')!r}"))
    return out


# ---------------------------------------------------------------------------- splat patterns
class _SplatEntry(_Entry):
    regex: str = Field(description="a regular expression (a string), e.g. 'kernel BUG at '")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, regex: str) -> str:
        try:
            re.compile(regex)
        except re.error as exc:
            raise ValueError(f"is not a valid regular expression: {exc}") from None
        return regex


def check_splats(path: Path = SPLATS_FILE) -> int:
    """Check kernel/splats.toml on the host before any guest boots (the guest's reader,
    health.load_splat_patterns, stays free of the schema library). Returns the deny count."""
    data = load_toml(path, {"deny", "allow"})
    deny = 0
    for table in ("deny", "allow"):
        for name, e in named_table(path, data, table).items():
            validate_entry(path, f"{table}.{name}", _SplatEntry, e)
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
        return k.model_copy(update={"version": version})
    raise unknown_name("kernel", base, list(kernels), KERNELS_FILE)
