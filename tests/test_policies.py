"""Policy files: every shipped file loads with verified citations; invalid files fail with every problem named."""
from __future__ import annotations

import shutil
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import BaseModel

from pipeline.finance.policies import (DEFAULT_POLICY_DIR, Cite, PolicyError, load_policies,
                                       load_policy_file)

PROGRAMME_IDS = {  # POLICIES.md: the public programme ids
    "huairou.compute_voucher",
    "yizhuang.ai_spend", "yizhuang.ip_conversion", "yizhuang.overseas_revenue",
    "tongzhou.ai_comic", "tongzhou.overseas", "tongzhou.location_shoot", "tongzhou.rd_increment",
    "mentougou.licensed_work",
    "datong.revenue_share", "datong.local_theme", "datong.rd",
}
COMPANY_LEVEL = {"yizhuang.overseas_revenue", "tongzhou.rd_increment", "datong.rd"}

VALID = """\
district: huairou
title: test policy
seed: 003_332d36df0d886521.txt
status: in_force
validity: {cite: {clause: "三"}}
programmes:
  - id: huairou.compute_voucher
    title: voucher
    level: per_work
    cite: {clause: "三(二)1", quote: 单部支持额度最高2万元}
    basis: {kind: sum, fields: [costs.compute], cite: {clause: "三(二)1"}}
    rate: {value: 0.30, cite: {clause: "三(二)1"}}
    cap_per_work: {amount: 20000, cite: {clause: "三(二)1"}}
"""


def write(tmp_path: Path, text: str, name: str = "huairou.yaml", seeds: bool = False) -> Path:
    (tmp_path / name).write_text(textwrap.dedent(text), encoding="utf-8")
    if seeds and not (tmp_path / "seeds").exists():
        shutil.copytree(DEFAULT_POLICY_DIR / "seeds", tmp_path / "seeds")
    return tmp_path


def problems(tmp_path: Path) -> list[str]:
    with pytest.raises(PolicyError) as err:
        load_policies(tmp_path)
    return err.value.problems


def test_every_shipped_policy_loads_with_the_public_programme_ids():
    policies = load_policies()
    assert [p.district for p in policies.policies] == ["datong", "huairou", "mentougou", "tongzhou", "yizhuang"]
    assert set(policies.programme_ids()) == PROGRAMME_IDS
    levels = {prog.id: prog.level for p in policies.policies for prog in p.programmes}
    assert {pid for pid, level in levels.items() if level == "company"} == COMPANY_LEVEL
    seeds = {p.district: p.seed for p in policies.policies}
    assert seeds == {"mentougou": "000_00e89342472210b3.txt", "tongzhou": "001_5e7e4db95232667a.txt",
                     "yizhuang": "002_6a76eb12d81cdff2.txt", "huairou": "003_332d36df0d886521.txt",
                     "datong": "004_742d2a261bc81593.txt"}


def test_shipped_numbers_match_policies_md():
    progs = {prog.id: prog for p in load_policies().policies for prog in p.programmes}
    hr = progs["huairou.compute_voucher"]
    assert (hr.rate.value, hr.cap_per_work.amount, hr.limit.count) == (Decimal("0.30"), 20000, 5)
    assert (hr.uplifts[0].factor, hr.uplifts[0].cap_per_work.amount) == (Decimal("1.3"), 26000)
    opc = progs["yizhuang.ai_spend"].variants[0]
    assert (opc.rate.value, opc.cap_per_company_year.amount) == (Decimal("0.50"), 500000)
    bands = progs["yizhuang.overseas_revenue"].brackets.bands
    assert [(b.lower, b.upper, b.rate) for b in bands] == [
        (0, 15_000_000, Decimal("0.01")), (15_000_000, 100_000_000, Decimal("0.03")),
        (100_000_000, None, Decimal("0.06"))]
    assert progs["mentougou.licensed_work"].fixed.amount == 50000
    assert progs["datong.local_theme"].conditions[0].value == Decimal("0.20")


def test_every_rule_cites_a_clause_and_quotes_are_verbatim():
    # load_policies checks each quote against configs/policies/seeds/<seed>; here: every cite has a clause
    cites = []

    def walk(node):
        if isinstance(node, Cite):
            cites.append(node)
        elif isinstance(node, BaseModel):
            for name in type(node).model_fields:
                walk(getattr(node, name))
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for policy in load_policies().policies:
        walk(policy)
    assert len(cites) > 100 and all(c.clause for c in cites)
    assert sum(bool(c.quote) for c in cites) > 100


def test_a_minimal_inline_policy_loads_and_yaml_floats_stay_exact(tmp_path):
    policy = load_policies(write(tmp_path, VALID)).policies[0]
    assert policy.programmes[0].rate.value == Decimal("0.30")
    assert str(policy.programmes[0].rate.value) == "0.30"


