"""A W&B view of a sweep, built with ``wandb-workspaces`` (``mrpo-compare --wandb``).

The view is described by a :class:`ViewSpec`: plain data (where the runs are, their group,
the config keys the sweep varied), written as JSON when W&B cannot be reached and published
later. :func:`build_workspace` and :func:`build_report` turn it into the library's objects:

- runs filtered to the sweep's W&B group and grouped by the swept keys (seeds averaged);
- bar panels of the final validation scores, GSM8K and TruthfulQA (mean ± std per group);
- the reference weights (``train/ref_weight/{k}``) and the CTRO clip fraction
  (``train/ctro_clip_frac``) over optimizer steps;
- the runs table with the swept keys (and the final scores) pinned.

Building the objects needs no network: only ``save()`` (:func:`publish`) talks to W&B.
``wandb_workspaces`` is an optional extra (``mrpo[wandb-views]``), imported when used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

WORKSPACE_EXTRA = "wandb-views"
"""The pip extra that installs ``wandb-workspaces``."""
STEP = "trainer/global_step"
"""The x axis of curves: Lightning's WandbLogger logs the optimizer step under this name."""
FINAL_METRICS = (
    "final/val/rewards/accuracy",
    "final/val/rewards/margin",
    "final/val/policy_margin_accuracy",
)
BENCHMARKS: dict[str, tuple[str, ...]] = {
    "GSM8K": ("final/eval/gsm8k/strict_match", "final/eval/gsm8k/flexible_extract"),
    "TruthfulQA": ("final/eval/truthfulqa/mc1", "final/eval/truthfulqa/mc2"),
}
CURVES: dict[str, tuple[str, ...]] = {
    "training": ("train/loss", "val/policy_margin_accuracy"),
    "CTRO clip fraction": ("train/ctro_clip_frac",),
}
REF_WEIGHT = "train/ref_weight/{k}"
REF_WEIGHT_REGEX = r"^train/ref_weight/\d+$"
"""Reference weights when the number of references is unknown (``--group`` without runs)."""


@dataclass(frozen=True)
class ViewSpec:
    """What the W&B view of one sweep shows.

    Attributes:
        entity, project: the W&B project the sweep logged to.
        group: the sweep's W&B group (its multirun directory name unless ``logger.group``).
        by: the swept config keys (dotted, as in ``config.yaml``) the runs are grouped by.
        num_refs: the largest K among the runs (one reference-weight curve each), or None
            when unknown (the weights are then matched by name).
        notes: what the spec could not take from the sweep, for the reader.
    """

    entity: str
    project: str
    group: str
    by: tuple[str, ...] = ()
    num_refs: int | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def title(self) -> str:
        return f"mrpo sweep {self.group}"

    def to_json(self) -> str:
        return json.dumps({"format": "mrpo-wandb-view/1", **asdict(self)}, indent=2) + "\n"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ViewSpec:
        """The spec that :meth:`to_json` wrote; ``ValueError`` names what is missing."""
        if data.get("format") != "mrpo-wandb-view/1":
            raise ValueError("not an mrpo W&B view specification (no format: mrpo-wandb-view/1)")
        missing = [k for k in ("entity", "project", "group") if not data.get(k)]
        if missing:
            raise ValueError(f"the specification lacks {', '.join(missing)}")
        num_refs = data.get("num_refs")
        return cls(
            entity=str(data["entity"]),
            project=str(data["project"]),
            group=str(data["group"]),
            by=tuple(str(k) for k in data.get("by") or ()),
            num_refs=None if num_refs is None else int(num_refs),
            notes=tuple(str(n) for n in data.get("notes") or ()),
        )


def config_column(key: str) -> str:
    """The runs-table column of a dotted config key: W&B stores a nested config under
    ``<top>.value.<rest>`` (``loss.name`` -> ``config:loss.value.name``)."""
    from wandb_workspaces import expr

    return f"config:{expr.groupby_str_to_key(f'config.{key}').name}"


