"""Molecule task commands for the ``polydiff`` CLI.

    polydiff generate molecules -n N [--model moses-selfies|qm9-2d|qm9-2d-alpha|qm9-3d] [--seed S] [--steps K]
                                [--guidance qed] [--condition alpha=80 [--guidance-scale W]]
                                --out FILE(.sdf|.smi|.csv) [--no-metrics] [--no-fcd]
    polydiff evaluate molecules FILE [--train qm9|moses|FILE] [--reference moses|qm9|FILE]
                                     [--out metrics.json] [--no-fcd] [--largest-fragment]

``generate`` writes the molecules by the output's extension: SDF (RDKit 2-D coordinates for string
and 2-D models, the model's coordinates for 3-D ones), SMILES (one per line) or CSV (a ``smiles``
column); every record is checked to read back as a valid molecule before it is written, so no
invalid record is ever written. Next to FILE it writes ``<stem>.png`` (an RDKit grid of the first
molecules) and ``<stem>.metrics.json``: the metrics of the file *as written*, read back with the same
reader as ``evaluate molecules`` (so the two commands agree), against the model's training set
(novelty) and reference set (FCD, SNN, ...). Models come from the ``GENERATORS`` registry; other code
adds entries (``register_generator``).

``evaluate`` takes a SMILES (.smi/.txt/.csv) or SDF file. Unparsable records are counted as invalid and
reported (never dropped silently). The metrics table is printed; ``--out`` also writes it as JSON.
"""
from __future__ import annotations

import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

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
    _print_table(res)
    if args.out:
        out = Path(args.out)
        _write_json(out, res)
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _print_table(res: Dict[str, Any]) -> None:
    width = max(len(k) for k in res)
    for key, val in res.items():
        txt = (f"{val:.4f}" if isinstance(val, float) and not math.isnan(val) else str(val))
        print(f"{key:<{width}}  {txt}")


def _write(path: Path, data: bytes) -> None:
    """Atomic write, then the usual permissions of a user's file (umask applied; mkstemp makes 0600)."""
    import os
    from polydiff.domains.molecules.data import atomic_write_bytes
    atomic_write_bytes(Path(path), data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _write_json(path: Path, res: Dict[str, Any]) -> None:
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in res.items()}
    _write(Path(path), (json.dumps(clean, indent=2) + "\n").encode())


# ------------------------------------------------------------------ generate
@dataclass
class MoleculeGenerator:
    """A registry entry of ``polydiff generate molecules --model NAME``.

    load() returns an object with ``generate(n, steps=..., seed=..., guidance=...)`` returning n
    SMILES strings or RDKit molecules (with a conformer for 3-D models); ``train`` / ``reference``
    name the data sets for novelty and FCD/SNN/... (as ``metrics.evaluate`` accepts them);
    ``three_d``: the SDF keeps the molecules' own coordinates instead of 2-D depictions;
    ``guidance``: the names ``--guidance`` accepts; ``conditions``: the properties ``--condition`` accepts
    (passed as ``generate(..., condition={name: [value] * n}, guidance_scale=w)``)."""
    load: Callable[[], Any]
    help: str
    train: Optional[str] = None
    reference: Optional[str] = None
    three_d: bool = False
    guidance: Sequence[str] = ()
    conditions: Sequence[str] = ()


def _load_selfies() -> Any:
    from polydiff.domains.molecules.selfies_model import pretrained
    return pretrained("moses-selfies")


def _load_qm9_2d() -> Any:
    from polydiff.domains.molecules.graph_model import pretrained
    return pretrained("qm9-2d")


def _load_qm9_2d_alpha() -> Any:
    from polydiff.domains.molecules.graph_model import pretrained
    return pretrained("qm9-2d-alpha")


def _load_qm9_3d() -> Any:
    from polydiff.domains.molecules.edm import pretrained
    return pretrained("qm9-3d")


