"""Data files: the real ones load; malformed or unknown input is one clear DataError."""

import fnmatch
import functools
import re
import subprocess
import sys

import pytest

from loopqual.common.errors import DataError
from loopqual.config import data


def test_real_data_files_load():
    kernels = data.load_kernels()
    assert {"debian-6.1", "debian-6.12"} <= set(kernels)
    assert [k for k in kernels.values() if k.default] == [kernels["debian-6.1"]]
    _mirror, sources = data.load_sources()
    assert {"debian-0.12.7", "debian-0.13.2", "debian-0.15.0", "debian-0.15.4", "patched"} <= set(sources)
    assert sources["patched"].gated and sources["patched"].base == "debian-0.15.4"
    assert not sources["debian-0.15.0"].gated
    params = data.load_params()
    defaults = [p for p in params.values() if p.default]
    assert len(defaults) >= 6
    assert {p.module.get("exclusive_caps") for p in defaults} == {0, 1}
    assert {p.controls.get("keep_format") for p in defaults} == {0, 1}
    assert any("max_buffers" in p.module for p in defaults)
    assert any("max_openers" in p.module for p in defaults)
    suites, profiles = data.load_suites()
    assert suites["compliance"].profiles == ("output", "output-streaming", "capture",
                                             "capture-streaming")
    data.load_expected_failures()


