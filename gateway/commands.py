"""The command layer: every `gateway` sub-command's body (gateway/cli.py parses the
arguments and calls these).  With gateway/cli.py it is the only place that touches the
global reactor; nothing under gateway/ivr/, push/ or smpp/ imports it (STYLE.md 13).

Exit codes scripts can rely on: 0 success; 1 the command ran but did not do what was
asked (an unknown id, a rejected notification, nothing retried, a refused login); 2 bad
configuration or usage (argparse errors, an unknown carrier name, a bad value).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.store.oneshot import redis_for

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def install_reactor() -> Any:
    """Twisted on asyncio, so redis-py's asyncio client shares the loop; its timers on a
    clock that a step of the host's clock does not move (gateway/reactor.py)."""
    from gateway.reactor import install_steady_asyncio_reactor

    if "twisted.internet.reactor" not in sys.modules:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        install_steady_asyncio_reactor(loop)
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


# The cyclic garbage collector, once the gateway has started.  Python collects the young
# generation after 700 net container allocations and the older ones after 10 of the
# younger each; a Chinese notification makes about a hundred containers (PDUs, records,
# Deferreds, Redis replies) that reference counting alone frees, so at 700 the collector
# ran every few notifications and walked, in its older collections, every object the
# start-up made (modules, config, templates, menus, client pools).  Freezing those moves
# them out of the collector's sight for good; 10,000 young allocations keep at most a
# few megabytes of cyclic garbage waiting.  Measured with bench/redis_instructions.py
# --process gateway, thousands of instructions per Chinese notification: 1,015 before,
# 997 with the freeze, 958 with the freeze and 10,000 (970 with 50,000: no better).
GC_YOUNG_THRESHOLD = 10_000
GC_OLDER_THRESHOLDS = (10, 10)  # Python's own


def tune_garbage_collection() -> None:
    """Freeze what start-up made and collect the young generation less often."""
    import gc

    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *GC_OLDER_THRESHOLDS)


