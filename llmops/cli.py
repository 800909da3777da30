"""The ``llmops`` command line: run the mesh, one service, status, benchmarks."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

import click

from llmops.config import ConfigError, MeshConfig, Mode, load_config
from llmops.errors import LLMOpsError
from llmops.mesh import SERVICES

EXIT_CONFIG = 2

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="LLMOPS_CONFIG",
    help="YAML config file (default: none; env LLMOPS_CONFIG). "
    "Env vars LLMOPS__<KEY>__<SUBKEY> override it.",
)


def _fail_config(message: str) -> NoReturn:
    click.echo(f"llmops: config error: {message}", err=True)
    sys.exit(EXIT_CONFIG)


def _load(config_path: Path | None, **overrides: Any) -> MeshConfig:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        _fail_config(str(exc))
    if overrides:
        try:
            config = MeshConfig.model_validate({**config.model_dump(), **overrides})
        except Exception as exc:  # validated again: overrides come from flags
            _fail_config(str(exc).splitlines()[0])
    return config


def _serve(config: MeshConfig, names: list[str]) -> None:
    from llmops.logging import configure_logging
    from llmops.server import run

    configure_logging(config.logging.level, config.logging.format)
    try:
        run(config, names)
    except ConfigError as exc:  # e.g. production mode without TLS
        _fail_config(str(exc))
    except LLMOpsError as exc:  # state dir in use, a changed migration, ...: say it plainly
        click.echo(f"llmops: {exc.message}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"llmops: {exc}", err=True)
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llmops", prog_name="llmops")
def cli() -> None:
    """llmops-mesh: an LLMOps platform for e-commerce storefronts, as a mesh of gRPC services."""


@cli.command()
@_config_option
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the embedded backends keep their data (default: config state_dir).",
)
@click.option(
    "--production",
    is_flag=True,
    help="Every service as its own `llmops run` process and the sinks as `llmops sink`, on "
    "the real local servers (deploy/local), supervised; config: --config, default "
    "deploy/local/production.yaml.",
)
@click.option(
    "--servers/--no-servers",
    default=True,
    show_default=True,
    help="With --production: start the local servers first (deploy/local/all.sh start; "
    "already running = no-op).",
)
def up(config_path: Path | None, state_dir: Path | None, production: bool, servers: bool) -> None:
    """Run the whole mesh in this process on embedded backends (no external servers).

    All seven services start, each on its own port (see `llmops ports`). The embedded
    ClickHouse (chdb) is migrated and the event sinks run in-process, so published events
    are queryable within seconds (`llmops logs predictions --last 5m`). Ctrl-C or SIGTERM
    drains in-flight calls, flushes buffered events and stops everything.

    With --production, the same mesh in production mode as separate processes (one log
    stream, restarts, clean stop): see deploy/local/production.yaml for what runs where.
    """
    if production:
        _up_production(config_path, state_dir, servers)
        return
    overrides: dict[str, Any] = {"mode": Mode.EMBEDDED}
    if state_dir is not None:
        overrides["state_dir"] = state_dir
    config = _load(config_path, **overrides)
    names = [n for n, s in config.services.items() if s.enabled]
    click.echo(f"llmops up: starting {len(names)} services (embedded mode)", err=True)
    for name in names:
        svc = config.services[name]
        click.echo(
            f"  {name:<11} grpc {svc.address:<16} metrics :{svc.admin_port}  "
            f"{SERVICES[name].grpc_service}",
            err=True,
        )
    _echo_security(config)
    _serve(config, names)


PRODUCTION_CONFIG = Path("deploy/local/production.yaml")
CREDENTIAL_FILES = ("ca_file", "cert_file", "key_file", "client_cert_file", "client_key_file",
                    "tokens_file", "token_file")  # fmt: skip
LOCAL_SERVERS = "redis kafka postgres opa"
"""What the one-machine production mesh needs of deploy/local (ClickHouse: chdb, in the sink)."""


def _up_production(config_path: Path | None, state_dir: Path | None, servers: bool) -> None:
    import subprocess

    from llmops.security import provision
    from llmops.supervisor import Supervisor, production_processes

    if config_path is None and "LLMOPS_CONFIG" not in os.environ:
        config_path = PRODUCTION_CONFIG
    overrides: dict[str, Any] = {"mode": Mode.PRODUCTION}
    if state_dir is not None:
        overrides["state_dir"] = state_dir
    config = _load(config_path, **overrides)
    credentials: dict[str, str] = {}
    if not config.security.insecure:
        # A local CA and certificates, made once under state_dir/security as embedded mode
        # makes them (production itself never makes credentials), handed to every process.
        unset = dict.fromkeys(CREDENTIAL_FILES)
        local = {**config.model_dump(), "mode": Mode.EMBEDDED,
                 "security": {**config.security.model_dump(), **unset}}  # fmt: skip
        try:
            files = provision(MeshConfig.model_validate(local))
        except ConfigError as exc:
            _fail_config(str(exc))
        made = {"ca_file": files.ca, "cert_file": files.cert, "key_file": files.key,
                "client_cert_file": files.client_cert, "client_key_file": files.client_key,
                "tokens_file": files.tokens, "token_file": files.token}  # fmt: skip
        credentials = {
            f"LLMOPS__SECURITY__{key.upper()}": str(path.resolve())
            for key, path in made.items()
            if path is not None
        }
    if servers:
        script = Path(__file__).resolve().parents[1] / "deploy" / "local" / "all.sh"
        click.echo(f"llmops up --production: starting local servers ({LOCAL_SERVERS})", err=True)
        env = {**os.environ, "LLMOPS_SERVERS": LOCAL_SERVERS}
        done = subprocess.run(["bash", str(script), "start"], env=env, check=False)
        if done.returncode != 0:
            click.echo("llmops up --production: a local server did not start (above)", err=True)
            sys.exit(1)
    specs = production_processes(config, config_path, credentials)
    click.echo(
        f"llmops up --production: {len(specs)} processes "
        f"({', '.join(s.name for s in specs)}); Ctrl-C stops them all",
        err=True,
    )
    sys.exit(Supervisor(specs, grace_s=config.server.shutdown_grace_s + 20).run())


def _echo_security(config: MeshConfig) -> None:
    from llmops.security import provision

    if config.security.insecure:
        click.echo(
            "  security   INSECURE (security.insecure: true): plaintext, no authentication",
            err=True,
        )
        return
    try:
        files = provision(config)
    except ConfigError as exc:
        _fail_config(str(exc))
    how = "mTLS" if config.security.client_certificates == "require" else "TLS"
    click.echo(f"  security   {how}, CA {files.ca}; the CLI's token: {files.token}", err=True)


@cli.command("run")
@click.argument("service", type=click.Choice(list(SERVICES)))
@_config_option
def run_cmd(service: str, config_path: Path | None) -> None:
    """Run one SERVICE as its own process, with production backends from the config."""
    _serve(_load(config_path, mode=Mode.PRODUCTION), [service])


@cli.command()
@_config_option
def migrate(config_path: Path | None) -> None:
    """Apply the ClickHouse migrations of deploy/clickhouse/migrations (idempotent).

    Uses the config's ClickHouse backend: the server DSN in production mode, the embedded
    chdb under state_dir otherwise (`llmops up` migrates that one by itself at start).
    """
    from llmops.backends import Backends, StateDirLocked
    from llmops.clickhouse.migrations import apply_migrations

    config = _load(config_path)
    try:
        with Backends(config) as backends:
            applied = apply_migrations(backends.clickhouse())
    except StateDirLocked as exc:
        click.echo(f"llmops: {exc.message}; the running mesh migrates its own chdb", err=True)
        sys.exit(1)
    except LLMOpsError as exc:
        click.echo(f"llmops: migrate failed: {exc.message}", err=True)
        sys.exit(1)
    click.echo(f"applied: {', '.join(applied)}" if applied else "schema up to date")


@cli.command()
@_config_option
@click.option("--topic", "topics", multiple=True, help="Only these topics (default: all).")
def sink(config_path: Path | None, topics: tuple[str, ...]) -> None:
    """Run the sinks: one consumer group per topic, from the event log into ClickHouse.

    Production mode by default (Kafka into the ClickHouse server); metrics and the logs
    endpoint on sink.admin_port. SIGTERM/Ctrl-C finishes the current batch and stops.
    """
    import signal
    import threading

    from llmops.backends import Backends
    from llmops.logging import configure_logging
    from llmops.observability import Observability

    config = _load(config_path, mode=Mode.PRODUCTION)
    configure_logging(config.logging.level, config.logging.format)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with Backends(config) as backends:
        observability = Observability.from_config(config, backends, list(topics) or None)
        observability.start()
        stop.wait()
        observability.stop()


@cli.group()
def logs() -> None:
    """Read what the mesh logged to ClickHouse."""


LOG_KINDS = {
    "predictions": "predictions",
    "exposures": "experiment exposures",
    "guardrail": "guardrail decisions",
    "audit": "audit records",
    "feedback": "feedback events",
    "drift": "drift reports",
}


def _show_logs(kind: str, config_path: Path | None, last: str, limit: int, as_json: bool) -> None:
    from llmops.clickhouse.queries import format_table, recent_columns
    from llmops.logs import fetch_recent, parse_window

    config = _load(config_path)
    try:
        window = parse_window(last)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--last") from None
    try:
        rows = fetch_recent(config, kind, window, limit)
    except LLMOpsError as exc:
        click.echo(f"llmops: {exc.message}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"rows": rows}, default=str))
    elif rows:
        click.echo(format_table(rows, recent_columns(kind)))
    else:
        click.echo(f"no {LOG_KINDS[kind]} in the last {last}")


def _limit_option(default: int) -> Callable[[Any], Any]:
    from llmops.clickhouse.queries import MAX_RECENT_ROWS

    return click.option(
        "--limit", default=default, show_default=True,
        type=click.IntRange(1, MAX_RECENT_ROWS),
        help=f"At most this many rows (1..{MAX_RECENT_ROWS}).",
    )  # fmt: skip


def _logs_command(kind: str, what: str) -> click.Command:
    @logs.command(
        kind,
        help=f"The newest {what} of the last window, newest first.\n\nWith a running "
        "`llmops up`, asks it (chdb allows one process per data directory); otherwise reads "
        "the configured ClickHouse directly.",
    )
    @_config_option
    @click.option("--last", default="5m", show_default=True, help="Window: 30s, 5m, 2h, 1d.")
    @_limit_option(20)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON rows.")
    def command(config_path: Path | None, last: str, limit: int, as_json: bool) -> None:
        _show_logs(kind, config_path, last, limit, as_json)

    return command


for _kind, _what in LOG_KINDS.items():
    _logs_command(_kind, _what)


@cli.command("drift")
@_config_option
@click.option("--last", default="1d", show_default=True, help="Window: 30s, 5m, 2h, 1d.")
@_limit_option(50)
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows.")
def drift(config_path: Path | None, last: str, limit: int, as_json: bool) -> None:
    """The newest drift reports (PSI and KS per route, model and metric), newest first:
    `llmops logs drift` with a one-day default window."""
    _show_logs("drift", config_path, last, limit, as_json)


@cli.command()
@_config_option
def demo(config_path: Path | None) -> None:
    """Show online features of demo shoppers and properties from a running `llmops up`."""
    import grpc

    from llmops.demo.show import show, unavailable_hint

    config = _load(config_path)
    try:
        click.echo(asyncio.run(show(config)))
    except grpc.RpcError as exc:
        click.echo(f"llmops demo: {unavailable_hint(exc, config)}", err=True)
        sys.exit(1)


def _rpc(work: Coroutine[Any, Any, str]) -> None:
    """Run one client call and print its text; a failure is one line
    ``llmops: <STATUS>: <details>`` on stderr and exit 1."""
    import grpc

    try:
        click.echo(asyncio.run(work))
    except grpc.aio.AioRpcError as exc:
        click.echo(f"llmops: {exc.code().name}: {exc.details()}", err=True)
        sys.exit(1)
    except LLMOpsError as exc:
        click.echo(f"llmops: {exc.code}: {exc.message}", err=True)
        sys.exit(1)


_json_option = click.option("--json", "json_out", is_flag=True, help="Print the reply as JSON.")
_kind_option = click.option(
    "--kind",
    type=click.Choice(["model", "prompt", "dataset", "policy"]),
    default="model",
    show_default=True,
    help="Artifact kind (names are unique per kind).",
)
_reason_option = click.option("--reason", default="", help="Why (kept in the audit record).")


@cli.group()
def label() -> None:
    """Label queues of the running feedback service: list, lease, answer."""


@label.command("queues")
@_config_option
@_json_option
def label_queues(config_path: Path | None, json_out: bool) -> None:
    """List the label queues with their backlog and labels."""
    from llmops import label_cli

    _rpc(label_cli.list_queues(_load(config_path), json_out))


@label.command("next")
@click.argument("queue")
@_config_option
@click.option("--count", default=1, show_default=True, help="Items to lease (1-100).")
@click.option("--lease", "lease_s", default=600, show_default=True, help="Lease, in seconds.")
@click.option("--annotator", default="", help="Your pseudonymous annotator id.")
@_json_option
def label_next(
    queue: str, config_path: Path | None, count: int, lease_s: int, annotator: str, json_out: bool
) -> None:
    """Lease the next items of QUEUE and show what to label."""
    from llmops import label_cli

    _rpc(label_cli.next_items(_load(config_path), queue, count, lease_s, annotator, json_out))


@label.command("submit")
@click.argument("queue")
@click.argument("item_id")
@click.argument("token")
@click.argument("value")
@_config_option
@click.option("--note", default="", help="A note (personal data is redacted before storage).")
@click.option("--confidence", default=0.0, help="Your confidence in [0, 1].")
@click.option("--annotator", default="", help="Your pseudonymous annotator id.")
def label_submit(
    queue: str, item_id: str, token: str, value: str, config_path: Path | None, note: str,
    confidence: float, annotator: str,
) -> None:  # fmt: skip
    """Answer a leased item of QUEUE with the label VALUE."""
    from llmops import label_cli

    _rpc(
        label_cli.submit(
            _load(config_path), queue, item_id, token, value, note, confidence, annotator
        )
    )


@cli.group()
def registry() -> None:
    """The governance registry of a running mesh: models, prompts, datasets, policies.

    Thin clients of GovernanceService (`llmops up` serves it); the service decides, validates
    and audits. The caller is identified by its connection (no login yet).
    """


@registry.command("register")
@click.argument("kind", type=click.Choice(["model", "prompt", "dataset", "policy"]))
@click.argument("name")
@_config_option
@click.option("--uri", default="", help="Where the content lives, e.g. s3://models/x/7/.")
@click.option("--digest", default=None, help="Content digest sha256:<hex> (or give --file).")
@click.option(
    "--file",
    "file_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Compute --digest from this file's bytes.",
)
@click.option(
    "--card",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML of the kind's facts: a model card for models (fields as in governance.proto, "
    "e.g. risk_tier: limited), a prompt template, dataset info or policy info.",
)
@click.option("--description", default="", help="Used when this creates the artifact.")
@click.option("--owner", default="", help="Used when this creates the artifact.")
@click.option(
    "--upstream",
    multiple=True,
    help="Lineage to the new version: RELATION=KIND/NAME[@VERSION], "
    "e.g. trained_on=dataset/guest-reviews (repeatable).",
)
@click.option("--metadata", multiple=True, help="KEY=VALUE (repeatable).")
@_json_option
def registry_register(
    kind: str,
    name: str,
    config_path: Path | None,
    uri: str,
    digest: str | None,
    file_path: Path | None,
    card: Path | None,
    description: str,
    owner: str,
    upstream: tuple[str, ...],
    metadata: tuple[str, ...],
    json_out: bool,
) -> None:
    """Register a new immutable version of KIND NAME (idempotent on the content digest)."""
    from llmops import governance_cli as g

    if (digest is None) == (file_path is None):
        raise click.UsageError("give exactly one of --digest and --file")
    config = _load(config_path)
    try:
        content_digest = g.file_digest(file_path) if file_path is not None else digest or ""
    except LLMOpsError as exc:
        click.echo(f"llmops: {exc.code}: {exc.message}", err=True)
        sys.exit(1)
    args = g.RegisterArgs(
        kind, name, uri, content_digest, description, owner, card, upstream, metadata
    )
    _rpc(g.register(config, args, json_out))


@registry.command("list")
@_config_option
@click.option(
    "--kind",
    type=click.Choice(["model", "prompt", "dataset", "policy"]),
    default=None,
    help="Only this kind (default: all).",
)
@click.option("--prefix", default="", help="Only names starting with this.")
@click.option("--page-size", default=50, show_default=True)
@click.option("--page-token", default="", help="Continue from a previous page.")
@_json_option
def registry_list(
    config_path: Path | None,
    kind: str | None,
    prefix: str,
    page_size: int,
    page_token: str,
    json_out: bool,
) -> None:
    """List artifacts with their latest version and aliases, a page at a time."""
    from llmops import governance_cli as g

    _rpc(g.list_artifacts(_load(config_path), kind, prefix, page_size, page_token, json_out))


@registry.command("show")
@click.argument("name")
@_config_option
@_kind_option
@click.option("--version", default=0, help="Show this version (default: the latest).")
@click.option("--alias", default="", help="Show the version this alias points at.")
@_json_option
def registry_show(
    name: str, config_path: Path | None, kind: str, version: int, alias: str, json_out: bool
) -> None:
    """Show an artifact: its aliases, every version, and one version's details."""
    from llmops import governance_cli as g

    _rpc(g.show(_load(config_path), kind, name, version, alias, json_out))


