"""Apply the topic spec to a Kafka cluster, idempotently (kafka-python's admin client).

    apply   create missing topics; set configs that differ from the spec (incrementally:
            configs the spec does not name are left alone); grow partitions below the spec.
            Never deletes, never shrinks. Replication factor is capped at the number of
            brokers and min.insync.replicas at the replication factor, so the production spec
            applies to a single local broker. ``local=True`` caps partitions at the spec's
            ``local.max_partitions``.
    check   exit 1 when the cluster differs from the spec (for CI)
    wait    wait until the broker lists itself in cluster metadata
    list    print the spec as the cluster would get it

``deploy/local/kafka_topics.py`` is the command line over :func:`main`; ``llmops topics``
can call :func:`apply` directly. Exit status: 0 ok, 1 drift (check) or failure, 2 bad spec.
kafka-python is imported lazily (the ``kafka`` extra).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmops.events.topics import DEFAULT_SPEC_PATH, SpecError, TopicSpec, effective, load_spec

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"

Out = Callable[[str], None]


def connect(bootstrap: str, timeout_s: float = 30.0) -> Any:  # KafkaAdminClient
    """An admin client, retrying until ``timeout_s``; SystemExit naming the address if not."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaConfigurationError, KafkaError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="llmops-kafka-topics",
                request_timeout_ms=15000,
                bootstrap_timeout_ms=int(max(1.0, min(10.0, timeout_s)) * 1000),
            )
        except KafkaConfigurationError:
            raise
        except (KafkaError, OSError) as exc:
            if time.monotonic() >= deadline:
                raise SystemExit(f"kafka_topics: cannot reach {bootstrap}: {exc}") from exc
            time.sleep(0.5)


def broker_count(admin: Any) -> int:
    return len(admin.describe_cluster().get("brokers") or [])


def current_state(admin: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """{topic: {"partitions": n, "replication_factor": rf, "configs": {k: v}}} for existing ones."""
    from kafka.admin import ConfigResource, ConfigResourceType

    existing = set(admin.list_topics())
    present = [n for n in names if n in existing]
    if not present:
        return {}
    state: dict[str, dict[str, Any]] = {}
    for t in admin.describe_topics(present):
        parts = t.get("partitions") or []
        state[t.get("name") or t.get("topic")] = {
            "partitions": len(parts),
            "replication_factor": max(
                (len(p.get("replica_nodes") or p.get("replicas") or []) for p in parts), default=0
            ),
            "configs": {},
        }
    resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in present]
    described = admin.describe_configs(resources, config_filter="all")
    for name, entries in flatten_configs(described).items():
        if name in state:
            state[name]["configs"] = entries
    return state


def flatten_configs(described: Any) -> dict[str, dict[str, str]]:
    """describe_configs -> {resource_name: {key: value}} (tolerates both result shapes)."""
    out: dict[str, dict[str, str]] = {}
    if not isinstance(described, dict):
        return out
    for by_name in described.values():
        if not isinstance(by_name, dict):
            continue
        for name, entries in by_name.items():
            flat: dict[str, str] = {}
            if isinstance(entries, dict):
                for key, data in entries.items():
                    value = data.get("value") if isinstance(data, dict) else data
                    flat[str(key)] = "" if value is None else str(value)
            out[str(name)] = flat
    return out


def diff(want: TopicSpec, have: dict[str, Any] | None) -> list[str]:
    """Human-readable differences between the effective spec and the cluster."""
    if have is None:
        return [
            f"missing (would create: {want.partitions} partitions, RF {want.replication_factor})"
        ]
    out = []
    if have["partitions"] < want.partitions:
        out.append(f"partitions {have['partitions']} < {want.partitions}")
    if have["replication_factor"] != want.replication_factor:
        out.append(f"replication factor {have['replication_factor']} != {want.replication_factor}")
    for key, value in want.configs.items():
        if have["configs"].get(key) != value:
            out.append(f"{key}={have['configs'].get(key)!r} (spec {value!r})")
    return out


def apply(
    bootstrap: str = DEFAULT_BOOTSTRAP,
    spec_path: Path = DEFAULT_SPEC_PATH,
    *,
    max_partitions: int | None = None,
    local: bool = False,
    dry_run: bool = False,
    check_only: bool = False,
    timeout_s: float = 30.0,
    out: Out = print,
) -> int:
    """Make the cluster match the spec (or, ``check_only``/``dry_run``, report the drift).

    Returns 0 when the cluster matches (or was made to), 1 on drift under ``check_only``.
    Raises :class:`SpecError` for a bad spec and SystemExit when the broker is unreachable.
    """
    spec = load_spec(spec_path)
    cap = max_partitions or (spec.local_max_partitions if local else None)
    admin = connect(bootstrap, timeout_s)
    try:
        brokers = broker_count(admin)
        wanted = [effective(t, brokers, cap) for t in spec.topics]
        capped = sum(
            w.replication_factor < t.replication_factor
            for t, w in zip(spec.topics, wanted, strict=True)
        )
        if capped:
            out(
                f"note: {brokers} broker(s): replication factor and min.insync.replicas capped "
                f"at {brokers} for {capped} topic(s)"
            )
        if cap:
            out(f"note: partitions capped at {cap} (--max-partitions/--local)")
        drift = _reconcile(admin, wanted, check_only or dry_run, out)
        return 1 if check_only and drift else 0
    finally:
        admin.close()


