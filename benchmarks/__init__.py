"""Speed benchmarks for the captioner model: `python -m benchmarks [--tiny]` prints one JSON object."""