@registry.command("alias")
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=int)
@_config_option
@_kind_option
@click.option(
    "--expected-version",
    type=int,
    default=None,
    help="Move only if the alias points at this version now (0: must not exist); "
    "ABORTED otherwise.",
)
@_reason_option
@_json_option
def registry_alias(
    name: str,
    alias: str,
    version: int,
    config_path: Path | None,
    kind: str,
    expected_version: int | None,
    reason: str,
    json_out: bool,
) -> None:
    """Point ALIAS of NAME at VERSION (0 removes it). The deploy gate decides: a refusal is
    PERMISSION_DENIED with the policy's reasons."""
    from llmops import governance_cli as g

    _rpc(
        g.set_alias(
            _load(config_path), kind, name, alias, version, expected_version, reason, json_out
        )
    )


@registry.command("history")
@click.argument("name")
@_config_option
@_kind_option
@click.option("--alias", default="", help="Only the moves of this alias.")
@click.option(
    "--at",
    default="",
    help="Also say which version each alias pointed at then: an ISO 8601 time "
    "(2026-12-01T09:00:00Z) or a window before now (2h, 7d).",
)
@_json_option
def registry_history(
    name: str, config_path: Path | None, kind: str, alias: str, at: str, json_out: bool
) -> None:
    """The versions of NAME, oldest first, and every move of its aliases: who moved which
    alias from which version to which, when and why (GetAliasHistory)."""
    from llmops import governance_cli as g

    _rpc(g.history(_load(config_path), kind, name, alias, at, json_out))


