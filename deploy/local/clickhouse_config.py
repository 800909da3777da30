"""Write a private ClickHouse server config from the packaged one (stdlib only).

Debian's clickhouse-server (18.16) ships /etc/clickhouse-server/{config,users}.xml pointing at
/var/lib/clickhouse and the default ports. deploy/local/clickhouse.sh runs its own server as a
plain process, so this copies both files into the state directory and rewrites what must not be
shared with a system instance: data/tmp/user-files/format-schema paths, logs, ports, the
listen address, and the sample clusters (replaced by one `llmops_local` cluster on our own port,
so Distributed DDL can be exercised on one node). With ``--zookeeper-port`` the server uses the
local ZooKeeper (deploy/local/zookeeper.sh) for Replicated tables, with the macros ``{shard}``
= 01 and ``{replica}`` = local; the server starts without it, and only Replicated tables need
it to be up.

usage: clickhouse_config.py --src /etc/clickhouse-server --dest <state>/etc --data <state>/data
           --logs <state>/logs --tcp-port 19000 --http-port 18123 --interserver-port 19009
           [--zookeeper-port 12181]
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _set(root: ET.Element, tag: str, text: str) -> None:
    el = root.find(tag)
    if el is None:
        el = ET.SubElement(root, tag)
    el.text = text


def _drop(root: ET.Element, tag: str) -> None:
    for el in root.findall(tag):
        root.remove(el)


def rewrite_config(src: Path, dest: Path, args: argparse.Namespace) -> None:
    tree = ET.parse(src)
    root = tree.getroot()
    data = Path(args.data)
    logs = Path(args.logs)

    logger = root.find("logger")
    if logger is None:
        logger = ET.SubElement(root, "logger")
    _set(logger, "level", "information")
    _set(logger, "log", str(logs / "clickhouse-server.log"))
    _set(logger, "errorlog", str(logs / "clickhouse-server.err.log"))
    _set(logger, "size", "100M")
    _set(logger, "count", "3")

    _set(root, "tcp_port", str(args.tcp_port))
    _set(root, "http_port", str(args.http_port))
    _set(root, "interserver_http_port", str(args.interserver_port))
    _set(root, "interserver_http_host", "127.0.0.1")
    for tag in ("https_port", "tcp_port_secure", "mysql_port", "postgresql_port", "listen_host"):
        _drop(root, tag)
    ET.SubElement(root, "listen_host").text = "127.0.0.1"

    _set(root, "path", f"{data}/")
    _set(root, "tmp_path", f"{data}/tmp/")
    _set(root, "user_files_path", f"{data}/user_files/")
    _set(root, "format_schema_path", f"{data}/format_schemas/")
    _set(root, "users_config", str(dest / "users.xml"))
    _set(root, "timezone", "UTC")
    # Caches are allocated on demand, but a dev box should not promise 13 GB to them.
    _set(root, "uncompressed_cache_size", str(256 << 20))
    _set(root, "mark_cache_size", str(512 << 20))

    # No /etc/metrika.xml substitutions: drop `incl` and the sample clusters on port 9000/9440.
    for el in root.iter():
        el.attrib.pop("incl", None)
    for tag in ("include_from", "zookeeper", "macros", "remote_servers", "graphite"):
        _drop(root, tag)
    remote = ET.SubElement(root, "remote_servers")
    replica = ET.SubElement(
        ET.SubElement(ET.SubElement(remote, "llmops_local"), "shard"), "replica"
    )
    ET.SubElement(replica, "host").text = "127.0.0.1"
    ET.SubElement(replica, "port").text = str(args.tcp_port)
    if args.zookeeper_port:
        zookeeper = ET.SubElement(root, "zookeeper")
        node = ET.SubElement(zookeeper, "node")
        ET.SubElement(node, "host").text = "127.0.0.1"
        ET.SubElement(node, "port").text = str(args.zookeeper_port)
        # A lost session is noticed in seconds (the default 30 s would keep a replica
        # writable against a dead ZooKeeper that long, and a restarted one unusable).
        ET.SubElement(zookeeper, "session_timeout_ms").text = "10000"
        ET.SubElement(zookeeper, "operation_timeout_ms").text = "5000"
        # A replica whose session expired is read-only until its restarting thread makes a
        # new one, and 18.16 looks every 60 s by default: a dev server should heal in seconds.
        merge_tree = root.find("merge_tree")
        if merge_tree is None:
            merge_tree = ET.SubElement(root, "merge_tree")
        _set(merge_tree, "zookeeper_session_expiration_check_period", "2")
        macros = ET.SubElement(root, "macros")
        ET.SubElement(macros, "shard").text = "01"
        ET.SubElement(macros, "replica").text = "local"

    tree.write(dest / "config.xml", encoding="utf-8", xml_declaration=True)


def rewrite_users(src: Path, dest: Path) -> None:
    tree = ET.parse(src)
    root = tree.getroot()
    for el in root.iter():
        el.attrib.pop("incl", None)
    default_profile = root.find("profiles/default")
    if default_profile is not None:
        # 18.16 only accepts LowCardinality columns behind this server-side profile setting;
        # setting it here lets clients send the same DDL they send to chdb/modern ClickHouse
        # (where the setting no longer exists and would be rejected if a client sent it).
        _set(default_profile, "allow_experimental_low_cardinality_type", "1")
    for networks in root.findall("users/*/networks"):
        for child in list(networks):
            networks.remove(child)
        ET.SubElement(networks, "ip").text = "127.0.0.1"
        ET.SubElement(networks, "ip").text = "::1"
    tree.write(dest / "users.xml", encoding="utf-8", xml_declaration=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--src", default="/etc/clickhouse-server")
    p.add_argument("--dest", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--logs", required=True)
    p.add_argument("--tcp-port", type=int, default=19000)
    p.add_argument("--http-port", type=int, default=18123)
    p.add_argument("--interserver-port", type=int, default=19009)
    p.add_argument("--zookeeper-port", type=int, default=0, help="0: no ZooKeeper")
    args = p.parse_args(argv)
    src, dest = Path(args.src), Path(args.dest)
    for name in ("config.xml", "users.xml"):
        if not (src / name).is_file():
            print(f"clickhouse_config: {src / name} not found", file=sys.stderr)
            return 2
    dest.mkdir(parents=True, exist_ok=True)
    for sub in ("tmp", "user_files", "format_schemas"):
        (Path(args.data) / sub).mkdir(parents=True, exist_ok=True)
    rewrite_config(src / "config.xml", dest, args)
    rewrite_users(src / "users.xml", dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
