"""Research studies of where attention looks, each run as a module and printing JSON:

    python -m studies.grounding_study --rows paper lambda0 --families glyphs   # trains, tests, scores
    python -m studies.attention_offset geometry                               # where features sit
    python -m studies.attention_lag CHECKPOINT DATA_DIR                       # which object a miss hits

Speed measurements live in `benchmarks/`; what the studies found, in docs/grounding_study.md and
docs/grounding_offset.md.
"""
