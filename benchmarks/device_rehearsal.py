"""The device plan rehearsed on a CPU: the GPU machine's conditions, every command, in order.

    python benchmarks/device_rehearsal.py [--root /tmp/mrpo-rehearsal] [--python python3.12]

Needs the kit (``make device-kit``). Then, as the GPU machine would see it:

1. a fresh Python 3.12 virtual environment holding only the image's packages at the image's
   versions where they install here (``benchmarks/device/image-requirements.txt``; torch
   2.11.0 from PyPI is the image's own CUDA build, which runs on a CPU);
2. the checkout copied without ``../shared`` (tracked and untracked-not-ignored files);
3. each command of the plan (``device_step.py``) run in that copy with only its carried kit
   folders present, pip reading no configuration and no index, the hub offline, no GPU, and
   ``--smoke`` (every stage at CPU size): its JSON must say ``ok``, and what it sends (the
   tree + its carried folders) must be at most 64 MiB;
4. command 2 on a fresh machine (empty state): it must say so (``fresh_machine``, exit 3);
5. ``device_check.sh --dry-run``: every stage planned, its configs checked;
6. the image's packages unchanged by the kit (no kit wheel replaced one of them).

Prints one JSON of the results and timings (also ``<root>/rehearsal.json``); exit 0 when all
pass. The image's environment is built once per version of its requirements and copied for
each run (``--keep-env``: reuse the last run's copy, kit installed, to debug a command).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_kit import COMMANDS, LIMIT_BYTES, ROOT, tracked_bytes

IMAGE_REQUIREMENTS = ROOT / "benchmarks" / "device" / "image-requirements.txt"
MACHINE_ENV = {
    "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "",
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
}  # fmt: skip


def timed(results: dict[str, Any], key: str, cmd: list[str], **kw: Any) -> int:
    start = time.monotonic()
    code = subprocess.run(cmd, check=False, **kw).returncode
    results[key] = {"exit": code, "seconds": round(time.monotonic() - start, 1)}
    return code


def image_env(root: Path, python: str, keep: bool, results: dict[str, Any]) -> Path:
    """A fresh venv of the image's packages: a hard-linked copy of a pristine one.

    The pristine venv is built once per version of image-requirements.txt (the registry's
    ordinary pip client: a cold build downloads about 3 GB); each rehearsal installs the kit
    into its own copy, so none inherits another's installs (pip replaces files, it never
    writes into a linked one).
    """
    pristine, venv = root / "image-pristine", root / "image"
    stamp = pristine / ".requirements.sha256"
    wanted = hashlib.sha256(IMAGE_REQUIREMENTS.read_bytes()).hexdigest()
    if not (stamp.is_file() and stamp.read_text() == wanted):
        shutil.rmtree(pristine, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(pristine)], check=True)
        py = pristine / "bin" / "python"
        cmd = [str(py), "-m", "pip", "install", "-q", "-r", str(IMAGE_REQUIREMENTS)]
        env = {**os.environ, "PIP_FIND_LINKS": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        if timed(results, "image_env_build", cmd, env=env) != 0:
            raise SystemExit("the image's packages did not install (see pip's output above)")
        stamp.write_text(wanted)
    if not (keep and (venv / "bin" / "python").exists()):
        shutil.rmtree(venv, ignore_errors=True)
        timed(results, "image_env_copy", ["cp", "-al", str(pristine), str(venv)])
    return venv / "bin" / "python"


def freeze(py: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(py), "-m", "pip", "list", "--format=json"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **MACHINE_ENV},
    )
    return {p["name"].lower(): p["version"] for p in json.loads(out.stdout)}


def copy_checkout(dest: Path) -> None:
    """The tracked tree (what every command sends), without ../shared."""
    shutil.rmtree(dest, ignore_errors=True)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    for raw in filter(None, listed):
        source = ROOT / os.fsdecode(raw)
        if source.is_file():
            (dest / os.fsdecode(raw)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / os.fsdecode(raw))


def carry(checkout: Path, folders: tuple[str, ...]) -> int:
    """Leave exactly ``folders`` of the kit in the copy; return the command's payload bytes."""
    kit = checkout / ".device-kit"
    shutil.rmtree(kit, ignore_errors=True)
    for folder in folders:
        shutil.copytree(ROOT / ".device-kit" / folder, kit / folder)
    carried = sum(p.stat().st_size for p in kit.rglob("*") if p.is_file())
    return tracked_bytes() + carried