@registry.command("approve")
@click.argument("name")
@click.argument("version", type=int)
@_config_option
@_kind_option
@_reason_option
@_json_option
def registry_approve(
    name: str, version: int, config_path: Path | None, kind: str, reason: str, json_out: bool
) -> None:
    """Approve VERSION of NAME (Transition to APPROVED). Serving aliases need an approval by
    someone other than the registrant."""
    from llmops import governance_cli as g

    _rpc(g.approve(_load(config_path), kind, name, version, reason, json_out))


@registry.command("lineage")
@click.argument("name")
@_config_option
@click.option(
    "--kind",
    type=click.Choice(["model", "prompt", "dataset", "policy", "route", "uri"]),
    default="model",
    show_default=True,
    help="What NAME is: an artifact kind, an inference route, or an external URI.",
)
@click.option("--version", default=0, help="Artifact version (default: the latest).")
@click.option(
    "--direction",
    type=click.Choice(["upstream", "downstream", "both"]),
    default="both",
    show_default=True,
)
@click.option("--depth", default=3, show_default=True, help="Hops, 1 to 10.")
@_json_option
def registry_lineage(
    name: str,
    config_path: Path | None,
    kind: str,
    version: int,
    direction: str,
    depth: int,
    json_out: bool,
) -> None:
    """The lineage of NAME as a tree: what it came from (upstream) and what uses it."""
    from llmops import governance_cli as g

    _rpc(g.lineage(_load(config_path), kind, name, version, direction, depth, json_out))


