"""``mrpo-compare --wandb``: the W&B view's objects (built offline, never sent), the swept keys
read from ``multirun.yaml``, the offline specification and a missing ``wandb-workspaces``.

Every test runs with ``WANDB_MODE=offline`` and sockets that refuse to connect: building the
view must not need the network.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# The `wandb-views` extra: `make test` installs it; the core-floors run (`make test-floor`, with
# W&B at its own floor, which wandb-workspaces does not accept) leaves it out, and says so.
pytest.importorskip("wandb_workspaces", reason="the `wandb-views` extra is not installed here")
import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
import yaml
from wandb_workspaces import expr

from mrpo.compare import wandb_sweep
from mrpo.compare.command import main
from mrpo.compare.multirun import swept_keys
from mrpo.compare.wandb_view import (
    BENCHMARKS,
    FINAL_METRICS,
    REF_WEIGHT_REGEX,
    STEP,
    ViewSpec,
    build_report,
    build_workspace,
    panel_sections,
)


def filter_leaves(filters: str) -> list[tuple[str, str, str, object]]:
    """The (section, name, op, value) conditions of a W&B filter expression, as W&B parses it."""
    pending, leaves = [expr.expr_to_filters(filters)], []
    while pending:
        node = pending.pop()
        if node.key is not None:
            leaves.append((node.key.section, node.key.name, node.op, node.value))
        pending += node.filters or []
    return leaves


GROUP_FILTER = [("run", "group", "=", "num_refs_2026")]
SPEC = ViewSpec("team", "mrpo", "num_refs_2026", ("references.num_refs", "loss.name"), 3)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline W&B, and any connection attempt fails the test."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def sweep_dir(root: Path, task: list[str], params: dict | None = None) -> Path:
    """A Hydra multirun directory of finished jobs: one per combination of loss and K."""
    root.mkdir(parents=True)
    plan = {"hydra": {"sweeper": {"params": params}, "overrides": {"task": task}}}
    (root / "multirun.yaml").write_text(yaml.safe_dump(plan))
    jobs = [(loss, k, seed) for loss in ("dpo", "mrpo") for k in (1, 3) for seed in (0, 1)]
    for num, (loss, k, seed) in enumerate(jobs):
        run = root / str(num)
        run.mkdir()
        config = {
            "seed": seed,
            "loss": {"name": loss, "beta": 0.1},
            "references": {"num_refs": k, "pool": [{"name": "self"}]},
            "logger": {"group": None, "project": "mrpo"},
        }
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        summary = {"status": "finished", FINAL_METRICS[0]: 0.5 + 0.1 * k + 0.01 * seed}
        (run / "summary.json").write_text(json.dumps(summary))
    return root


# --- the swept keys ------------------------------------------------------------------------


def test_swept_keys_from_params_command_line_and_dict_sweeps() -> None:
    basic = {
        "hydra": {
            "sweeper": {"params": {"references.num_refs": "1,2,3,4", "seed": "0,1,2"}},
            "overrides": {"task": ["+sweeps=num_refs", "loss=mrpo,multi_dpo", "loss.beta=0.2"]},
        }
    }
    # A fixed value (+sweeps=..., loss.beta=0.2) is not swept; the command line comes last.
    assert swept_keys(basic) == ["references.num_refs", "seed", "loss"]
    ctro = {"hydra": {"sweeper": {"params": {
        "loss": "{ctro:false},{ctro:true,adaptive_epsilon:false,epsilon:0.05}",
        "seed": "0,1"}}}}  # fmt: skip
    assert swept_keys(ctro) == ["loss.ctro", "loss.adaptive_epsilon", "loss.epsilon", "seed"]
    optuna = {"hydra": {"sweeper": {"params": {"loss.beta": "tag(log, interval(0.01, 1.0))",
                                               "optimizer.lr": "choice(1e-6, 1e-5)"}}}}  # fmt: skip
    assert swept_keys(optuna) == ["loss.beta", "optimizer.lr"]
    assert swept_keys({"seed": 0}) == []


# --- the objects -----------------------------------------------------------------------------


def test_workspace_filters_groups_pins_and_panels() -> None:
    workspace = build_workspace(SPEC)
    assert isinstance(workspace, ws.Workspace)
    assert (workspace.entity, workspace.project) == ("team", "mrpo")
    runset = workspace.runset_settings
    assert filter_leaves(runset.filters) == GROUP_FILTER
    assert [(g.section, g.name) for g in runset.groupby] == [
        ("config", "references.num_refs"),
        ("config", "loss.name"),
    ]
    # W&B keeps a nested config under <top>.value.<rest>: the columns use that path.
    assert runset.pinned_columns[:3] == [
        "run:displayName",
        "config:references.value.num_refs",
        "config:loss.value.name",
    ]
    assert runset.pinned_columns[3:] == [f"summary:{m}" for m in FINAL_METRICS]
    assert workspace.settings.x_axis == STEP
    sections = {s.name: s.panels for s in workspace.sections}
    assert list(sections) == ["final validation", "GSM8K", "TruthfulQA", "over steps"]
    assert [p.metrics for p in sections["final validation"]] == [[m] for m in FINAL_METRICS]
    for name, metrics in BENCHMARKS.items():
        assert [p.metrics for p in sections[name]] == [[m] for m in metrics]
        assert all(p.groupby_aggfunc == "mean" for p in sections[name])
    curves = {p.title: p for p in sections["over steps"]}
    assert curves["reference weights"].y == [f"train/ref_weight/{k}" for k in range(3)]
    assert curves["CTRO clip fraction"].y == ["train/ctro_clip_frac"]
    assert all(p.x == STEP for p in curves.values())


def test_report_runsets_match_the_workspace() -> None:
    report = build_report(SPEC)
    assert isinstance(report, wr.Report)
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert len(grids) == len(panel_sections(SPEC)) == 4
    for grid in grids:
        (runset,) = grid.runsets
        assert filter_leaves(runset.filters) == GROUP_FILTER
        assert runset.groupby == ["config.references.num_refs", "config.loss.name"]
        assert runset.pinned_columns[1:3] == [
            "config:references.value.num_refs",
            "config:loss.value.name",
        ]
    metrics = [m for grid in grids for p in grid.panels for m in getattr(p, "metrics", [])]
    assert metrics == [*FINAL_METRICS, *(m for ms in BENCHMARKS.values() for m in ms)]
    assert report.id == ""  # built, never saved


def test_unknown_reference_count_matches_weights_by_name() -> None:
    spec = ViewSpec("team", "mrpo", "g")
    (weights, *_) = panel_sections(spec)["over steps"]
    assert weights.y == [] and weights.metric_regex == REF_WEIGHT_REGEX
    assert build_workspace(spec).runset_settings.groupby == []


def test_spec_round_trips_and_bad_specs_are_named(tmp_path: Path) -> None:
    assert ViewSpec.from_mapping(json.loads(SPEC.to_json())) == SPEC
    with pytest.raises(ValueError, match="lacks group"):
        ViewSpec.from_mapping({"format": "mrpo-wandb-view/1", "entity": "e", "project": "p"})
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match=r"--publish-view .*bad.json: not an mrpo W&B view"):
        wandb_sweep.read_spec(bad)


# --- the command line --------------------------------------------------------------------


def test_offline_writes_the_spec_beside_the_table_never_over_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = ["loss=dpo,mrpo", "references.num_refs=1,3", "seed=0,1"]
    sweep = sweep_dir(tmp_path / "num_refs_2026-12-07", task)
    out = tmp_path / "report"
    assert main([str(sweep), "--wandb", "team/mrpo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    first = out / "wandb_view.json"
    assert "W&B is offline here" in printed and f"its specification is in {first}" in printed
    assert f"mrpo-compare --publish-view {first}" in printed
    assert (out / "compare.md").is_file()  # the local table it sits beside
    spec = ViewSpec.from_mapping(json.loads(first.read_text()))
    # The group is the sweep directory's name; seeds are averaged, a swept group is by name.
    assert spec.group == "num_refs_2026-12-07"
    assert spec.by == ("loss.name", "references.num_refs") and spec.num_refs == 3

    first_text = first.read_text()
    assert main([str(sweep), "--wandb", "team/mrpo", "--out", str(out), "--by", "loss.name"]) == 0
    assert first.read_text() == first_text  # never overwritten: the second goes beside it
    second = ViewSpec.from_mapping(json.loads((out / "wandb_view_1.json").read_text()))
    assert second.by == ("loss.name",)
    assert "wandb_view_1.json" in capsys.readouterr().out


def test_group_without_sweep_dir_and_option_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--wandb", "team/mrpo", "--group", "ctro_x", "--by", "loss.epsilon"]) == 0
    spec = ViewSpec.from_mapping(json.loads((tmp_path / "wandb_view.json").read_text()))
    assert (spec.group, spec.by, spec.num_refs) == ("ctro_x", ("loss.epsilon",), None)
    capsys.readouterr()
    for argv, message in [
        (["--wandb", "team"], "expected ENTITY/PROJECT"),
        (["--wandb", "team/mrpo"], "give a sweep directory or --group"),
        (["--group", "g", str(tmp_path)], "--group names the W&B group of --wandb"),
        ([], "give run or multirun directories"),
    ]:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err


def test_online_failure_falls_back_to_the_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An API key but no W&B: the save fails (here without trying) and the spec is written."""
    monkeypatch.setenv("WANDB_MODE", "online")

    def unreachable(spec: ViewSpec) -> tuple[str, str]:
        raise ConnectionError("api.wandb.ai: name resolution failed")

    monkeypatch.setattr(wandb_sweep, "publish", unreachable)
    sweep = sweep_dir(tmp_path / "s", ["references.num_refs=1,3"])
    assert main([str(sweep), "--wandb", "team/mrpo"]) == 0
    printed = capsys.readouterr().out
    assert "W&B could not be reached (ConnectionError" in printed
    assert (sweep / "wandb_view.json").is_file()  # no --out: beside the sweep's records
    # --publish-view offline says so and keeps the file.
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["--publish-view", str(sweep / "wandb_view.json")]) == 2
    assert "W&B is offline here" in capsys.readouterr().err


def test_missing_wandb_workspaces_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)  # import lookup finds nothing
    sweep = sweep_dir(tmp_path / "s", ["references.num_refs=1,3"])
    assert main([str(sweep), "--wandb", "team/mrpo"]) == 2
    err = capsys.readouterr().err
    assert "--wandb needs the 'wandb-workspaces' package" in err
    assert "pip install 'mrpo[wandb-views]'" in err
    assert not (sweep / "wandb_view.json").exists()
    assert main(["--publish-view", str(tmp_path / "v.json")]) == 2
    assert "--publish-view needs the 'wandb-workspaces' package" in capsys.readouterr().err


def test_compare_command_imports_no_heavy_library() -> None:
    """``mrpo-compare`` starts fast: wandb-workspaces, Lightning and torch load only when the
    view is built or a logger started."""
    heavy = "{'torch', 'lightning', 'wandb', 'wandb_workspaces', 'mlflow'}"
    code = f"import sys, mrpo.compare.command; print(sorted({heavy} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
