"""Search: which points a sweep tries and which runs it stops.

``decisions`` holds the rules (Optuna's samplers and pruners, asked statelessly);
``driver`` applies them to a running experiment. The space itself is ``wml_core.search_space``.
"""
