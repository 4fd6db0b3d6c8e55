"""`gateway` command line: the only module that touches the global reactor.

    gateway run -c config/gateway.yaml [--log-format json]
    gateway check-config -c FILE
    gateway enqueue -c FILE --type T --to NUMBER --param k=v ...
    gateway status -c FILE ID
    gateway dead-letters list|retry ID...
    gateway seed -c FILE --sample
    gateway smsc-sim [options]
    gateway ivr-sim -c FILE --caller NUMBER --keys 2,20261130001#,1
    gateway prompts build -c FILE
    gateway demo -c FILE

Exit codes: 0 success, 1 failure at run time, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def install_reactor() -> Any:
    """Twisted on asyncio, so redis-py's asyncio client shares the loop."""
    from twisted.internet import asyncioreactor

    if "twisted.internet.reactor" not in sys.modules:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)
    from twisted.internet import reactor

    return reactor


def default_config() -> str:
    local = Path("config/gateway.yaml")
    if local.exists():
        return str(local)
    from gateway.config import default_config_path

    return str(default_config_path())


def load_or_exit(path: str) -> Any:
    from gateway.config import ConfigError, load_config

    try:
        config = load_config(path)
        problems = check_referenced(config)
    except ConfigError as e:
        problems = e.problems
    if problems:
        print(f"configuration error{'s' if len(problems) > 1 else ''}:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)
    return config


def menus_or_exit(config: Any) -> Any:
    """The voice menus `config` names; a broken menu file prints its problems and exits 2."""
    from gateway.config import ConfigError
    from gateway.ivr.menus import load_menus

    try:
        return load_menus(config.resolve(config.ivr.menus_file))
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def check_referenced(config: Any) -> list[str]:
    """Problems in the files gateway.yaml refers to (templates, menus, prompts)."""
    from gateway.config import ConfigError

    problems: list[str] = []
    for loader in _referenced_file_checks():
        try:
            problems.extend(loader(config))
        except ConfigError as e:
            problems.extend(e.problems)
    return problems


def _referenced_file_checks() -> list[Callable[[Any], list[str]]]:
    checks: list[Callable[[Any], list[str]]] = []
    try:
        from gateway.push.render import check_templates_file  # type: ignore[attr-defined]

        checks.append(check_templates_file)
    except ImportError:
        pass
    try:
        from gateway.ivr.menus import check_menus_file  # type: ignore[attr-defined]

        checks.append(check_menus_file)
    except ImportError:
        pass
    return checks


# --------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    reactor = install_reactor()
    from twisted.logger import Logger

    from gateway.app import build_gateway
    from gateway.logs import start_logging

    start_logging(args.log_format or config.logging.format, args.log_level or config.logging.level)
    from twisted.internet.protocol import Factory

    Factory.noisy = False  # "Starting factory ..." on every reconnect says nothing to an operator
    log = Logger(namespace="gateway")
    root = build_gateway(config, reactor)
    exit_code = [EXIT_OK]

    def start() -> None:
        try:
            root.startService()
        except Exception:
            log.failure("gateway failed to start")
            exit_code[0] = EXIT_FAILURE
            reactor.stop()
            return
        log.info("gateway12123 running (pid {pid})", pid=os.getpid())

    def reload() -> None:
        from gateway.config import ConfigError

        try:
            from gateway.config import load_config

            new_config = load_config(args.config)
            problems = check_referenced(new_config)
            if problems:
                raise ConfigError(problems)
            root.reload(new_config)
        except ConfigError as e:
            log.warn("SIGHUP: configuration not reloaded, keeping the old one: {problems}", problems="; ".join(e.problems))
        else:
            log.info("SIGHUP: templates and menus reloaded")

    stopping = [False]

    def stop(signum: int) -> None:
        # A second SIGTERM while draining changes nothing: the drain is already bounded.
        if stopping[0]:
            return
        stopping[0] = True
        log.info("{signal} received: stopping intake, draining, unbinding", signal=signal.Signals(signum).name)
        reactor.stop()

    def install_signal_handlers() -> None:
        loop = asyncio.get_event_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop, signum)
        loop.add_signal_handler(signal.SIGHUP, reload)

    reactor.callWhenRunning(install_signal_handlers)
    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    reactor.run(installSignalHandlers=False)
    return exit_code[0]


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    print(f"{args.config}: OK ({len(config.carriers)} carriers)")
    for warning in prompt_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def prompt_warnings(config: Any) -> list[str]:
    """Voice prompts the menus use that have no sound file yet (Asterisk would play silence)."""
    if not config.ivr.fastagi.enabled:
        return []
    from gateway.ivr.menus import load_menus
    from gateway.ivr.prompts import missing_prompts

    book = load_menus(config.resolve(config.ivr.menus_file))
    missing = missing_prompts(book, config.ivr.sounds_dir)
    if not missing:
        return []
    shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    return [f"ivr.sounds_dir: {len(missing)} prompts missing in {config.ivr.sounds_dir} ({shown}); "
            "run `gateway prompts build`"]