def write(tmp_path, text, name="x.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_malformed_toml_names_the_file(tmp_path):
    p = write(tmp_path, "[kernel.a\nimage_package = 1")
    with pytest.raises(DataError, match="x.toml: malformed TOML"):
        data.load_kernels(p)


def test_unknown_key_is_refused(tmp_path):
    p = write(tmp_path, '[kernel.a]\nimage_package="x"\nheaders_package="y"\nimage_pkg="z"\n')
    with pytest.raises(DataError, match="unknown key.*image_pkg"):
        data.load_kernels(p)


def test_boot_timeout_is_per_kernel_and_checked(tmp_path):
    """A slow kernel (the debug kernel boots in 70-100 s under TCG) gets its own boot limit;
    the others keep the default; a limit that is not a sane number of seconds is refused."""
    kernels = data.load_kernels()
    assert kernels["debian-6.12-debug"].boot_timeout_s > kernels["debian-6.1"].boot_timeout_s == 240
    p = write(tmp_path, '[kernel.a]\nimage_package="x"\nheaders_package="y"\nboot_timeout_s=5\n')
    with pytest.raises(DataError, match=r"kernel\.a.*boot_timeout_s.*30 to 3600"):
        data.load_kernels(p)


PARAMS_HEAD = '[known]\nmodule_parameters=["exclusive_caps","max_buffers"]\ncontrols=["keep_format"]\n'


def test_unknown_module_parameter_is_refused_before_boot(tmp_path):
    p = write(tmp_path, PARAMS_HEAD + "[set.a]\nmodule = { exclusive_cap = 1 }\n")
    with pytest.raises(DataError, match="unknown module parameter 'exclusive_cap'.*ignore"):
        data.load_params(p)


def test_control_given_as_module_parameter_is_refused(tmp_path):
    p = write(tmp_path, PARAMS_HEAD + "[set.a]\nmodule = { keep_format = 1 }\n")
    with pytest.raises(DataError, match="is a V4L2 control, not a module parameter"):
        data.load_params(p)


def test_module_parameter_given_as_control_is_refused(tmp_path):
    p = write(tmp_path, PARAMS_HEAD + "[set.a]\ncontrols = { max_buffers = 4 }\n")
    with pytest.raises(DataError, match="is a module parameter, not a control"):
        data.load_params(p)


def test_inline_params_split_into_module_and_controls():
    ps = data.parse_inline_params("exclusive_caps=1, keep_format=1,card_label=My Cam")
    assert ps.module == {"exclusive_caps": 1, "card_label": "My Cam"}
    assert ps.controls == {"keep_format": 1}
    with pytest.raises(DataError, match="unknown module parameter 'nosuch'"):
        data.parse_inline_params("nosuch=1")
    with pytest.raises(DataError, match="not NAME=VALUE"):
        data.parse_inline_params("exclusive_caps")


def test_unknown_names_list_what_is_known():
    with pytest.raises(DataError, match="unknown kernel 'debian-5.10'.*known: debian-6.1"):
        data.resolve_kernel("debian-5.10", data.load_kernels())
    _m, sources = data.load_sources()
    with pytest.raises(DataError, match="unknown module source 'debian-0.16'"):
        data.resolve_source("debian-0.16", sources)
    with pytest.raises(DataError, match="unknown parameter set 'ec9'"):
        data.resolve_params("ec9", data.load_params())


def test_local_source_needs_a_module_tree(tmp_path):
    _m, sources = data.load_sources()
    with pytest.raises(DataError, match="no v4l2loopback.c"):
        data.resolve_source(str(tmp_path), sources)
    (tmp_path / "v4l2loopback.c").write_text("")
    assert data.resolve_source(str(tmp_path), sources).kind == "local"


XF = ('[[failure]]\nkind="{kind}"\nid="{id}"\ndetail="{detail}"\ncategory="{category}"\n'
      'rule="A3"\nissue="4"\nreason="{reason}"\n')
GOOD = {"kind": "compliance", "id": "output::Buffer ioctls (Input 0)/VIDIOC_REQBUFS/CREATE_BUFS/QUERYBUF",
        "detail": "!= EBUSY", "category": "policy",
        "reason": "the contract lets a second reader claim the queue (rule A3)"}


def xf(tmp_path, extra="", **fields):
    return write(tmp_path, XF.format(**{**GOOD, **fields}) + extra)


def test_expected_failure_needs_reason_and_matches_by_glob(tmp_path):
    with pytest.raises(DataError, match=r'\[failure #1, id .*\] reason = "" is a placeholder'):
        data.load_expected_failures(xf(tmp_path, reason=""))
    p = xf(tmp_path, 'param_sets=["ec1*"]\n', kind="scenario", id="contract/test_a.py::*",
           detail="EBUSY")
    (e,) = data.load_expected_failures(p)
    assert e.matches("scenario", "contract/test_a.py::test_x", "ec1-keep", "debian-6.1", "got EBUSY")
    assert not e.matches("scenario", "contract/test_a.py::test_x", "ec0", "debian-6.1")
    assert not e.matches("compliance", "contract/test_a.py::test_x", "ec1", "debian-6.1")


def test_expected_failure_without_a_detail_pattern_is_refused(tmp_path):
    p = write(tmp_path, XF.format(**GOOD).replace('detail="!= EBUSY"\n', ""))
    with pytest.raises(DataError, match=r"x.toml: \[failure #1\] detail: missing; expected a regex"):
        data.load_expected_failures(p)


@pytest.mark.parametrize("detail", ["", ".*", "x?|y"])
def test_expected_failure_detail_that_matches_any_text_is_refused(tmp_path, detail):
    with pytest.raises(DataError, match=r"\[failure #1, id .*\] detail = .* matches any text"):
        data.load_expected_failures(xf(tmp_path, detail=detail))


@pytest.mark.parametrize("kind,id_", [
    ("compliance", "*"), ("compliance", "*::*"), ("compliance", "*::*/*"),
    ("compliance", "*::Buffer ioctls (*)/*"), ("compliance", "?*::*/[bM]*"),
    ("scenario", "*"), ("scenario", "*::*"), ("scenario", "*::[a-z]*"),
])
def test_expected_failure_id_that_names_no_test_is_refused(tmp_path, kind, id_):
    with pytest.raises(DataError, match=r"\[failure #1, id .*\] id = .*(matches every test|expected)"):
        data.load_expected_failures(xf(tmp_path, kind=kind, id=id_))


@pytest.mark.parametrize("id_", ["*::*/VIDIOC_QUERYCAP", "capture-streaming::Streaming ioctls/[bM]*",
                                 "output*::Format ioctls (*)/VIDIOC_ENUM_FMT/FRAMESIZES/FRAMEINTERVALS"])
def test_expected_failure_id_naming_a_profile_or_test_is_accepted(tmp_path, id_):
    (e,) = data.load_expected_failures(xf(tmp_path, id=id_))
    assert e.id == id_


@pytest.mark.parametrize("reason", ["TODO", "TODO: v4l2-compliance.cpp(736): !ok", "TBD", "FIXME later",
                                    "...", "?", "flaky", "known issue", "see issue 4",
                                    "fails under XXX, look at it"])
def test_expected_failure_placeholder_reason_is_refused(tmp_path, reason):
    with pytest.raises(DataError, match=r"reason = .* is a placeholder"):
        data.load_expected_failures(xf(tmp_path, reason=reason))


def test_expected_failure_needs_a_category(tmp_path):
    p = write(tmp_path, XF.format(**GOOD).replace('category="policy"\n', "inherent=true\n"))
    with pytest.raises(DataError, match=r"\[failure #1\]: unknown key inherent \(inherent = true\|false "
                                        r"became category"):
        data.load_expected_failures(p)
    with pytest.raises(DataError, match=r"\[failure #1\] category = .fixed.: expected 'inherent', "
                                        r"'policy' or 'pending'"):
        data.load_expected_failures(xf(tmp_path, category="fixed"))


def test_the_a3_entry_is_the_contracts_policy_not_inherent():
    entries = data.load_expected_failures()
    assert {e.category for e in entries} <= set(data.CATEGORIES)
    (a3,) = [e for e in entries if e.rule == "A3"]
    assert a3.category == "policy" and not a3.inherent
    assert "several readers" in a3.reason and "upstream" in a3.reason
    assert {e.category for e in entries if e.rule != "A3"} == {"inherent"}


def test_failures_of_loopquals_own_set_up_are_not_applicable_not_expected():
    """The harness's producer holding the write token (capture-streaming, exclusive_caps=0)
    and the max_openers=2 limit of ec1-open2 decide those outcomes, not the module: the
    profile or suite does not run there, with the reason, and no entry excuses them."""
    suites, profiles = data.load_suites()
    params = data.load_params()
    why = suites["compliance"].applies_to(params["ec1-open2"])
    assert why and "max_openers=2" in why and "100 times" in why and "producer" in why
    assert suites["compliance-strict"].applies_to(params["ec1-open2"]) is None
    for ps in ("ec0", "ec0-keep"):
        why = profiles["capture-streaming"].applies_to(params[ps])
        assert why and "producer" in why and "write token" in why
    assert profiles["capture-streaming"].applies_to(params["ec1"]) is None
    assert profiles["capture"].applies_to(params["ec0"]) is None
    # every entry left can still excuse something: a default cell where its profile runs
    compliance = suites["compliance"]
    for e in data.load_expected_failures():
        profile_glob = e.id.split("::")[0]
        live = [(ps.name, p) for ps in params.values() if ps.default
                if compliance.applies_to(ps) is None
                if not e.param_sets or any(fnmatch.fnmatchcase(ps.name, g) for g in e.param_sets)
                for p in compliance.profiles
                if profiles[p].applies_to(ps) is None and fnmatch.fnmatchcase(p, profile_glob)]
        assert live, f"{e.id} can never apply"
        assert not any(g for g in e.param_sets if fnmatch.fnmatchcase("ec1-open2", g))


def test_profile_applicability_needs_a_reason(tmp_path):
    p = write(tmp_path, '[profile.x]\ntimeout_s=1\nnot_applicable=[{ when = {exclusive_caps=1} }]\n')
    with pytest.raises(DataError, match=r"\[profile.x\] not_applicable\[0\].because: missing"):
        data.load_suites(p)
    p = write(tmp_path, '[profile.x]\ntimeout_s=1\nnot_applicable=[{ because = "a reason" }]\n')
    with pytest.raises(DataError, match=r"needs when = .* or param_sets"):
        data.load_suites(p)
    p = write(tmp_path, '[profile.x]\ntimeout_s=1\nnot_applicable=[{ when={exclusive_cap=1}, '
                        'because = "a reason" }]\n')
    with pytest.raises(DataError, match=r"\[profile.x\] not_applicable\[0\].when names 'exclusive_cap'"):
        data.load_suites(p)
    suites, profiles = data.load_suites()
    ec0 = data.load_params()["ec0"]
    assert "blocking DQBUF" in profiles["output-streaming"].applies_to(ec0)
    assert profiles["capture"].applies_to(ec0) is None


def test_suites_restricted_to_parameter_sets_say_why_elsewhere():
    suites, _profiles = data.load_suites()
    params = data.load_params()
    assert suites["browser"].applies_to(params["ec1"]) is None
    assert "runs only with parameter sets ec1" in suites["browser"].applies_to(params["ec1-buf8"])
    assert "needs exclusive_caps=1" in suites["browser"].applies_to(
        data.ParamSet("ec1", "", {"exclusive_caps": 0}, {}))
    assert suites["contract"].applies_to(params["ec1-open2"]) is None


def test_expected_failure_id_with_brackets_matches_exactly():
    e = data.ExpectedFailure(kind="scenario", id="contract/test_5_close.py::test_c2_sigkill[writer-dqbuf]",
                             reason="r", rule="C2", issue="3", category="pending", detail="")
    assert e.matches("scenario", "contract/test_5_close.py::test_c2_sigkill[writer-dqbuf]", "ec1", "k")
    assert not e.matches("scenario", "contract/test_5_close.py::test_c2_sigkill[reader-dqbuf]", "ec1", "k")


@pytest.mark.parametrize("value", ["'fast'", "0", "-5", "true"])
def test_suite_typical_seconds_must_be_a_positive_number(tmp_path, value):
    f = tmp_path / "suites.toml"
    f.write_text(f'[suite.x]\nkind = "pytest"\npaths = ["scenarios/contract"]\ntypical_s = {value}\n')
    with pytest.raises(data.DataError, match=r"\[suite.x\] typical_s = .*positive number of seconds"):
        data.load_suites(f)


# ---- point 12: a value of the wrong type is one line naming the file, the key and the type
SUITE = '[suite.contract]\nkind = "pytest"\npaths = ["scenarios/contract"]\n'
PROFILE = '[profile.output]\ntimeout_s = 180\n'
KERNEL = '[kernel.k]\nimage_package = "linux-image-amd64"\nheaders_package = "linux-headers-amd64"\n'
SOURCES = '[mirror]\nfrom = "apt"\n[source.s]\npackage = "v4l2loopback-dkms"\nversion = "1"\nsuite = "trixie"\n'
BAD_TYPES = [
    ("suites", SUITE + 'timeout_s = "ten"\n',
     r"\[suite.contract\] timeout_s = \"ten\": expected a positive number of seconds"),
    ("suites", SUITE + "timeout_s = true\n",
     r"\[suite.contract\] timeout_s = true: expected a positive number of seconds"),
    ("suites", SUITE + 'env = "A=1"\n', r"\[suite.contract\] env = \"A=1\": expected a table of strings"),
    ("suites", SUITE + "env = { A = 1 }\n", r"\[suite.contract\] env.A = 1: expected a string \(in quotes\)"),
    ("suites", SUITE.replace('["scenarios/contract"]', '"scenarios/contract"'),
     r"\[suite.contract\] paths = \"scenarios/contract\": expected a list of scenario paths"),
    ("suites", PROFILE + '[suite.c]\nkind = "compliance"\nprofiles = "output"\n',
     r"\[suite.c\] profiles = \"output\": expected a list of profile names"),
    ("suites", SUITE + 'param_sets = "ec1"\n', r"\[suite.contract\] param_sets = \"ec1\": expected a list"),
    ("suites", SUITE + 'default = "false"\n', r"\[suite.contract\] default = \"false\": expected true or false"),
    ("suites", SUITE + 'requires = "exclusive_caps=1"\n',
     r"\[suite.contract\] requires = \"exclusive_caps=1\": expected a table of parameter values"),
    ("suites", SUITE + 'kind = "shell"\n', r"x.toml: malformed TOML"),  # a key given twice
    ("suites", SUITE.replace('"pytest"', '"shell"'),
     r"\[suite.contract\] kind = \"shell\": expected 'pytest' or 'compliance'"),
    ("suites", PROFILE + 'args = "-s"\n', r"\[profile.output\] args = \"-s\": expected a list"),
    ("suites", PROFILE + 'producer = 1\n', r"\[profile.output\] producer = 1: expected true or false"),
    ("suites", PROFILE + 'idle_s = "30"\n', r"\[profile.output\] idle_s = \"30\": expected a positive number"),
    ("suites", PROFILE.replace("180", '"3 min"'),
     r"\[profile.output\] timeout_s = \"3 min\": expected a positive number of seconds"),
    ("suites", PROFILE + 'not_applicable = { when = { exclusive_caps = 0 }, because = "x" }\n',
     r"\[profile.output\] not_applicable = .*: expected a list of tables"),
    ("suites", "[suites.contract]\nkind = 'pytest'\n",
     r"x.toml: unknown top-level key\(s\) suites; this file holds \[profile\], \[suite\]"),
    ("suites", SUITE + 'path = ["x"]\n', r"\[suite.contract\]: unknown key path; allowed: .*paths"),
    ("suites", PROFILE + 'not_applicable = [{ wen = { exclusive_caps = 0 }, because = "x" }]\n',
     r"\[profile.output\]: unknown key not_applicable\[0\].wen; allowed: because, param_sets, tools, when$"),
    ("suites", PROFILE + 'not_applicable = [{ when = { exclusive_caps = 0 } }]\n',
     r"\[profile.output\] not_applicable\[0\].because: missing; expected a string: why the"),
    ("suites", PROFILE + "requires = { exclusive_caps = 1 }\n",
     r"\[profile.output\]: unknown key requires \(a profile lists where it does not apply: not_applicable"),
    ("kernels", KERNEL + 'build_needs = "dwarves"\n',
     r"\[kernel.k\] build_needs = \"dwarves\": expected a list of Debian packages"),
    ("kernels", KERNEL + 'default = "yes"\n', r"\[kernel.k\] default = \"yes\": expected true or false"),
    ("kernels", KERNEL.replace('"linux-image-amd64"', "6"),
     r"\[kernel.k\] image_package = 6: expected a Debian package name \(a string\)"),
    ("kernels", '[kernel.k]\nheaders_package = "h"\n', r"\[kernel.k\] image_package: missing; expected"),
    ("kernels", '[kernel]\nk = "linux-image-amd64"\n', r"\[kernel.k\] must be a table, not .linux-image-amd64."),
    ("sources", SOURCES + 'gated = "yes"\n', r"\[source.s\] gated = \"yes\": expected true or false"),
    ("sources", SOURCES.replace('from = "apt"', 'from = "apt"\ncomponents = "main"'),
     r"\[mirror\] components = \"main\": expected a list"),
    ("sources", SOURCES.replace('"1"', "1"), r"\[source.s\] version = 1: expected a string"),
    ("sources", SOURCES.replace('from = "apt"', 'from = "dpkg"'), r"\[mirror\] from = \"dpkg\": expected 'apt'"),
    ("params", PARAMS_HEAD + '[set.a]\nmodule = "exclusive_caps=1"\n',
     r"\[set.a\] module = \"exclusive_caps=1\": expected a table of module parameters"),
    ("params", PARAMS_HEAD + "[set.a]\nmodule = { exclusive_caps = 1.5 }\n",
     r"\[set.a\] module.exclusive_caps = 1.5: expected an integer or a string \(in quotes\) or true or false"),
    ("params", PARAMS_HEAD + '[set.a]\ncontrols = { keep_format = "1" }\n',
     r"\[set.a\] controls.keep_format = \"1\": expected an integer"),
    ("params", PARAMS_HEAD + '[set.a]\ndefault = "true"\n',
     r"\[set.a\] default = \"true\": expected true or false"),
    ("params", PARAMS_HEAD.replace('["keep_format"]', '"keep_format"') + "[set.a]\n",
     r"\[known\] controls = \"keep_format\": expected a non-empty list of V4L2 control names"),
    ("expected", XF.format(**GOOD) + 'param_sets = "ec0"\n',
     r"\[failure #1\] param_sets = \"ec0\": expected a list of parameter set globs"),
    ("expected", XF.format(**GOOD) + 'kernels = "debian-6.1"\n',
     r"\[failure #1\] kernels = \"debian-6.1\": expected a list of kernel names"),
    ("expected", XF.format(**GOOD).replace('issue="4"', "issue=4"),
     r"\[failure #1\] issue = 4: expected an issue number \(a string\)"),
    ("expected", "[failure]\nkind = 'scenario'\n", r"failures are \[\[failure\]\] tables \(a list\)"),
]
LOADERS = {"suites": data.load_suites, "kernels": data.load_kernels, "sources": data.load_sources,
           "params": data.load_params, "expected": data.load_expected_failures}


@pytest.mark.parametrize("loader,text,message", BAD_TYPES,
                         ids=[ld + ":" + re.sub(r"[^\w.= #-]", "", m)[:40] for ld, _t, m in BAD_TYPES])
def test_a_value_of_the_wrong_type_is_one_line_naming_file_key_and_type(tmp_path, loader, text, message):
    p = write(tmp_path, text)
    with pytest.raises(DataError) as info:
        LOADERS[loader](p)
    line = str(info.value)
    assert "\n" not in line and line.startswith(f"{p}: ")
    assert re.search(message, line), line


def test_a_bad_data_file_is_exit_2_and_one_line_from_the_command_line(tmp_path, monkeypatch, capsys):
    from loopqual import cli

    p = write(tmp_path, SUITE + 'timeout_s = "ten"\n', "suites.toml")
    monkeypatch.setattr(data, "load_suites", functools.partial(data.load_suites, p))
    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"loopqual: error: {p}: [suite.contract] timeout_s = \"ten\": expected a positive")