def cmd_run(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    reactor = install_reactor()
    from twisted.logger import Logger

    from gateway.app import build_gateway
    from gateway.logs import start_logging

    start_logging(args.log_format or config.logging.format, args.log_level or config.logging.level,
                  timezone=config.logging.timezone)
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
        tune_garbage_collection()
        log.info("gateway12123 running (pid {pid})", pid=os.getpid())
        from gateway.config import operational_warnings

        for warning in operational_warnings(config):
            log.warn("configuration: {warning}", warning=warning)

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
    """Every problem of the file, one line each (file: key path: what), exit 2; a
    problem in one section does not hide those of another."""
    from gateway.config import ConfigError, inspect_config

    try:
        config, problems, switched_off = inspect_config(args.config)
    except ConfigError as e:  # unreadable, or not YAML: nothing more to check
        config, problems, switched_off = None, e.problems, []
    if config is not None and not problems:
        problems = check_referenced(config)  # the referenced files are only sure once the file is sound
    problems += switched_off
    if problems:
        print(f"configuration error{'s' if len(problems) > 1 else ''}:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    assert config is not None
    print(f"{args.config}: OK ({len(config.carriers)} carriers)")
    for warning in prompt_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def prompt_warnings(config: Any) -> list[str]:
    """Voice prompts the menus use that have no sound file yet (Asterisk would play silence)."""
    if not config.ivr.fastagi.enabled:
        return []
    from gateway.ivr.menus import load_menus
    from gateway.ivr.prompts import missing_prompts, unknown_recordings

    book = load_menus(config.resolve(config.ivr.menus_file))
    try:
        stray = unknown_recordings(book, config.ivr.sounds_dir)
        missing = missing_prompts(book, config.ivr.sounds_dir)
    except OSError as e:
        # pathlib answers False only for the usual misses: a folder this user may not
        # search (EACCES) or a name too long (ENAMETOOLONG) raise
        return [f"ivr.sounds_dir: cannot look into {str(config.ivr.sounds_dir)[:120]}: {e.strerror} "
                "(prompts not checked)"]
    warnings = [f"ivr.sounds_dir: recorded/{name} replaces no prompt (misspelt? see `gateway prompts build`)"
                for name in stray]
    if not missing:
        return warnings
    shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    return [f"ivr.sounds_dir: {len(missing)} prompts missing in {config.ivr.sounds_dir} ({shown}); "
            "run `gateway prompts build`", *warnings]


# --------------------------------------------------------------------------------------
# commands that talk to Redis once and exit
# --------------------------------------------------------------------------------------


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
    """Validate against the templates here, then hand over; a rejected request exits 1
    and is not enqueued (the daemon would only record it as rejected)."""
    config = load_or_exit(args.config)
    params: dict[str, str] = {}
    for item in args.param or []:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"--param {item!r}: expected name=value", file=sys.stderr)
            return EXIT_CONFIG
        params[key] = value
    rejection = _enqueue_rejection(config, args, params)
    if rejection:
        print(f"rejected: {rejection}", file=sys.stderr)
        return EXIT_FAILURE

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


def _enqueue_rejection(config: Any, args: argparse.Namespace, params: dict[str, str]) -> str:
    """The intake's own validation of the request ('' when it would be accepted)."""
    import time

    from gateway.push.intake import Rejection, validate_request
    from gateway.push.queue import QuietHoursPolicy
    from gateway.push.render import TemplateCatalogue

    templates = TemplateCatalogue(config.resolve(config.push.templates_file)).current
    quiet = config.push.quiet_hours
    policy = QuietHoursPolicy(quiet.start, quiet.end, quiet.timezone)
    fields: dict[str, Any] = {"type": args.type, "to": args.to, "params": params, "channel": args.channel}
    if args.priority:
        fields["priority"] = args.priority
    if args.expires_at is not None:
        fields["expires_at"] = str(args.expires_at)
    result = validate_request(fields, templates=templates, policy=policy, now=time.time(), default_id="check")
    return result.reason if isinstance(result, Rejection) else ""


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
    """list: one JSON line per dead letter.  retry: exit 1 unless every id was retried."""
    config = load_or_exit(args.config)
    if args.action == "list" and args.ids:
        print("dead-letters list takes no ids (filter with --type, --carrier, --reason)", file=sys.stderr)
        return EXIT_CONFIG
    if args.action == "retry" and not args.ids:
        print("dead-letters retry: give at least one notification id", file=sys.stderr)
        return EXIT_CONFIG

    async def main() -> int:
        from gateway.ops import actions

        async with redis_for(config) as (redis, keys):
            if args.action == "list":
                for row in await actions.dead_letters(redis, keys, type=args.type or "", carrier=args.carrier or "",
                                                      reason=args.reason or "", limit=args.limit):
                    print(json.dumps(row, ensure_ascii=False, sort_keys=True))
                return EXIT_OK
            params = _params(args.param) if args.param else None
            try:
                rows = await actions.retry_dead_letter_with(redis, keys, cli_actor(), args.ids, params)
            except actions.ActionError as e:
                print(f"dead-letters retry: {e.message}", file=sys.stderr)
                return EXIT_FAILURE
            for row in rows:
                print(json.dumps(row, ensure_ascii=False, sort_keys=True))
            return EXIT_OK if all(row.get("retried") for row in rows) else EXIT_FAILURE

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


def cmd_smsc_sim(args: argparse.Namespace) -> int:
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
    from gateway.ivr import simulator

    config = load_or_exit(args.config)
    book = menus_or_exit(config)
    return run_async(lambda: simulator.run(args, config, book))


def cmd_prompts(args: argparse.Namespace) -> int:
    from gateway.ivr import prompts

    config = load_or_exit(args.config)
    return int(prompts.build_command(config, menus_or_exit(config), args) or 0)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway import demo

    return demo.main(args)




# --------------------------------------------------------------------------------------
# operations: carriers, queues, search, batches, audit, users (gateway/ops/)
# --------------------------------------------------------------------------------------


def cli_actor() -> Any:
    """The audit's "who" for a CLI action: the OS user, from cli@<host>."""
    import getpass
    import socket

    from gateway.ops.actions import Actor

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return Actor(user=user, role="operator", origin=f"cli@{socket.gethostname()}")


def _params(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(_usage(f"--param {item!r}: expected name=value"))
        params[key] = value
    return params


def _usage(message: str) -> int:
    print(message, file=sys.stderr)
    return EXIT_CONFIG


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True))


