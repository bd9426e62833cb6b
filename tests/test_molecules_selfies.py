"""SELFIES masked-diffusion molecule model, `polydiff generate molecules`, and their bad inputs."""
import json
import math

import pytest
import torch
from rdkit import Chem

from polydiff.core import discrete
from polydiff.domains.molecules.convert import SelfiesTokenizer, mol_to_selfies
from polydiff.domains.molecules.selfies_model import SelfiesDenoiser, SelfiesModel, pretrained
from polydiff.tasks import cli
from polydiff.tasks import molecules as task

torch.set_num_threads(1)

# a MOSES-like SELFIES alphabet (every symbol of it occurs in MOSES train)
ALPHABET = ["[C]", "[=C]", "[#C]", "[N]", "[=N]", "[O]", "[=O]", "[S]", "[F]", "[Cl]", "[Br]", "[Branch1]",
            "[=Branch1]", "[#Branch1]", "[Ring1]", "[=Ring1]", "[Ring2]"]
MOLS = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(Cl)cc1", "O=C1CCCN1", "FC(F)(F)c1ccncc1"]


def tiny(length: int = 16, seed: int = 0) -> SelfiesModel:
    torch.manual_seed(seed)
    return SelfiesModel(SelfiesTokenizer(ALPHABET), length, hidden=16, depth=1, heads=2, freq_dim=16)


def trained_ish(seed: int = 0) -> SelfiesModel:
    """A tiny model whose output layer is randomised, so that its logits are not all zero."""
    m = tiny(seed=seed)
    with torch.no_grad():
        for p in m.net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
    return m


# ------------------------------------------------------------------ model
def test_shapes_and_token_range():
    m = tiny()
    V = m.vocab_size
    assert V == len(ALPHABET) + 1 and m.tokenizer.symbols[0] == "[nop]" and m.process.mask_id == V
    x = torch.randint(0, V + 1, (3, 16))
    out = m.net(x, torch.rand(3, dtype=torch.float64))
    assert out.shape == (3, 16, V) and out.dtype == torch.float32
    g = torch.Generator().manual_seed(0)
    for steps in (None, 5):
        toks = m.sample_tokens(7, steps=steps, generator=g)
        assert toks.shape == (7, 16) and toks.dtype == torch.int64
        assert int(toks.min()) >= 0 and int(toks.max()) < V          # no mask ids left


def test_fresh_model_elbo_is_uniform_code_length():
    # the fresh DiT outputs exactly zero logits: p(x0 | x_t) is uniform over the V symbols, and MDLM's
    # continuous ELBO is then E_t[(1/t) * #masked * log V] = L log V for any data
    m = tiny(length=24)
    x0 = m.encode([mol_to_selfies(s) for s in MOLS] * 40)
    assert torch.equal(m.net(x0, torch.full((x0.shape[0],), 0.5)), torch.zeros(x0.shape + (m.vocab_size,)))
    loss = discrete.ContinuousELBO(m.process, time_sampler="stratified")
    with torch.no_grad():
        vals = torch.cat([loss.nelbo(m.net, x0, generator=torch.Generator().manual_seed(k)) for k in range(5)])
    expect = m.length * math.log(m.vocab_size)
    se = float(vals.std()) / math.sqrt(vals.numel())
    assert abs(float(vals.mean()) - expect) < 4 * se + 1e-9


def test_every_generated_string_is_a_valid_molecule():
    for m, steps in ((tiny(), None), (trained_ish(1), 6)):
        smiles = m.generate(60, steps=steps, seed=3, batch_size=25)
        assert len(smiles) == 60
        for s in smiles:
            mol = Chem.MolFromSmiles(s)
            assert s and mol is not None and mol.GetNumAtoms() >= 1
            assert Chem.MolToSmiles(mol) == s                      # canonical SMILES
        assert m.last_stats["n"] == 60


def test_generate_is_reproducible_by_seed():
    m = trained_ish(2)
    a = m.generate(10, steps=4, seed=5)
    assert a == m.generate(10, steps=4, seed=5)
    assert a != m.generate(10, steps=4, seed=6)