def test_the_guest_side_modules_do_not_import_the_schema_library():
    """The guest imports loopqual.common and loopqual.guest; pydantic is for the host."""
    code = ("import sys, loopqual.common.compliance, loopqual.common.health, "
            "loopqual.guest.runner, loopqual.guest.recorder; "
            "bad = [m for m in ('pydantic', 'loopqual.config.data') if m in sys.modules]; "
            "sys.exit(str(bad) if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("text,message", [
    ("[deny.bug]\nregex = 5\n", r"\[deny.bug\] regex = 5: expected a regular expression \(a string\)"),
    ('[deny]\nbug = "^BUG: "\n', r"\[deny.bug\] must be a table, not \"\^BUG: \""),
    ('[deny.bug]\nregx = "^BUG: "\n', r"\[deny.bug\]: unknown key regx; allowed: regex"),
    ('[deny.bug]\nregex = "(BUG"\n', r"\[deny.bug\] regex is not a valid regular expression"),
    ('[allow.taint]\nregex = "taints"\n', r"no \[deny.NAME\] entries"),
])
def test_splat_patterns_are_checked_on_the_host(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        data.check_splats(write(tmp_path, text))
    assert data.check_splats() >= 10


def _leaves(node, path=()):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))
    else:
        yield path, node


def _wrong(value):
    return 5 if isinstance(value, str) else "x" if not isinstance(value, (list, dict)) else "x"