GENERATORS: Dict[str, MoleculeGenerator] = {
    "moses-selfies": MoleculeGenerator(_load_selfies, "SELFIES masked diffusion (MDLM) trained on MOSES",
                                       train="moses", reference="moses", guidance=("qed",)),
    "qm9-2d": MoleculeGenerator(_load_qm9_2d, "DiGress 2-D graph diffusion trained on QM9 heavy atoms",
                                train="qm9", reference="qm9"),
    "qm9-2d-alpha": MoleculeGenerator(_load_qm9_2d_alpha, "qm9-2d conditioned on polarizability alpha (Bohr^3), "
                                      "classifier-free", train="qm9", reference="qm9", conditions=("alpha",)),
    "qm9-3d": MoleculeGenerator(_load_qm9_3d, "EDM 3-D diffusion (EGNN, coordinates + atom types) on QM9 with H; under-trained "
                                "(62 CPU-min: 1.5 % molecule stability, EDM 82 %)",
                                train="qm9", reference="qm9", three_d=True),
}
OUTPUT_FORMATS = (".sdf", ".smi", ".csv")


def register_generator(name: str, generator: MoleculeGenerator) -> None:
    """Add a model to ``polydiff generate molecules --model`` (e.g. ``qm9-3d``)."""
    if not isinstance(generator, MoleculeGenerator):
        raise ValueError(f"generator must be a MoleculeGenerator, got {type(generator).__name__}")
    GENERATORS[name] = generator


def _as_mols(items: Sequence[Any]) -> List[Any]:
    """Sanitized RDKit molecules of generated SMILES / molecules (None where RDKit rejects one)."""
    from polydiff.domains.molecules.metrics import _to_mol
    return [_to_mol(x) for x in items]


def _checked_record(mol: Any, fmt: str, three_d: bool) -> Optional[str]:
    """The text of one output record, or None when it would not read back as a valid molecule."""
    from rdkit import Chem
    from rdkit.Chem import rdDepictor
    if mol is None:
        return None
    if fmt == ".sdf":
        m = Chem.Mol(mol)
        if not (three_d and m.GetNumConformers()):
            m.RemoveAllConformers()
            rdDepictor.Compute2DCoords(m)
        block = Chem.MolToMolBlock(m)
        back = Chem.MolFromMolBlock(block, sanitize=True, removeHs=False)
        return block + "$$$$\n" if back is not None and back.GetNumAtoms() == m.GetNumAtoms() else None
    smi = Chem.MolToSmiles(mol)
    back = Chem.MolFromSmiles(smi) if smi else None
    return smi if back is not None else None


def write_molecules(path: Path, mols: Sequence[Any], three_d: bool = False) -> Dict[str, int]:
    """Write molecules by extension (.sdf, .smi, .csv), atomically; a molecule whose record would not
    read back as a valid molecule is left out and counted (``n_not_written``)."""
    from rdkit import RDLogger
    path = Path(path)
    fmt = path.suffix.lower()
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"--out must end in one of {', '.join(OUTPUT_FORMATS)}, got {str(path)!r}")
    RDLogger.DisableLog("rdApp.*")
    try:
        records = [_checked_record(m, fmt, three_d) for m in mols]
    finally:
        RDLogger.EnableLog("rdApp.*")
    good = [r for r in records if r is not None]
    if not good:
        raise ValueError("no generated molecule could be written as a valid record")
    if fmt == ".csv":
        text = "smiles\n" + "".join(r + "\n" for r in good)
    else:
        text = "".join(r if fmt == ".sdf" else r + "\n" for r in good)
    _write(path, text.encode())
    return {"n_written": len(good), "n_not_written": len(records) - len(good)}


def save_grid_image(path: Path, mols: Sequence[Any], n: int = 20, per_row: int = 5) -> Optional[Path]:
    """An RDKit drawing of the first ``n`` molecules as a PNG grid (None when none is drawable)."""
    from rdkit import Chem
    from rdkit.Chem import Draw
    show = [Chem.Mol(m) for m in mols if m is not None][:n]
    if not show:
        return None
    for m in show:
        m.RemoveAllConformers()
    img = Draw.MolsToGridImage(show, molsPerRow=min(per_row, len(show)), subImgSize=(220, 180),
                               legends=[str(i + 1) for i in range(len(show))])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    _write(Path(path), buf.getvalue())
    return Path(path)


def _parse_conditions(items: Optional[Sequence[str]], spec: MoleculeGenerator, model: str) -> Dict[str, float]:
    """``--condition NAME=VALUE`` options as {name: value}, checked against the model's properties."""
    out: Dict[str, float] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--condition takes NAME=VALUE (e.g. alpha=80), got {item!r}")
        if name not in spec.conditions:
            raise ValueError(f"model {model!r} takes --condition {', '.join(spec.conditions) or '(none)'}; "
                             f"got {name!r}")
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"--condition {name}: {value!r} is not a number") from None
        if not math.isfinite(v):
            raise ValueError(f"--condition {name} must be finite, got {value!r}")
        out[name] = v
    missing = [c for c in spec.conditions if c not in out]
    if out and missing:
        raise ValueError(f"model {model!r} needs --condition for each of {', '.join(spec.conditions)}")
    return out