def test_padding_round_trip_and_nop_anywhere():
    m = tiny(length=48)
    sf = [mol_to_selfies(s) for s in MOLS]
    toks = m.encode(sf)
    assert toks.shape == (len(MOLS), 48)
    for row, s in zip(toks, sf):
        n = len(m.tokenizer.tokens(s))
        assert (row[n:] == 0).all() and (row[:n] != 0).all()         # padding is trailing [nop] = id 0
    want = [Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in MOLS]
    assert m.decode(toks) == want
    # [nop] in the middle is skipped (SELFIES's rule), so it never breaks decoding
    row = toks[2].clone()
    n = int((row != 0).sum())
    spread = torch.zeros_like(row)
    spread[torch.arange(n) * 2] = row[:n]                        # a [nop] after every symbol
    assert m.decode(spread[None]) == [want[2]]
    assert m.decode(torch.zeros(1, 48, dtype=torch.long)) == [None]   # all padding: no molecule


def test_generate_redraws_rows_without_a_molecule():
    class Scripted(SelfiesModel):
        calls = 0

        def sample_tokens(self, n, steps=None, generator=None, guidance=None, num_candidates=8, temperature=1.0):
            Scripted.calls += 1
            toks = super().sample_tokens(n, steps, generator, guidance, num_candidates, temperature)
            if Scripted.calls == 1:
                toks[::2] = 0                                       # half the first batch is all padding
            return toks

    base = tiny()
    m = Scripted(base.tokenizer, base.length, hidden=16, depth=1, heads=2, freq_dim=16, net=base.net)
    out = m.generate(10, steps=3, seed=0)
    assert len(out) == 10 and all(Chem.MolFromSmiles(s) is not None for s in out)
    assert m.last_stats["redrawn"] == 5 and Scripted.calls == 2


def test_qed_reward_guidance_raises_qed():
    from rdkit.Chem.QED import qed
    m = tiny(length=24)          # uniform over symbols: diverse molecules to choose from
    mean_qed = lambda smi: sum(qed(Chem.MolFromSmiles(s)) for s in smi) / len(smi)  # noqa: E731
    plain = m.generate(24, steps=4, seed=0)
    guided = m.generate(24, steps=4, seed=0, guidance="qed", num_candidates=6)
    assert all(Chem.MolFromSmiles(s) is not None for s in guided)
    assert mean_qed(guided) > mean_qed(plain) + 0.05
    # a callable reward on SMILES works the same way: guide toward more atoms
    atoms = lambda smi: [0.0 if s is None else float(Chem.MolFromSmiles(s).GetNumAtoms()) for s in smi]  # noqa: E731
    big = m.generate(24, steps=4, seed=0, guidance=atoms, num_candidates=6)
    assert sum(atoms(big)) > sum(atoms(plain))


def test_save_load_round_trip(tmp_path):
    m = trained_ish(5)
    m.save(tmp_path / "m", extra={"note": "test"})
    back = SelfiesModel.load(tmp_path / "m")
    assert back.config() == m.config() and back.tokenizer.symbols == m.tokenizer.symbols
    x = torch.randint(0, m.vocab_size + 1, (4, m.length))
    t = torch.rand(4)
    assert torch.equal(back.net(x, t), m.net.eval()(x, t))
    assert back.generate(5, steps=3, seed=1) == m.generate(5, steps=3, seed=1)


def test_shipped_model_generates_valid_moses_like_molecules():
    m = pretrained("moses-selfies")
    assert m.tokenizer.symbols[0] == "[nop]" and {"[C]", "[=O]", "[Cl]", "[Ring1]"} <= set(m.tokenizer.symbols)
    smiles = m.generate(8, steps=6, seed=0)
    mols = [Chem.MolFromSmiles(s) for s in smiles]
    assert all(x is not None for x in mols)
    allowed = {"C", "N", "S", "O", "F", "Cl", "Br", "P", "H"}
    assert all({a.GetSymbol() for a in x.GetAtoms()} <= allowed for x in mols)


