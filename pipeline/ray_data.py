"""Ray Data settings shared by the jobs that run Ray Data pipelines (preprocessing, evaluation)."""

from __future__ import annotations


def configure_data_context(progress_bars: bool) -> None:
    """Progress bars on or off; blocks may finish out of order (our stages key every row, so
    order carries no meaning and waiting for it would only stall the pipeline); no per-operator
    progress lines."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = progress_bars
    ctx.execution_options.preserve_order = False
    ctx.execution_options.verbose_progress = False
