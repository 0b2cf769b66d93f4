"""Figures of ntkrobust, one module per figure family (DESIGN.md keeps plots out of the packages).

Each figure function takes plain data and writes one PNG to ``path`` (the CLI stages the files
and moves them into place); ``dynamics_figures`` writes a folder of them. matplotlib is imported
lazily, inside the drawing functions, with the Agg backend: importing ``plots`` is cheap and
nothing here needs a display. ``plots`` imports none of ``kernels``, ``bridge`` or ``attacks``.

Input conventions, for every module:
- arrays are numpy arrays (or what ``np.asarray`` reads); images are NCHW float in [0, 1], one
  image (C, H, W); gradients have the shape of their image;
- a gradient is drawn with a diverging map centred at 0 for grey images and rescaled to [0, 1]
  per picture for colour images;
- result objects and records are plain data, described in ``plots.types`` (Protocols for the
  result objects of ``kernels``, TypedDicts for the dicts of ``bridge``); a record may lack
  keys: a figure draws what is there and notes what is not.

Modules (Tsilivis & Kempe "TK", Loo et al. "LOO"):
- ``features``: ``robustness_usefulness`` (TK fig. 2 right, supp. figs. 2-3),
  ``feature_gallery`` (fig. 2 left, fig. 5), ``robust_only_curves`` (supp. figs. 4-5);
- ``kernel_images``: ``kernel_image``, a kernel with its examples sorted by class (fig. 6 left);
- ``dynamics``: ``dynamics_figures`` draws every applicable training-dynamics figure of
  ``ntkrobust train`` runs (run summaries of ``bridge.runs.dynamics_summary``), named in
  ``DYNAMICS_FIGURES``; the figures are in ``dynamics_kernels`` (``kernel_distance_heatmaps``,
  TK fig. 3 left; ``polar_trajectories``, fig. 3 right, supp. fig. 8; ``kernel_images_grid``,
  fig. 6 left; ``eigenvector_pictures``, LOO fig. 4), ``dynamics_curves``
  (``kernel_norm_and_concentration``, TK fig. 6 right, supp. fig. 7; ``accuracy_curves``, supp.
  fig. 6; ``kernel_velocity_and_distance`` and ``rank_and_specialization``, LOO fig. 1;
  ``relative_magnitude_curve``, LOO sec. 4; a run of several seeds as mean ± std bands) and
  ``dynamics_comparison`` (``baseline_distance_curves``, RAT figs. 5, 7, 17;
  ``specialization_heatmaps``, RAT figs. 3, 4, 8, 18) and ``dynamics_stages`` (two-stage
  training: ``spawn_accuracy_curves``, LOO fig. 2, table 2; ``switch_cost_bars``, RAT sec. 5,
  fig. 6, table 1);
- ``evaluation``: ``robust_accuracy_bars``, robust accuracy of trained nets under RobustBench's
  attacks (``evaluate``), gradient masking marked;
- ``two_layer``: ``two_layer_transfer`` (TK fig. 4, supp. fig. 1a) and ``gradient_pictures``
  (supp. fig. 1b);
- ``transfer``: ``transfer_heatmap`` (targets × attack sources, transferability τ) and
  ``transferability_curves`` (LOO fig. 3);
- ``types``: the input types; ``_style`` and ``_runs``: the shared look and run-summary readers.
"""

from __future__ import annotations

from ntkrobust.plots.dynamics import (
    DYNAMICS_FIGURES,
    applicable_figures,
    dynamics_figures,
    dynamics_subtitle,
    undrawn_specializations,
)
from ntkrobust.plots.dynamics_comparison import baseline_distance_curves, specialization_heatmaps
from ntkrobust.plots.dynamics_curves import (
    accuracy_curves,
    kernel_norm_and_concentration,
    kernel_velocity_and_distance,
    rank_and_specialization,
    relative_magnitude_curve,
)
from ntkrobust.plots.dynamics_kernels import (
    eigenvector_pictures,
    kernel_distance_heatmaps,
    kernel_images_grid,
    polar_trajectories,
)
from ntkrobust.plots.dynamics_stages import spawn_accuracy_curves, switch_cost_bars
from ntkrobust.plots.evaluation import robust_accuracy_bars
from ntkrobust.plots.features import feature_gallery, robust_only_curves, robustness_usefulness
from ntkrobust.plots.kernel_images import kernel_image
from ntkrobust.plots.transfer import transfer_heatmap, transferability_curves
from ntkrobust.plots.two_layer import gradient_pictures, two_layer_transfer

__all__ = [
    "DYNAMICS_FIGURES",
    "accuracy_curves",
    "applicable_figures",
    "baseline_distance_curves",
    "dynamics_figures",
    "dynamics_subtitle",
    "eigenvector_pictures",
    "feature_gallery",
    "gradient_pictures",
    "kernel_distance_heatmaps",
    "kernel_image",
    "kernel_images_grid",
    "kernel_norm_and_concentration",
    "kernel_velocity_and_distance",
    "polar_trajectories",
    "rank_and_specialization",
    "relative_magnitude_curve",
    "robust_accuracy_bars",
    "robust_only_curves",
    "robustness_usefulness",
    "spawn_accuracy_curves",
    "specialization_heatmaps",
    "switch_cost_bars",
    "transfer_heatmap",
    "transferability_curves",
    "two_layer_transfer",
    "undrawn_specializations",
]