@pytest.mark.parametrize("loader,path", [
    (data.load_kernels, data.KERNELS_FILE), (data.load_sources, data.SOURCES_FILE),
    (data.load_params, data.PARAMS_FILE), (data.load_suites, data.SUITES_FILE),
    (data.load_expected_failures, data.EXPECTED_FAILURES_FILE), (data.check_splats, data.SPLATS_FILE),
], ids=lambda x: getattr(x, "name", None))
def test_every_field_of_every_real_data_file_refuses_a_wrong_type(monkeypatch, loader, path):
    """Each value of the real file, replaced by one of another type (a string by a number, any
    other value by a string): one line naming the file and the key, never another exception."""
    import copy
    import tomllib

    real = tomllib.loads(path.read_text())
    original = data.load_toml
    refused, may_be_either = 0, 0
    leaves = list(_leaves(real))
    for keys, value in leaves:
        # a module parameter or a condition on one may be a number or a string (card_label)
        may_be_either += any(k in ("module", "requires", "when") for k in keys[:-1])
        mutated = copy.deepcopy(real)
        target = mutated
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = _wrong(value)
        monkeypatch.setattr(data, "load_toml", lambda p, *t, m=mutated: m if p == path else original(p, *t))
        try:
            loader(path)
        except DataError as exc:
            line = str(exc)
            assert "\n" not in line and line.startswith(str(path)), line
            assert str(keys[-1]) in line or isinstance(keys[-1], int), (keys, line)
            refused += 1
    assert refused >= len(leaves) - may_be_either, f"{refused} of {len(leaves)} refused"