def _reconcile(admin: Any, wanted: list[TopicSpec], report_only: bool, out: Out) -> int:
    """Create/alter towards ``wanted`` (or only print drift); returns the drifting count."""
    state = current_state(admin, [w.name for w in wanted])
    drift = 0
    to_create: dict[str, dict[str, Any]] = {}
    for w in wanted:
        have = state.get(w.name)
        problems = diff(w, have)
        if not problems:
            partitions = have["partitions"] if have else w.partitions
            out(f"ok       {w.name} ({partitions} partitions, key {w.key})")
            continue
        drift += 1
        if report_only:
            out(f"DRIFT    {w.name}: " + "; ".join(problems))
        elif have is None:
            to_create[w.name] = {
                "num_partitions": w.partitions,
                "replication_factor": w.replication_factor,
                "configs": w.configs,
            }
        else:
            _update(admin, w, have, out)
    if to_create:
        admin.create_topics(to_create, timeout_ms=30000)
        admin.wait_for_topics(list(to_create), timeout_ms=30000)
        for name, opts in to_create.items():
            out(
                f"created  {name} ({opts['num_partitions']} partitions, "
                f"RF {opts['replication_factor']})"
            )
    return drift


def _update(admin: Any, w: TopicSpec, have: dict[str, Any], out: Out) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType

    changed = {k: v for k, v in w.configs.items() if have["configs"].get(k) != v}
    if changed:
        result = admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, w.name, configs=changed)]
        )
        _raise_on_error(result, w.name)
        out(f"altered  {w.name}: " + ", ".join(f"{k}={v}" for k, v in changed.items()))
    if have["partitions"] < w.partitions:
        out(
            f"WARNING  {w.name}: growing partitions {have['partitions']} -> {w.partitions} "
            "remaps keys; records of one key may reorder across the change"
        )
        admin.create_partitions({w.name: w.partitions}, timeout_ms=30000)
    if have["replication_factor"] != w.replication_factor:
        out(
            f"WARNING  {w.name}: replication factor is {have['replication_factor']}, spec wants "
            f"{w.replication_factor}; changing it needs a partition reassignment (not automated)"
        )


def _raise_on_error(result: Any, name: str) -> None:
    """alter_configs returns {type: {name: "OK" | "<error text>"}}; fail on anything not OK."""
    if not isinstance(result, dict):
        raise SystemExit(f"kafka_topics: unexpected alter_configs result for {name}: {result!r}")
    for by_name in result.values():
        for res_name, res in (by_name or {}).items():
            if res != "OK":
                raise SystemExit(f"kafka_topics: altering {res_name} failed: {res}")


def wait(bootstrap: str = DEFAULT_BOOTSTRAP, timeout_s: float = 30.0) -> int:
    """0 once the broker lists itself in cluster metadata; 1 after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    admin = connect(bootstrap, timeout_s)
    try:
        while True:
            try:
                info = admin.describe_cluster()
                if info.get("brokers") and info.get("controller_id", -1) is not None:
                    return 0
                last: Exception = RuntimeError(f"no brokers in metadata yet: {info}")
            except Exception as exc:
                last = exc
            if time.monotonic() >= deadline:
                print(f"kafka_topics: broker not ready after {timeout_s}s: {last}", file=sys.stderr)
                return 1
            time.sleep(0.3)
    finally:
        admin.close()


def list_spec(
    spec_path: Path = DEFAULT_SPEC_PATH,
    *,
    max_partitions: int | None = None,
    local: bool = False,
    out: Out = print,
) -> int:
    """Print each topic as a cluster with its full replication factor would get it."""
    spec = load_spec(spec_path)
    cap = max_partitions or (spec.local_max_partitions if local else None)
    for t in spec.topics:
        w = effective(t, t.replication_factor, cap)
        cfg = ", ".join(f"{k}={v}" for k, v in w.configs.items())
        out(f"{w.name}  partitions={w.partitions} rf={w.replication_factor} key={w.key}  {cfg}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kafka_topics.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("apply", "check", "wait", "list"):
        s = sub.add_parser(name)
        s.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP)
        s.add_argument("--spec", type=Path, default=DEFAULT_SPEC_PATH)
        s.add_argument("--timeout", type=float, default=30.0, help="seconds to reach the broker")
        g = s.add_mutually_exclusive_group()
        g.add_argument("--max-partitions", type=int, default=None)
        g.add_argument(
            "--local", action="store_true", help="cap partitions at local.max_partitions"
        )
        s.add_argument("--dry-run", action="store_true", help="apply: only print what would change")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        if args.cmd in ("apply", "check"):
            return apply(
                args.bootstrap,
                args.spec,
                max_partitions=args.max_partitions,
                local=args.local,
                dry_run=args.dry_run,
                check_only=args.cmd == "check",
                timeout_s=args.timeout,
            )
        if args.cmd == "wait":
            return wait(args.bootstrap, args.timeout)
        return list_spec(args.spec, max_partitions=args.max_partitions, local=args.local)
    except SpecError as exc:
        print(f"kafka_topics: bad spec: {exc}", file=sys.stderr)
        return 2
