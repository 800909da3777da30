"""One validated configuration model for the whole mesh: a YAML file plus environment overrides.

Precedence (lowest to highest): built-in defaults, the YAML file (``--config`` or
``LLMOPS_CONFIG``), then environment variables ``LLMOPS__<PATH>`` where ``__`` separates the
levels, e.g. ``LLMOPS__SERVICES__FEATURE__PORT=6051`` or ``LLMOPS__MODE=production``. Values
from the environment are parsed as YAML scalars, so ``true``, ``12`` and ``1.5`` get their types.

Unknown keys are rejected. A bad value raises :class:`ConfigError`, whose message names the
key and where the value came from; the CLI prints it on one line and exits with status 2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml
from pydantic import Field, ValidationError, create_model, model_validator

from llmops.mesh import SERVICES
from llmops.plugin import ServicePlugin
from llmops.settings import Settings

ENV_PREFIX = "LLMOPS__"
CONFIG_FILE_ENV = "LLMOPS_CONFIG"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


class Mode(StrEnum):
    EMBEDDED = "embedded"
    PRODUCTION = "production"


S = TypeVar("S", bound=Settings)


class ServiceConfig(Settings):
    """Where one service listens."""

    enabled: bool = True
    host: str = Field("127.0.0.1", min_length=1, description="gRPC bind address.")
    port: int = Field(..., ge=1, le=65535, description="gRPC port.")
    admin_port: int = Field(
        ..., ge=0, le=65535, description="HTTP admin port serving /metrics; 0 disables it."
    )
    admin_grpc_port: int | None = Field(
        None, ge=0, le=65535, description="gRPC listener of the admin services (the "
        "service's *AdminService and llmops.v1.AdminService: reloads, drain, resume), so a "
        "deployment can keep them off the storefront network. 0 = on the main port; unset "
        "= auto: port + 100 in production mode, the main port in embedded mode.",
    )  # fmt: skip
    admin_host: str = Field("", description="Bind address of the admin listener; empty = host.")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def admin_listener_port(self, mode: Mode) -> int:
        """The admin services' own port, or 0 when they share the main one."""
        if self.admin_grpc_port is not None:
            return self.admin_grpc_port
        return self.port + 100 if mode is Mode.PRODUCTION else 0

    def admin_address(self, mode: Mode) -> str:
        """Where the admin services answer (the main address when they share its port)."""
        port = self.admin_listener_port(mode)
        return f"{self.admin_host or self.host}:{port}" if port else self.address


def _default_services() -> dict[str, ServiceConfig]:
    return {
        name: ServiceConfig(port=entry.port, admin_port=entry.admin_port)
        for name, entry in SERVICES.items()
    }


class RedisConfig(Settings):
    url: str = Field("redis://127.0.0.1:16379/0", description="redis-py URL (production).")


class KafkaConfig(Settings):
    bootstrap_servers: str = Field("127.0.0.1:19092", description="Comma-separated brokers.")
    client: Literal["auto", "confluent", "kafka-python"] = Field(
        "auto", description="The Kafka client of the publishers and the sinks: `confluent` "
        "(librdkafka: ~19x the records/s producing, ~9x consuming, same guarantees), "
        "`kafka-python`, or `auto` (confluent when installed).",
    )  # fmt: skip


class ClickHouseConfig(Settings):
    backend: Literal["auto", "chdb", "server"] = Field(
        "auto",
        description="chdb = in-process engine; server = clickhouse-driver native protocol; "
        "auto = chdb in embedded mode, server in production mode.",
    )
    dsn: str = Field(
        "clickhouse://default@127.0.0.1:19000/default", description="Native-protocol DSN."
    )


class OpaConfig(Settings):
    url: str = Field("http://127.0.0.1:18181", description="OPA server (production).")


EventKind = Literal["prediction", "feedback", "exposure", "guardrail_decision", "audit"]


