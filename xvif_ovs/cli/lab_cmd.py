"""`xvif-ovs lab ...`: drive the simulated Xen host from the shell."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from ..errors import XvifError

EPILOG = """examples:
  xvif-ovs lab up --bridge xenbr1:peth1 --internal xenpriv
  xvif-ovs lab domain add web --domid 5 --vif 'mac=00:16:3e:00:00:05,bridge=xenbr0.10,ip=192.0.2.5'
  xvif-ovs lab exec web -- ping -c1 192.0.2.1
  eval "$(xvif-ovs lab env)"; ovs-vsctl show; xenstore-ls /local/domain/0/backend
  xvif-ovs lab down"""


def add_lab_parser(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser(
        "lab",
        help="a simulated Xen host on real Open vSwitch",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lab.add_argument(
        "--dir", default=os.environ.get("XVIF_LAB_DIR"), help="lab state directory (default /run/xvif-ovs/lab)"
    )
    cmds = lab.add_subparsers(dest="lab_command", required=True)
    # --dir is accepted after the subcommand too (`lab up --dir D`), as operators type it.
    here = argparse.ArgumentParser(add_help=False)
    here.add_argument("--dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    up = cmds.add_parser(
        "up",
        parents=[here],
        help="start OVS, XenStore and the bridges",
        epilog="example: xvif-ovs lab up --bridge xenbr1:peth1 --bridge xenbr2:peth2:routed --bridge xennat:peth3:nat",
    )
    up.add_argument(
        "--bridge",
        action="append",
        default=[],
        metavar="BR:UPLINK[:routed|:nat]",
        help="another bridge with an uplink (xenbr0:peth0 is always made); :routed routes its guests "
        "as Xen's vif-route does, :nat translates them as vif-nat does (dom0 gets addresses on it)",
    )
    up.add_argument(
        "--internal", action="append", default=[], metavar="BR", help="a bridge with no uplink (an internal network)"
    )
    up.add_argument("--controller", action="store_true", help="also run the xvif-ovs controller on the bridges")
    up.set_defaults(func=_up)

    ctl = cmds.add_parser(
        "controller",
        parents=[here],
        help="start, stop or kill the lab's controller",
        epilog="example: xvif-ovs lab controller restart",
    )
    ctl.add_argument("action", choices=["start", "stop", "kill", "restart"])
    ctl.add_argument("--config", help="controller TOML file")
    ctl.set_defaults(func=_controller)

    down = cmds.add_parser(
        "down", parents=[here], help="remove everything the lab made", epilog="example: xvif-ovs lab down"
    )
    down.set_defaults(func=_down)

    st = cmds.add_parser(
        "status", parents=[here], help="processes, bridges and domains", epilog="example: xvif-ovs lab status --json"
    )
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)

    env = cmds.add_parser(
        "env",
        parents=[here],
        help="print the exports for Xen's and OVS's own tools",
        epilog='example: eval "$(xvif-ovs lab env)"',
    )
    env.set_defaults(func=_env)

    dom = cmds.add_parser("domain", help="boot or destroy a guest as libxl would")
    dcmds = dom.add_subparsers(dest="domain_command", required=True)
    add = dcmds.add_parser(
        "add",
        parents=[here],
        help="boot a guest: namespace, vifs, XenStore keys, hotplug scripts",
        epilog="example: xvif-ovs lab domain add web --domid 5 --vif 'bridge=xenbr0.10,ip=192.0.2.5' --hvm",
    )
    add.add_argument("name")
    add.add_argument("--domid", type=int, required=True)
    add.add_argument(
        "--vif", action="append", required=True, metavar="SPEC", help="an xl vif spec; repeat for more NICs"
    )
    add.add_argument("--hvm", action="store_true", help="also make the emulated tap vifN.M-emu")
    add.add_argument("--netbsd", action="store_true", help="name backends xvifN.M as NetBSD does")
    add.set_defaults(func=_domain_add)
    rm = dcmds.add_parser("del", parents=[here], help="destroy a guest", epilog="example: xvif-ovs lab domain del web")
    rm.add_argument("name")
    rm.set_defaults(func=_domain_del)
    mig = dcmds.add_parser(
        "migrate",
        parents=[here],
        help="migrate a PV guest within the host as `xl migrate NAME localhost` does (new domid, same NICs)",
        epilog="example: xvif-ovs lab domain migrate web --domid 6",
    )
    mig.add_argument("name")
    mig.add_argument("--domid", type=int, required=True, help="the incoming domain's domid")
    mig.set_defaults(func=_domain_migrate)

    demo = cmds.add_parser(
        "demo",
        parents=[here],
        help="bring a host up, boot guests on VLANs, show XenStore, OVS and reachability",
        epilog="example: xvif-ovs lab demo --keep",
    )
    demo.add_argument("--keep", action="store_true", help="leave the lab up afterwards to explore it")
    demo.set_defaults(func=_demo)

    ex = cmds.add_parser(
        "exec",
        parents=[here],
        help="run a command in a guest (or 'lan')",
        epilog="example: xvif-ovs lab exec lan -- ip addr",
    )
    ex.add_argument("name", help="a domain name, 'lan', or 'lan-BRIDGE'")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    ex.set_defaults(func=_exec)


def _lab(args: argparse.Namespace):  # noqa: ANN202
    from ..lab.host import Lab

    return Lab(args.dir)


def _guarded(fn):  # noqa: ANN001, ANN202
    """Operator errors print one line and exit 1; anything else is a bug and keeps its traceback."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args) or 0
        except XvifError as e:
            print(f"xvif-ovs lab: {e}", file=sys.stderr)
            return 1

    return wrapper