def _local(seconds: float | None, timezone: str) -> str:
    if not seconds:
        return "-"
    import datetime as dt
    import zoneinfo

    return dt.datetime.fromtimestamp(seconds, zoneinfo.ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M:%S")


def _ops_command(args: argparse.Namespace, body: Callable[[Any, Any, Any], Awaitable[int]]) -> int:
    """Load the config, open Redis, run `body(config, redis, keys)`; ActionError -> exit code."""
    config = load_or_exit(args.config)

    async def main() -> int:
        from gateway.ops.actions import ActionError

        async with redis_for(config) as (redis, keys):
            try:
                return await body(config, redis, keys)
            except ActionError as e:
                print(f"{args.command}: {e.message}", file=sys.stderr)
                # A bad value or an unknown carrier is a usage error; an unknown batch or id is not.
                usage = e.code == 400 or (e.code == 404 and args.command == "carriers")
                return EXIT_CONFIG if usage else EXIT_FAILURE

    return run_async(main)


def cmd_carriers(args: argparse.Namespace) -> int:
    """Without an action: the fleet-wide carrier table.  stop/start/isolate/tps: act in
    every process (through the control hash) and audit it."""

    async def body(config: Any, redis: Any, keys: Any) -> int:
        from gateway.fleet.clock import redis_time
        from gateway.ops import actions
        from gateway.ops.fleet import clock_attention, read_fleet

        known = [c.name for c in config.carriers if c.enabled]
        actor = cli_actor()
        if args.action in ("stop", "start", "isolate"):
            state = {"stop": "stopped", "start": "running", "isolate": "isolated"}[args.action]
            _print_json(await actions.set_carrier(redis, keys, actor, args.name, state, known=known))
            return EXIT_OK
        if args.action == "tps":
            value = None if args.tps == "default" else _positive(args.tps)
            _print_json(await actions.set_carrier_tps(redis, keys, actor, args.name, value, known=known))
            return EXIT_OK
        # Redis's clock, as the processes' reports: this host's may be off (gateway/fleet/clock.py).
        fleet = await read_fleet(redis, keys, now=await redis_time(redis, keys.partition_members),
                                 configured_carriers={c: None for c in known})
        if args.json:
            _print_json({"carriers": fleet["carriers"], "processes": fleet["processes"]})
            return EXIT_OK
        timezone = config.push.quiet_hours.timezone
        print(f"{'carrier':<10} {'state':<11} {'since':<19} {'sessions':>8} {'window':>9} {'submit/s':>9} "
              f"{'tps':>7} {'rcpt/s':>7} {'deliv15':>7}  reason")
        for name, c in fleet["carriers"].items():
            ratio = "-" if c["delivery_ratio_15min"] is None else f"{100 * c['delivery_ratio_15min']:.1f}%"
            print(f"{name:<10} {c['state']:<11} {_local(c['since'], timezone):<19} "
                  f"{c['sessions_bound']:>3}/{c['sessions_configured']:<4} {c['window_in_use']:>4}/{c['window_size']:<4} "
                  f"{c['submit_per_second']:>9} {c['tps_limit']:>7g} {c['receipts_per_second']:>7} {ratio:>7}  "
                  f"{c['reason']}")
        print(f"{len(fleet['processes'])} process(es) reporting")
        for process in fleet["processes"]:
            attention = clock_attention(process.get("clock"))
            if attention:
                print(f"  {process['id']}: {attention}")
        return EXIT_OK

    if args.action and not args.name:
        return _usage(f"carriers {args.action}: give the carrier name")
    if args.action == "tps" and args.tps is None:
        return _usage("carriers tps NAME VALUE: give a value (submit_sm per second) or 'default'")
    return _ops_command(args, body)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SystemExit(_usage(f"not a number: {text!r}")) from None
    return value


def cmd_queues(args: argparse.Namespace) -> int:
    """Lanes, scheduled and quiet-hours held, awaiting receipt, dead letters, voice."""

    if args.action and not (args.lane or args.type):
        return _usage(f"queues {args.action}: give --lane or --type")

    async def body(config: Any, redis: Any, keys: Any) -> int:
        from gateway.fleet.clock import redis_time
        from gateway.ops import actions
        from gateway.ops.fleet import read_queues
        from gateway.push.queue import QuietHoursPolicy

        if args.action:
            kind, name = ("lane", args.lane) if args.lane else ("type", args.type)
            _print_json(await actions.set_paused(redis, keys, cli_actor(), kind, name, args.action == "pause"))
            return EXIT_OK
        paused = await actions.paused(redis, keys)

        quiet = config.push.quiet_hours
        now = await redis_time(redis, keys.partition_members)  # the clock the queues' times are on
        queues = await read_queues(redis, keys, now=now,
                                   quiet_until=QuietHoursPolicy(quiet.start, quiet.end, quiet.timezone).quiet_until(now))
        queues["paused_lanes"], queues["paused_types"] = paused["lanes"], paused["types"]
        if args.json:
            _print_json(queues)
            return EXIT_OK
        for lane, row in queues["lanes"].items():
            oldest = "-" if row["oldest_age_seconds"] is None else f"{row['oldest_age_seconds']:.0f} s"
            state = "  PAUSED" if lane in paused["lanes"] else ""
            print(f"lane {lane:<7} {row['depth']:>8} waiting, oldest {oldest}{state}")
        if paused["types"]:
            print(f"paused types         {', '.join(paused['types'])}")
        release = _local(queues["quiet_hours_release_at"], quiet.timezone)
        print(f"held for quiet hours {queues['quiet_hours_held']:>8} (released {release} {quiet.timezone})")
        print(f"scheduled            {queues['scheduled']:>8}")
        print(f"being submitted      {queues['submitting']:>8}")
        print(f"awaiting receipt     {queues['awaiting_receipt']:>8}")
        print(f"dead letters         {queues['dead_letters']:>8}")
        print(f"receipts parked      {queues['receipts_parked']:>8} (waiting for their submit)")
        print(f"voice reminders      {queues['voice_reminders_queued']:>8} queued, {queues['voice_calls_open']} calls open")
        return EXIT_OK

    return _ops_command(args, body)


def cmd_search(args: argparse.Namespace) -> int:
    """Notifications by id, batch or phone (shown masked); exit 1 when nothing matches."""

    async def body(config: Any, redis: Any, keys: Any) -> int:
        from gateway.ops import actions

        found = await actions.search(redis, keys, notification_id=args.id or "", batch=args.batch or "",
                                     phone=args.phone or "", limit=args.limit)
        for row in found["results"]:
            print(json.dumps(row, ensure_ascii=False, sort_keys=True))
        return EXIT_OK if found["results"] else EXIT_FAILURE

    return _ops_command(args, body)


def cmd_batch(args: argparse.Namespace) -> int:
    """Cancel a batch (or a type in a time range): the count first, then, with --yes or
    a typed "yes", the cancel.  Only queued or scheduled notifications are cancelled."""
    if bool(args.batch) == bool(args.type):
        return _usage("batch cancel: give a BATCH id, or --type with --since and --until")
    if args.type and (args.since is None or args.until is None):
        return _usage("batch cancel --type: give --since and --until (ISO 8601 or Unix seconds)")

    async def body(config: Any, redis: Any, keys: Any) -> int:
        from gateway.ops import actions

        actor = cli_actor()
        zone = config.push.quiet_hours.timezone

        async def run(confirm: bool) -> dict[str, Any]:
            if args.batch:
                return await actions.cancel_batch(redis, keys, actor, args.batch, confirm=confirm)
            return await actions.cancel_by_type(redis, keys, actor, args.type, _when(args.since, zone),
                                                _when(args.until, zone), confirm=confirm)

        preview = await run(False)
        print(f"{preview['waiting']} notifications still queued or scheduled would be cancelled")
        if args.dry_run or not preview["waiting"]:
            return EXIT_OK
        if not args.yes:
            if not sys.stdin.isatty():
                print("not cancelled: confirm with --yes (stdin is not a terminal)", file=sys.stderr)
                return EXIT_FAILURE
            if input("type yes to cancel them: ").strip() != "yes":
                print("not cancelled", file=sys.stderr)
                return EXIT_FAILURE
        done = await run(True)
        _print_json(done)
        return EXIT_OK

    return _ops_command(args, body)


def _when(text: str, timezone: str) -> float:
    import datetime as dt
    import zoneinfo

    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(_usage(f"not a time: {text!r} (ISO 8601, e.g. 2026-12-02T08:00, or Unix seconds)")) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zoneinfo.ZoneInfo(timezone))
    return moment.timestamp()