@cli.command("compliance")
@click.argument("subject", type=click.Choice(["model", "route"]))
@click.argument("name")
@_config_option
@click.option("--version", default=0, help="Model version (default: the latest).")
@click.option("--alias", default="", help="The model version this alias points at.")
@_json_option
def compliance(
    subject: str,
    name: str,
    config_path: Path | None,
    version: int,
    alias: str,
    json_out: bool,
) -> None:
    """The compliance report of a model version or of a route (every model serving it): risk
    tier, model card completeness, approvals, alias history, logging retention in force,
    last evaluation, drift, and findings (GetComplianceReport)."""
    from llmops import governance_cli as g

    if subject == "route" and (version or alias):
        raise click.UsageError("--version and --alias are for a model")
    _rpc(g.compliance(_load(config_path), subject, name, version, alias, json_out))


@cli.group()
def policy() -> None:
    """Policy decisions of a running mesh (GovernanceService.Evaluate)."""


@policy.command("eval")
@click.argument("path")
@_config_option
@click.option(
    "--input",
    "input_text",
    default="{}",
    show_default=True,
    help="Input document: a JSON object, or @FILE (JSON or YAML).",
)
@_json_option
def policy_eval(path: str, config_path: Path | None, input_text: str, json_out: bool) -> None:
    """Decide PATH (e.g. llmops/registry/alias/decision) on an input; prints the decision id,
    bundle revision, result and latency. Every decision is recorded."""
    from llmops import governance_cli as g

    _rpc(g.evaluate(_load(config_path), path, input_text, json_out))