class EventsConfig(Settings):
    """The event log and the publisher's buffer."""

    backend: Literal["auto", "local", "kafka"] = Field(
        "auto",
        description="local = durable log under state_dir/events; kafka = backends.kafka; "
        "auto = local in embedded mode, kafka in production mode.",
    )
    buffer_capacity: int = Field(
        100_000, ge=1, description="Events held in memory before publish() is refused."
    )
    max_batch: int = Field(5_000, ge=1, description="Events per send to the log.")
    linger_ms: float = Field(5.0, ge=0, description="Wait this long to fill a batch.")
    send_timeout_s: float = Field(10.0, gt=0, description="One send attempt's bound.")
    flush_timeout_s: float = Field(
        10.0, gt=0, description="Shutdown: how long to keep delivering buffered events."
    )
    durable: list[EventKind] = Field(
        default_factory=lambda: list[EventKind](["audit", "feedback"]),
        description="Event kinds an RPC answers only once they are durable in the log "
        "(fsynced locally, or acknowledged by all in-sync Kafka replicas): an "
        "acknowledged change is never without its audit record. The other kinds are "
        "acknowledged from the buffer (lower latency, lost only with the process).",
    )
    durable_timeout_s: float = Field(
        5.0, gt=0, description="How long an RPC waits for its durable events; then it "
        "answers DEADLINE_EXCEEDED (the events still arrive, at least once).",
    )  # fmt: skip
    spill_on_overload: bool = Field(
        True, description="Kafka mode: while the log refuses sends, spill waiting events to "
        "state_dir/spill (below) instead of refusing publishes once the buffer is full; "
        "false: the buffer fills and publishes answer RESOURCE_EXHAUSTED (a host without a "
        "writable local disk). Shutdown spills either way.",
    )  # fmt: skip
    spill_at: float = Field(
        0.5, gt=0, le=1, description="Kafka mode: while the log refuses sends, once this "
        "fraction of buffer_capacity is waiting the events go to the local spill "
        "(state_dir/spill, fsynced) instead of being refused when the buffer is full; "
        "replayed into the log once it takes sends again.",
    )  # fmt: skip
    spill_after_s: float = Field(
        2.0, gt=0, description="Kafka mode: how long an RPC waiting for a durable event "
        "waits on a refusing log before the waiting events go to the local spill (durable "
        "on this machine's disk) so that it can answer.",
    )  # fmt: skip


class SinkConfig(Settings):
    """Consumers that move events into ClickHouse (`llmops sink`, in-process when embedded)."""

    embedded: bool = Field(True, description="Run the sinks inside `llmops up`.")
    batch_rows: int = Field(50_000, ge=1, description="Flush a batch at this many records.")
    flush_interval_s: float = Field(1.0, gt=0, description="...or when it is this old.")
    admin_port: int = Field(9150, ge=0, le=65535, description="Sink metrics (`llmops sink`).")
    host: str = Field(
        "", description="Bind address of the sinks' metrics and logs endpoint; empty = the "
        "first service's host (loopback by default). A container sets 0.0.0.0.",
    )  # fmt: skip
    rows_from: Literal["protobuf", "python"] = Field(
        "protobuf", description="`protobuf`: ClickHouse parses the records' bytes and derives "
        "the rows of the tables it can (predictions); `python`: every "
        "event converted in Python. A store without protobuf inserts uses `python`.",
    )  # fmt: skip


class BackendsConfig(Settings):
    redis: RedisConfig = RedisConfig()
    kafka: KafkaConfig = KafkaConfig()
    clickhouse: ClickHouseConfig = ClickHouseConfig()
    opa: OpaConfig = OpaConfig()


class ServerConfig(Settings):
    """Runtime settings shared by every service's gRPC server."""

    shutdown_grace_s: float = Field(
        10.0, gt=0, le=300, description="How long SIGTERM waits for in-flight RPCs."
    )
    max_concurrent_rpcs: int | None = Field(
        2048, ge=1, description="Per-server bound on in-flight RPCs; beyond it "
        "RESOURCE_EXHAUSTED at once (load shedding: a queue that grows without bound turns "
        "overload into timeouts for everyone). null = no bound.",
    )  # fmt: skip
    default_deadline_ms: int = Field(
        5000, ge=1, description="Deadline the typed clients put on calls that have none."
    )
    access_log: bool = Field(True, description="One structured log line per RPC.")
    local_calls: bool = Field(
        True, description="A unary call from one service to another served by the same "
        "process (all of them under `llmops up`) skips the network: the target's handler "
        "runs it in-process, through the same pipeline (authentication, authorisation, "
        "deadline, metrics, access log). Streams and calls to other processes use gRPC.",
    )  # fmt: skip
    gc_gen0_threshold: int = Field(
        10_000, ge=100, le=1_000_000, description="Allocations (net, of container objects) "
        "between two young-generation collections of Python's cyclic collector; CPython's "
        "default is 700. Requests allocate many short-lived objects that reference counting "
        "frees anyway: at 700 a 1,000-record SubmitBatch paid ~3.8 ms of collections (8 "
        "young, 1 in 10 older), at 10,000 under 0.6 ms. The heap from start-up is frozen "
        "out of the collector's reach either way.",
    )  # fmt: skip
    max_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request or response message."
    )
    max_concurrent_streams: int = Field(
        1000, ge=1, description="Calls at once on one client connection (HTTP/2 streams)."
    )
    max_connection_age_s: float = Field(
        1800.0, gt=0, description="A connection is closed (GOAWAY) after this long, so clients "
        "reconnect and load balancers see new servers; calls get max_connection_age_grace_s.",
    )  # fmt: skip
    max_connection_age_grace_s: float = Field(
        300.0, ge=0, description="How long calls may finish on a connection being aged out."
    )
    keepalive_time_s: float = Field(
        60.0, gt=0, description="The server pings an idle client this often..."
    )
    keepalive_timeout_s: float = Field(
        20.0, gt=0, description="...and closes the connection if no answer comes this fast."
    )
    min_client_ping_interval_s: float = Field(
        10.0, gt=0, description="Clients pinging more often than this are cut off (their "
        "pings cost the server); the mesh's clients ping every 30 s.",
    )  # fmt: skip