@_guarded
def _up(args: argparse.Namespace) -> int:
    from ..lab.host import BridgeArg, parse_bridge_arg

    bridges = [BridgeArg("xenbr0", "peth0")] + [parse_bridge_arg(b) for b in args.bridge]
    for name in args.internal:
        b = parse_bridge_arg(name)
        bridges.append(BridgeArg(b.name, None))
    lab = _lab(args)
    state = lab.up(bridges, controller=args.controller)
    for b in state.bridges:
        side = f"uplink {b.uplink} -> LAN namespace '{b.lan}' ({b.lan_ipv4}, {b.lan_ipv6})" if b.uplink else "internal"
        if b.mode == "routed":
            side += f"; routed, dom0 {b.dom0_ipv4}"
        elif b.mode == "nat":
            side += f"; NAT to dom0's {b.dom0_ipv4} for guests on {b.nat_subnet} (gateway {b.nat_gateway})"
        print(f"bridge {b.name}: {side}")
    print(f'lab up in {lab.dir}; `eval "$(xvif-ovs lab env)"` for xenstore-* and ovs-* tools')
    return 0


@_guarded
def _controller(args: argparse.Namespace) -> int:
    from pathlib import Path

    lab = _lab(args)
    lab.require_up()
    cfg = Path(args.config) if args.config else None
    if args.action in ("stop", "kill", "restart"):
        lab.stop_controller(kill=args.action == "kill")
    if args.action in ("start", "restart"):
        lab.start_controller(cfg)
    return 0


@_guarded
def _down(args: argparse.Namespace) -> int:
    _lab(args).down()
    return 0


@_guarded
def _status(args: argparse.Namespace) -> int:
    st = _lab(args).status()
    if args.json:
        print(json.dumps(st, indent=2))
        return 0 if st["up"] else 1
    print(f"lab {st['dir']}: {'up' if st['up'] else 'down'}")
    for name, pid in st["processes"].items():
        print(f"  {name:14} {'pid ' + str(pid) if pid else 'not running'}")
    for b in st["bridges"]:
        print(f"  bridge {b['name']:10} {'uplink ' + b['uplink'] if b['uplink'] else 'internal'}")
    for name, d in st["domains"].items():
        print(f"  domain {name:10} domid {d['domid']:<5} {' '.join(d['vifs'])}")
    return 0 if st["up"] else 1


@_guarded
def _env(args: argparse.Namespace) -> int:
    lab = _lab(args)
    for k, v in lab.env().items():
        print(f"export {k}={shlex.quote(v)}")
    return 0


@_guarded
def _domain_add(args: argparse.Namespace) -> int:
    from ..lab.domain import add_domain

    dom = add_domain(_lab(args), args.name, args.domid, args.vif, args.hvm, args.netbsd)
    for v in dom.vifs:
        extra = f" + {v.emu}" if v.emu else ""
        print(
            f"domain {dom.name} (domid {dom.domid}): {v.vifname or v.dev}{extra} mac {v.mac} on {v.bridge}: connected"
        )
    return 0


@_guarded
def _domain_migrate(args: argparse.Namespace) -> int:
    from ..lab.domain import migrate_domain

    dom = migrate_domain(_lab(args), args.name, args.domid)
    print(f"domain {dom.name} migrated: domid {dom.domid} ({', '.join(v.dev for v in dom.vifs)}), connected")
    return 0


@_guarded
def _domain_del(args: argparse.Namespace) -> int:
    from ..lab.domain import del_domain

    del_domain(_lab(args), args.name)
    return 0


@_guarded
def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..lab.demo import run_demo

    return run_demo(Path(args.dir) if args.dir else None, args.keep)


@_guarded
def _exec(args: argparse.Namespace) -> int:
    from ..errors import LabError
    from ..lab.state import netns_of

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise LabError("give a command after --, e.g. `xvif-ovs lab exec web -- ip addr`")
    lab = _lab(args)
    state = lab.require_up()
    lans = {b.lan for b in state.bridges if b.lan}
    if args.name not in state.domains and args.name not in lans:
        raise LabError(
            f"no domain or LAN named {args.name} (domains: {', '.join(state.domains) or 'none'}; LANs: {', '.join(sorted(lans))})"
        )
    os.execvp("ip", ["ip", "netns", "exec", netns_of(args.name), *cmd])
