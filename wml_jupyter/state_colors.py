"""Run states as colours, defined once for the inline display, its charts and the sidebar.

A state belongs to a kind (as the sidebar's ``stateKind`` in ``labextension/src/format.ts``
groups them); each kind is a JupyterLab theme variable, the one the sidebar's badges use in
``labextension/style/base.css``, so a failed run is the same red in the table, on the chart and
in the sidebar, in the light and the dark theme. Where no theme applies (a PNG, a notebook
rendered outside JupyterLab) the fallback colour is used: a mid shade that reads on white and
on near-black alike.
"""

from __future__ import annotations

from typing import NamedTuple

from wml_core.states import RunState


class KindColor(NamedTuple):
    """A state kind's colour: the theme variable, and the colour used where no theme applies."""

    var: str
    fallback: str

    def css(self) -> str:
        """The colour as CSS: the theme's, else the fallback."""
        return f"var({self.var}, {self.fallback})"


#: State kind → colour (the sidebar's badge of that kind has the same variable as background;
#: a queued badge is grey on the layout colour, so its curves take the secondary font colour).
KIND_COLORS: dict[str, KindColor] = {
    "queued": KindColor("--jp-ui-font-color2", "#9e9e9e"),
    "active": KindColor("--jp-brand-color1", "#1e88e5"),
    "success": KindColor("--jp-success-color1", "#43a047"),
    "error": KindColor("--jp-error-color1", "#e53935"),
    "halted": KindColor("--jp-warn-color1", "#fb8c00"),
}
#: What a kind's runs are called in a legend or a summary.
KIND_LABELS = {"queued": "queued", "active": "running", "success": "completed", "error": "failed",
               "halted": "halted or stopped"}
#: Text, axes and grid of a chart: the theme's secondary font colour; its fallback, a mid grey,
#: reads on a light and a dark page (a PNG cannot follow the theme: its background is transparent).
INK = KindColor("--jp-ui-font-color2", "#808080")


def state_kind(state: RunState | str) -> str:
    """The kind of a state: queued, active, success, error or halted (format.ts ``stateKind``)."""
    state = RunState(state)
    if state is RunState.QUEUED:
        return "queued"
    if state is RunState.COMPLETED:
        return "success"
    if state is RunState.FAILED:
        return "error"
    if state in (RunState.HALTED, RunState.STOPPED):
        return "halted"
    return "active"


def state_color(state: RunState | str) -> KindColor:
    """The colour of a run in ``state``."""
    return KIND_COLORS[state_kind(state)]