class SecurityConfig(Settings):
    """Who may call the mesh (DESIGN.md, security model). Every RPC is authenticated by a
    client certificate signed by ``ca_file`` (mTLS: services, production callers) or a bearer
    token listed hashed in ``tokens_file`` (storefront backends, operators), and authorised
    per method by the Rego decision ``authz_decision``. In embedded mode every file left
    unset is created under ``state_dir/security`` (a local CA, the server's and the mesh's
    certificates, an operator token), so nothing needs setting up; production mode refuses
    to start without them unless ``insecure`` is true."""

    insecure: bool = Field(
        False, description="Plaintext gRPC and no authentication: every caller may call "
        "everything. Logged loudly at start and shown by `llmops status`. Never in production.",
    )  # fmt: skip
    client_certificates: Literal["require", "none"] = Field(
        "require", description="require = mutual TLS on every listener: every caller "
        "presents a certificate signed by ca_file (a bearer token, when sent too, names the "
        "caller); none = server-side TLS only, callers authenticate by bearer token (for "
        "callers that cannot hold certificates). gRPC Python cannot ask for an optional "
        "client certificate, hence the choice.",
    )  # fmt: skip
    ca_file: Path | None = Field(
        None, description="PEM CA bundle that signed the servers' certificates and the "
        "client certificates servers accept.",
    )  # fmt: skip
    cert_file: Path | None = Field(None, description="This server's certificate chain (PEM).")
    key_file: Path | None = Field(None, description="This server's private key (PEM).")
    client_cert_file: Path | None = Field(
        None, description="The certificate the mesh's own clients present (service to "
        "service mTLS); its subject CN is the identity, its OUs the roles.",
    )  # fmt: skip
    client_key_file: Path | None = Field(None, description="The key of client_cert_file.")
    tokens_file: Path | None = Field(
        None, description="Bearer tokens the servers accept, stored as SHA-256 digests with "
        "their id and roles (`llmops token create`); re-read when it changes (rotation "
        "without restart).",
    )  # fmt: skip
    token_file: Path | None = Field(
        None, description="The bearer token the CLI sends (LLMOPS_TOKEN overrides); embedded "
        "default: the operator token under state_dir/security.",
    )  # fmt: skip
    tls_server_name: str = Field(
        "", description="Name clients check the servers' certificates for, when the "
        "addresses dialled are not in them (grpc.ssl_target_name_override).",
    )  # fmt: skip
    authz_bundle: Path | None = Field(
        None, description="Wasm policy bundle with the RPC authorisation decision (`opa "
        "build -t wasm`); default: this repository's deploy/opa/wasm/bundle.tar.gz. Polled: "
        "a rebuilt bundle applies without a restart.",
    )  # fmt: skip
    authz_decision: str = Field(
        "llmops/rpc/decision", min_length=1, description="Decision path that authorises a "
        "call: input {subject: {id, roles, via}, method}, result {allow, reasons}.",
    )  # fmt: skip
    metrics_auth: Literal["auto", "always", "never"] = Field(
        "auto", description="Whether a scrape of a service's /metrics (and the embedded "
        "sinks') must carry a bearer token of the monitoring, operator or auditor role: auto "
        "= when the port is bound beyond loopback; always; never.",
    )  # fmt: skip


