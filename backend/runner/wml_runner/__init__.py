"""The runner: one code path that runs a training run wherever an executor puts it.

It fetches code and data, runs the command with FfDL's environment, ships logs and metrics
to the backend while the run trains, stores results and reports each state.
"""