# --------------------------------------------------------------------------------------
# commands that talk to Redis once and exit
# --------------------------------------------------------------------------------------


@asynccontextmanager
async def redis_for(config: Any):  # type: ignore[no-untyped-def]
    """A client for the config's Redis; with `embedded`, the running daemon's server or
    a temporary one on the same data directory (the daemon picks the data up later)."""
    from gateway.store.embedded import RedisServerProcess
    from gateway.store.keys import Keys
    from gateway.store.service import make_client

    temporary: RedisServerProcess | None = None
    if config.redis.url == "embedded":
        server = RedisServerProcess(data_dir=Path(config.redis.data_dir).resolve())
        if server.running_elsewhere():
            url = f"unix://{server.socket_path}"
        else:
            server.start()
            temporary = server
            url = server.url
    else:
        url = config.redis.url
    client = make_client(url)
    try:
        yield client, Keys(config.redis.prefix)
    finally:
        await client.aclose()
        if temporary is not None:
            temporary.stop()


def run_async(main: Callable[[], Awaitable[int]]) -> int:
    """Run an asyncio coroutine on the Twisted asyncio reactor and return its exit code."""
    reactor = install_reactor()
    from twisted.internet.defer import Deferred

    result = [EXIT_FAILURE]

    async def wrapper() -> None:
        try:
            result[0] = await main()
        finally:
            reactor.callLater(0, reactor.stop)

    def go() -> None:
        d = Deferred.fromFuture(asyncio.ensure_future(wrapper()))
        d.addErrback(lambda f: (print(f"error: {f.getErrorMessage()}", file=sys.stderr), f.printTraceback(file=sys.stderr)))

    reactor.callWhenRunning(go)
    reactor.run(installSignalHandlers=False)
    return result[0]


def cmd_enqueue(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    params: dict[str, str] = {}
    for item in args.param or []:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"--param {item!r}: expected name=value", file=sys.stderr)
            return EXIT_CONFIG

        params[key] = value

    async def main() -> int:
        from gateway.push.intake import enqueue

        async with redis_for(config) as (redis, keys):
            notification_id = await enqueue(
                redis, keys, type=args.type, to=args.to, params=params, priority=args.priority,
                id=args.id, channel=args.channel, expires_at=args.expires_at,
            )
        print(notification_id)
        return EXIT_OK

    return run_async(main)


def cmd_status(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)

    async def main() -> int:
        from gateway.push.intake import status

        async with redis_for(config) as (redis, keys):
            state = await status(redis, keys, args.id)
        if state is None:
            print(json.dumps({"id": args.id, "error": "not found"}, ensure_ascii=False))
            return EXIT_FAILURE
        print(json.dumps(state, ensure_ascii=False, indent=2, sort_keys=True))
        return EXIT_OK

    return run_async(main)


