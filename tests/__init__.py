"""The kit's test suite (a regular package, so that ``tests.*`` helpers resolve here even when an
installed distribution ships its own top-level ``tests`` package, as kronfluence 1.0.1 does)."""
