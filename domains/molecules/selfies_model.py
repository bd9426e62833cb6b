"""A SELFIES masked-diffusion molecule generator (MDLM on SELFIES tokens).

The model is MDLM (Sahoo et al., "Simple and Effective Masked Diffusion Language Models", NeurIPS
2024) on SELFIES strings (Krenn et al., "Self-referencing embedded strings (SELFIES)", Mach. Learn.:
Sci. Technol. 2020), built from the core's pieces exactly as ``notebooks/new_domain_text.ipynb`` builds
its character model: ``discrete.Masked`` (linear schedule, mask id V), ``discrete.ContinuousELBO``, the
core's 1-D DiT over one-hot tokens, and the core samplers (``first_hitting`` by default, ``ancestral``
with a step count, ``svdd`` for reward guidance).

**Tokens.** Id 0 is SELFIES's ``[nop]`` symbol, used as padding: every molecule is written as its
SELFIES symbols followed by ``[nop]`` up to the model's fixed length L, and the model learns where
padding goes like any other symbol (variable length without a length model). Decoding drops every
``[nop]`` wherever it stands (SELFIES's own rule: ``[nop]`` is skipped), so a sampled row is always a
string of valid SELFIES symbols and decodes to a valid molecule. The one failure left is a row whose
symbols produce no atom (e.g. all padding): ``generate`` redraws such rows (and, defensively, any row
RDKit rejects) and counts the redraws in ``last_stats``.

**Reward guidance.** ``generate(..., guidance="qed")`` runs the core's SVDD solver (Li et al.,
"Derivative-Free Guidance in Continuous and Discrete Diffusion Models with Soft Value-Based
Decoding", 2024) with QED (Bickerton et al., Nature Chem. 2012) of the decoded molecule as the
black-box reward: no gradients, no retraining.

``pretrained("moses-selfies")`` loads the model shipped in ``weights/moses-selfies`` (trained by
``python -m polydiff.domains.molecules.train_selfies``; see the README.md there).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from polydiff.core import discrete, nets
from polydiff.core.training.files import read_model_folder, write_model_folder

from .shipped import WEIGHTS_DIR, shipped_folder
from .convert import SelfiesTokenizer

PRETRAINED = {"moses-selfies": "MDLM on SELFIES of MOSES train (C N S O F Cl Br), trained on CPU; see its README.md"}
REWARDS = ("qed",)
_CONFIG_KEYS = ("symbols", "length", "hidden", "depth", "heads", "mlp_ratio", "freq_dim", "schedule")


class SelfiesDenoiser(torch.nn.Module):
    """D(x_t, t) -> logits (B, L, V) over the V SELFIES symbols: the core's DiT (1-D, patch 1) on
    one-hot tokens of the V + 1 states (the mask id is V)."""

    def __init__(self, vocab_size: int, hidden: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0,
                 freq_dim: int = 64) -> None:
        super().__init__()
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an integer >= 2 (padding plus one symbol), got {vocab_size!r}")
        self.vocab_size = vocab_size
        self.dit = nets.DiT(dims=1, in_channels=vocab_size + 1, out_channels=vocab_size, patch_size=1,
                            hidden=hidden, depth=depth, heads=heads, mlp_ratio=mlp_ratio, freq_dim=freq_dim)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        if x_t.dim() != 2:
            raise ValueError(f"tokens must have shape (B, L), got {tuple(x_t.shape)}")
        if x_t.numel() and (int(x_t.min()) < 0 or int(x_t.max()) > self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}] (mask id {self.vocab_size}), got range "
                             f"[{int(x_t.min())}, {int(x_t.max())}]")
        dtype = self.dit.patchify.weight.dtype
        h = F.one_hot(x_t.long(), self.vocab_size + 1).to(dtype).transpose(1, 2)   # (B, V + 1, L)
        return self.dit(h, t.to(dtype)).transpose(1, 2)                             # (B, L, V)


def _qed_of(smiles: Optional[str]) -> float:
    from rdkit import Chem
    from rdkit.Chem.QED import qed
    if not smiles:
        return 0.0
    m = Chem.MolFromSmiles(smiles)
    return float(qed(m)) if m is not None else 0.0


class SelfiesModel:
    """A SELFIES masked-diffusion model: tokenizer, network and masked process.

    ``generate(n)`` returns n canonical SMILES, all valid; ``sample_tokens`` the raw token rows;
    ``save`` / ``load`` a folder with ``config.json`` and ``model.safetensors``."""

    def __init__(self, tokenizer: SelfiesTokenizer, length: int, hidden: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0, freq_dim: int = 64, schedule: str = "linear",
                 net: Optional[SelfiesDenoiser] = None) -> None:
        if not isinstance(tokenizer, SelfiesTokenizer):
            raise ValueError(f"tokenizer must be a SelfiesTokenizer, got {type(tokenizer).__name__}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be an integer >= 1, got {length!r}")
        self.tokenizer, self.length = tokenizer, length
        self.arch = {"hidden": int(hidden), "depth": int(depth), "heads": int(heads), "mlp_ratio": float(mlp_ratio),
                     "freq_dim": int(freq_dim), "schedule": str(schedule)}
        self.process = discrete.Masked(len(tokenizer), schedule=schedule)
        self.net = net if net is not None else SelfiesDenoiser(len(tokenizer), hidden, depth, heads, mlp_ratio, freq_dim)
        if self.net.vocab_size != len(tokenizer):
            raise ValueError(f"network vocabulary {self.net.vocab_size} != tokenizer's {len(tokenizer)}")
        self.last_stats: Dict[str, int] = {}

    # ------------------------------------------------------------------ data
    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, selfies: Sequence[str]) -> Tensor:
        """(B, L) token ids of SELFIES strings, padded with ``[nop]`` (id 0) to the model's length."""
        return self.tokenizer.encode(list(selfies), length=self.length)

    def decode(self, tokens: Tensor) -> List[Optional[str]]:
        """Canonical SMILES of token rows (padding dropped wherever it stands); None for a row that
        yields no molecule (no atom, or rejected by RDKit)."""
        from .convert import canonical_smiles, selfies_to_mol
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (B, L), got {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}) (no mask ids left), got range "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        out: List[Optional[str]] = []
        for s in self.tokenizer.decode(tokens.cpu()):
            try:
                out.append(canonical_smiles(selfies_to_mol(s)) if s else None)
            except ValueError:
                out.append(None)
        return out

    # ------------------------------------------------------------------ sampling
    def denoiser(self) -> SelfiesDenoiser:
        return self.net.eval()

    @torch.no_grad()
    def sample_tokens(self, n: int, steps: Optional[int] = None, generator: Optional[torch.Generator] = None,
                      guidance: Union[None, str, Callable[[List[Optional[str]]], Sequence[float]]] = None,
                      num_candidates: int = 8, temperature: float = 1.0) -> Tensor:
        """(n, L) token rows from the model. ``steps=None``: the exact first-hitting sampler (one network
        call per token); an integer: MDLM's ancestral sampler on a uniform grid of that many steps.
        ``guidance``: None, ``"qed"`` or a callable on lists of SMILES (None for no molecule) -> rewards,
        which switches to SVDD (needs ``steps``; default 32 when None) with ``num_candidates`` per step."""
        n = _check_count(n, "n")
        if steps is not None:
            steps = _check_count(steps, "steps")
        x1 = self.process.prior_sample((n, self.length), generator=generator)
        D = self.denoiser()
        opts: Dict[str, Any] = {}
        if temperature != 1.0:
            opts["temperature"] = temperature
        if guidance is not None:
            reward = self.reward(guidance)
            return discrete.sample_discrete(D, x1, process=self.process, solver="svdd", steps=steps or 32,
                                            generator=generator, reward=reward, num_candidates=num_candidates, **opts)
        if steps is None:
            return discrete.sample_discrete(D, x1, process=self.process, solver="first_hitting", generator=generator,
                                            **opts)
        return discrete.sample_discrete(D, x1, process=self.process, solver="ancestral", steps=steps,
                                        generator=generator, **opts)

    def reward(self, guidance: Union[str, Callable[[List[Optional[str]]], Sequence[float]]]
               ) -> Callable[[Tensor], Tensor]:
        """The token-level reward (N, L) -> (N,) of a named reward (``"qed"``) or of a callable on SMILES
        lists; decoded molecules are cached, and a row without a molecule scores 0 for ``"qed"``."""
        if isinstance(guidance, str):
            if guidance not in REWARDS:
                raise ValueError(f"unknown reward {guidance!r}; valid: {', '.join(REWARDS)} or a callable on SMILES")
            fn: Callable[[List[Optional[str]]], Sequence[float]] = lambda smi: [_qed_of(s) for s in smi]  # noqa: E731
        elif callable(guidance):
            fn = guidance
        else:
            raise ValueError(f"guidance must be None, a reward name ({', '.join(REWARDS)}) or a callable, "
                             f"got {guidance!r}")
        cache: Dict[tuple, float] = {}

        def reward(tokens: Tensor) -> Tensor:
            rows = [tuple(r) for r in tokens.tolist()]
            todo = sorted({r for r in rows if r not in cache})
            if todo:
                vals = list(fn(self.decode(torch.tensor(todo, dtype=torch.long))))
                if len(vals) != len(todo):
                    raise ValueError(f"the reward returned {len(vals)} values for {len(todo)} molecules")
                cache.update(zip(todo, (float(v) for v in vals)))
            return torch.tensor([cache[r] for r in rows], dtype=torch.float64)

        return reward

    def generate(self, n: int, steps: Optional[int] = None, seed: int = 0,
                 guidance: Union[None, str, Callable[[List[Optional[str]]], Sequence[float]]] = None,
                 batch_size: int = 500, num_candidates: int = 8, max_rounds: int = 20,
                 progress: Optional[Callable[[int, int], Any]] = None) -> List[str]:
        """n canonical SMILES, every one a valid RDKit molecule (see the module docstring).

        ``steps``: None for the exact first-hitting sampler, or an ancestral step count. ``seed`` fixes
        the torch.Generator of the whole call (the result also depends on ``batch_size``).
        ``guidance="qed"``: SVDD reward guidance toward higher QED. Rows that decode to no molecule are
        redrawn (at most ``max_rounds`` rounds); ``last_stats`` counts them."""
        n = _check_count(n, "n")
        batch_size = _check_count(batch_size, "batch_size")
        g = torch.Generator().manual_seed(int(seed))
        out: List[str] = []
        redrawn = 0
        for _ in range(max_rounds):
            need = n - len(out)
            if need == 0:
                break
            for k in range(0, need, batch_size):
                m = min(batch_size, need - k)
                smi = self.decode(self.sample_tokens(m, steps, g, guidance, num_candidates))
                good = [s for s in smi if s is not None]
                redrawn += m - len(good)
                out.extend(good)
                if progress is not None:
                    progress(len(out), n)
        if len(out) < n:
            raise RuntimeError(f"only {len(out)} of {n} samples decoded to molecules after {max_rounds} rounds; "
                               "the model is broken")
        self.last_stats = {"n": n, "redrawn": redrawn}
        return out[:n]

    # ------------------------------------------------------------------ files
    def config(self) -> Dict[str, Any]:
        return {"symbols": list(self.tokenizer.symbols), "length": self.length, **self.arch}

    def save(self, folder: Union[str, Path], extra: Optional[Dict[str, Any]] = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (float32) into folder."""
        state = {k: v.detach().float() for k, v in self.net.state_dict().items()}
        return write_model_folder(folder, {**self.config(), **(extra or {})}, state)

    @classmethod
    def from_config(cls, cfg: Dict[str, Any]) -> "SelfiesModel":
        missing = [k for k in ("symbols", "length") if k not in cfg]
        if missing:
            raise ValueError(f"model config misses {missing}")
        symbols = list(cfg["symbols"])
        if not symbols or symbols[0] != SelfiesTokenizer.PAD:
            raise ValueError(f"the first symbol must be the padding {SelfiesTokenizer.PAD!r}")
        tok = SelfiesTokenizer(symbols)
        if tok.symbols != symbols:
            raise ValueError("model config symbols are not a sorted SELFIES alphabet after [nop]")
        return cls(tok, int(cfg["length"]), **{k: cfg[k] for k in _CONFIG_KEYS[2:] if k in cfg})

    @classmethod
    def load(cls, folder: Union[str, Path]) -> "SelfiesModel":
        """The model saved in ``folder`` by :meth:`save`."""
        cfg, state = read_model_folder(folder, "SELFIES model")
        model = cls.from_config(cfg)
        model.net.load_state_dict(state)
        model.net.eval()
        return model


def _check_count(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return v


def pretrained(name: str = "moses-selfies") -> SelfiesModel:
    """A shipped model by name (``PRETRAINED`` lists them)."""
    return SelfiesModel.load(shipped_folder(name, PRETRAINED, "SELFIES", "train_selfies"))


__all__ = ["SelfiesDenoiser", "SelfiesModel", "pretrained", "PRETRAINED", "REWARDS", "WEIGHTS_DIR"]
