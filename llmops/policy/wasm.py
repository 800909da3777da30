"""Embedded policy engine: the committed Wasm bundle evaluated in-process with wasmtime.

The bundle (``deploy/opa/wasm/bundle.tar.gz``) is what ``opa build -t wasm`` writes:
``/policy.wasm``, ``/data.json``, ``/.manifest`` (revision, roots, the Wasm entrypoints) and
the Rego sources it was compiled from (listed by GetPolicyBundle). It is rebuilt by
``scripts/build_opa_wasm.sh`` and checked fresh by ``scripts/check_opa_wasm.sh``.

OPA's Wasm ABI (https://www.openpolicyagent.org/docs/wasm), as used here:

- imports ``env.memory`` (the host creates it with the module's declared minimum),
  ``env.opa_abort(addr)``, optionally ``env.opa_println(addr)``, and
  ``env.opa_builtin{0..4}(id, ctx, args...)`` for the builtins listed by ``builtins()``;
- at load: ``opa_malloc`` + ``opa_json_parse`` place ``data.json`` on the heap once; the
  heap pointer after it is where every evaluation starts (``opa_heap_ptr_get``);
- per evaluation (ABI >= 1.2): the input JSON is written at that heap pointer and
  ``opa_eval(0, entrypoint, data, input, len, heap, 0)`` returns the address of the
  NUL-terminated JSON result set (``[{"result": ...}]``, ``[]`` when undefined). The heap is
  reset by that call, so nothing accumulates. Older modules (ABI 1.0/1.1) go through
  ``opa_eval_ctx_new`` / ``_set_input`` / ``_set_data`` / ``_set_entrypoint`` / ``eval`` /
  ``_get_result`` / ``opa_json_dump`` instead (also selectable for tests).

A wasmtime store is single-threaded: an engine is used from the event loop only (each
evaluation is one synchronous call of tens of microseconds); a reload builds a new engine
off the loop and the domain swaps it in.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import re
import tarfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import wasmtime

from llmops.policy.builtins import HOST_BUILTINS
from llmops.policy.engine import (
    Evaluation,
    JsonValue,
    PolicyBundle,
    PolicyBundleError,
    PolicyEvaluationError,
    PolicyModule,
    UnknownDecisionPath,
)

DEFAULT_WASM_BUNDLE = (
    Path(__file__).resolve().parents[2] / "deploy" / "opa" / "wasm" / "bundle.tar.gz"
)
"""The committed bundle of this repository (``scripts/build_opa_wasm.sh`` writes it)."""

_PAGE = 65536
_PACKAGE = re.compile(r"^\s*package\s+([\w.]+)", re.MULTILINE)
_I32 = wasmtime.ValType.i32()
_ENGINE: wasmtime.Engine | None = None


def _shared_engine() -> wasmtime.Engine:
    """One wasmtime Engine (compiler and code cache) per process; stores are per engine."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = wasmtime.Engine()
    return _ENGINE


def read_bundle(raw: bytes, path: Path) -> dict[str, bytes]:
    """The files of a bundle tarball by path (leading ``/`` removed). Raises
    PolicyBundleError."""
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            files: dict[str, bytes] = {}
            for member in tar.getmembers():
                if member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None
                    files[member.name.lstrip("/")] = handle.read()
            return files
    except (OSError, tarfile.TarError) as exc:
        raise PolicyBundleError(f"cannot read the Wasm policy bundle {path}: {exc}") from exc


def bundle_modules(files: Mapping[str, bytes]) -> tuple[PolicyModule, ...]:
    """The Rego sources a bundle carries, sorted by path."""
    modules = []
    for name in sorted(files):
        if not name.endswith(".rego"):
            continue
        source = files[name].decode("utf-8")
        package = _PACKAGE.search(source)
        modules.append(
            PolicyModule(
                path=name,
                package_name=package.group(1) if package else "",
                sha256=hashlib.sha256(files[name]).hexdigest(),
                source=source,
            )
        )
    return tuple(modules)


