"""`gateway` command line: argument parsing (the bodies are in gateway/commands.py).

    gateway run -c config/gateway.yaml [--log-format json]
    gateway check-config -c FILE
    gateway enqueue -c FILE --type T --to NUMBER --param k=v ...
    gateway status -c FILE ID
    gateway dead-letters list|retry [ID...]
    gateway carriers [stop|start|isolate NAME | tps NAME VALUE]
    gateway queues | search --phone N | batch cancel ID | audit | users add|passwd|remove|list
    gateway seed -c FILE --sample
    gateway smsc-sim [options]
    gateway ivr-sim -c FILE --caller NUMBER --keys 2,20261130001#,151282,1
    gateway prompts build -c FILE
    gateway demo -c FILE

Exit codes: 0 success, 1 failure at run time (not found, rejected, refused), 2 bad
configuration or usage.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from gateway import commands
from gateway.commands import EXIT_FAILURE, default_config

__all__ = ["build_parser", "main"]


def _unix_seconds(text: str) -> float:
    """--expires-at: a finite Unix time (NaN, Infinity and 1e300 are refused, with why)."""
    from gateway.push.intake import parse_unix_seconds

    try:
        return parse_unix_seconds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"'{text[:32]}': {e}") from None


def _version() -> str:
    try:
        return metadata.version("gateway12123")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; `argv` (when known) lets it skip importing the parts whose commands are
    not being run (the simulators' option tables import most of Twisted: seconds on a
    busy machine, for every `gateway queues`)."""
    parser = argparse.ArgumentParser(prog="gateway", description="gateway12123: SMS and voice gateway for 12123")
    parser.add_argument("--version", action="version", version=f"gateway12123 {_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", default=default_config(), help="gateway.yaml (default: config/gateway.yaml)")
        return p

    run = with_config(sub.add_parser("run", help="run the gateway daemon"))
    run.add_argument("--log-format", choices=("text", "json"), help="override logging.format")
    run.add_argument("--log-level", choices=("debug", "info", "warn", "error"), help="override logging.level")
    run.set_defaults(func=commands.cmd_run)

    check = with_config(sub.add_parser("check-config", help="check a configuration and exit (2 on errors)"))
    check.set_defaults(func=commands.cmd_check_config)

    enqueue = with_config(sub.add_parser(
        "enqueue", help="hand a notification to the pipeline; prints its id (exit 1 if it would be rejected)"))
    enqueue.add_argument("--type", required=True, help="notification type (templates.yaml)")
    enqueue.add_argument("--to", required=True, help="mobile number")
    enqueue.add_argument("--param", action="append", metavar="NAME=VALUE", help="template parameter (repeatable)")
    enqueue.add_argument("--priority", choices=("high", "normal", "bulk"), help="lane (default: the type's)")
    enqueue.add_argument("--channel", choices=("sms", "voice", "auto"), default="sms",
                         help="sms, voice, or auto (voice after SMS failed)")
    enqueue.add_argument("--id", help="idempotency key (default: a new one)")
    enqueue.add_argument("--expires-at", type=_unix_seconds, help="Unix seconds after which it is not sent")
    enqueue.set_defaults(func=commands.cmd_enqueue)

    status = with_config(sub.add_parser("status", help="print a notification's state as JSON (exit 1 if unknown)"))
    status.add_argument("id", help="notification id")
    status.set_defaults(func=commands.cmd_status)

    dead = with_config(sub.add_parser("dead-letters", help="list or retry failed and rejected notifications"))
    dead.add_argument("action", choices=("list", "retry"), help="list them, or retry the given ids")
    dead.add_argument("ids", nargs="*", help="notification ids (retry only)")
    dead.add_argument("--type", help="list: only this notification type")
    dead.add_argument("--carrier", help="list: only those that failed at this carrier")
    dead.add_argument("--reason", help="list: only those whose error or reason contains this")
    dead.add_argument("--limit", type=int, default=100, help="list: at most this many (newest first)")
    dead.add_argument("--param", action="append", metavar="NAME=VALUE",
                      help="retry one id with this parameter corrected first (repeatable)")
    dead.set_defaults(func=commands.cmd_dead_letters)

    carriers = with_config(sub.add_parser(
        "carriers", help="fleet-wide carrier status; stop, start, isolate a carrier or change its TPS"))
    carriers.add_argument("action", nargs="?", choices=("stop", "start", "isolate", "tps"),
                          help="what to do (none: show the status of every carrier)")
    carriers.add_argument("name", nargs="?", help="carrier name (carriers[].name)")
    carriers.add_argument("tps", nargs="?", help="tps: submit_sm per second in each process, or 'default'")
    carriers.add_argument("--json", action="store_true", help="print JSON instead of a table")
    carriers.set_defaults(func=commands.cmd_carriers)

    queues = with_config(sub.add_parser(
        "queues", help="lanes, quiet-hours held, awaiting receipt, dead letters, voice; pause or resume a lane or type"))
    queues.add_argument("action", nargs="?", choices=("pause", "resume"),
                        help="pause or resume --lane or --type in every process (none: show the queues)")
    what = queues.add_mutually_exclusive_group()
    what.add_argument("--lane", choices=("high", "normal", "bulk"), help="the lane to pause or resume")
    what.add_argument("--type", help="the notification type to pause or resume")
    queues.add_argument("--json", action="store_true", help="print JSON instead of text")
    queues.set_defaults(func=commands.cmd_queues)

    search = with_config(sub.add_parser("search", help="find notifications (numbers are shown masked); exit 1 if none"))
    by = search.add_mutually_exclusive_group(required=True)
    by.add_argument("--phone", help="the recipient's mobile number")
    by.add_argument("--id", help="a notification id")
    by.add_argument("--batch", help="a batch id (POST /v1/notifications answers it)")
    search.add_argument("--limit", type=int, default=100, help="at most this many, newest first")
    search.set_defaults(func=commands.cmd_search)

    batch = with_config(sub.add_parser("batch", help="cancel a mistaken batch (only what is still queued or scheduled)"))
    batch.add_argument("action", choices=("cancel",), help="cancel")
    batch.add_argument("batch", nargs="?", help="batch id (or use --type with --since/--until)")
    batch.add_argument("--type", help="cancel this notification type instead of a batch")
    batch.add_argument("--since", help="with --type: accepted at or after (ISO 8601 local time, or Unix seconds)")
    batch.add_argument("--until", help="with --type: accepted at or before")
    batch.add_argument("--dry-run", action="store_true", help="only print how many would be cancelled")
    batch.add_argument("--yes", action="store_true", help="cancel without asking")
    batch.set_defaults(func=commands.cmd_batch)

    audit = with_config(sub.add_parser("audit", help="operator actions, oldest of the newest first (JSON lines)"))
    audit.add_argument("--limit", type=int, default=50, help="this many of the newest entries")
    audit.add_argument("--action", help="only this action (e.g. carrier.stop)")
    audit.add_argument("--user", help="only this user")
    audit.set_defaults(func=commands.cmd_audit)

    users = with_config(sub.add_parser("users", help="console accounts (roles viewer and operator)"))
    users.add_argument("action", choices=("add", "passwd", "remove", "list"), help="what to do")
    users.add_argument("name", nargs="?", help="user name")
    users.add_argument("--role", choices=("viewer", "operator"), help="add: the role; passwd: change it too")
    users.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of stdin (scripts) instead of asking")
    users.set_defaults(func=commands.cmd_users)

    seed = with_config(sub.add_parser("seed", help="load core data into Redis"))
    seed.add_argument("--sample", action="store_true", help="the realistic sample set of the demo and tests")
    seed.set_defaults(func=commands.cmd_seed)

    reference = sub.add_parser("config-reference", help="print the configuration reference (Markdown)")
    reference.set_defaults(func=lambda args: print(__import__("gateway.config").config.reference_markdown(), end="") or 0)

    _add_part_commands(sub, with_config, _command_in(argv))
    return parser


