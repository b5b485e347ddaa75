"""Speed, memory and accuracy benchmarks (not tests: `make test` never runs them).

Run each from the repository root as `python -m benchmarks.<name>`; what they share lives in
`benchmarks.common`, and each that measures writes its JSON to
`benchmarks/results/<device>/<name>.json` unless `--out` says otherwise.
"""