def _generate(args) -> int:
    """Handler of ``polydiff generate molecules``."""
    import torch
    from polydiff.domains.molecules import data, metrics
    if args.model not in GENERATORS:
        raise ValueError(f"unknown model {args.model!r}; valid: {', '.join(sorted(GENERATORS))}")
    if isinstance(args.n, bool) or args.n < 1:
        raise ValueError(f"-n must be >= 1, got {args.n}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    out = Path(args.out)
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise ValueError(f"--out must end in one of {', '.join(OUTPUT_FORMATS)}, got {args.out!r}")
    if not out.parent.is_dir():
        raise ValueError(f"the output folder {str(out.parent)!r} does not exist")
    spec = GENERATORS[args.model]
    if args.guidance is not None and args.guidance not in spec.guidance:
        raise ValueError(f"model {args.model!r} supports --guidance {', '.join(spec.guidance) or '(none)'}; "
                         f"got {args.guidance!r}")
    condition = _parse_conditions(args.condition, spec, args.model)
    if args.guidance_scale is not None and not condition:
        raise ValueError("--guidance-scale needs --condition (classifier-free guidance of a conditional model)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = spec.load()
    t0 = time.time()
    kwargs: Dict[str, Any] = {"steps": args.steps, "seed": args.seed}
    if args.guidance is not None:
        kwargs["guidance"] = args.guidance
    if condition:
        kwargs["condition"] = {k: [v] * args.n for k, v in condition.items()}
        kwargs["guidance_scale"] = 1.0 if args.guidance_scale is None else args.guidance_scale
    items = model.generate(args.n, **kwargs)
    seconds = time.time() - t0
    mols = _as_mols(items)
    counts = write_molecules(out, mols, spec.three_d)
    print(f"wrote {counts['n_written']} molecules to {out}"
          + (f" ({counts['n_not_written']} invalid ones left out)" if counts["n_not_written"] else ""),
          file=sys.stderr)
    png = save_grid_image(out.with_name(out.stem + ".png"), mols, n=args.grid)
    if png is not None:
        print(f"wrote {png}", file=sys.stderr)
    info: Dict[str, Any] = {"model": args.model, "seed": args.seed, "steps": args.steps, "guidance": args.guidance,
                            "n_requested": args.n, "n_generated": len(items), **counts,
                            "sampling_seconds": round(seconds, 1)}
    if condition:
        info["condition"] = condition
        info["guidance_scale"] = kwargs["guidance_scale"]
    stats = getattr(model, "last_stats", None) or {}
    if "redrawn" in stats:
        info["n_redrawn"] = int(stats["redrawn"])
    for key in ("atom_stability", "mol_stability"):        # 3-D models: EDM's stability over ALL samples,
        if key in stats:                                   # invalid ones included (the file holds valid ones)
            info[f"{key}_all_samples"] = float(stats[key])
    res: Dict[str, Any] = dict(info)
    if not args.no_metrics:
        back, _, report = data.read_molecules(out)        # the file as written, as `evaluate molecules` reads it
        res["n_unparsable"] = report.n_skipped
        res.update(metrics.evaluate(back, reference=spec.reference, train=spec.train, fcd_metric=not args.no_fcd,
                                    cache_dir=args.cache_dir))
        _print_table(res)
    mpath = out.with_name(out.stem + ".metrics.json")
    res["file"] = str(out)
    _write_json(mpath, res)
    print(f"wrote {mpath}", file=sys.stderr)
    return 0


def _generate_graphs(args) -> int:
    """Handler of ``polydiff generate graphs``: graph6 file plus metrics JSON against the data set."""
    import networkx as nx
    import torch
    from polydiff.domains.molecules import graph_metrics, synthetic_graphs as sg
    out = Path(args.out)
    if out.suffix != ".g6":
        raise ValueError(f"--out must be a .g6 file (graph6, one graph per line), got {args.out!r}")
    if args.n < 1 or args.steps < 1:
        raise ValueError(f"-n and --steps must be >= 1, got {args.n}, {args.steps}")
    ds = sg.load(args.dataset)
    model = sg.SyntheticGraphModel.load(args.model_dir) if args.model_dir else sg.pretrained(args.dataset)
    t0 = time.time()
    graphs = model.sample(args.n, steps=args.steps, generator=torch.Generator().manual_seed(args.seed))
    seconds = time.time() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(nx.to_graph6_bytes(g, header=False).decode("ascii") for g in graphs))
    protocol = "gdss" if ds.params.get("family") == "community" else "spectre"
    scores = graph_metrics.evaluate(graphs, ds.test, ds.train, family=ds.params, protocol=protocol)
    report = {"dataset": args.dataset, "model": args.model_dir or f"pretrained({args.dataset})", "steps": args.steps,
              "seed": args.seed, "sampling_seconds": round(seconds, 2), "protocol": protocol,
              "reference": f"test split ({len(ds.test)} graphs)", **scores}
    metrics_file = out.with_name(out.stem + ".metrics.json")
    metrics_file.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {len(graphs)} graphs to {out} and {metrics_file}: valid {scores['valid']:.3f}, unique "
          f"{scores['unique']:.3f}, novel {scores['novel']:.3f}; MMD degree {scores['degree']:.4f}")
    return 0


