"""The built wheel is the whole product: its config tree and sweeps ship inside it, and an
installed (not editable) ``mrpo-train`` composes and runs a job from any folder.

The wheel is built from this checkout and installed into a fresh virtual environment with
``--no-deps``; the environment borrows the already installed third-party packages (torch,
transformers, ...) through a ``.pth`` line, which Python processes only for site folders, so the
development install of mrpo itself (an editable finder) stays out of reach. Every command runs
outside the source tree, with no ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from mrpo.testing.runs import tiny_run_args, write_hh_pairs, write_tiny_model

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MRPO_SWEEPS_ROOT")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(out), str(REPO)],
        cwd=out,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    [path] = out.glob("mrpo-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its bin folder."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=False)
    env_python = root / "bin" / "python"
    site = Path(
        _run(
            [str(env_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=root,
        ).stdout.strip()
    )
    # The third-party dependencies, after the environment's own site folder.
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = _run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--target", str(site), str(wheel)],
        cwd=root,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    # pip --target writes no console scripts: make mrpo-train as pip would for a venv.
    script = root / "bin" / "mrpo-train"
    script.write_text(f"#!{env_python}\nfrom mrpo.cli.train import main\nmain()\n")
    script.chmod(0o755)
    return root / "bin"


def test_the_wheel_holds_the_config_tree_and_the_sweeps(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = REPO / "src" / "mrpo" / "conf"
    expected = {f"mrpo/conf/{p.relative_to(conf)}" for p in conf.rglob("*.yaml")}
    assert "mrpo/conf/train.yaml" in expected and "mrpo/conf/sweeps/num_refs.yaml" in expected
    assert expected <= names
    assert "mrpo/py.typed" in names
    local_tasks = REPO / "src" / "mrpo" / "evals" / "harness" / "local_tasks"
    overrides = {f"mrpo/evals/harness/local_tasks/{p.name}" for p in local_tasks.glob("*.yaml")}
    assert "mrpo/evals/harness/local_tasks/gsm8k.yaml" in overrides
    assert overrides <= names  # lm-eval's tasks on the local data mirror
    assert not any(n.startswith("hydra_plugins/") for n in names)  # no search-path plugin


def test_installed_wheel_imports_from_its_environment(installed: Path, tmp_path: Path) -> None:
    out = _run([str(installed / "python"), "-c", "import mrpo; print(mrpo.__file__)"], tmp_path)
    assert out.returncode == 0, out.stderr
    location = Path(out.stdout.strip())
    assert installed.parent in location.parents
    assert REPO not in location.parents


def test_installed_mrpo_train_runs_a_tiny_job_from_anywhere(
    installed: Path, tmp_path: Path
) -> None:
    model = write_tiny_model(tmp_path / "model")
    pairs = write_hh_pairs(tmp_path / "pairs.jsonl", 24)
    run_dir = tmp_path / "run"
    run = _run(
        [
            str(installed / "mrpo-train"),
            *tiny_run_args(model, pairs, tmp_path / "cache"),
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (run_dir / "summary.json").is_file()
    assert (run_dir / "config.yaml").is_file()


def test_installed_package_composes_sweeps_and_a_users_config_dir(
    installed: Path, tmp_path: Path
) -> None:
    user = tmp_path / "myconf" / "experiment"
    user.mkdir(parents=True)
    (user / "mine.yaml").write_text("# @package _global_\nseed: 123\ntask_name: mine\n")
    shown = _run(
        [str(installed / "mrpo-train"), "--config-dir", str(tmp_path / "myconf"),
         "experiment=mine", "--cfg", "job"],
        cwd=tmp_path,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "seed: 123" in shown.stdout and "task_name: mine" in shown.stdout
    sweep = _run(
        [str(installed / "python"), "-c",
         "from mrpo.testing.configs import compose_config;"
         "cfg = compose_config(['+sweeps=num_refs'], return_hydra_config=True);"
         "print(cfg.hydra.sweeper.params['references.num_refs'])"],
        cwd=tmp_path,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert sweep.stdout.strip() == "1,2,3,4"