def test_expected_failure_scoped_to_tool_versions(tmp_path):
    (e,) = data.load_expected_failures(xf(tmp_path, 'tool_versions=["1.22.*"]\n'))
    item = GOOD["id"]
    assert e.matches("compliance", item, "ec1", "debian-6.1", "x != EBUSY", "1.22.1")
    assert not e.matches("compliance", item, "ec1", "debian-6.1", "x != EBUSY", "1.32.0")
    # a run whose version is unknown is not covered by a version-scoped entry
    assert not e.matches("compliance", item, "ec1", "debian-6.1", "x != EBUSY", None)
    with pytest.raises(DataError, match=r"tool_versions scopes v4l2-compliance results"):
        data.load_expected_failures(xf(tmp_path, 'tool_versions=["1.22.*"]\n', kind="scenario",
                                       id="contract/test_a.py::*"))


NV12_FAIL = ("fail: v4l2-test-formats.cpp(263): fmtdesc.description mismatch: was 'Y/UV 4:2:0', "
             "expected 'Y/CbCr 4:2:0'")


@pytest.mark.parametrize("version", ["1.24.1", "1.28.1", "1.32.0"])
def test_no_entry_excuses_newer_compliance_for_the_nv12_wording(version):
    """v4l-utils 1.24 and later accept both NV12 descriptions: a failure there is real."""
    item = "output::Format ioctls (Output 0)/VIDIOC_ENUM_FMT/FRAMESIZES/FRAMEINTERVALS"
    for e in data.load_expected_failures():
        for params in ("ec0", "ec1", "ec0-keep", "ec1-keep", "ec1-buf8"):
            for kernel in ("debian-6.1", "debian-6.12"):
                assert not e.matches("compliance", item, params, kernel, NV12_FAIL, version), e.id
    # ... while 1.22 is still excused by the entry that says why
    assert any(e.matches("compliance", item, "ec1", "debian-6.1", NV12_FAIL, "1.22.1")
               for e in data.load_expected_failures())


