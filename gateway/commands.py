"""Sub-commands provided by the parts: carrier simulator, IVR walk-through, prompts, demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def cmd_smsc_sim(args: argparse.Namespace) -> int:
    from gateway.cli import EXIT_CONFIG, EXIT_OK, install_reactor
    from gateway.smpp import simulator

    try:
        simulator.options_from_args(args)
    except ValueError as e:
        print(f"smsc-sim: {e}", file=sys.stderr)
        return EXIT_CONFIG
    reactor = install_reactor()
    from twisted.internet.error import ReactorNotRunning

    def finished(_: object) -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # stopped by a signal: the simulator's shutdown trigger fired this

    reactor.callWhenRunning(lambda: simulator.run_from_args(args, reactor).addBoth(finished))
    reactor.run()
    return EXIT_OK


def cmd_ivr_sim(args: argparse.Namespace) -> int:
    from gateway.cli import run_async
    from gateway.ivr import simulator

    return run_async(lambda: simulator.run(args))


def cmd_prompts(args: argparse.Namespace) -> int:
    from gateway.cli import load_or_exit
    from gateway.ivr import prompts

    config = load_or_exit(args.config)
    return int(prompts.build_command(config, args) or 0)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway import demo

    return demo.main(args)


def add_commands(sub: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    from gateway.smpp import simulator as smsc_simulator

    smsc = sub.add_parser("smsc-sim", help="run the SMPP carrier (SMSC) simulator")
    smsc_simulator.add_arguments(smsc)
    smsc.set_defaults(func=cmd_smsc_sim)

    from gateway.ivr import simulator as ivr_simulator

    ivr = with_config(sub.add_parser("ivr-sim", help="walk the voice menu without Asterisk; print what the caller hears"))
    ivr_simulator.add_arguments(ivr)
    ivr.set_defaults(func=cmd_ivr_sim)

    prompts = sub.add_parser("prompts", help="Mandarin voice prompts")
    prompts_sub = prompts.add_subparsers(dest="prompts_action", required=True)
    build = with_config(prompts_sub.add_parser("build", help="render every menu prompt with espeak-ng and sox (8 kHz WAV)"))
    build.add_argument("--force", action="store_true", help="render prompts that already exist too")
    build.set_defaults(func=cmd_prompts)

    demo = with_config(sub.add_parser("demo", help="run the whole gateway end to end on embedded defaults"))
    demo.add_argument("--keep", action="store_true", help="keep the demo's Redis data (var/demo) afterwards")
    demo.set_defaults(func=cmd_demo)
