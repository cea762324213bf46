"""Research studies of where attention looks, each run as a module and printing JSON:

    python -m benchmarks.studies.grounding_study --rows paper lambda0 --families glyphs   # trains, tests, scores
    python -m benchmarks.studies.attention_offset geometry                               # where features sit
    python -m benchmarks.studies.attention_lag CHECKPOINT DATA_DIR                       # which object a miss hits

Speed measurements live beside them in `benchmarks/`; what the studies found, in docs/grounding_study.md and
docs/grounding_offset.md.
"""
