"""Sampling a study's models: `stage.py` (the sampling stage: resolve the study, plan what the
store lacks, run it), `sampler.py` (the sampler and its journal writer), `requests.py` (requests,
prompts and cache keys), `in_context.py` (the in-context strategy), `plan.py` (`hivemind plan`:
cost and time before any request), `progress.py` (the progress line), `zoo_check.py`."""
