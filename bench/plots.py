"""PNG plots for BENCHMARKS.md, where a curve over bridge size says more than a table.

matplotlib is a benchmark-only dependency (`pip install '.[bench]'`, which `make bench`
does); nothing a dom0 runs imports it. Each plot draws medians with min-max bars.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a dom0 or in CI
import matplotlib.pyplot as plt  # noqa: E402
from common import RESULTS  # noqa: E402


def _series(ax, xs: list[int], stats: list[dict], label: str, scale: float = 1000, **kw) -> None:  # noqa: ANN001
    med = [s["median"] * scale for s in stats]
    lo = [(s["median"] - s["min"]) * scale for s in stats]
    hi = [(s["max"] - s["median"]) * scale for s in stats]
    ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=label, **kw)


def _size_axis(ax, xs: list[int], what: str) -> None:  # noqa: ANN001
    if min(xs) > 0:
        ax.set_xscale("log")
    else:  # 0 vifs on the bridge is a point too
        ax.set_xscale("symlog", linthresh=10)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel(what)
    ax.grid(True, alpha=0.3)
    ax.legend()


def _save(fig, name: str) -> Path:  # noqa: ANN001
    fig.tight_layout()
    out = RESULTS / f"{name}.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def hotplug(d: dict, fp: dict | None) -> Path:
    """Hook wall time and first forwarded packet against bridge size, with the floor."""
    rows = d["results"]
    xs = [r["vifs_on_bridge"] for r in rows]
    fig, axes = plt.subplots(1, 2 if fp else 1, figsize=(11 if fp else 6, 4), squeeze=False)
    ax = axes[0][0]
    _series(ax, xs, [r["xvif-ovs"] for r in rows], "xvif-ovs hook")
    _series(ax, xs, [r["vif-openvswitch"] for r in rows], "vif-openvswitch")
    ax.set_ylabel("ms")
    ax.set_title("hotplug 'online': what libxl waits for")
    _size_axis(ax, xs, "vifs already on the bridge")
    if fp:
        rows = fp["results"]["first_packet"]
        xs = [r["vifs_on_bridge"] for r in rows]
        ax = axes[0][1]
        _series(ax, xs, [r["xvif-ovs"]["first_packet_s"] for r in rows], "xvif-ovs (hook + controller)")
        _series(ax, xs, [r["vif-openvswitch"]["first_packet_s"] for r in rows], "vif-openvswitch + NORMAL")
        if all("bare" in r for r in rows):
            _series(ax, xs, [r["bare"]["first_packet_s"] for r in rows], "bare add-port + NORMAL (no hook does less)")
        ax.plot(xs, [r["reconfigure_floor_s"] * 1000 for r in rows], "k--", label="floor: one waited add-port")
        ax.set_ylabel("ms from the hook's start")
        ax.set_title("first packet forwarded: what the guest feels")
        _size_axis(ax, xs, "vifs already on the bridge")
    return _save(fig, "hotplug")


def scale(d: dict) -> Path:
    """Controller start to full pipeline, the ovs-ofctl floor, and one vif change."""
    rows = d["results"]
    xs = [r["vifs"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(xs, [r["controller_start_to_pipeline_s"] for r in rows], "o-", label="controller start to full pipeline")
    a.plot(xs, [r["bundle_floor_s"] for r in rows], "k--", marker="s", label="ovs-ofctl --bundle of the same flows")
    a.set_yscale("log")
    a.set_ylabel("s")
    a.set_title("full pipeline (dummy datapath)")
    _size_axis(a, xs, "vifs")
    _series(b, xs, [r["one_vif_change_s"] for r in rows], "XenStore write to flow in the switch")
    b.axhline(20, color="k", linestyle="--", label="target at 4000 vifs: 20 ms")
    b.set_ylabel("ms")
    b.set_title("one vif change")
    _size_axis(b, xs, "vifs")
    return _save(fig, "scale")