def cmd_audit(args: argparse.Namespace) -> int:
    """The newest audit entries, one JSON line each."""

    async def body(config: Any, redis: Any, keys: Any) -> int:
        from gateway.ops import actions

        for row in reversed(await actions.read_audit(redis, keys, limit=args.limit, action=args.action or "",
                                                     user=args.user or "")):
            print(json.dumps(row, ensure_ascii=False, sort_keys=True))
        return EXIT_OK

    return _ops_command(args, body)


def _read_password(args: argparse.Namespace) -> str:
    import getpass

    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit(_usage("the passwords differ"))
    return first


def cmd_users(args: argparse.Namespace) -> int:
    """Console accounts: add, passwd, remove, list (passwords: scrypt, gateway/ops/accounts.py)."""
    if args.action in ("add", "passwd", "remove") and not args.name:
        return _usage(f"users {args.action}: give the user name")
    if args.action == "add" and not args.role:
        return _usage("users add: give --role viewer or --role operator")
    password = _read_password(args) if args.action in ("add", "passwd") else ""

    async def body(config: Any, redis: Any, keys: Any) -> int:
        from gateway.ops import accounts, actions

        try:
            if args.action == "add":
                await accounts.add_user(redis, keys, args.name, password, args.role)
            elif args.action == "passwd":
                await accounts.set_password(redis, keys, args.name, password, args.role)
            elif args.action == "remove":
                await accounts.remove_user(redis, keys, args.name)
            else:
                for row in await accounts.list_users(redis, keys):
                    print(f"{row['user']:<24} {row['role']}")
                return EXIT_OK
        except accounts.AccountError as e:
            print(f"users {args.action}: {e}", file=sys.stderr)
            return EXIT_FAILURE
        await actions.audit(redis, keys, cli_actor(), f"user.{args.action}", args.name,
                            {"role": args.role} if args.role else {})
        print(f"user {args.name}: {args.action} done")
        return EXIT_OK

    return _ops_command(args, body)