def test_bad_inputs():
    m = tiny()
    with pytest.raises(ValueError, match="unknown pretrained"):
        pretrained("nope")
    with pytest.raises(ValueError, match="token ids"):
        m.net(torch.full((1, 16), m.vocab_size + 1), torch.rand(1))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        m.net(torch.zeros(16, dtype=torch.long), torch.rand(1))
    with pytest.raises(ValueError, match="token ids"):
        m.decode(torch.full((1, 16), m.vocab_size))                # a mask id is not a symbol
    with pytest.raises(ValueError, match="n must be"):
        m.generate(0)
    with pytest.raises(ValueError, match="steps must be"):
        m.generate(2, steps=0)
    with pytest.raises(ValueError, match="unknown reward 'logp'; valid: qed"):
        m.generate(2, steps=2, guidance="logp")
    with pytest.raises(ValueError, match="length 16"):
        m.encode([mol_to_selfies("CCCCCCCCCCCCCCCCCCCC")])            # longer than the model
    with pytest.raises(ValueError, match="not in the alphabet"):
        m.encode(["[I]"])
    with pytest.raises(ValueError, match="vocab_size"):
        SelfiesDenoiser(1)
    with pytest.raises(ValueError, match="holds no SELFIES model"):
        SelfiesModel.load("/nonexistent")


# ------------------------------------------------------------------ CLI
@pytest.fixture
def tiny_generator(monkeypatch):
    model = trained_ish(6)
    monkeypatch.setitem(task.GENERATORS, "tiny", task.MoleculeGenerator(lambda: model, "tiny test model",
                                                                       guidance=("qed",)))
    return model


def _canon(smiles):
    return [Chem.MolToSmiles(Chem.MolFromSmiles(s), isomericSmiles=False) for s in smiles]


