"""Which half of the features-only EX2L penalty does the work? (not a test)

With `ex2l_detach_label` and `ex2l_detach_confounder` both on, the overlap penalty reaches
only the feature map A, through two paths: the label map relu(w_y . A) (label evidence is
pushed off the positions the confounder map covers) and the confounder map relu(w_a . A)
(location evidence is pushed off the positions the label map covers). EX2L's hparam
`ex2l_penalty_path` cuts one path at a time by holding that whole map constant inside the
overlap; this reruns the "EX2L-features-l3" probe of `benchmarks.lite_probes` with each
cut and the same seeds (so the same initialisation and batches, paired trials):

    EX2L-features-l3-via-label       only the label map carries the penalty into A
    EX2L-features-l3-via-confounder  only the confounder map does

    OMP_NUM_THREADS=1 python -m benchmarks.lite_ablation --jobs 2     # 6 runs, ~4 min

The variants are `lite_probes`' (`PATH_ABLATIONS`), and so are the run cache (its
`--out_dir`, where the base probe's runs are reused), the selection (training-domain
validation) and the table; only the defaults differ.
"""
from __future__ import annotations

from benchmarks import common, lite_probes


def main(argv=None) -> int:
    parser = lite_probes.build_parser(__doc__.split("\n\n")[0])
    parser.set_defaults(datasets=["SpawriousLiteM2M_hard"], n_hparams=1,
                        variants=[lite_probes.ABLATION_BASE, *lite_probes.PATH_ABLATIONS])
    return lite_probes.run(common.parse_args(parser, argv, "lite_ablation"), "lite_ablation")


if __name__ == "__main__":
    raise SystemExit(main())