def run_command(py: Path, checkout: Path, name: str, env: dict[str, str]) -> dict[str, Any]:
    start = time.monotonic()
    done = subprocess.run(
        [str(py), "benchmarks/device_step.py", name, "--smoke"],
        cwd=checkout, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {"status": "no JSON", "stdout": done.stdout[-2000:]}
    failed = report.get("check", {}).get("failed_stages")
    return {
        "exit": done.returncode, "status": report.get("status"), "failed_stages": failed,
        "error": report.get("error"), "seconds": round(time.monotonic() - start, 1),
        "stderr_tail": done.stderr[-1500:] if done.returncode else "", "report": report,
    }  # fmt: skip


def rehearse(root: Path, python: str, keep: bool) -> dict[str, Any]:
    if not (ROOT / ".device-kit" / "base" / "manifest.json").is_file():
        raise SystemExit("no .device-kit/base/manifest.json: run `make device-kit` first")
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S")}
    root.mkdir(parents=True, exist_ok=True)
    py = image_env(root, python, keep, results)
    before = freeze(py)
    checkout, state = root / "checkout", root / "state"
    copy_checkout(checkout)
    shutil.rmtree(state, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MRPO_", "PIP_", "VIRTUAL"))}
    env |= {**MACHINE_ENV, "MRPO_DEVICE_STATE": str(state), "HOME": str(root / "home")}
    env["OUT"] = str(root / "out")
    shutil.rmtree(root / "out", ignore_errors=True)
    (root / "out").mkdir()
    commands: dict[str, Any] = {}
    for name, folders in COMMANDS.items():
        payload = carry(checkout, folders)
        commands[name] = run_command(py, checkout, name, env)
        commands[name] |= {"payload_mib": round(payload / 2**20, 2), "fits": payload <= LIMIT_BYTES}
    results["commands"] = commands
    carry(checkout, COMMANDS["2-bnb"])
    fresh = run_command(py, checkout, "2-bnb", {**env, "MRPO_DEVICE_STATE": str(root / "bare")})
    results["fresh_machine"] = {k: fresh[k] for k in ("exit", "status", "error")}
    dry = subprocess.run(
        ["bash", "benchmarks/device_check.sh", "--dry-run", "--work-dir", str(root / "dry")],
        cwd=checkout, env={**env, "PYTHON": str(py)}, capture_output=True, text=True,
    )  # fmt: skip
    dry_report = json.loads(dry.stdout) if dry.stdout.strip().startswith("{") else {}
    results["dry_run"] = {
        "exit": dry.returncode,
        "failed_stages": dry_report.get("failed_stages"),
        "stderr_tail": dry.stderr[-1500:] if dry.returncode else "",
    }
    after = freeze(py)
    results["image_packages_changed"] = {
        n: [v, after.get(n)] for n, v in before.items() if after.get(n) != v
    }
    return results


def verdict(results: dict[str, Any]) -> list[str]:
    """What failed (empty: the rehearsal passed)."""
    problems = [
        f"{name}: {c['status']} {c['failed_stages'] or c['error'] or ''}"
        for name, c in results["commands"].items()
        if c["exit"] != 0 or c["status"] != "ok"
    ]
    problems += [f"{n}: {c['payload_mib']} MiB > 64" for n, c in results["commands"].items()
                 if not c["fits"]]  # fmt: skip
    if results["fresh_machine"]["status"] != "fresh_machine":
        problems.append(f"fresh machine not detected: {results['fresh_machine']}")
    if results["dry_run"]["exit"] != 0:
        problems.append(f"dry run: {results['dry_run']}")
    if results["image_packages_changed"]:
        problems.append(f"the kit replaced image packages: {results['image_packages_changed']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/mrpo-rehearsal"))
    parser.add_argument("--python", default=os.environ.get("REHEARSAL_PYTHON", "python3.12"))
    parser.add_argument("--keep-env", action="store_true", help="reuse <root>/image")
    args = parser.parse_args(argv)
    start = time.monotonic()
    results = rehearse(args.root.resolve(), args.python, args.keep_env)
    results["problems"] = verdict(results)
    results["total_s"] = round(time.monotonic() - start, 1)
    text = json.dumps(results, indent=1, default=str)
    (args.root / "rehearsal.json").write_text(text + "\n")
    brief = {k: v for k, v in results.items() if k != "commands"}
    brief["commands"] = {
        n: {k: v for k, v in c.items() if k != "report"} for n, c in results["commands"].items()
    }
    print(json.dumps(brief, indent=1, default=str))
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