@pytest.mark.parametrize("ext", [".sdf", ".smi", ".csv"])
def test_cli_generate_writes_valid_files(tmp_path, tiny_generator, ext):
    out = tmp_path / f"mols{ext}"
    rc = cli.main(["generate", "molecules", "-n", "12", "--model", "tiny", "--steps", "4", "--seed", "1",
                   "--out", str(out), "--no-fcd"])
    assert rc == 0
    expect = tiny_generator.generate(12, steps=4, seed=1)
    if ext == ".sdf":
        mols = list(Chem.SDMolSupplier(str(out)))
        assert len(mols) == 12 and all(x is not None for x in mols)
        for x in mols:                                           # RDKit 2-D depiction coordinates
            conf = x.GetConformer()
            assert not conf.Is3D() and conf.GetPositions()[:, :2].std() > 0 or x.GetNumAtoms() == 1
        got = [Chem.MolToSmiles(x) for x in mols]
    elif ext == ".smi":
        got = out.read_text().splitlines()
    else:
        lines = out.read_text().splitlines()
        assert lines[0] == "smiles"
        got = lines[1:]
    assert len(got) == 12 and all(Chem.MolFromSmiles(s) is not None for s in got)
    assert _canon(got) == _canon(expect)
    assert (tmp_path / "mols.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((tmp_path / "mols.metrics.json").read_text())
    can = _canon(got)                                            # independent validity / uniqueness
    assert res["n"] == 12 and res["n_valid"] == 12 and res["validity"] == 1.0 and res["n_unparsable"] == 0
    assert res["uniqueness"] == pytest.approx(len(set(can)) / 12)
    assert res["n_written"] == 12 and res["model"] == "tiny" and "IntDiv" in res


def test_cli_generate_guided_and_no_metrics(tmp_path, tiny_generator):
    out = tmp_path / "g.smi"
    assert cli.main(["generate", "molecules", "-n", "6", "--model", "tiny", "--steps", "3", "--guidance", "qed",
                     "--out", str(out), "--no-metrics"]) == 0
    res = json.loads((tmp_path / "g.metrics.json").read_text())
    assert res["guidance"] == "qed" and "validity" not in res and len(out.read_text().splitlines()) == 6


def test_write_molecules_never_writes_an_invalid_record(tmp_path):
    bad = Chem.MolFromSmiles("C(C)(C)(C)(C)C", sanitize=False)     # pentavalent carbon
    good = Chem.MolFromSmiles("CCO")
    for ext in (".sdf", ".smi", ".csv"):
        counts = task.write_molecules(tmp_path / f"w{ext}", [good, bad, None, good])
        assert counts == {"n_written": 2, "n_not_written": 2}
    assert [Chem.MolToSmiles(m) for m in Chem.SDMolSupplier(str(tmp_path / "w.sdf"))] == ["CCO", "CCO"]
    with pytest.raises(ValueError, match="no generated molecule"):
        task.write_molecules(tmp_path / "x.smi", [None, bad])


def test_cli_generate_bad_inputs(tmp_path, tiny_generator, capsys):
    base = ["generate", "molecules", "--model", "tiny"]
    assert cli.main(base + ["-n", "3", "--out", str(tmp_path / "m.pdb")]) == 2
    assert ".sdf, .smi, .csv" in capsys.readouterr().err
    assert cli.main(base + ["-n", "0", "--out", str(tmp_path / "m.smi")]) == 2
    assert "-n must be >= 1" in capsys.readouterr().err
    assert cli.main(base + ["-n", "2", "--steps", "0", "--out", str(tmp_path / "m.smi")]) == 2
    assert cli.main(base + ["-n", "2", "--guidance", "logp", "--out", str(tmp_path / "m.smi")]) == 2
    assert "supports --guidance qed" in capsys.readouterr().err
    assert cli.main(base + ["-n", "2", "--out", str(tmp_path / "no" / "m.smi")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:                          # argparse: unknown model name
        cli.main(["generate", "molecules", "--model", "qm9-nope", "-n", "2", "--out", str(tmp_path / "m.smi")])
    assert e.value.code == 2
    assert "moses-selfies" in capsys.readouterr().err
    assert not list(tmp_path.glob("m.*"))                          # nothing written on bad input


def test_registry_is_extensible():
    assert "moses-selfies" in task.GENERATORS
    with pytest.raises(ValueError, match="MoleculeGenerator"):
        task.register_generator("x", object())


def test_training_script_trains_exports_and_continues_with_the_saved_alphabet(tmp_path, capsys):
    """train_selfies exports a loadable model; ``--init`` keeps that model's alphabet and length on a new
    subset and drops exactly the molecules it cannot encode; a different architecture is refused."""
    from polydiff.domains.molecules import train_selfies
    small = ["--steps", "2", "--batch", "8", "--hidden", "16", "--depth", "1", "--heads", "2", "--save-every", "1",
             "--cache-dir", str(tmp_path / "cache")]
    first = tmp_path / "first"
    assert train_selfies.main(["--out", str(first), "--molecules", "60", "--seed", "0", *small]) == 0
    m = SelfiesModel.load(first)
    assert json.loads((first / "config.json").read_text())["train"]["step"] == 2
    new = train_selfies.encode_moses(300, 1, str(tmp_path / "cache"))
    cannot = sum(1 for s in new if len(m.tokenizer.tokens(s)) > m.length
                 or any(t not in m.tokenizer.ids for t in m.tokenizer.tokens(s)))
    assert cannot > 0                   # 60 molecules do not cover 300 others' alphabet and lengths
    capsys.readouterr()
    second = tmp_path / "second"
    assert train_selfies.main(["--out", str(second), "--molecules", "300", "--seed", "1", "--init", str(first),
                               *small]) == 0
    assert f"{cannot} of {len(new)} molecules dropped" in capsys.readouterr().err
    m2 = SelfiesModel.load(second)
    assert m2.tokenizer.symbols == m.tokenizer.symbols and m2.length == m.length
    with pytest.raises(ValueError, match="must match"):
        train_selfies.main(["--out", str(tmp_path / "bad"), "--molecules", "60", "--init", str(first),
                            *small[:4], "--hidden", "32", "--depth", "1", "--heads", "2", "--cache-dir",
                            str(tmp_path / "cache")])
