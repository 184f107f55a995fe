"""Data files: the real ones load; malformed or unknown input is one clear DataError."""

import fnmatch

import pytest

from loopqual import data
from loopqual.errors import DataError


def test_real_data_files_load():
    kernels = data.load_kernels()
    assert {"debian-6.1", "debian-6.12"} <= set(kernels)
    assert [k for k in kernels.values() if k.default] == [kernels["debian-6.1"]]
    _mirror, sources = data.load_sources()
    assert {"debian-0.12.7", "debian-0.13.2", "debian-0.15.0", "patched"} <= set(sources)
    assert sources["patched"].gated and sources["patched"].base == "debian-0.15.0"
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
    with pytest.raises(DataError, match=r"\[failure #1, id .*\] reason = '' is a placeholder"):
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
    with pytest.raises(DataError, match=r"\[failure #1\] category = 'fixed': expected 'inherent', "
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
                             reason="r", rule="C2", issue="3")
    assert e.matches("scenario", "contract/test_5_close.py::test_c2_sigkill[writer-dqbuf]", "ec1", "k")
    assert not e.matches("scenario", "contract/test_5_close.py::test_c2_sigkill[reader-dqbuf]", "ec1", "k")


@pytest.mark.parametrize("value", ["'fast'", "0", "-5", "true"])
def test_suite_typical_seconds_must_be_a_positive_number(tmp_path, value):
    f = tmp_path / "suites.toml"
    f.write_text(f'[suite.x]\nkind = "pytest"\npaths = ["scenarios/contract"]\ntypical_s = {value}\n')
    with pytest.raises(data.DataError, match=r"\[suite.x\] typical_s = .*positive number of seconds"):
        data.load_suites(f)