class LoggingConfig(Settings):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class CoreConfig(Settings):
    """The runtime's part of the configuration. Every field has a working default for
    embedded mode. Each service adds its own section (its plug-in's settings model) in
    :data:`MeshConfig`."""

    mode: Mode = Mode.EMBEDDED
    state_dir: Path = Field(
        Path(".llmops/state"), description="Embedded backends' data (chdb, event log, stores)."
    )
    services: dict[str, ServiceConfig] = Field(default_factory=_default_services)
    backends: BackendsConfig = BackendsConfig()
    events: EventsConfig = EventsConfig()
    sink: SinkConfig = SinkConfig()
    server: ServerConfig = ServerConfig()
    security: SecurityConfig = SecurityConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="before")
    @classmethod
    def _merge_service_defaults(cls, data: Any) -> Any:
        # A file that sets only services.feature.port keeps the other defaults.
        if isinstance(data, dict) and isinstance(data.get("services"), dict):
            merged: dict[str, Any] = {}
            for name, value in data["services"].items():
                entry = SERVICES.get(name)
                if entry is None:
                    known = ", ".join(SERVICES)
                    raise ValueError(f"unknown service {name!r} under services (known: {known})")
                base = {"port": entry.port, "admin_port": entry.admin_port}
                merged[name] = {**base, **value} if isinstance(value, dict) else value
            for name, entry in SERVICES.items():
                merged.setdefault(name, {"port": entry.port, "admin_port": entry.admin_port})
            data = {**data, "services": merged}
        return data

    @model_validator(mode="after")
    def _ports_are_distinct(self) -> CoreConfig:
        seen: dict[tuple[str, int], str] = {}
        for name, svc in self.services.items():
            if not svc.enabled:
                continue
            ports = (
                ("port", svc.port),
                ("admin_port", svc.admin_port),
                ("admin_grpc_port", svc.admin_listener_port(self.mode)),
            )
            for key, port in ports:
                if port == 0:
                    continue
                other = seen.setdefault((svc.host, port), f"services.{name}.{key}")
                if other != f"services.{name}.{key}":
                    raise ValueError(f"services.{name}.{key}: port {port} is also used by {other}")
        return self

    @property
    def events_backend(self) -> Literal["local", "kafka"]:
        if self.events.backend != "auto":
            return self.events.backend
        return "local" if self.mode is Mode.EMBEDDED else "kafka"

    @property
    def clickhouse_backend(self) -> Literal["chdb", "server"]:
        if self.backends.clickhouse.backend != "auto":
            return self.backends.clickhouse.backend
        return "chdb" if self.mode is Mode.EMBEDDED else "server"

    def service(self, name: str) -> ServiceConfig:
        try:
            return self.services[name]
        except KeyError:
            raise ConfigError(f"services.{name}: unknown service") from None

    def settings_of(self, name: str) -> Settings:
        """The settings section of service ``name`` (its plug-in's model)."""
        plugin = SERVICES.get(name)
        if plugin is None:
            raise ConfigError(f"services.{name}: unknown service")
        value: Settings = getattr(self, plugin.config_key)
        return value

    def section(self, model: type[S]) -> S:
        """The one section whose settings model is ``model`` (typed access for callers
        outside the service, e.g. benchmarks and the CLI)."""
        for plugin in SERVICES.values():
            if plugin.settings is model:
                value = getattr(self, plugin.config_key)
                assert isinstance(value, model)
                return value
        raise ConfigError(f"no service has the settings model {model.__name__}")


_CORE_KEYS = frozenset(CoreConfig.model_fields)


def _with_sections(plugins: dict[str, ServicePlugin]) -> type[CoreConfig]:
    """The mesh config model: the core plus one section per service, from its plug-in."""
    fields: dict[str, Any] = {}
    for plugin in plugins.values():
        if plugin.config_key in _CORE_KEYS:
            raise ConfigError(
                f"service {plugin.name}: config key {plugin.config_key!r} is the runtime's"
            )
        doc = (plugin.settings.__doc__ or "").strip().splitlines()
        fields[plugin.config_key] = (
            plugin.settings,
            Field(default_factory=plugin.settings, description=doc[0] if doc else ""),
        )
    return create_model("MeshConfig", __base__=CoreConfig, **fields)


if TYPE_CHECKING:
    MeshConfig = CoreConfig
else:
    MeshConfig = _with_sections(SERVICES)


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Nest ``LLMOPS__A__B=v`` into ``{"a": {"b": v}}``; remember which variable set each path."""
    tree: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for var, raw in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX):
            continue
        path = tuple(p.lower() for p in var[len(ENV_PREFIX) :].split("__") if p)
        if not path:
            continue
        try:
            value = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            value = raw
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path)}: conflicts with a scalar set by another var")
            node = child
        node[path[-1]] = value
        origin[path] = var
    return tree, origin


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(err: ValidationError, source: str, origin: dict[tuple[str, ...], str]) -> str:
    first = err.errors()[0]
    loc = tuple(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if not loc:  # a cross-field check: its message already names the keys
        where = f"{source} + environment" if origin else source
        return f"{msg} [from {where}]"
    got = f" (got {first['input']!r})" if "input" in first else ""
    return f"{'.'.join(loc)}: {msg}{got} [from {origin.get(loc, source)}]"


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> MeshConfig:
    """Build the config from defaults, an optional YAML file and the environment."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_FILE_ENV) or None
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        file = Path(path)
        try:
            loaded = yaml.safe_load(file.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {file}: not found") from None
        except yaml.YAMLError as exc:
            first_line = str(exc).splitlines()[0]
            raise ConfigError(f"config file {file}: not valid YAML: {first_line}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {file}: top level must be a mapping")
        data = loaded or {}
        source = str(file)
    overrides, origin = _env_overrides(environ)
    merged = _deep_merge(data, overrides)
    try:
        return MeshConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, origin)) from None