@pytest.mark.parametrize("edit, expected", [
    (("    title: voucher\n", "    title: voucher\n    colour: red\n"), "programmes[0].colour: unknown key"),
    (('    cite: {clause: "三(二)1", quote: 单部支持额度最高2万元}\n', ""), "programmes[0].cite: required"),
    (('{value: 0.30, cite: {clause: "三(二)1"}}', '{value: 0.30}'), "programmes[0].rate.cite: required"),
    (("value: 0.30", "value: -0.30"), "programmes[0].rate.value: a rate is a fraction between 0 and 1"),
    (("value: 0.30", "value: 30"), "(30% is 0.30), got 30"),
    (("amount: 20000", "amount: -1"), "programmes[0].cap_per_work.amount: must be >= 0"),
    (("fields: [costs.compute]", "fields: [costs.gpu]"), "basis.fields[0]: 'costs.gpu' is not a usable field"),
    (("level: per_work", "level: per_drama"), "programmes[0].level"),
    (("id: huairou.compute_voucher", "id: yizhuang.compute_voucher"), "must start with 'huairou.'"),
    (("district: huairou", "district: datong"), "must match the file name 'huairou'.yaml"),
    (("    cap_per_work:", "    fixed: {amount: 1, cite: {clause: x}}\n    cap_per_work:"),
     "give exactly one of rate, fixed, brackets"),
])
def test_invalid_policy_files_name_file_and_field(tmp_path, edit, expected):
    old, new = edit
    assert old in VALID
    found = problems(write(tmp_path, VALID.replace(old, new)))
    assert any(expected in p and "huairou.yaml" in p for p in found), found


def test_bad_brackets_are_each_reported(tmp_path):
    text = VALID.replace("    rate: {value: 0.30, cite: {clause: \"三(二)1\"}}\n", """\
    brackets:
      mode: whole
      cite: {clause: x}
      bands:
        - {from: 10, to: 100, rate: 0.01}
        - {from: 200, to: null, rate: 0.03}
        - {from: 300, to: 400, rate: 0.06}
""")
    found = "\n".join(problems(write(tmp_path, text)))
    assert "bands[0].from: the first band must start at 0, got 10" in found
    assert "bands[1].to: only the last band may be open-ended" in found
    assert "bands[1].from: must equal the previous band's to (100), got 200" in found
    assert "bands[2].to: the last band must be open-ended" in found


def test_company_level_rules_cannot_use_drama_fields(tmp_path):
    text = VALID.replace("level: per_work", "level: company") + """\
    conditions:
      - {test: launched, cite: {clause: x}}
      - {test: is_true, field: overseas, cite: {clause: x}}
"""
    found = "\n".join(problems(write(tmp_path, text)))
    assert "cap_per_work: only per-work programmes have it" in found
    assert "basis.fields[0]: 'costs.compute' is not a usable field here" in found
    assert "conditions[0]: the 'launched' test needs a drama" in found
    assert "conditions[1].field: 'overseas' is not a usable field here" in found


def test_quotes_are_checked_against_the_seed_text(tmp_path):
    found = problems(write(tmp_path, VALID.replace("最高2万元}", "最高3万元}"), seeds=True))
    assert found == [f"{tmp_path / 'huairou.yaml'}: programmes[0].cite.quote: not found verbatim in "
                     "003_332d36df0d886521.txt: '单部支持额度最高3万元'"]
    assert load_policies(write(tmp_path, VALID, seeds=True)).policies  # the genuine quote passes


def test_every_problem_in_every_file_is_collected(tmp_path):
    write(tmp_path, VALID.replace("value: 0.30", "value: 2").replace("title: voucher", "title: ''"))
    write(tmp_path, "district: mentougou\n- not a mapping\n", name="mentougou.yaml")
    write(tmp_path, VALID.replace("huairou", "tongzhou").replace("policy:", ""), name="tongzhou.yaml")
    (tmp_path / "tongzhou.yaml").write_text(
        (tmp_path / "tongzhou.yaml").read_text() + "stacking:\n  - {id: s, label: x, rule: one_bundle_per_work,"
        " bundles: [[policy:tongzhou], [policy:chaoyang], [tongzhou.nothing]], cite: {clause: x}}\n")
    found = "\n".join(problems(tmp_path))
    assert "huairou.yaml: programmes[0].rate.value" in found
    assert "huairou.yaml: programmes[0].title" in found
    assert "mentougou.yaml: not valid YAML" in found
    assert "unknown district in 'policy:chaoyang'" in found
    assert "no programme 'tongzhou.nothing' in this policy" in found


def test_empty_directory_and_single_file_errors(tmp_path):
    assert problems(tmp_path) == [f"{tmp_path}: no policy files (*.yaml) found"]
    policy, found = load_policy_file(write(tmp_path, "[1, 2]\n") / "huairou.yaml")
    assert policy is None and "a policy file is a mapping" in found[0]