def test_a_suite_like_another_takes_its_settings_and_a_tool():
    suites, _profiles = data.load_suites()
    sid, host = suites["compliance-sid"], suites["compliance"]
    assert (sid.kind, sid.profiles, sid.not_applicable, sid.default) == \
        (host.kind, host.profiles, host.not_applicable, host.default)
    assert (sid.tool, host.tool) == ("sid", None)
    assert data.load_tools()["sid"].packages == ("v4l-utils",)


@pytest.mark.parametrize("text, message", [
    ('[suite.a]\nkind="compliance"\nprofiles=["p"]\ntool="nope"\n',
     r"\[suite.a\] names unknown tool 'nope'; known: none"),
    ('[suite.a]\nkind="pytest"\npaths=["x"]\ntool="t"\n[tool.t]\nsuite="sid"\npackages=["v4l-utils"]\n',
     r"\[suite.a\] tool = 't': only a compliance suite runs a tool"),
    ('[suite.a]\nlike="b"\n', r"\[suite.a\] like = 'b': name a suite of this file"),
    ('[suite.a]\nkind="compliance"\nprofiles=["p"]\ntool="t"\n[tool.t]\nsuite="sid"\npackages=[]\n',
     r"\[tool.t\] packages"),
])
def test_bad_tools_and_likes_are_one_clear_error(tmp_path, text, message):
    p = write(tmp_path, '[profile.p]\ntimeout_s=1\n' + text)
    with pytest.raises(DataError, match=message):
        data.load_suites(p, data.PARAMS_FILE)


