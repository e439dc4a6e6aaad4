"""Evaluation of trained runs: ``evaluate_run`` (``splatkit eval``), the published protocols and
``benchmark``, SpaRe. The metrics themselves are :mod:`splatkit.metrics`."""
