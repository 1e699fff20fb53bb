"""Compile fedlearn's Solidity contracts with the pinned solc-js and manage their artifacts.

The contracts live in ``contracts/src/`` at the repository root; OpenZeppelin comes from
``node_modules/@openzeppelin/contracts`` (npm, pinned in ``package.json``). Compilation
uses Standard JSON through ``contracts/tools/solc``, a ``solc``-compatible command line
over the WebAssembly compiler inside the npm ``solc`` package, so nothing is downloaded.
Every source (ours and OpenZeppelin's) is passed by content under its path relative to the
repository root, which makes the output (and the metadata hash at the end of the bytecode)
a function of the source texts and the settings below only.

One JSON artifact per contract is written to ``fedlearn/attestation/artifacts/``: ABI,
creation and runtime bytecode, method identifiers, compiler version and settings, and the
SHA-256 of every source file the contract was compiled from. The chain layer reads them
with :func:`load_artifact`; it never needs node or the compiler.

Usage (from the repository root)::

    python -m fedlearn.attestation.compile           # regenerate the artifacts
    python -m fedlearn.attestation.compile --check   # exit 1 if they are stale
"""

from __future__ import annotations

import argparse
import hashlib
import json
import posixpath
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eth_utils.hexadecimal import add_0x_prefix

__all__ = [
    "ARTIFACTS_DIR",
    "CONTRACTS",
    "SETTINGS",
    "SOLC_VERSION",
    "CompilationError",
    "build_artifacts",
    "check_artifacts",
    "load_artifact",
    "main",
    "standard_json_input",
    "write_artifacts",
]

#: Directory of the committed artifacts (inside the package, so the chain layer finds them).
ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
#: Repository root (where ``contracts/`` and ``node_modules/`` are).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: The solc-js release the artifacts are built with (``npm install solc@0.8.37``).
SOLC_VERSION = "0.8.37+commit.f401782d.Emscripten.clang"
#: Deployable contracts: name -> source unit (path relative to the repository root).
CONTRACTS: dict[str, str] = {
    "AttestationLedger": "contracts/src/AttestationLedger.sol",
    "RewardPool": "contracts/src/RewardPool.sol",
    "RewardToken": "contracts/src/RewardToken.sol",
}
#: Compiler settings (also recorded in every artifact). Same optimizer runs and EVM version
#: as ``contracts/foundry.toml``.
SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 10_000},
    "evmVersion": "cancun",
    "remappings": ["@openzeppelin/contracts/=node_modules/@openzeppelin/contracts/"],
    "metadata": {"bytecodeHash": "ipfs"},
}
_OUTPUTS = ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "evm.methodIdentifiers"]
_OUTPUTS += ["metadata"]
_SOLC_WRAPPER = Path("contracts") / "tools" / "solc"
_IMPORT = re.compile(r'^\s*import\s+(?:[^;"]*?\s+from\s+)?"(?P<path>[^"]+)"[^;]*;', re.MULTILINE)
_TIMEOUT_S = 300


class CompilationError(RuntimeError):
    """The compiler reported errors, or could not be run."""


def _remap(import_path: str, remappings: Sequence[str]) -> str:
    best_prefix, best_target = "", ""
    for remapping in remappings:
        prefix, _, target = remapping.partition("=")
        if import_path.startswith(prefix) and len(prefix) > len(best_prefix):
            best_prefix, best_target = prefix, target
    if not best_prefix:
        return import_path
    return best_target + import_path[len(best_prefix) :]


def _resolve(importer: str, import_path: str, remappings: Sequence[str]) -> str:
    if import_path.startswith(("./", "../")):
        return posixpath.normpath(posixpath.join(posixpath.dirname(importer), import_path))
    return posixpath.normpath(_remap(import_path, remappings))


def _collect_sources(root: Path, entries: Sequence[str]) -> dict[str, str]:
    """Return the import closure of ``entries``: source unit name -> file text."""
    remappings: list[str] = SETTINGS["remappings"]
    sources: dict[str, str] = {}
    pending = list(entries)
    while pending:
        unit = pending.pop()
        if unit in sources:
            continue
        path = root / unit
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CompilationError(f"cannot read source {unit!r} ({path}): {exc}") from exc
        sources[unit] = text
        pending.extend(_resolve(unit, m["path"], remappings) for m in _IMPORT.finditer(text))
    return dict(sorted(sources.items()))


def standard_json_input(root: Path = REPO_ROOT) -> dict[str, Any]:
    """Build the Standard JSON input for the contracts.

    Parameters
    ----------
    root : Path
        Repository root.

    Returns
    -------
    dict
        ``{"language": "Solidity", "sources": ..., "settings": ...}`` with every source
        in the import closure given by content.
    """
    sources = _collect_sources(root, list(CONTRACTS.values()))
    selection = {unit: {"*": list(_OUTPUTS)} for unit in sorted(set(CONTRACTS.values()))}
    return {
        "language": "Solidity",
        "sources": {unit: {"content": text} for unit, text in sources.items()},
        "settings": {**SETTINGS, "outputSelection": selection},
    }


