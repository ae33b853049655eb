"""The controller's bundles against a real ovs-vswitchd: all of a plan or none of it.

A refused flow, or a pipeline build that fails half way through a streamed bundle,
must leave the switch's flows and groups exactly as they were."""

from __future__ import annotations

import subprocess

import pytest
from ofmgmt import MgmtDatapath

from xvif_ovs.controller.session import Session, SwitchError
from xvif_ovs.model.host import BridgeModel, VifModel
from xvif_ovs.model.vifspec import parse_bridge, parse_ips
from xvif_ovs.pipeline.build import P_DEFAULT, build_parts, stream_parts
from xvif_ovs.pipeline.diff import by_owner, diff_parts
from xvif_ovs.pipeline.flow import COOKIE_MAGIC, COOKIE_MASK, Flow, Goto, cookie

OURS = f"cookie={COOKIE_MAGIC:#x}/{COOKIE_MASK:#x}"


def vif(domid: int, ip: str) -> VifModel:
    return VifModel(
        domid=domid,
        devid=0,
        mac=f"00:16:3e:00:07:{domid:02x}",
        vlans=parse_bridge("xenbr0"),
        ips=parse_ips(ip),
        vif_port=700 + domid,
        name=f"d{domid}",
    )


def model(*vifs: VifModel) -> BridgeModel:
    return BridgeModel("xenbr0", uplinks=(1,), vifs=vifs)


def switch_state(host) -> tuple[str, str]:
    """Our flows and all groups as ovs-ofctl sees them: an observer besides the Session."""
    mgmt = f"unix:{host.lab.dir}/xenbr0.mgmt"

    def ofctl(*args: str) -> str:
        cmd = ["ovs-ofctl", "-O", "OpenFlow13", *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    # Not table 4: what the learn action makes (dom0's own frames, once a pipeline is in)
    # comes and goes on its own.
    flows = ofctl("--no-stats", "--sort", "dump-flows", mgmt, OURS)
    flows = "".join(line for line in flows.splitlines(keepends=True) if ", table=4, " not in line)
    return flows, ofctl("dump-groups", mgmt)


def count(dump: str, first: str) -> int:
    return sum(line.lstrip().startswith(first) for line in dump.splitlines())


@pytest.fixture
def session(host, monkeypatch):
    monkeypatch.setenv("OVS_RUNDIR", str(host.lab.dir))  # where OfClient finds xenbr0.mgmt
    dp = MgmtDatapath("xenbr0")
    s = Session(dp)
    dp.session = s
    s.read_ports()
    s.read_tables()
    yield s
    mgmt = f"unix:{host.lab.dir}/xenbr0.mgmt"
    for what in ("del-flows", "del-groups"):
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", what, mgmt], check=True)
    dp.close()


def test_a_plan_with_one_refused_flow_changes_nothing(host, session):
    before_model = model(vif(5, "192.0.2.5"), vif(6, "192.0.2.6"))
    session.apply(diff_parts(build_parts(before_model, 300), {}, []))
    before = switch_state(host)
    assert count(before[0], "cookie=") > 100 and count(before[1], "group_id=") > 0

    installed = by_owner(build_parts(before_model, 300).flowset().flows)
    after_model = model(vif(5, "192.0.2.55"), vif(7, "192.0.2.7"))  # a change, a removal, an addition
    plan = diff_parts(build_parts(after_model, 300), installed, build_parts(before_model, 300).groups)
    assert plan.flow_adds and plan.flow_deletes and plan.gone_owners
    # OpenFlow 1.3 forbids going back to an earlier table: OVS refuses this one at add time.
    plan.flow_adds.append(Flow(3, 1, (), (Goto(1),), cookie(P_DEFAULT)))
    with pytest.raises(SwitchError, match="refused 1 bundled message"):
        session.apply(plan)
    assert switch_state(host) == before


def test_a_streamed_fill_whose_build_fails_half_way_commits_nothing(host, session):
    before = switch_state(host)
    assert count(before[0], "cookie=") == 0

    def failing_build(emit):
        parts = build_parts(model(vif(5, "192.0.2.5"), vif(6, "192.0.2.6")), 300)
        emit(parts.groups)
        emit(next(iter(parts.flows.values())))
        raise RuntimeError("a bug in the middle of the build")

    with pytest.raises(RuntimeError, match="middle of the build"):
        session.fill(failing_build)
    assert switch_state(host) == before

    whole = model(vif(5, "192.0.2.5"), vif(6, "192.0.2.6"))
    parts = session.fill(lambda emit: stream_parts(whole, 300, emit))
    flows, groups = switch_state(host)
    assert count(flows, "cookie=") == sum(map(len, parts.flows.values()))
    assert count(groups, "group_id=") == len(parts.groups)
