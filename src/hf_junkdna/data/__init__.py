"""Data files shipped with hf_junkdna (read them with ``importlib.resources``).

``triviaqa_sample.jsonl``: common-knowledge questions in the TriviaQA "rc" schema, written for the project; see
:mod:`hf_junkdna.experiments.qa` for the schema and :func:`hf_junkdna.experiments.qa.load_triviaqa_sample`.
"""
