"""Plotly figures of runs, one module per figure family; they only draw.

Every figure takes the runs (:class:`spectra.store.Runs`) and a :class:`View`: how to draw,
and what else it draws, computed elsewhere (the train logs for Figure 3, the φ matrices of
:mod:`spectra.engine.subspace` for the subspace figure). :data:`FIGURES` is the registry of
what ``spectra plot --figure NAME`` draws: adding a figure is its module, with a
``draw(runs, view)`` function, plus one entry. A figure raises
:class:`~spectra.errors.NotApplicable` when the runs lack what it draws. :mod:`.panels` holds
what the figures share, :mod:`.export` writes them (HTML, PNG, SVG). Plotly loads with the
first figure drawn, not with this registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from spectra.engine.subspace import Subspaces
    from spectra.store import Runs


@dataclass(frozen=True)
class View:
    """How to draw, and the inputs computed from run directories that some figures draw."""

    matched: bool = False  # ΔD: sign-invariant matched instead of the paper's index-matched
    shared: bool = False  # the same x and y ranges in every panel (figures 2 and dora)
    logs: dict[str, pd.DataFrame] | None = None  # train logs by run (figure 3)
    subspaces: Subspaces | None = None  # φ matrices (figure subspace)
    step: str | int = "last"  # the step policy of figures that take each run at one step


@dataclass(frozen=True)
class Figure:
    """A figure of ``spectra plot``: its file stem, its module here, what it shows, which
    input of :class:`View` it needs (``"logs"``, ``"subspaces"``), whether it draws ΔD."""

    stem: str
    module: str
    what: str
    needs: str | None = None
    delta_d: bool = False  # ΔD index-matched, or matched with --matched (a "-matched" stem)

    def draw(self, runs: Runs, view: View) -> go.Figure:
        """The figure of ``runs``."""
        return import_module(f"spectra.figures.{self.module}").draw(runs, view)

    def file_stem(self, matched: bool) -> str:
        """The file name without suffix ("figure2", "heatmap-matched")."""
        return self.stem + ("-matched" if matched and self.delta_d else "")


FIGURES = {
    "2": Figure("figure2", "drift", "the SORSA paper's Figure 2: ΔD against ΔΣ per layer and "
                "step, one panel per run", delta_d=True),
    "3": Figure("figure3", "training", "the SORSA paper's Figure 3: training loss and gradient "
                "norm (needs the train logs)", needs="logs"),
    "cond": Figure("cond", "condition", "κ(W_p) and the orthonormality error over training "
                   "(SORSA runs)"),
    "heatmap": Figure("heatmap", "heatmap", "log₁₀ ΔD per layer and step", delta_d=True),
    "dora": Figure("dora", "dora", "DoRA's Figure 2: ΔD_dir against ΔM per layer and step, "
                   "each run's least-squares slope and Pearson r"),
    "subspace": Figure("subspace", "subspace", "the LoRA paper's Figure 3: φ between the top "
                       "right singular vectors of ΔW of each run and the first run, and of its "
                       "own W₀, for the middle block at the last common step (reads the run "
                       "directories)", needs="subspaces"),
    "intruders": Figure("intruders", "intruders", "intruder dimensions: each top-10 vector's "
                        "best |cos| with W₀'s over steps, the ε line, counts per layer"),
    "rank": Figure("rank", "rank", "Biderman et al.: dw_rank90 per layer over steps, each run's "
                   "adapter rank r and each module's k = min(m, n) marked"),
    "profile": Figure("profile", "profile", "per run, decile × step heatmaps of profile_dvec "
                      "and profile_dsigma (where in W₀'s spectrum the drift happens)"),
    "principal": Figure("principal", "principal", "principal_energy and principal_angle over "
                        "steps, per run (W₀'s principal subspace)"),
    "experts": Figure("experts", "experts", "MoE experts: log₁₀ ΔD and ΔΣ per block and expert, "
                      "per run and expert parameter, each run at its step", delta_d=True),
}  # fmt: skip

_BUILDERS = {  # the figure functions, for notebooks: name → module
    "drift_figure": "drift", "training_figure": "training", "condition_figure": "condition",
    "heatmap_figure": "heatmap", "dora_figure": "dora", "subspace_figure": "subspace",
    "intruders_figure": "intruders", "rank_figure": "rank", "profile_figure": "profile",
    "principal_figure": "principal", "experts_figure": "experts", "select_layers": "panels",
    "export_figures": "export",
    "IMAGE_FORMATS": "export", "PLOTLYJS": "export", "browser": "export",
}  # fmt: skip
__all__ = ["FIGURES", "Figure", "View", *_BUILDERS]


def __getattr__(name: str):
    """Load a figure function's module (and plotly) on first use."""
    if name not in _BUILDERS:
        raise AttributeError(f"module 'spectra.figures' has no attribute {name!r}")
    return getattr(import_module(f"spectra.figures.{_BUILDERS[name]}"), name)