def cmd_dead_letters(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)

    async def main() -> int:
        from gateway.push.deadletters import list_dead_letters, retry_dead_letters

        async with redis_for(config) as (redis, keys):
            if args.action == "list":
                for row in await list_dead_letters(redis, keys):
                    print(json.dumps(row, ensure_ascii=False, sort_keys=True))
            else:
                if not args.ids:
                    print("dead-letters retry: give at least one notification id", file=sys.stderr)
                    return EXIT_CONFIG
                for row in await retry_dead_letters(redis, keys, args.ids):
                    print(json.dumps(row, ensure_ascii=False, sort_keys=True))
        return EXIT_OK

    return run_async(main)


def cmd_seed(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    if not args.sample:
        print("seed: only --sample is supported (core systems write their own data)", file=sys.stderr)
        return EXIT_CONFIG

    async def main() -> int:
        import datetime as dt
        import zoneinfo

        from gateway.domain.sample import load_sample

        today = dt.datetime.now(zoneinfo.ZoneInfo(config.push.quiet_hours.timezone)).date()
        async with redis_for(config) as (redis, keys):
            summary = await load_sample(redis, keys, today=today)
        print(f"sample data loaded: {summary}")
        return EXIT_OK

    return run_async(main)


# --------------------------------------------------------------------------------------
# argument parsing
# --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="gateway12123: SMS and voice gateway for 12123")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", default=default_config(), help="gateway.yaml (default: config/gateway.yaml)")
        return p

    run = with_config(sub.add_parser("run", help="run the gateway daemon"))
    run.add_argument("--log-format", choices=("text", "json"), help="override logging.format")
    run.add_argument("--log-level", choices=("debug", "info", "warn", "error"), help="override logging.level")
    run.set_defaults(func=cmd_run)

    check = with_config(sub.add_parser("check-config", help="check a configuration and exit (2 on errors)"))
    check.set_defaults(func=cmd_check_config)

    enqueue = with_config(sub.add_parser("enqueue", help="hand a notification to the pipeline; prints its id"))
    enqueue.add_argument("--type", required=True, help="notification type (templates.yaml)")
    enqueue.add_argument("--to", required=True, help="mobile number")
    enqueue.add_argument("--param", action="append", metavar="NAME=VALUE", help="template parameter (repeatable)")
    enqueue.add_argument("--priority", choices=("high", "normal", "bulk"))
    enqueue.add_argument("--channel", choices=("sms", "voice", "auto"), default="sms")
    enqueue.add_argument("--id", help="idempotency key (default: a new one)")
    enqueue.add_argument("--expires-at", type=float, help="Unix seconds after which it is not sent")
    enqueue.set_defaults(func=cmd_enqueue)

    status = with_config(sub.add_parser("status", help="print a notification's state as JSON"))
    status.add_argument("id")
    status.set_defaults(func=cmd_status)

    dead = with_config(sub.add_parser("dead-letters", help="list or retry failed and rejected notifications"))
    dead.add_argument("action", choices=("list", "retry"))
    dead.add_argument("ids", nargs="*")
    dead.set_defaults(func=cmd_dead_letters)

    seed = with_config(sub.add_parser("seed", help="load core data into Redis"))
    seed.add_argument("--sample", action="store_true", help="the realistic sample set of the demo and tests")
    seed.set_defaults(func=cmd_seed)

    reference = sub.add_parser("config-reference", help="print the configuration reference (Markdown)")
    reference.set_defaults(func=lambda args: print(__import__("gateway.config").config.reference_markdown(), end="") or 0)

    _add_optional_commands(sub, with_config)
    return parser


def _add_optional_commands(sub: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    """Commands implemented by the parts: simulator, IVR walk-through, prompts, demo."""
    from gateway import commands

    commands.add_commands(sub, with_config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return EXIT_FAILURE
