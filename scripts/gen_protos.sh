#!/usr/bin/env bash
# Regenerate the Python stubs of the llmops.v1 contracts into llmops/v1/.
#
#   scripts/gen_protos.sh            # regenerate in place (run from anywhere)
#   scripts/gen_protos.sh OUT_ROOT   # write OUT_ROOT/llmops/v1/ instead (used by check_protos.sh)
#
# Produces, per protos/llmops/v1/<name>.proto: <name>_pb2.py, <name>_pb2.pyi (mypy-protobuf),
# <name>_pb2_grpc.py and <name>_pb2_grpc.pyi, plus llmops/v1/__init__.py. Generated imports
# are absolute ("from llmops.v1 import common_pb2") because protoc runs with -I protos.
# The output is deterministic: the same inputs and tool versions give identical bytes.
#
# Python: $PYTHON if set, else the repository's .venv, else python3 on PATH. It needs
# grpcio-tools and mypy-protobuf (the project's `dev` extra).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_root="${1:-$repo_root}"
mkdir -p "$out_root"
out_root="$(cd "$out_root" && pwd)"
cd "$repo_root"

if [[ -n "${PYTHON:-}" ]]; then
  python="$PYTHON"
elif [[ -x "$repo_root/.venv/bin/python" ]]; then
  python="$repo_root/.venv/bin/python"
else
  python="$(command -v python3)"
fi
python_bin_dir="$(dirname "$("$python" -c 'import sys; print(sys.executable)')")"

plugin_mypy="$python_bin_dir/protoc-gen-mypy"
plugin_mypy_grpc="$python_bin_dir/protoc-gen-mypy_grpc"
for plugin in "$plugin_mypy" "$plugin_mypy_grpc"; do
  if [[ ! -x "$plugin" ]]; then
    echo "gen_protos: $plugin not found; install mypy-protobuf (pip install -e '.[dev]')" >&2
    exit 1
  fi
done

wkt_include="$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"

# Sorted, repo-relative inputs so the protoc invocation (and its output) never depends on
# the shell's glob order or the caller's working directory.
mapfile -t protos < <(LC_ALL=C ls protos/llmops/v1/*.proto | LC_ALL=C sort)

out_dir="$out_root/llmops/v1"
mkdir -p "$out_dir"
# Start from a clean slate so stubs of deleted .proto files do not linger.
rm -f "$out_dir"/*_pb2.py "$out_dir"/*_pb2.pyi "$out_dir"/*_pb2_grpc.py "$out_dir"/*_pb2_grpc.pyi

"$python" -m grpc_tools.protoc \
  -I protos \
  -I "$wkt_include" \
  --plugin=protoc-gen-mypy="$plugin_mypy" \
  --plugin=protoc-gen-mypy_grpc="$plugin_mypy_grpc" \
  --python_out="$out_root" \
  --grpc_python_out="$out_root" \
  --mypy_out=quiet:"$out_root" \
  --mypy_grpc_out=quiet:"$out_root" \
  "${protos[@]}"

printf '"""Generated protobuf/gRPC stubs of the llmops.v1 contracts (scripts/gen_protos.sh); do not edit."""\n' \
  > "$out_dir/__init__.py"

echo "gen_protos: generated $(( ${#protos[@]} * 4 )) files from ${#protos[@]} protos into ${out_dir#"$repo_root"/}"