class WasmPolicyEngine:
    """One loaded Wasm bundle (see the module docstring). ``fast_path=False`` forces the
    pre-1.2 ``opa_eval_ctx_*`` calls even where ``opa_eval`` exists."""

    def __init__(self, path: Path = DEFAULT_WASM_BUNDLE, *, fast_path: bool = True) -> None:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise PolicyBundleError(f"cannot read the Wasm policy bundle {path}: {exc}") from exc
        files = read_bundle(raw, path)
        manifest = self._manifest(files, path)
        if "policy.wasm" not in files:
            raise PolicyBundleError(f"{path} has no /policy.wasm: build it with opa build -t wasm")
        self._store = wasmtime.Store(_shared_engine())
        self._instance, self._memory = self._instantiate(files["policy.wasm"], path)
        exports = self._instance.exports(self._store)
        self._fn = self._funcs(exports)
        abi = (
            self._global(exports, "opa_wasm_abi_version"),
            self._global(exports, "opa_wasm_abi_minor_version"),
        )
        self._entrypoints: dict[str, int] = self._dump(self._fn["entrypoints"]())
        builtin_ids: dict[str, int] = self._dump(self._fn["builtins"]())
        missing = sorted(set(builtin_ids) - set(HOST_BUILTINS))
        if missing:
            raise PolicyBundleError(
                f"the policies need builtins the embedded Wasm engine does not implement: "
                f"{', '.join(missing)} (llmops/policy/builtins.py)"
            )
        self._builtins = {i: (name, HOST_BUILTINS[name]) for name, i in builtin_ids.items()}
        self._data_addr = self._load_json(files.get("data.json", b"{}"))
        self._heap = self._fn["opa_heap_ptr_get"]()
        use_fast = fast_path and abi >= (1, 2) and "opa_eval" in self._fn
        self._eval: Callable[[int, bytes], JsonValue] = (
            self._eval_fast if use_fast else self._eval_ctx
        )
        self.abi_version = f"{abi[0]}.{abi[1]}"
        self._revision = str(manifest.get("revision", ""))
        self._bundle = PolicyBundle(
            revision=self._revision,
            source=path.resolve().as_uri(),
            load_time=time.time(),
            modules=bundle_modules(files),
            decision_paths=tuple(sorted(self._entrypoints)),
            digest=hashlib.sha256(raw).hexdigest(),
        )

    @property
    def bundle(self) -> PolicyBundle:
        return self._bundle

    async def evaluate(self, path: str, input: Mapping[str, JsonValue]) -> Evaluation:
        return self.evaluate_now(path, input)

    def evaluate_now(self, path: str, input: Mapping[str, JsonValue]) -> Evaluation:
        """The same, as a plain call (for benchmarks and synchronous callers)."""
        entrypoint = self._entrypoints.get(path)
        if entrypoint is None:
            raise UnknownDecisionPath(path, self._bundle.decision_paths)
        raw = json.dumps(input, separators=(",", ":"), ensure_ascii=False).encode()
        results = self._eval(entrypoint, raw)
        result = results[0].get("result") if results else None
        return Evaluation(result=result, revision=self._revision)

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        """Nothing to release eagerly: the store goes with the engine."""

    # --- evaluation ------------------------------------------------------------------

    def _eval_fast(self, entrypoint: int, raw: bytes) -> JsonValue:
        self._ensure(self._heap + len(raw))
        self._write(self._heap, raw)
        addr = self._fn["opa_eval"](
            0, entrypoint, self._data_addr, self._heap, len(raw), self._heap + len(raw), 0
        )
        return json.loads(self._cstr(addr))

    def _eval_ctx(self, entrypoint: int, raw: bytes) -> JsonValue:
        fn = self._fn
        fn["opa_heap_ptr_set"](self._heap)
        input_addr = self._load_json(raw)
        ctx = fn["opa_eval_ctx_new"]()
        fn["opa_eval_ctx_set_input"](ctx, input_addr)
        fn["opa_eval_ctx_set_data"](ctx, self._data_addr)
        fn["opa_eval_ctx_set_entrypoint"](ctx, entrypoint)
        code = fn["eval"](ctx)
        if code != 0:
            raise PolicyEvaluationError(f"Wasm eval returned error code {code}")
        return self._dump(fn["opa_eval_ctx_get_result"](ctx))

    # --- memory and values -----------------------------------------------------------

    def _base(self) -> int:
        return ctypes.addressof(self._memory.data_ptr(self._store).contents)

    def _ensure(self, end: int) -> None:
        size = self._memory.data_len(self._store)
        if end > size:
            self._memory.grow(self._store, (end - size + _PAGE - 1) // _PAGE)

    def _write(self, addr: int, raw: bytes) -> None:
        ctypes.memmove(self._base() + addr, raw, len(raw))

    def _cstr(self, addr: int) -> bytes:
        if addr == 0:
            raise PolicyEvaluationError("the Wasm module returned a null result")
        return ctypes.string_at(self._base() + addr)

    def _load_json(self, raw: bytes) -> int:
        """Parse JSON into a value on the module's heap; its address."""
        addr = self._fn["opa_malloc"](len(raw))
        self._write(addr, raw)
        value = self._fn["opa_json_parse"](addr, len(raw))
        if value == 0:
            raise PolicyEvaluationError("the Wasm module could not parse a JSON value")
        return int(value)

    def _dump(self, value_addr: int) -> Any:
        return json.loads(self._cstr(self._fn["opa_json_dump"](value_addr)))

    # --- host imports ----------------------------------------------------------------

    def _builtin(self, builtin_id: int, _ctx: int, *args: int) -> int:
        name, impl = self._builtins.get(builtin_id, (str(builtin_id), None))
        if impl is None:
            raise PolicyEvaluationError(f"builtin {name} is not implemented by the embedded engine")
        result = impl(*(self._dump(arg) for arg in args))
        return self._load_json(json.dumps(result, ensure_ascii=False).encode())

    def _abort(self, addr: int) -> None:
        raise PolicyEvaluationError(
            f"policy evaluation aborted: {self._cstr(addr).decode(errors='replace')}"
        )

    def _println(self, addr: int) -> None:
        print(self._cstr(addr).decode(errors="replace"))

    def _instantiate(self, wasm: bytes, path: Path) -> tuple[wasmtime.Instance, wasmtime.Memory]:
        try:
            module = wasmtime.Module(self._store.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise PolicyBundleError(f"{path}: /policy.wasm does not compile: {exc}") from exc
        memory: wasmtime.Memory | None = None
        linker = wasmtime.Linker(self._store.engine)
        for imp in module.imports:
            name = imp.name or ""
            if imp.module != "env":
                raise PolicyBundleError(f"{path}: unexpected Wasm import {imp.module}.{name}")
            if isinstance(imp.type, wasmtime.MemoryType):
                memory = wasmtime.Memory(self._store, imp.type)
                linker.define(self._store, "env", name, memory)
            elif name.startswith("opa_builtin"):
                arity = int(name.removeprefix("opa_builtin"))
                ty = wasmtime.FuncType([_I32] * (2 + arity), [_I32])
                linker.define_func("env", name, ty, self._builtin)
            elif name in ("opa_abort", "opa_println"):
                handler = self._abort if name == "opa_abort" else self._println
                linker.define_func("env", name, wasmtime.FuncType([_I32], []), handler)
            else:
                raise PolicyBundleError(f"{path}: unexpected Wasm import env.{name}")
        if memory is None:
            raise PolicyBundleError(f"{path}: the Wasm module imports no memory")
        return linker.instantiate(self._store, module), memory

    # --- loading helpers -------------------------------------------------------------

    @staticmethod
    def _manifest(files: Mapping[str, bytes], path: Path) -> dict[str, Any]:
        try:
            manifest = json.loads(files.get(".manifest", b"{}"))
        except ValueError as exc:
            raise PolicyBundleError(f"{path}: /.manifest is not JSON: {exc}") from exc
        if not isinstance(manifest, dict):
            raise PolicyBundleError(f"{path}: /.manifest is not a JSON object")
        return manifest

    def _funcs(self, exports: Mapping[str, Any]) -> dict[str, Callable[..., int]]:
        funcs = {}
        for name in _EXPORTS:
            try:
                item = exports[name]
            except KeyError:
                if name in _OPTIONAL_EXPORTS:
                    continue
                raise PolicyBundleError(f"the Wasm module does not export {name}") from None
            if not isinstance(item, wasmtime.Func):
                raise PolicyBundleError(f"the Wasm export {name} is not a function")
            funcs[name] = i32_caller(self._store, item)
        return funcs

    def _global(self, exports: Mapping[str, Any], name: str) -> int:
        try:
            item = exports[name]
        except KeyError:
            return 0
        return int(item.value(self._store)) if isinstance(item, wasmtime.Global) else 0


def i32_caller(store: wasmtime.Store, func: wasmtime.Func) -> Callable[..., int]:
    """A caller of an exported function over i32s: ``f(*args) -> int`` (0 for no result).

    ``Func.__call__`` looks the function type up and boxes every value on each call (~10 µs
    here); a policy with host builtins makes ~20 such calls per evaluation. This goes
    through wasmtime's ``wasmtime_func_call_unchecked`` with a raw value array instead
    (~1.7 µs), using wasmtime-py internals (pinned version, see constraints.txt) and falling
    back to the public call when they are not there. Traps and host exceptions surface as
    in the public call (the host's own exception first).
    """
    ty = func.type(store)
    if not all(t == _I32 for t in [*ty.params, *ty.results]) or len(ty.results) > 1:
        raise PolicyBundleError(f"unexpected Wasm export signature {ty}")
    try:
        from wasmtime import _ffi as ffi
        from wasmtime._func import maybe_raise_last_exn

        context = store._context()
        raw_call = ffi.wasmtime_func_call_unchecked
        trap_ptr = ctypes.POINTER(ffi.wasm_trap_t)
        values = ffi.wasmtime_val_raw_t * max(len(ty.params), len(ty.results), 1)
        handle = ctypes.byref(func._func)
    except (ImportError, AttributeError):  # pragma: no cover - other wasmtime-py versions
        return lambda *args: int(func(store, *args) or 0)
    size = ctypes.sizeof(values) // ctypes.sizeof(ffi.wasmtime_val_raw_t)

    def call(*args: int) -> int:
        buf = values()
        for i, arg in enumerate(args):
            buf[i].i32 = arg
        trap = trap_ptr()
        error = raw_call(context, handle, buf, size, ctypes.byref(trap))
        if error or trap:
            maybe_raise_last_exn()
            if trap:
                raise wasmtime.Trap._from_ptr(trap)
            raise wasmtime.WasmtimeError._from_ptr(error)
        return int(buf[0].i32) & 0xFFFFFFFF

    return call


_OPTIONAL_EXPORTS = frozenset({"opa_eval"})
_EXPORTS = (
    "opa_malloc",
    "opa_json_parse",
    "opa_json_dump",
    "opa_heap_ptr_get",
    "opa_heap_ptr_set",
    "opa_eval_ctx_new",
    "opa_eval_ctx_set_input",
    "opa_eval_ctx_set_data",
    "opa_eval_ctx_set_entrypoint",
    "opa_eval_ctx_get_result",
    "eval",
    "builtins",
    "entrypoints",
    "opa_eval",
)
