"""What a study is made of, before anything runs: the spec (`spec.py`, `spec_base.py`), the model
zoo (`zoo.py`, with its embedder entries in `embedder_entry.py`) and query sets (`queries.py`).
Pure data and validation: nothing here samples, stores or embeds."""
