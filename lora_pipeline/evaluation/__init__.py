"""Stage 3, evaluate: one domain's adapter on its own test split against the zero-shot base (and the
kind's other baselines) and a TF-IDF + logistic regression baseline, with scikit-learn metrics,
confusion matrices, and latency/throughput of the saved adapter. Receives :class:`EvaluationInputs`.
"""
