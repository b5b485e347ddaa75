"""Which half of the features-only EX2L penalty does the work? (not a test)

With `ex2l_detach_label` and `ex2l_detach_confounder` both on, the overlap penalty reaches
only the feature map A, through two paths: the label map relu(w_y . A) (label evidence is
pushed off the positions the confounder map covers) and the confounder map relu(w_a . A)
(location evidence is pushed off the positions the label map covers). This script cuts one
path at a time, by detaching that whole map inside the penalty, and reruns the
"EX2L-features-l3" probe of `lite_accuracy.py` with the same seeds (so the same
initialisation and batches, paired trials):

    EX2L-features-l3-via-label       only the label map carries the penalty into A
    EX2L-features-l3-via-confounder  only the confounder map does

    OMP_NUM_THREADS=1 python benchmarks/lite_ablation.py --jobs 2     # 6 runs, ~4 min

Runs go through `domainbed.scripts.train` with EX2L patched in that process only; the
selection and the table are `lite_accuracy.py`'s (training-domain validation).
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import lite_accuracy  # noqa: E402

BASE = lite_accuracy.PROBES["EX2L-features-l3"]
# label -> the map whose gradient path is cut (the other map alone carries the penalty)
ABLATIONS = {"EX2L-features-l3-via-label": "confounder",
             "EX2L-features-l3-via-confounder": "label"}


def patch_ex2l(cut: str) -> None:
    """Make EX2L's penalty treat the `cut` map ("label" or "confounder") as a constant."""
    from ex2l_domainbed.algorithm import EX2L
    from ex2l_domainbed.gradcam import overlap as overlap_lib

    explain = EX2L._explain

    def explain_with_cut(self, x, y, a):
        cam, label_map, confounder_map, _ = explain(self, x, y, a)
        label_in = label_map.detach() if cut == "label" else label_map
        confounder_in = confounder_map.detach() if cut == "confounder" else confounder_map
        overlap = overlap_lib.overlap(label_in, confounder_in, self.hparams["ex2l_overlap"])
        return cam, label_map, confounder_map, overlap

    EX2L._explain = explain_with_cut


def train_patched(cut: str, argv: list[str]) -> int:
    """Entry of the child process: patch, then run the ordinary trainer."""
    from domainbed.plugins import load_plugins
    from domainbed.scripts import train

    load_plugins()
    patch_ex2l(cut)
    return train.main(argv)


def main(argv=None) -> int:
    for label, cut in ABLATIONS.items():
        lite_accuracy.PROBES[label] = BASE
        lite_accuracy.ALL_VARIANTS[label] = BASE
        lite_accuracy.TRAIN_ENTRY[label] = [os.path.abspath(__file__), "--train-patched", cut]
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = ["--datasets", "SpawriousLiteM2M_hard", "--n_hparams", "1",
                "--json", os.path.join(HERE, "results", "lite_ablation.json"),
                "--variants", "EX2L-features-l3", *ABLATIONS]
    return lite_accuracy.main(defaults + argv)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--train-patched":
        sys.exit(train_patched(sys.argv[2], sys.argv[3:]))
    sys.exit(main())
