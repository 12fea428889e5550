"""``python -m ecif.bench``: the benchmark of :mod:`ecif.experiments.bench` (same options)."""

from ecif.experiments.bench import main

if __name__ == "__main__":
    main()
