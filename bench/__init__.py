"""lazylayer's benchmark harness: lazy pulling against a full pull, local disk and the physical
limit, measured the same way every run (`scripts/bench`; README.md beside this file)."""