@policy.command("test")
@click.argument("cases_path", metavar="CASES", type=click.Path(dir_okay=False, path_type=Path))
@_config_option
@_json_option
def policy_test(cases_path: Path, config_path: Path | None, json_out: bool) -> None:
    """Run a YAML file of cases through Evaluate; exit 1 when one fails.

    CASES is a list of {name, path, input, expect}; expect is true/false (allowed) or a
    mapping of allowed, reasons (each must be given), result (equal) or error (a status
    name, e.g. INVALID_ARGUMENT).
    """
    from llmops import governance_cli as g

    config = _load(config_path)
    outcomes: list[g.CaseOutcome] = []

    async def work() -> str:
        outcomes.extend(await g.run_cases(config, g.load_cases(cases_path)))
        return g.report_cases(outcomes, json_out)

    _rpc(work())
    if not all(o.passed for o in outcomes):
        sys.exit(1)


@cli.group()
def audit() -> None:
    """The hash-chained audit trail of a running mesh (QueryAudit, VerifyAudit)."""


@audit.command("query")
@_config_option
@click.option("--chain", default="", help="Only this chain, e.g. tenant:default.")
@click.option("--since", default="", help="Only the last 30m, 2h, 7d ... (default: all).")
@click.option("--actor", default="", help="Only this actor id, e.g. user:alice.")
@click.option("--action", default="", help="Only actions starting with this, e.g. alias.")
@click.option("--resource", default="", help="Only this resource: TYPE or TYPE/NAME.")
@click.option("--page-size", default=50, show_default=True)
@click.option("--page-token", default="", help="Continue from a previous page.")
@_json_option
def audit_query(
    config_path: Path | None,
    chain: str,
    since: str,
    actor: str,
    action: str,
    resource: str,
    page_size: int,
    page_token: str,
    json_out: bool,
) -> None:
    """Audit records oldest first, a page at a time."""
    from llmops import governance_cli as g

    args = g.AuditArgs(chain, since, actor, action, resource, page_size, page_token)
    _rpc(g.audit_query(_load(config_path), args, json_out))


@audit.command("verify")
@click.argument("chain")
@_config_option
@click.option("--from", "first", default=0, show_default=True, help="First sequence (0 = 1).")
@click.option("--to", "last", default=0, show_default=True, help="Last sequence (0 = head).")
@_json_option
def audit_verify(
    config_path: Path | None, chain: str, first: int, last: int, json_out: bool
) -> None:
    """Recompute CHAIN's hashes (e.g. tenant:default) and report the first break; exit 1
    when the chain is broken."""
    from llmops import governance_cli as g

    config = _load(config_path)
    valid: list[bool] = []

    async def work() -> str:
        ok, text = await g.audit_verify(config, chain, first, last, json_out)
        valid.append(ok)
        return text

    _rpc(work())
    if not all(valid):
        sys.exit(1)


@cli.group()
def features() -> None:
    """Feature store operations against the running feature service."""