def _run_solc(root: Path, compiler_input: Mapping[str, Any]) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        raise CompilationError("node is not on PATH (the compiler is the npm package solc-js)")
    wrapper = root / _SOLC_WRAPPER
    if not (root / "node_modules" / "solc").is_dir():
        raise CompilationError("node_modules/solc is missing: run `make install` in the repository")
    proc = subprocess.run(
        [node, str(wrapper), "--standard-json", "--base-path", str(root)],
        input=json.dumps(compiler_input),
        capture_output=True,
        text=True,
        cwd=root,
        timeout=_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise CompilationError(f"solc-js failed ({proc.returncode}): {proc.stderr.strip()}")
    try:
        output: dict[str, Any] = json.loads(proc.stdout)
    except ValueError as exc:
        raise CompilationError(f"solc-js printed no JSON: {proc.stdout[:500]!r}") from exc
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        text = "\n".join(e.get("formattedMessage", e.get("message", "?")) for e in errors)
        raise CompilationError(f"compilation failed:\n{text}")
    return output


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_artifacts(root: Path = REPO_ROOT) -> dict[str, dict[str, Any]]:
    """Compile the contracts and return their artifacts (nothing is written).

    Parameters
    ----------
    root : Path
        Repository root.

    Returns
    -------
    dict
        Contract name -> artifact (see the module docstring).

    Raises
    ------
    CompilationError
        If the compiler cannot run, reports an error, or is not :data:`SOLC_VERSION`.
    """
    compiler_input = standard_json_input(root)
    sources: dict[str, str] = {
        unit: spec["content"] for unit, spec in compiler_input["sources"].items()
    }
    output = _run_solc(root, compiler_input)
    artifacts: dict[str, dict[str, Any]] = {}
    for name, unit in CONTRACTS.items():
        try:
            contract = output["contracts"][unit][name]
        except KeyError as exc:
            raise CompilationError(f"no output for {unit}:{name}") from exc
        metadata = json.loads(contract["metadata"])
        version = "{}.Emscripten.clang".format(metadata["compiler"]["version"])
        if version != SOLC_VERSION:
            raise CompilationError(f"compiler is {version}, the artifacts pin {SOLC_VERSION}")
        used = sorted(metadata["sources"])
        artifacts[name] = {
            "contractName": name,
            "sourceName": unit,
            "abi": contract["abi"],
            "bytecode": add_0x_prefix(contract["evm"]["bytecode"]["object"]),
            "deployedBytecode": add_0x_prefix(contract["evm"]["deployedBytecode"]["object"]),
            "methodIdentifiers": contract["evm"]["methodIdentifiers"],
            "compiler": {"name": "solc-js", "version": SOLC_VERSION},
            "settings": SETTINGS,
            "sources": {u: {"sha256": _sha256(sources[u])} for u in used},
        }
    return artifacts


def _dump(artifact: Mapping[str, Any]) -> str:
    return json.dumps(artifact, indent=2) + "\n"


def write_artifacts(
    artifacts: Mapping[str, Mapping[str, Any]], directory: Path = ARTIFACTS_DIR
) -> list[Path]:
    """Write each artifact as ``directory/<Contract>.json``.

    Parameters
    ----------
    artifacts : mapping
        Contract name -> artifact, as returned by :func:`build_artifacts`.
    directory : Path
        Destination (created if missing).

    Returns
    -------
    list of Path
        The files written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, artifact in artifacts.items():
        path = directory / f"{name}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(_dump(artifact), encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written


def check_artifacts(
    artifacts: Mapping[str, Mapping[str, Any]], directory: Path = ARTIFACTS_DIR
) -> list[str]:
    """Compare freshly built artifacts with the files in ``directory``.

    Parameters
    ----------
    artifacts : mapping
        Contract name -> artifact, as returned by :func:`build_artifacts`.
    directory : Path
        Directory of the committed artifacts.

    Returns
    -------
    list of str
        One line per stale, missing or unexpected file; empty if they all match.
    """
    problems = []
    for name, artifact in artifacts.items():
        path = directory / f"{name}.json"
        if not path.is_file():
            problems.append(f"{path.name}: missing")
            continue
        committed = json.loads(path.read_text(encoding="utf-8"))
        keys = sorted(set(committed) | set(artifact))
        differing = [k for k in keys if committed.get(k) != artifact.get(k)]
        if differing:
            problems.append(f"{path.name}: differs in {', '.join(differing)}")
    extra = sorted(p.name for p in directory.glob("*.json") if p.stem not in artifacts)
    problems.extend(f"{name}: no such contract" for name in extra)
    return problems


def load_artifact(name: str) -> dict[str, Any]:
    """Load the committed artifact of a contract.

    Parameters
    ----------
    name : str
        Contract name: ``"AttestationLedger"``, ``"RewardPool"`` or ``"RewardToken"``.

    Returns
    -------
    dict
        The artifact; ``abi`` (list), ``bytecode`` and ``deployedBytecode`` (0x-prefixed
        hex) are what deploying and calling need.

    Raises
    ------
    KeyError
        If ``name`` is not one of :data:`CONTRACTS`.
    FileNotFoundError
        If the artifact file is missing.
    """
    if name not in CONTRACTS:
        raise KeyError(f"unknown contract {name!r}; expected one of {sorted(CONTRACTS)}")
    artifact: dict[str, Any] = json.loads(
        (ARTIFACTS_DIR / f"{name}.json").read_text(encoding="utf-8")
    )
    return artifact


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 if ``--check`` found stale artifacts, 2 if compilation failed.
    """
    parser = argparse.ArgumentParser(
        prog="python -m fedlearn.attestation.compile", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed artifacts, write nothing"
    )
    args = parser.parse_args(argv)
    try:
        artifacts = build_artifacts()
    except (CompilationError, OSError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        problems = check_artifacts(artifacts)
        for line in problems:
            print(f"stale: {line}", file=sys.stderr)
        if problems:
            print("run `python -m fedlearn.attestation.compile` to regenerate", file=sys.stderr)
            return 1
        print(f"{len(artifacts)} artifacts up to date")
        return 0
    for path in write_artifacts(artifacts):
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
