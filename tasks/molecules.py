"""Molecule task commands for the ``polydiff`` CLI.

    polydiff evaluate molecules FILE [--train qm9|moses|FILE] [--reference moses|qm9|FILE]
                                     [--out metrics.json] [--no-fcd] [--largest-fragment]

FILE is a SMILES (.smi/.txt/.csv) or SDF file. Unparsable records are counted as invalid and
reported (never dropped silently). The metrics table is printed; ``--out`` also writes it as JSON.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Dict

import rdkit  # noqa: F401  (the CLI skips this module when RDKit is not installed)


def _evaluate(args) -> int:
    from polydiff.domains.molecules import data, metrics
    mols, _, report = data.read_molecules(args.file)
    print(report.summary(), file=sys.stderr)
    train: Any = args.train
    if train is not None and train not in ("qm9", "moses"):
        tm, _, trep = data.read_molecules(train)
        if trep.n_skipped:
            print(f"training set: {trep.summary()}", file=sys.stderr)
        train = [m for m in tm if m is not None]
    reference: Any = args.reference
    if reference is not None and reference not in ("qm9", "moses"):
        rm, _, rrep = data.read_molecules(reference)
        reference = [m for m in rm if m is not None]
    res = metrics.evaluate(mols, reference=reference, train=train, fcd_metric=not args.no_fcd,
                           largest_fragment=True if args.largest_fragment else None, cache_dir=args.cache_dir)
    res["n_unparsable"] = report.n_skipped
    res["file"] = str(args.file)
    width = max(len(k) for k in res)
    for key, val in res.items():
        txt = (f"{val:.4f}" if isinstance(val, float) and not math.isnan(val) else str(val))
        print(f"{key:<{width}}  {txt}")
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                                   for k, v in res.items()}, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    return 0


def add_commands(verbs: Dict[str, Any]) -> None:
    """Register ``polydiff evaluate molecules`` (and, later, ``polydiff generate molecules``)."""
    p = verbs["evaluate"]("molecules", help="metrics of a SMILES (.smi/.txt/.csv) or SDF file of molecules",
                          description="Validity, uniqueness, novelty, EDM stability (3-D SDF), and the MOSES "
                                      "metrics of a file of molecules.")
    p.add_argument("file", help="a .smi, .txt, .csv or .sdf file")
    p.add_argument("--train", default=None,
                   help="training set for novelty: 'qm9' (EDM train split), 'moses', or a SMILES/SDF file")
    p.add_argument("--reference", default=None,
                   help="reference set for FCD/SNN/Frag/Scaf/W1: 'moses' (test and test_scaffolds), 'qm9' "
                        "(EDM test split), or a SMILES/SDF file")
    p.add_argument("--out", default=None, help="write the metrics as JSON to this file")
    p.add_argument("--no-fcd", action="store_true", help="skip FCD (the slowest metric)")
    p.add_argument("--largest-fragment", action="store_true",
                   help="score the largest fragment of each valid molecule (EDM's convention)")
    p.add_argument("--cache-dir", default=None, help="cache folder (default ~/.cache/polydiff/molecules)")
    p.set_defaults(func=_evaluate)

    # ---- `polydiff generate molecules` goes here (issue 8, item 7): -n N --model qm9-2d|qm9-3d|moses-selfies
    #      --seed S --out FILE(.sdf/.smi/.csv), an image grid and a metrics JSON. Not built yet.