@features.command("materialize")
@_config_option
@click.option("--view", "views", multiple=True, help="Feature view (default: every online view).")
@click.option("--start", default=None, help="Window start, ISO 8601 UTC (default: watermark).")
@click.option("--end", default=None, help="Window end, ISO 8601 UTC (default: now).")
@click.option("--step", default="1d", show_default=True, help="Slice size: each slice is one call.")
def features_materialize(
    config_path: Path | None, views: tuple[str, ...], start: str | None, end: str | None, step: str
) -> None:
    """Copy the latest offline values into the online store, slice by slice, resumably.

    Each slice is one Materialize call; the view's watermark rises after each, so an
    interrupted run continues from where it stopped when started again without --start.
    """
    from llmops.demo.materialize import run_materialize

    config = _load(config_path)
    try:
        asyncio.run(run_materialize(config, list(views), start, end, step))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@_config_option
def ports(config_path: Path | None) -> None:
    """Print each service's gRPC and metrics address."""
    config = _load(config_path)
    for name, svc in config.services.items():
        click.echo(f"{name:<11} {svc.address:<16} http://{svc.host}:{svc.admin_port}/metrics")


@cli.group()
def token() -> None:
    """Bearer tokens the mesh accepts (security.tokens_file; embedded: under state_dir).

    Tokens are stored as SHA-256 digests; `create` shows the token once. Servers re-read
    the file within a second of a change: rotate by creating a new token for the same id,
    moving the callers to it, then `revoke --keep-newest`.
    """


def _tokens_path(config: MeshConfig) -> Path:
    from llmops.security import provision

    try:
        path = provision(config).tokens
    except ConfigError as exc:
        _fail_config(str(exc))
    if path is None:
        _fail_config("security.tokens_file is not set: this mesh accepts no bearer tokens")
    return path


@token.command("create")
@click.argument("ident", metavar="ID")
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    help="storefront, operator, service or auditor (repeatable; the Rego policy decides "
    "what each may call).",
)
@click.option("--expires-in-days", type=float, default=None, help="Expire after this long.")
@_config_option
def token_create(
    ident: str, roles: tuple[str, ...], expires_in_days: float | None, config_path: Path | None
) -> None:
    """Mint a token for ID with ROLEs; print it once (only its digest is kept)."""
    import datetime as dt

    from llmops.security.tokens import add_token

    path = _tokens_path(_load(config_path))
    expires = (
        dt.datetime.now(dt.UTC) + dt.timedelta(days=expires_in_days)
        if expires_in_days is not None
        else None
    )
    click.echo(add_token(path, ident, list(roles), expires))
    click.echo(f"added to {path}: id {ident}, roles {', '.join(roles)}", err=True)


@token.command("list")
@_config_option
def token_list(config_path: Path | None) -> None:
    """The accepted tokens: id, roles, digest prefix, expiry (never the tokens)."""
    from llmops.security.tokens import TokenStore

    for entry in TokenStore(_tokens_path(_load(config_path))).entries():
        expires = entry.expires.isoformat() if entry.expires else "never"
        click.echo(f"{entry.id:<24} {','.join(entry.roles):<20} {entry.sha256[:12]}  {expires}")


@token.command("revoke")
@click.argument("ident", metavar="ID")
@click.option("--keep", default=None, help="Keep the token with this digest prefix (rotation).")
@_config_option
def token_revoke(ident: str, keep: str | None, config_path: Path | None) -> None:
    """Remove the tokens of ID (all, or all but --keep)."""
    from llmops.security.tokens import TokenStore, revoke_tokens

    path = _tokens_path(_load(config_path))
    keep_digest = None
    if keep:
        matches = [e.sha256 for e in TokenStore(path).entries() if e.sha256.startswith(keep)]
        if len(matches) != 1:
            _fail_config(f"--keep {keep}: matches {len(matches)} tokens, not exactly one")
        keep_digest = matches[0]
    removed = revoke_tokens(path, ident, keep_digest)
    click.echo(f"revoked {removed} token(s) of {ident}", err=True)
    sys.exit(0 if removed else 1)


@cli.command("cert")
@click.argument("ident", metavar="ID")
@click.option("--role", "roles", multiple=True, required=True, help="Role (repeatable).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for <ID>.pem and <ID>.key (created 0600).",
)
@_config_option
def cert(ident: str, roles: tuple[str, ...], out: Path, config_path: Path | None) -> None:
    """Issue a client certificate from embedded mode's local CA (CN=ID, OU=each role)."""
    from llmops.security import provision, security_dir
    from llmops.security.pki import LocalPki, issue_client_certificate

    config = _load(config_path)
    if config.mode is not Mode.EMBEDDED:
        _fail_config("`llmops cert` issues from embedded mode's local CA; use your PKI")
    provision(config)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in ident)
    out.mkdir(parents=True, exist_ok=True)
    issue_client_certificate(
        LocalPki(security_dir(config)), ident, roles, out / f"{safe}.pem", out / f"{safe}.key"
    )
    click.echo(f"wrote {out / f'{safe}.pem'} and {out / f'{safe}.key'}", err=True)


