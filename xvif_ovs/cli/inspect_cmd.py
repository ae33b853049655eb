"""The operator's commands: show, flows, trace, doctor, rules, mirror, log, mac new, completion.

Each finds XenStore and OVSDB as Xen's and OVS's tools do (XENSTORED_PATH, OVS_RUNDIR,
--db), prints a table or --json, changes nothing, and exits non-zero with one line when
the thing asked for is not there or the host is unhealthy.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import XvifError


def _common(p: argparse.ArgumentParser, json_too: bool = True) -> None:
    p.add_argument("--db", help="OVSDB remote (default: unix:$OVS_RUNDIR/db.sock)")
    p.add_argument("--xenstore", help="XenStore socket (default: $XENSTORED_PATH, as Xen's tools)")
    if json_too:
        p.add_argument("--json", action="store_true", help="machine-readable output (shape in the command's docs)")


def add_inspect_parsers(sub: argparse._SubParsersAction) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "show", help="bridges and guests' vifs", formatter_class=raw, epilog="example: xvif-ovs show xenbr0"
    )
    p.add_argument("bridge", nargs="?")
    _common(p)
    p.set_defaults(func=_show)

    p = sub.add_parser(
        "flows",
        help="installed flows by vif and purpose, drift, drops",
        formatter_class=raw,
        epilog="examples:\n  xvif-ovs flows --domain web\n  xvif-ovs flows --diff\n  xvif-ovs flows --drops",
    )
    who = p.add_mutually_exclusive_group()
    who.add_argument("--vif", help="only this vif's flows (vif5.0, or its vifname)")
    who.add_argument("--domain", help="only this domain's flows (name or domid)")
    p.add_argument("--table", type=int, help="only this table")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--diff", action="store_true", help="desired versus installed; exit 1 on drift")
    mode.add_argument("--drops", action="store_true", help="port-security drop counters per vif")
    p.add_argument("--config", help="the controller's config, for --diff (default /etc/xvif-ovs/controller.toml)")
    _common(p)
    p.set_defaults(func=_runs("flows"))

    p = sub.add_parser(
        "trace",
        help="what the pipeline does to a packet, in plain words",
        formatter_class=raw,
        epilog="examples:\n  xvif-ovs trace --from vif5.0 --to vif6.0\n  xvif-ovs trace --from vif5.0 --to 192.0.2.1 --proto arp --src-ip 192.0.2.99",
    )
    p.add_argument("--from", dest="src", required=True, metavar="DEV", help="the port the packet enters on")
    p.add_argument("--to", required=True, metavar="MAC|IP|DEV")
    p.add_argument("--vlan", type=int, help="send it tagged with this VLAN")
    p.add_argument("--proto", choices=["arp", "icmp", "tcp", "udp", "dhcp", "nd"], default="icmp")
    p.add_argument("--port", type=int, help="tcp/udp destination port (default 80 / 53)")
    p.add_argument("--src-mac", help="source MAC (default: the vif's)")
    p.add_argument("--src-ip", help="source IP (default: the vif's first)")
    p.add_argument(
        "--established",
        action="store_true",
        help="a packet of an established connection (conntrack's answer; default: a new one)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also print ofproto/trace's full output")
    _common(p)
    p.set_defaults(func=_runs("trace"))

    p = sub.add_parser(
        "doctor",
        help="every health check, each problem with its fix",
        formatter_class=raw,
        epilog="example: xvif-ovs doctor --interval 5",
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds to watch drop counters (0: skip)")
    p.add_argument("--config", help="the controller's config (default /etc/xvif-ovs/controller.toml)")
    _common(p)
    p.set_defaults(func=_runs("doctor"))

    p = sub.add_parser(
        "rules",
        help="firewall rules in force per guest, with counters; `rules check` validates the files",
        formatter_class=raw,
        epilog="examples:\n  xvif-ovs rules --domain web\n  xvif-ovs rules check /tmp/20-web.toml",
    )
    p.add_argument("action", nargs="?", choices=["list", "check"], default="list")
    p.add_argument("file", nargs="?", help="for check: a rule file to validate with the directory's others")
    p.add_argument("--domain", help="only this domain (name or domid)")
    p.add_argument("--config", help="the controller's config (default /etc/xvif-ovs/controller.toml)")
    _common(p)
    p.set_defaults(func=_runs("rules"))

    p = sub.add_parser(
        "mirror",
        help="copy a guest's traffic to a monitoring guest or a dom0 port",
        formatter_class=raw,
        epilog="examples:\n  xvif-ovs mirror add --vif vif5.0 --to vif9.0\n  xvif-ovs mirror add --vif vif5.0 "
        "--to-port tapmon --direction from-guest\n  xvif-ovs mirror list\n  xvif-ovs mirror del --vif vif5.0",
    )
    cmds = p.add_subparsers(dest="mirror_command", required=True)
    a = cmds.add_parser("add", help="mirror a guest NIC's frames (both its vif and -emu tap)")
    a.add_argument("--vif", required=True, metavar="DEV", help="the guest's port, e.g. vif5.0")
    to = a.add_mutually_exclusive_group()
    to.add_argument("--to", metavar="DEV", help="a monitoring guest's vif on the same bridge")
    to.add_argument("--to-port", metavar="PORT", help="a dom0 port on the bridge (a tap of its own)")
    a.add_argument("--direction", choices=["both", "from-guest", "to-guest"], default="both")
    d = cmds.add_parser("del", help="remove xvif-ovs's mirrors (of a vif, to an output, or all)")
    d.add_argument("--vif", metavar="DEV")
    to = d.add_mutually_exclusive_group()
    to.add_argument("--to", metavar="DEV")
    to.add_argument("--to-port", metavar="PORT")
    ls = cmds.add_parser("list", help="every mirror on the host's bridges, ours and others'")
    for c in (a, d, ls):
        c.add_argument("--config", help="the controller's config (default /etc/xvif-ovs/controller.toml)")
        _common(c, json_too=c is ls)
        c.set_defaults(func=_runs("mirror"))

    p = sub.add_parser(
        "log",
        help="one guest's lines from the hook and the controller, in time order",
        formatter_class=raw,
        epilog="examples:\n  xvif-ovs log --domain web\n  xvif-ovs log --vif vif5.0 --lines 50",
    )
    who = p.add_mutually_exclusive_group()
    who.add_argument("--vif", help="only this vif's lines (vif5.0)")
    who.add_argument("--domain", help="only this domain's lines (name or domid)")
    p.add_argument("-n", "--lines", type=int, help="only the last N lines")
    p.add_argument("--since", type=int, metavar="MINUTES", help="only the lines of the last MINUTES minutes")
    p.add_argument(
        "--hotplug-log", help="the hook's log (default: [metrics] hotplug_log, /var/log/xen/xen-hotplug.log)"
    )
    p.add_argument("--controller-log", help="the controller's log file (default: the journal)")
    p.add_argument("--config", help="the controller's config (default /etc/xvif-ovs/controller.toml)")
    p.add_argument("--json", action="store_true", help="machine-readable output (shape in the command's docs)")
    p.set_defaults(func=_runs("log"))

    p = sub.add_parser("mac", help="MAC addresses for new vifs", epilog="example: xvif-ovs mac new --count 3")
    macs = p.add_subparsers(dest="mac_command", required=True)
    n = macs.add_parser(
        "new", help="fresh MACs in Xen's OUI, none in use here", epilog="example: xvif-ovs mac new --count 3"
    )
    n.add_argument("--count", type=int, default=1)
    _common(n)
    n.set_defaults(func=_runs("mac"))

    p = sub.add_parser(
        "completion", help="shell completion script", epilog="example: source <(xvif-ovs completion bash)"
    )
    p.add_argument("shell", choices=["bash"])
    p.set_defaults(func=_completion)


def _guard(fn):  # noqa: ANN001, ANN202
    def wrapper(args: argparse.Namespace) -> int:
        try:
            text, code = fn(args)
        except XvifError as e:
            print(f"xvif-ovs {args.command}: {e}", file=sys.stderr)
            return 1
        sys.stdout.write(text)
        return code

    return wrapper


@_guard
def _show(args: argparse.Namespace) -> tuple[str, int]:
    from .show import run

    return run(args.bridge, args.json, args.db, args.xenstore), 0


def _runs(module: str):  # noqa: ANN202
    """The command whose work is ``run(args)`` in the module of that name, imported only
    when it is the one chosen (each import costs the CLI's start-up)."""

    @_guard
    def command(args: argparse.Namespace) -> tuple[str, int]:
        return importlib.import_module(f".{module}", __package__).run(args)

    return command


def _completion(args: argparse.Namespace) -> int:
    from .main import build_parser

    sys.stdout.write(bash_completion(build_parser()))
    return 0


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script generated from the parser, so it never goes stale."""
    words: dict[str, list[str]] = {}

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        opts, subs = [], []
        for a in p._actions:  # noqa: SLF001 - argparse has no public walk
            if isinstance(a, argparse._SubParsersAction):  # noqa: SLF001
                for name, sp in a.choices.items():
                    subs.append(name)
                    walk(sp, f"{path} {name}".strip())
            else:
                opts += [o for o in a.option_strings if o.startswith("--")]
                if a.choices and not a.option_strings:
                    subs += [str(c) for c in a.choices]
        words[path] = subs + opts

    walk(parser, "")
    cases = "\n".join(f'        "{k}") words="{" ".join(v)}" ;;' for k, v in sorted(words.items()))
    return f"""# bash completion for xvif-ovs (generated: xvif-ovs completion bash)
_xvif_ovs() {{
    local cur path words i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    path=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in -*) ;; *) path="${{path:+$path }}${{COMP_WORDS[i]}}" ;; esac
    done
    while true; do
        case "$path" in
{cases}
        *) if [ -z "$path" ]; then words=""; break; fi; path="${{path% *}}"; [ "$path" = "${{path% *}}" ] && path="" ; continue ;;
        esac
        break
    done
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _xvif_ovs xvif-ovs
"""