def _command_in(argv: Sequence[str] | None) -> str | None:
    """The sub-command named in `argv` (None: unknown, so every part is loaded)."""
    if argv is None:
        return None
    return next((a for a in argv if not a.startswith("-")), "")


def _add_part_commands(sub: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
                       command: str | None) -> None:
    """Commands whose options the parts define: simulator, IVR walk-through, prompts, demo."""
    smsc = sub.add_parser("smsc-sim", help="run the SMPP carrier (SMSC) simulator")
    if command in (None, "smsc-sim"):
        from gateway.smpp import simulator as smsc_simulator

        smsc_simulator.add_arguments(smsc)
    smsc.set_defaults(func=commands.cmd_smsc_sim)

    ivr = with_config(sub.add_parser("ivr-sim", help="walk the voice menu without Asterisk; print what the caller hears"))
    if command in (None, "ivr-sim"):
        from gateway.ivr import simulator as ivr_simulator

        ivr_simulator.add_arguments(ivr)
    ivr.set_defaults(func=commands.cmd_ivr_sim)

    prompts = sub.add_parser("prompts", help="Mandarin voice prompts")
    prompts_sub = prompts.add_subparsers(dest="prompts_action", required=True, metavar="ACTION")
    build = with_config(prompts_sub.add_parser("build", help="render every menu prompt with espeak-ng and sox (8 kHz WAV)"))
    if command in (None, "prompts"):
        from gateway.ivr import prompts as ivr_prompts

        ivr_prompts.add_arguments(build)
    build.set_defaults(func=commands.cmd_prompts)

    demo = with_config(sub.add_parser("demo", help="run the whole gateway end to end on embedded defaults"))
    demo.add_argument("--keep", action="store_true", help="keep the demo's Redis data (var/demo) afterwards")
    demo.set_defaults(func=commands.cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    arguments = list(sys.argv[1:] if argv is None else argv)
    for argument in arguments:
        # Octets that are not UTF-8 reach Python as lone surrogates (surrogateescape), which
        # no Redis command can carry: a usage error here, not a traceback at the first call.
        if any("\udc80" <= char <= "\udcff" for char in argument):
            shown = argument.encode("utf-8", "surrogateescape")[:80]
            print(f"gateway: error: argument {shown!r} is not UTF-8 text", file=sys.stderr)
            return 2  # argparse's exit code for a usage error
    parser = build_parser(arguments)
    args = parser.parse_args(arguments)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return EXIT_FAILURE