@cli.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object) for scripts.")
@click.option("--timeout", default=2.0, show_default=True, help="Per-service timeout, seconds.")
def status(config_path: Path | None, as_json: bool, timeout: float) -> None:
    """Show each service's health, version, address and uptime.

    Exits 0 when every enabled service is SERVING, 1 otherwise.
    """
    from llmops.status import collect_status, render_table

    config = _load(config_path)
    rows = asyncio.run(collect_status(config, timeout))
    if as_json:
        click.echo(json.dumps({"services": [r.to_dict() for r in rows]}, indent=2))
    else:
        click.echo(render_table(rows))
    sys.exit(0 if all(r.health == "SERVING" for r in rows) else 1)


@cli.group()
def bench() -> None:
    """Benchmarks; each prints one JSON line last on stdout (see BENCH.md).

    The benchmarks live in the top-level ``benchmarks`` package, loaded only here. A target
    that needs an optional dependency says in one line which extra to install; baselines
    (Feast, GrowthBook, Presidio) install themselves into venvs of their own.
    """
    from llmops.logging import configure_logging

    configure_logging("warning", "console")  # library warnings to stderr, stdout is the JSON


BENCH_NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    # target -> (module, extra that provides it)
    "events": (("kafka", "kafka"),),
    "clickhouse": (("clickhouse_driver", "clickhouse"),),
}


def _bench_main(target: str) -> Callable[..., None]:
    """``benchmarks.<target>.main``, after checking the target's optional dependencies."""
    import importlib.util

    for module, extra in BENCH_NEEDS.get(target, ()):
        if importlib.util.find_spec(module) is None:
            click.echo(
                f"llmops bench {target}: needs the '{extra}' extra ({module} is not installed): "
                f"pip install -e '.[{extra}]'",
                err=True,
            )
            sys.exit(1)
    bench_module = importlib.import_module(f"benchmarks.{target}")
    main: Callable[..., None] = bench_module.main
    return main


@bench.command("noop")
@click.option("--quick", is_flag=True, help="Reduced run, under 60 s.")
@click.option("--concurrency", default=8, show_default=True)
@click.option("-n", "--calls", default=None, type=int, help="Calls per case (after warm-up).")
def bench_noop(quick: bool, concurrency: int, calls: int | None) -> None:
    """Empty unary RPC: the shared runtime (all interceptors) vs a bare grpc.aio server."""
    _bench_main("noop")(quick=quick, concurrency=concurrency, calls=calls)


@bench.command("events")
@click.option("--quick", is_flag=True, help="Reduced run, under 60 s.")
def bench_events(quick: bool) -> None:
    """Event bus: producer/consumer throughput (Kafka and the local log), publish latency."""
    _bench_main("events")(quick=quick)


@bench.command("features")
@click.option("--quick", is_flag=True, help="Reduced run, under 60 s (once Feast's venv exists).")
@click.option("--concurrency", default=8, show_default=True)
@click.option("-n", "--calls", default=None, type=int, help="Calls per case (after warm-up).")
def bench_features(quick: bool, concurrency: int, calls: int | None) -> None:
    """Feature service: GetOnlineFeatures via gRPC on real Redis vs Feast (SDK and server)."""
    _bench_main("features")(quick=quick, concurrency=concurrency, calls=calls)


@bench.command("experiment")
@click.option(
    "--quick", is_flag=True, help="Reduced run, under 60 s (once GrowthBook's venv exists)."
)
@click.option("--concurrency", default=8, show_default=True)
@click.option("-n", "--calls", default=None, type=int, help="Calls per case (after warm-up).")
def bench_experiment(quick: bool, concurrency: int, calls: int | None) -> None:
    """Experiment service: Assign over 20 experiments via gRPC and in-process vs GrowthBook."""
    _bench_main("experiment")(quick=quick, concurrency=concurrency, calls=calls)


@bench.command("guardrail")
@click.option(
    "--quick", is_flag=True, help="Reduced run, under 60 s (once Presidio's venv exists)."
)
@click.option("-n", "--calls", default=None, type=int, help="Calls per text (after warm-up).")
def bench_guardrail(quick: bool, calls: int | None) -> None:
    """Guardrail service: Check latency on 1 KB / 8 KB texts, PII quality vs Presidio."""
    _bench_main("guardrail")(quick=quick, calls=calls)


@bench.command("governance")
@click.option("--quick", is_flag=True, help="Reduced run, under 60 s.")
def bench_governance(quick: bool) -> None:
    """Governance: policy decisions in-process (Rego as Wasm) vs the OPA server's REST API."""
    _bench_main("governance")(quick=quick)


@bench.command("embedding")
@click.option("--quick", is_flag=True, help="Reduced run, under 60 s.")
def bench_embedding(quick: bool) -> None:
    """Embedding: Embed through gRPC vs the same model in-process (onnxruntime)."""
    _bench_main("embedding")(quick=quick)


@bench.command("inference")
@click.option("--quick", is_flag=True, help="Reduced run, under 60 s (once LiteLLM's venv exists).")
def bench_inference(quick: bool) -> None:
    """Inference: Generate/Run overhead vs the LiteLLM proxy, CPU streaming vs llama.cpp."""
    _bench_main("inference")(quick=quick)