def test_a_profile_exclusion_can_hold_for_one_tool_only(tmp_path):
    _suites, profiles = data.load_suites()
    params = data.load_params()
    assert "tool sid" in profiles["capture"].applies_to(params["ec0"], "sid")
    assert profiles["capture"].applies_to(params["ec0"]) is None  # bookworm's 1.22 runs it
    assert profiles["capture"].applies_to(params["ec1"], "sid") is None
    p = write(tmp_path, '[profile.p]\ntimeout_s=1\nnot_applicable=[{ when={exclusive_caps=0}, '
                        'tools=["nope"], because="a reason here" }]\n')
    with pytest.raises(DataError, match=r"\[profile.p\] not_applicable names unknown tool 'nope'"):
        data.load_suites(p, data.PARAMS_FILE)


def test_guest_append_takes_kernel_parameters_only(tmp_path):
    """guest_append reaches the guest's command line: words of the form key=value, nothing a
    shell or the boot loader would read as more."""
    head = '[kernel.a]\nimage_package="x"\nheaders_package="y"\n'
    ok = data.load_kernels(write(tmp_path, head + 'guest_append="kfence.sample_interval=10000 a.b=1,2"\n'))
    assert ok["a"].guest_append == "kfence.sample_interval=10000 a.b=1,2"
    for bad in ('"x=1; reboot"', '"init=/bin/sh $(id)"', '"quiet"', "5"):
        with pytest.raises(DataError, match=r"kernel\.a.*guest_append"):
            data.load_kernels(write(tmp_path, head + f"guest_append={bad}\n"))
