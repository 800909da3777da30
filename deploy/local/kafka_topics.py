"""Apply deploy/kafka/topics.yaml to a Kafka cluster, idempotently (kafka-python admin client).

    kafka_topics.py apply [--bootstrap 127.0.0.1:19092] [--spec deploy/kafka/topics.yaml]
                          [--max-partitions N | --local] [--dry-run]
        create missing topics; set configs that differ from the spec (incrementally: configs
        the spec does not name are left alone); grow partitions below the spec. Never deletes,
        never shrinks. Replication factor is capped at the number of brokers and
        min.insync.replicas at the replication factor, so the production spec applies to a
        single local broker. --local caps partitions at the spec's local.max_partitions.
    kafka_topics.py check [...]   exit 1 when the cluster differs from the spec (for CI)
    kafka_topics.py wait [--timeout S]   wait until the broker lists itself in cluster metadata
    kafka_topics.py list          print the spec as the cluster would get it

Exit status: 0 ok, 1 drift (check) or failure, 2 bad spec.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
DEFAULT_SPEC = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "topics.yaml"


class SpecError(Exception):
    pass


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)
    key: str = ""


@dataclass(frozen=True)
class Spec:
    topics: list[TopicSpec]
    local_max_partitions: int | None


def load_spec(path: Path) -> Spec:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("topics"), list):
        raise SpecError(f"{path}: expected a mapping with a `topics` list")
    topics: list[TopicSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(doc["topics"]):
        where = f"{path}: topics[{i}]"
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: expected a mapping")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise SpecError(f"{where}: `name` is required")
        if name in seen:
            raise SpecError(f"{where}: duplicate topic {name}")
        seen.add(name)
        partitions, rf = raw.get("partitions"), raw.get("replication_factor")
        if not isinstance(partitions, int) or partitions < 1:
            raise SpecError(f"{where} ({name}): `partitions` must be an integer >= 1")
        if not isinstance(rf, int) or rf < 1:
            raise SpecError(f"{where} ({name}): `replication_factor` must be an integer >= 1")
        configs = raw.get("configs") or {}
        if not isinstance(configs, dict):
            raise SpecError(f"{where} ({name}): `configs` must be a mapping")
        for required in ("retention.ms", "cleanup.policy", "compression.type"):
            if required not in configs:
                raise SpecError(f"{where} ({name}): configs.{required} is required")
        if not raw.get("key"):
            raise SpecError(f"{where} ({name}): `key` (what keeps one entity in order) is required")
        topics.append(
            TopicSpec(
                name=name,
                partitions=partitions,
                replication_factor=rf,
                configs={str(k): _config_str(v) for k, v in configs.items()},
                key=str(raw["key"]),
            )
        )
    local = doc.get("local") or {}
    cap = local.get("max_partitions")
    return Spec(topics=topics, local_max_partitions=int(cap) if cap else None)


def _config_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def effective(t: TopicSpec, brokers: int, max_partitions: int | None) -> TopicSpec:
    """The topic as this cluster can hold it (capped RF, min ISR and partitions)."""
    rf = min(t.replication_factor, max(brokers, 1))
    configs = dict(t.configs)
    if "min.insync.replicas" in configs:
        configs["min.insync.replicas"] = str(min(int(configs["min.insync.replicas"]), rf))
    partitions = min(t.partitions, max_partitions) if max_partitions else t.partitions
    return TopicSpec(t.name, partitions, rf, configs, t.key)


def connect(bootstrap: str, timeout_s: float = 30.0) -> Any:  # KafkaAdminClient
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
    for name, entries in _flatten_configs(described).items():
        if name in state:
            state[name]["configs"] = entries
    return state


def _flatten_configs(described: Any) -> dict[str, dict[str, str]]:
    """describe_configs -> {resource_name: {key: value}} (tolerates both result shapes)."""
    out: dict[str, dict[str, str]] = {}
    if isinstance(described, dict):
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


def cmd_apply(args: argparse.Namespace, check_only: bool = False) -> int:
    spec = load_spec(args.spec)
    cap = args.max_partitions or (spec.local_max_partitions if args.local else None)
    admin = connect(args.bootstrap, args.timeout)
    try:
        brokers = broker_count(admin)
        wanted = [effective(t, brokers, cap) for t in spec.topics]
        capped = [
            t.name
            for t, w in zip(spec.topics, wanted, strict=True)
            if w.replication_factor < t.replication_factor
        ]
        if capped:
            print(
                f"note: {brokers} broker(s): replication factor and min.insync.replicas capped "
                f"at {brokers} for {len(capped)} topic(s)"
            )
        if cap:
            print(f"note: partitions capped at {cap} (--max-partitions/--local)")
        state = current_state(admin, [w.name for w in wanted])
        drift = 0
        to_create: dict[str, dict[str, Any]] = {}
        for w in wanted:
            have = state.get(w.name)
            problems = diff(w, have)
            if not problems:
                print(f"ok       {w.name} ({have['partitions']} partitions, key {w.key})")  # type: ignore[index]
                continue
            drift += 1
            if check_only or args.dry_run:
                print(f"DRIFT    {w.name}: " + "; ".join(problems))
                continue
            if have is None:
                to_create[w.name] = {
                    "num_partitions": w.partitions,
                    "replication_factor": w.replication_factor,
                    "configs": w.configs,
                }
                continue
            _update(admin, w, have)
        if to_create:
            admin.create_topics(to_create, timeout_ms=30000)
            admin.wait_for_topics(list(to_create), timeout_ms=30000)
            for name, opts in to_create.items():
                print(
                    f"created  {name} ({opts['num_partitions']} partitions, "
                    f"RF {opts['replication_factor']})"
                )
        if check_only:
            return 1 if drift else 0
        return 0
    finally:
        admin.close()


def _update(admin: Any, w: TopicSpec, have: dict[str, Any]) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType

    changed = {k: v for k, v in w.configs.items() if have["configs"].get(k) != v}
    if changed:
        result = admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, w.name, configs=changed)]
        )
        _raise_on_error(result, w.name)
        print(f"altered  {w.name}: " + ", ".join(f"{k}={v}" for k, v in changed.items()))
    if have["partitions"] < w.partitions:
        print(
            f"WARNING  {w.name}: growing partitions {have['partitions']} -> {w.partitions} "
            "remaps keys; records of one key may reorder across the change"
        )
        admin.create_partitions({w.name: w.partitions}, timeout_ms=30000)
    if have["replication_factor"] != w.replication_factor:
        print(
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


def cmd_wait(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    admin = connect(args.bootstrap, args.timeout)
    try:
        while True:
            try:
                info = admin.describe_cluster()
                if info.get("brokers") and info.get("controller_id", -1) is not None:
                    return 0
            except Exception as exc:
                last = exc
            else:
                last = RuntimeError(f"no brokers in metadata yet: {info}")
            if time.monotonic() >= deadline:
                print(
                    f"kafka_topics: broker not ready after {args.timeout}s: {last}", file=sys.stderr
                )
                return 1
            time.sleep(0.3)
    finally:
        admin.close()


def cmd_list(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    cap = args.max_partitions or (spec.local_max_partitions if args.local else None)
    for t in spec.topics:
        w = effective(t, t.replication_factor, cap)
        cfg = ", ".join(f"{k}={v}" for k, v in w.configs.items())
        print(f"{w.name}  partitions={w.partitions} rf={w.replication_factor} key={w.key}  {cfg}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("apply", "check", "wait", "list"):
        s = sub.add_parser(name)
        s.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP)
        s.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
        s.add_argument("--timeout", type=float, default=30.0, help="seconds to reach the broker")
        g = s.add_mutually_exclusive_group()
        g.add_argument("--max-partitions", type=int, default=None)
        g.add_argument(
            "--local", action="store_true", help="cap partitions at local.max_partitions"
        )
        s.add_argument("--dry-run", action="store_true", help="apply: only print what would change")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        if args.cmd == "apply":
            return cmd_apply(args)
        if args.cmd == "check":
            return cmd_apply(args, check_only=True)
        if args.cmd == "wait":
            return cmd_wait(args)
        return cmd_list(args)
    except SpecError as exc:
        print(f"kafka_topics: bad spec: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
