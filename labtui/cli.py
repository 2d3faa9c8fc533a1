"""`labtui` entry point.

Kept free of heavy imports (torch, transformers, textual) at module level so that
`labtui --help` answers at once; each subcommand imports what it needs.
Exit codes: 0 success, 2 bad input (one line, no traceback), 1 internal error.
"""

from __future__ import annotations

import argparse
import sys

from labtui.errors import LabError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labtui",
        description="A terminal lab for several LLMs sharing one workstation: "
        "offloading and preemption, live.",
    )
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    o = sub.add_parser("open", help="open the lab with a scenario loaded")
    o.add_argument("scenario")
    o.add_argument("--device", choices=["auto", "cuda", "sim"], default=None)
    o.add_argument("--time-scale", type=float, default=1.0, metavar="X",
                   help="stretch the timeline: every `at` X times later (2 = half speed)")

    r = sub.add_parser("run", help="run a scenario headless and write a result bundle")
    r.add_argument("scenario")
    r.add_argument("--out", default=None, help="bundle folder (default: runs/<name>-<time>)")
    r.add_argument("--device", choices=["auto", "cuda", "sim"], default=None)
    r.add_argument("--quick", action="store_true", help="shorten workloads for a smoke run")
    r.add_argument("--check", action="store_true", help="validate the scenario, run nothing")
    r.add_argument("--profile", default=None,
                   help="hardware profile for sim (see `labtui profiles`); sets [device].profile")

    rp = sub.add_parser("report", help="turn result bundles into plots and report.md")
    rp.add_argument("bundles", nargs="+")
    rp.add_argument("--out", default=None)

    b = sub.add_parser("bench", help="engine figures (decode tok/s, prefetch, link)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--device", choices=["auto", "cuda", "sim"], default="sim")
    b.add_argument("--models", default=None, help="comma-separated zoo names")
    b.add_argument("--quick", action="store_true")
    b.add_argument("--only", choices=["moves"], default=None, help="run one part: moves (residency moves on an 8 GB/s link)")

    z = sub.add_parser("zoo", help="built-in synthetic checkpoints")
    z.add_argument("action", nargs="?", choices=["list", "build"], default="list")
    z.add_argument("name", nargs="?")

    mo = sub.add_parser("models", help="the zoo and the causal LMs in the local Hugging Face "
                        "cache (offline), and whether each fits the budget")
    mo.add_argument("--memory-gib", type=float, default=None,
                    help="accelerator budget to check against (default: sim's 4 GiB)")
    mo.add_argument("--json", action="store_true", help="print one JSON object")

    pf = sub.add_parser("profiles", help="hardware profiles the simulated accelerator can emulate")
    pf.add_argument("--json", action="store_true", help="print them as JSON")

    sub.add_parser("doctor", help="what this machine has: GPUs, NVML, torch, link GB/s")

    s = sub.add_parser("screenshot", help="write SVG screenshots of the lab's main states")
    s.add_argument("--out", default="screenshots")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd is None:
            from labtui.tui.app import main as tui_main

            return tui_main(None, device=None)
        if args.cmd == "open":
            from labtui.tui.app import main as tui_main

            return tui_main(args.scenario, device=args.device, time_scale=args.time_scale)
        if args.cmd == "run":
            from labtui.scenario.runner import cli_run

            return cli_run(args)
        if args.cmd == "report":
            from labtui.report import cli_report

            return cli_report(args)
        if args.cmd == "bench":
            from labtui.engine.bench import cli_bench

            return cli_bench(args)
        if args.cmd == "zoo":
            from labtui.models.zoo import cli_zoo

            return cli_zoo(args)
        if args.cmd == "models":
            from labtui.models.catalog import cli_models

            return cli_models(args)
        if args.cmd == "profiles":
            from labtui.engine.profiles import cli_profiles

            return cli_profiles(args)
        if args.cmd == "doctor":
            from labtui.engine.devices import cli_doctor

            return cli_doctor(args)
        if args.cmd == "screenshot":
            from labtui.tui.screenshot import cli_screenshot

            return cli_screenshot(args)
    except LabError as e:
        print(f"labtui: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("labtui: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
