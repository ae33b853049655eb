"""Entry point: one subcommand per part (xenstored, lab, ...)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse


def build_parser() -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(prog="xvif-ovs", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    xs = sub.add_parser(
        "xenstored",
        help="run a XenStore server on a Unix socket (for hosts without a hypervisor)",
        epilog="example: xvif-ovs xenstored --socket /run/xenstored/socket --pidfile /run/xenstored.pid",
    )
    xs.add_argument(
        "--socket",
        required=True,
        help="Unix socket to listen on (clients use XENSTORED_PATH); refused if a live server answers there",
    )
    xs.add_argument("--pidfile", help="write the pid here once the socket accepts connections")
    xs.add_argument("--log-file", help="log here instead of stderr")
    xs.add_argument("--state-file", help="save the tree here on SIGTERM and load it at start (survive a restart)")
    xs.add_argument("-v", "--verbose", action="store_true", help="log every request error")
    xs.set_defaults(func=_xenstored)

    hp = sub.add_parser(
        "hotplug",
        help="the vif hotplug hook (what deploy/vif-xvif-ovs runs for libxl)",
        epilog="example: vif=vif5.0 XENBUS_PATH=/local/domain/0/backend/vif/5/0 xvif-ovs hotplug online",
    )
    hp.add_argument("args", nargs=argparse.REMAINDER, help="online|offline|add|remove [type_if=tap]")
    hp.set_defaults(func=_hotplug)

    ctl = sub.add_parser(
        "controller",
        help="the OpenFlow controller (os-ken) that programs the bridges",
        epilog="example: xvif-ovs controller --config /etc/xvif-ovs/controller.toml",
    )
    ctl.add_argument("--config", help="TOML file (see deploy/controller.toml)")
    ctl.add_argument(
        "--listen",
        help="unix (default: OVS_RUNDIR/xvif-ovs.sock), tcp:[HOST:]PORT or ssl:[HOST:]PORT (HOST: 127.0.0.1 "
        "unless given; ssl needs the config's [ssl], tcp beyond loopback its allow_remote_listen = true)",
    )
    ctl.add_argument("--bridge", action="append", dest="bridges", help="manage only this bridge (repeatable)")
    ctl.add_argument("--db", help="OVSDB remote (default: OVS_RUNDIR/db.sock)")
    ctl.add_argument("--xenstore", help="XenStore socket (default: XENSTORED_PATH, as Xen's tools)")
    ctl.add_argument("--no-syslog", action="store_true")
    ctl.add_argument("-v", "--verbose", action="store_true")
    ctl.set_defaults(func=_controller)

    from .inspect_cmd import add_inspect_parsers

    add_inspect_parsers(sub)

    from .lab_cmd import add_lab_parser

    add_lab_parser(sub)
    return p


def _xenstored(args: argparse.Namespace) -> int:
    from ..xenstore.daemon import run

    return run(args.socket, args.pidfile, args.log_file, args.verbose, args.state_file)


def _controller(args: argparse.Namespace) -> int:
    from ..controller.config import ConfigError, load
    from ..controller.main import run

    try:
        cfg = load(args.config, listen=args.listen, bridges=args.bridges, ovsdb=args.db, xenstore=args.xenstore)
    except ConfigError as e:
        print(f"xvif-ovs controller: {e}", file=sys.stderr)
        return 2
    return run(cfg, args.verbose, not args.no_syslog)


def _hotplug(args: argparse.Namespace) -> int:
    import os

    from ..hotplug.run import run

    return run(args.args, os.environ)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["hotplug"] and not {"-h", "--help"} & set(argv):
        # libxl waits for every hook: skip building the whole parser.
        import os

        from ..hotplug.run import run

        return run(argv[1:], os.environ)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