def pinned_columns(spec: ViewSpec) -> list[str]:
    """The runs table's pinned columns: the run name, the swept keys, the final scores."""
    return [
        "run:displayName",
        *(config_column(k) for k in spec.by),
        *(f"summary:{m}" for m in FINAL_METRICS),
    ]


def _group_filter(spec: ViewSpec) -> list[Any]:
    from wandb_workspaces import expr

    return [expr.Metric("Group") == spec.group]


def _bars(metrics: tuple[str, ...]) -> list[Any]:
    import wandb_workspaces.reports.v2 as wr

    # One bar per group of runs: the mean over seeds, with their std (as the local table).
    return [
        wr.BarPlot(title=m, metrics=[m], groupby_aggfunc="mean", groupby_rangefunc="stddev")
        for m in metrics
    ]


def _curves(spec: ViewSpec) -> list[Any]:
    import wandb_workspaces.reports.v2 as wr

    if spec.num_refs is None:
        weights = wr.LinePlot(title="reference weights", x=STEP, metric_regex=REF_WEIGHT_REGEX)
    else:
        names: list[Any] = [REF_WEIGHT.format(k=k) for k in range(spec.num_refs)]
        weights = wr.LinePlot(title="reference weights", x=STEP, y=names)
    others = [wr.LinePlot(title=t, x=STEP, y=list(ys)) for t, ys in CURVES.items()]
    return [weights, *others]


def panel_sections(spec: ViewSpec) -> dict[str, list[Any]]:
    """The view's panels by section name (fresh objects on each call: panels carry ids)."""
    return {
        "final validation": _bars(FINAL_METRICS),
        **{name: _bars(metrics) for name, metrics in BENCHMARKS.items()},
        "over steps": _curves(spec),
    }


def build_workspace(spec: ViewSpec) -> Any:
    """The saved workspace view (``wandb_workspaces.workspaces.Workspace``); no network."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    sections = [
        ws.Section(name=name, panels=panels, is_open=True)
        for name, panels in panel_sections(spec).items()
    ]
    return ws.Workspace(
        entity=spec.entity,
        project=spec.project,
        name=spec.title,
        sections=sections,
        settings=ws.WorkspaceSettings(x_axis=STEP),
        runset_settings=ws.RunsetSettings(
            filters=_group_filter(spec),
            groupby=[expr.Config(k) for k in spec.by],
            pinned_columns=pinned_columns(spec),
        ),
    )


def build_report(spec: ViewSpec) -> Any:
    """The report (``wandb_workspaces.reports.v2.Report``): one panel grid per section over
    the same filtered, grouped runs; no network until it is saved."""
    import wandb_workspaces.reports.v2 as wr

    def runset() -> Any:
        return wr.Runset(
            entity=spec.entity,
            project=spec.project,
            name=spec.group,
            filters=_group_filter(spec),
            groupby=[f"config.{k}" for k in spec.by],
            pinned_columns=pinned_columns(spec),
        )

    grouped = ", ".join(spec.by) or "nothing (no swept keys)"
    blocks: list[Any] = [wr.P(f"Runs of the W&B group {spec.group}, grouped by {grouped}.")]
    for name, panels in panel_sections(spec).items():
        blocks += [wr.H2(name), wr.PanelGrid(runsets=[runset()], panels=panels)]
    return wr.Report(
        entity=spec.entity,
        project=spec.project,
        title=spec.title,
        description=f"mrpo-compare --wandb {spec.entity}/{spec.project} --group {spec.group}",
        blocks=blocks,
    )


def publish(spec: ViewSpec) -> tuple[str, str]:
    """Save the workspace view and the report to W&B; return their URLs (needs the network
    and an API key)."""
    workspace = build_workspace(spec).save()
    report = build_report(spec).save()
    return str(workspace.url), str(report.url)