@bench.command("feedback")
@click.option("--quick", is_flag=True, help="Reduced run, under 60 s.")
@click.option("--rows", type=int, default=None, help="Feedback rows of the ClickHouse cases.")
def bench_feedback(quick: bool, rows: int | None) -> None:
    """Feedback: Submit/SubmitBatch through the service; stats and exports at scale."""
    _bench_main("feedback")(quick=quick, rows=rows)


@bench.command("clickhouse")
@click.option("--quick", is_flag=True, help="Reduced run, under 60 s.")
@click.option("--rows", type=int, default=None, help="Rows of the at-scale case.")
def bench_clickhouse(quick: bool, rows: int | None) -> None:
    """ClickHouse: ingest rows/s, bytes/row on disk, rollup vs raw query latency."""
    _bench_main("clickhouse")(quick=quick, rows=rows)


@cli.command("loadtest")
@click.argument("scenario")
@click.option(
    "--target",
    type=click.Choice(["embedded", "production"]),
    default="embedded",
    show_default=True,
    help="Which mesh: `llmops up` (embedded), or the production-mode mesh of "
    "`llmops up --production` (its config: --config, default deploy/local/production.yaml).",
)
@click.option("--duration", default=None, help="Override the scenario's, e.g. 90s, 5m.")
@click.option(
    "--users", type=int, default=None, help="Override the scenario's users (a probe's concurrency)."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report directory (default: loadtest-reports/<time>-<scenario>-<target>).",
)
@click.option(
    "--compare",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Another run's report directory, shown side by side (e.g. embedded vs production).",
)
@click.option("--seed", type=int, default=None, help="Seed the shoppers' choices.")
@_config_option
def loadtest(
    scenario: str,
    target: str,
    duration: str | None,
    users: int | None,
    out: Path | None,
    compare: Path | None,
    seed: int | None,
    config_path: Path | None,
) -> None:
    """Run a load SCENARIO (loadtests/scenarios.yaml: a locust scenario, or a ghz probe of one
    RPC) against a running mesh on this machine, write a report (Markdown and one HTML page,
    with plots) and judge it against loadtests/slo.yaml.

    Exits 0 when every objective is met, 1 when one is missed (or the run judged nothing),
    2 on a usage error, 3 when the load generator failed. Every run targets
    loopback only and stops by itself (the scenario's duration or request cap).
    """
    import importlib.util

    if importlib.util.find_spec("locust") is None or importlib.util.find_spec("matplotlib") is None:
        click.echo(
            "llmops loadtest: needs the 'loadtest' extra (locust, matplotlib): "
            "pip install -e '.[loadtest]'",
            err=True,
        )
        sys.exit(EXIT_CONFIG)
    lt = importlib.import_module("loadtests.run")
    from llmops.status import collect_status

    if target == "production" and config_path is None:
        config_path = Path("deploy/local/production.yaml")
    config = _load(config_path)
    try:
        chosen = lt.pick(scenario, lt.parse_duration(duration), users)
        lt.check_loopback(config)
    except (lt.LoadtestError, lt.SpecError) as exc:
        click.echo(f"llmops loadtest: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", EXIT_CONFIG))
    down = [r for r in asyncio.run(collect_status(config, 3.0)) if r.health != "SERVING"]
    if down:
        start = "llmops up" if target == "embedded" else "llmops up --production"
        names = ", ".join(f"{r.service} {r.health}" for r in down)
        click.echo(f"llmops loadtest: the {target} mesh is not serving ({names}); "
                   f"start it with `{start}` and try again", err=True)  # fmt: skip
        sys.exit(1)
    out = out or lt.default_out(chosen, target)
    click.echo(
        f"llmops loadtest: {lt.describe(chosen)} against the {target} mesh; report in {out}",
        err=True,
    )
    try:
        lt.execute(chosen, target, out, config, config_path, seed)
        result = lt.write_report(out, compare)
    except lt.LoadtestError as exc:
        click.echo(f"llmops loadtest: {exc}", err=True)
        sys.exit(exc.exit_code)
    click.echo(lt.report.console_summary(result))
    click.echo(f"report: {out / 'report.html'} (and report.md)")
    sys.exit(lt.EXIT_PASS if result.passed else lt.EXIT_SLO_FAILED)


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def topics(args: tuple[str, ...]) -> None:
    """Kafka topics from deploy/kafka/topics.yaml: apply | check | wait | list.

    `llmops topics apply` creates missing topics and aligns configs (idempotent);
    `llmops topics -h` shows every option.
    """
    from llmops.events.topic_admin import main as topics_main

    sys.exit(topics_main(list(args)))


def run_service_main(name: str) -> None:
    """Entry point of ``python -m services.<name>``: same as ``llmops run <name>``."""
    main(["run", name, *sys.argv[1:]], prog_name=f"python -m services.{name}")


def main(args: list[str] | None = None, prog_name: str | None = None) -> None:
    command: Callable[..., Any] = cli
    command(args=args, prog_name=prog_name)
