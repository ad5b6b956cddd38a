"""Stage 4, track and register in MLflow: a parent run per pipeline run, a nested run per domain, one
registered model per domain whose versions carry provenance, and the promotion rule with its audit
trail.

- ``schema``: names, tag keys, aliases and "the current champion of X", defined once (light: the server
  imports it without pulling in training or evaluation);
- ``tracking``: runs (parent and per domain) and what is logged to them;
- ``register``: registering a logged adapter and promoting it by the rule;
- ``promotion``: the pure rule; ``champions``: promote / rollback / history; ``catalog``: tables for people;
- ``comparison``: every version scored on a labelled file of the user's (``models compare --on``);
- ``artifacts``: a version's adapter folder downloaded and verified;
- ``mlflow_model``: the pyfunc model whose artifact is the adapter folder only.
"""
