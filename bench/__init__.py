"""The benchmarks behind BENCHMARKS.md, run from the repository root as modules:

    python -m bench.run_all --wait-quiet     # everything: BENCHMARKS.md, bench/results.json, the plot
    python -m bench.export_time              # `ffx export` wall time per paper configuration
    python -m bench.calibration              # `ffx calibrate`: decoding, end to end, accuracy, builds
    python -m bench.roofline                 # GPU bounds computed on paper

Every number BENCHMARKS.md shows comes from a run of these; none is written into their code.
"""