def add_commands(verbs: Dict[str, Any]) -> None:
    """Register ``polydiff evaluate molecules`` and ``polydiff generate molecules``."""
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

    g = verbs["generate"]("molecules", help="generate molecules with a shipped model (SDF, SMILES or CSV)",
                          description="Generate molecules, write them by extension (.sdf with RDKit 2-D coordinates "
                                      "for string/graph models, .smi, .csv), an image grid <stem>.png and the "
                                      "metrics <stem>.metrics.json.")
    g.add_argument("-n", type=int, default=1000, help="number of molecules (default 1000)")
    g.add_argument("--model", default="moses-selfies", choices=sorted(GENERATORS),
                   help="shipped model (default moses-selfies): "
                        + "; ".join(f"{name}: {spec.help}" for name, spec in sorted(GENERATORS.items())).replace("%", "%%"))
    g.add_argument("--out", required=True, help="output file: .sdf, .smi or .csv")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default: the model's exact sampler; SELFIES: first-hitting)")
    g.add_argument("--guidance", default=None, help="reward guidance, e.g. 'qed' (SVDD toward higher QED)")
    g.add_argument("--condition", action="append", default=None, metavar="NAME=VALUE",
                   help="property target of a conditional model, e.g. alpha=80 (Bohr^3) for qm9-2d-alpha; "
                        "without it a conditional model samples unconditionally")
    g.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale with --condition (default 1: the conditional model)")
    g.add_argument("--grid", type=int, default=20, help="molecules in the PNG grid (default 20)")
    g.add_argument("--no-metrics", action="store_true", help="skip the metrics (the JSON then holds run info only)")
    g.add_argument("--no-fcd", action="store_true", help="skip FCD (the slowest metric)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--cache-dir", default=None, help="cache folder (default ~/.cache/polydiff/molecules)")
    g.set_defaults(func=_generate)

    gg = verbs["generate"]("graphs", help="generate graphs of a synthetic family (graph6) and score them",
                           description="Sample graphs from a 2-D graph diffusion model of a synthetic family "
                                       "(polydiff.domains.molecules.synthetic_graphs), write them as graph6 "
                                       "(one per line) and <stem>.metrics.json: degree, clustering, orbit and "
                                       "spectral MMD^2 against the family's test split, valid, unique, novel.")
    gg.add_argument("-n", type=int, default=20, help="number of graphs (default 20, the test split's size)")
    gg.add_argument("--dataset", default="community-small", choices=["community-small", "sbm", "sbm-small", "planar",
                                                                     "planar-small"],
                    help="graph family (default community-small; the only one with a shipped model)")
    gg.add_argument("--model-dir", default=None, help="a saved model folder (default: the shipped model of --dataset)")
    gg.add_argument("--out", required=True, help="output .g6 file")
    gg.add_argument("--steps", type=int, default=500, help="ancestral sampling steps (default 500, DiGress's)")
    gg.add_argument("--seed", type=int, default=0)
    gg.set_defaults(func=_generate_graphs)
