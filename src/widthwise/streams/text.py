"""Token streams: ``text`` (local files; default the Python standard library) and ``wikitext``.

Tokenizers need no download: ``byte`` (ids 0-255, the UTF-8 bytes) or ``char``
(the corpus's distinct Unicode characters, sorted by code point). The masked
objective adds one ``[MASK]`` id after the base vocabulary, so
``out_dim = vocab = base + 1`` for ``masked`` and ``base`` for ``causal``.

A batch is ``size`` windows at offsets drawn uniformly from ``rng_for(seed, step)``
inside the training region; ``x`` is int64 ``(size, seq_len)`` token ids:

- ``causal``: ``x = tokens[o : o+T]``, ``y = tokens[o+1 : o+T+1]``;
- ``masked`` (paper A.3.1, BERT's recipe): in each window ``round(0.15·T)`` (at
  least one) distinct positions are chosen; of those, 80% become ``[MASK]``, 10%
  a uniformly random token, 10% stay; ``y`` is the original token at chosen
  positions and ``IGNORE_INDEX`` (−100, no loss) elsewhere.

The probe set is windows of held-out text at offsets from
``rng_for(seed, PROBE_SET_KEY)``: the last ``holdout`` fraction of the ``text``
corpus, or Wikitext's validation (or test) split. ``describe()`` records the
corpus's SHA-256, so a study names exactly the text it was trained on.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from widthwise.errors import UserError
from widthwise.losses import IGNORE_INDEX
from widthwise.streams._io import (
    atomic_path,
    atomic_save_npy,
    expand,
    require_dir,
    signature,
    writable_cache_dir,
)
from widthwise.streams.base import PROBE_SET_KEY, STREAMS, Stream, rng_for

EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}
WIKITEXT_RAW = {"train": "wiki.train.raw", "valid": "wiki.valid.raw", "test": "wiki.test.raw"}
WIKITEXT_PARQUET = {
    "train": "train-*.parquet",
    "valid": "validation-*.parquet",
    "test": "test-*.parquet",
}


# -- tokenization --------------------------------------------------------------------


@dataclass
class Tokenized:
    """Token arrays per split, the base vocabulary size and facts to record."""

    splits: dict[str, np.ndarray]
    base_vocab: int
    facts: dict[str, object]


def char_ids(texts: dict[str, bytes]) -> tuple[dict[str, np.ndarray], int]:
    """Character ids over the union of the splits' characters (sorted code points).

    Text is decoded as UTF-8; bytes that are not UTF-8 become U+FFFD (one id).
    """
    points = {
        k: np.frombuffer(data.decode("utf-8", errors="replace").encode("utf-32-le"), dtype="<u4")
        for k, data in texts.items()
    }
    present = np.zeros(0x110000, dtype=bool)
    for p in points.values():
        present[p] = True
    vocab = np.flatnonzero(present)  # sorted code points
    dtype = np.uint16 if len(vocab) <= 2**16 else np.int32
    lookup = np.zeros(0x110000, dtype=dtype)
    lookup[vocab] = np.arange(len(vocab))
    return {k: lookup[p] for k, p in points.items()}, len(vocab)


def tokenize(texts: dict[str, bytes], tokenizer: str) -> Tokenized:
    """Token ids of each split's bytes; facts: each split's SHA-256."""
    hashes = {k: hashlib.sha256(v).hexdigest() for k, v in texts.items()}
    if tokenizer == "byte":
        splits = {k: np.frombuffer(v, dtype=np.uint8) for k, v in texts.items()}
        base = 256
    else:
        splits, base = char_ids(texts)
    return Tokenized(splits, base, {"sha256": hashes})


_MEMO: dict[tuple[str, str], Tokenized] = {}


def cached_tokenize(
    stream: str,
    files: dict[str, list[Path]],
    read: dict[str, Callable[[], bytes]],
    tokenizer: str,
    cache_dir: str | None,
) -> Tokenized:
    """Tokens of each split, memoized in-process and (with ``cache_dir``) on disk.

    The key is the files' names, sizes and modification times plus the tokenizer.
    """
    sig = signature([p for paths in files.values() for p in paths])
    key = (hashlib.sha256(f"{sig}\0{sorted(files)}".encode()).hexdigest()[:20], tokenizer)
    if key in _MEMO:
        return _MEMO[key]
    cache = writable_cache_dir(stream, expand(cache_dir)) if cache_dir else None
    meta_path = cache / f"tokens-{key[0]}-{tokenizer}.json" if cache else None
    tok = None
    if cache and meta_path and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            splits = {
                k: np.load(cache / f"tokens-{key[0]}-{tokenizer}-{k}.npy", mmap_mode="r")
                for k in files
            }
            tok = Tokenized(splits, int(meta["base_vocab"]), meta["facts"])
        except (OSError, ValueError, KeyError, TypeError):
            tok = None  # an incomplete or damaged cache is rebuilt
    if tok is None:
        tok = tokenize({k: read[k]() for k in files}, tokenizer)
        if cache and meta_path:
            for k, arr in tok.splits.items():
                atomic_save_npy(cache / f"tokens-{key[0]}-{tokenizer}-{k}.npy", arr)
            with atomic_path(meta_path) as tmp:  # written last: marks the cache complete
                tmp.write_text(json.dumps({"base_vocab": tok.base_vocab, "facts": tok.facts}))
    _MEMO.clear()  # keep one corpus in memory
    _MEMO[key] = tok
    return tok


# -- windows and objectives ----------------------------------------------------------


def windows(tokens: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """(n, length) int64 token ids at ``starts``."""
    return np.asarray(tokens[starts[:, None] + np.arange(length)], dtype=np.int64)


def mask_tokens(
    rng: np.random.Generator, tokens: np.ndarray, mask_prob: float, mask_id: int, base_vocab: int
) -> tuple[np.ndarray, np.ndarray]:
    """Masked-LM inputs and targets (BERT / paper A.3.1) for ``tokens (n, T)``.

    Draws, in order: the chosen positions (k = max(1, round(mask_prob·T)) distinct
    per row), the 80/10/10 split, the random replacement tokens.
    """
    n, t = tokens.shape
    k = max(1, int(round(mask_prob * t)))
    pos = np.argsort(rng.random((n, t)), axis=1)[:, :k]
    chosen = np.zeros((n, t), dtype=bool)
    chosen[np.arange(n)[:, None], pos] = True
    u = rng.random((n, t))
    replacement = rng.integers(0, base_vocab, size=(n, t))
    x = tokens.copy()
    x[chosen & (u < 0.8)] = mask_id
    rand = chosen & (u >= 0.8) & (u < 0.9)
    x[rand] = replacement[rand]
    y = np.where(chosen, tokens, IGNORE_INDEX)
    return x, y


class TokenOptions(BaseModel):
    """Options shared by the token streams."""

    model_config = ConfigDict(extra="forbid")

    seq_len: int = Field(128, ge=2, le=2**16, description="tokens per sequence T (≤ 2¹⁶)")
    objective: Literal["causal", "masked"] = Field(
        "causal", description="causal LM (next token) or masked LM (paper A.3.1)"
    )
    mask_prob: float = Field(0.15, gt=0, le=1, description="masked: fraction of positions chosen")
    tokenizer: Literal["byte", "char"] = Field("byte", description="byte (256 ids) or char")
    cache_dir: str | None = Field(None, description="save token arrays here (optional)")


class TokenStream(Stream):
    """Fixed-length token windows from a training array; probe windows from a held-out one."""

    loss = "cross_entropy"

    def __init__(
        self,
        seed: int,
        name: str,
        train: np.ndarray,
        probe: np.ndarray,
        base_vocab: int,
        options: TokenOptions,
        facts: dict[str, object],
    ) -> None:
        super().__init__(seed)
        self.name = name
        self.options = options
        t = options.seq_len
        for what, arr in (("training", train), ("held-out", probe)):
            if len(arr) < t + 1:
                raise UserError(
                    f"{name}: the {what} text has {len(arr)} tokens; seq_len {t} needs at "
                    f"least {t + 1} (use more text or a shorter seq_len)"
                )
        self.train, self.probe = train, probe
        self.base_vocab = base_vocab
        self.mask_id = base_vocab if options.objective == "masked" else None
        self.in_shape = (t,)
        self.out_dim = base_vocab + (options.objective == "masked")
        self.facts = facts

    def _examples(
        self, rng: np.random.Generator, tokens: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        t = self.options.seq_len
        starts = rng.integers(0, len(tokens) - t, size=n)  # windows of t + 1 tokens
        w = windows(tokens, starts, t + 1)
        if self.mask_id is None:
            return w[:, :t], w[:, 1:]
        return mask_tokens(rng, w[:, :t], self.options.mask_prob, self.mask_id, self.base_vocab)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self._examples(rng, self.train, n)

    def probe_set(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self._examples(rng_for(self.seed, PROBE_SET_KEY), self.probe, n)

    def describe(self) -> dict[str, object]:
        o = self.options
        return {
            "stream": self.name,
            "tokenizer": o.tokenizer,
            "vocab": self.out_dim,
            "mask_id": self.mask_id,
            "objective": o.objective,
            "seq_len": o.seq_len,
            "train_tokens": len(self.train),
            "probe_tokens": len(self.probe),
            **self.facts,
        }


# -- text: local files ---------------------------------------------------------------


class TextOptions(TokenOptions):
    """Options of the ``text`` stream."""

    path: str | list[str] | None = Field(
        None, description="files or directories (default: the Python standard library's source)"
    )
    pattern: str | None = Field(
        None, description="file glob inside directories (default *.py for the stdlib, else *)"
    )
    holdout: float = Field(
        0.05, gt=0, lt=1, description="fraction of the corpus (its end) held out for the probe set"
    )


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(paths: list[Path], pattern: str) -> list[Path]:
    """Files of the corpus: given files, and ``pattern`` matches under directories.

    Directories are walked in sorted order of relative path, skipping hidden
    directories, ``__pycache__``, ``site-packages`` and ``dist-packages`` (so the
    default corpus is the standard library itself, not what is installed beside it).
    """
    out: list[Path] = []
    for p in paths:
        if p.is_file():
            out.append(p)
            continue
        root = require_dir("text", p, "a text file or a directory of text files")
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith(".")]
            found.extend(Path(dirpath, f) for f in filenames if fnmatch.fnmatchcase(f, pattern))
        out.extend(
            sorted((f for f in found if f.is_file()), key=lambda f: f.relative_to(root).parts)
        )
    if not out:
        raise UserError(
            f"text: no files matching {pattern!r} under {', '.join(map(str, paths))} "
            "(expected text files; set data.options.path / pattern)"
        )
    return out


def read_concatenated(files: list[Path]) -> bytes:
    chunks = []
    for f in files:
        try:
            chunks.append(f.read_bytes())
        except OSError as err:
            raise UserError(f"text: cannot read {f} ({err.strerror or err})") from None
    return b"".join(chunks)


@STREAMS.register("text", options=TextOptions, loss="cross_entropy")
def build_text(seed: int, options: TextOptions) -> Stream:
    """Byte/char-level LM on local text (default: the stdlib's .py files); causal or masked."""
    if options.path is None:
        paths, pattern = [stdlib_dir()], options.pattern or "*.py"
    else:
        raw = [options.path] if isinstance(options.path, str) else options.path
        paths, pattern = [expand(p) for p in raw], options.pattern or "*"
    files = corpus_files(paths, pattern)
    tok = cached_tokenize(
        "text",
        {"all": files},
        {"all": lambda: read_concatenated(files)},
        options.tokenizer,
        options.cache_dir,
    )
    tokens = tok.splits["all"]
    cut = int(round(len(tokens) * (1 - options.holdout)))
    facts = {
        "corpus": [str(p) for p in paths],
        "corpus_files": len(files),
        "corpus_sha256": tok.facts["sha256"]["all"],  # type: ignore[index]
    }
    return TokenStream(seed, "text", tokens[:cut], tokens[cut:], tok.base_vocab, options, facts)


# -- wikitext ------------------------------------------------------------------------


class WikitextOptions(TokenOptions):
    """Options of the ``wikitext`` stream."""

    path: str = Field(description="directory with wiki.{train,valid,test}.raw or parquet parts")
    format: Literal["auto", "raw", "parquet"] = Field(
        "auto", description="raw files or parquet parts (auto: raw when present)"
    )
    probe_split: Literal["valid", "test"] = Field("valid", description="split of the probe set")


def find_wikitext(root: Path, fmt: str) -> tuple[str, dict[str, list[Path]]]:
    """(format, split -> files) of a Wikitext-103 directory (searched recursively)."""
    raw = {k: sorted(root.rglob(name)) for k, name in WIKITEXT_RAW.items()}
    if fmt in ("auto", "raw") and raw["train"]:
        return "raw", {k: v[:1] for k, v in raw.items() if v}
    parquet = {k: sorted(root.rglob(glob)) for k, glob in WIKITEXT_PARQUET.items()}
    if fmt in ("auto", "parquet") and parquet["train"]:
        return "parquet", {k: v for k, v in parquet.items() if v}
    wanted = {
        "auto": "wiki.train.raw or train-*.parquet",
        "raw": "wiki.train.raw",
        "parquet": "train-*.parquet",
    }[fmt]
    raise UserError(
        f"wikitext: no {wanted} under {root} (expected Wikitext-103 raw files or parquet parts)"
    )


def read_parquet_text(paths: list[Path]) -> bytes:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(
            "wikitext: reading parquet parts needs pyarrow: pip install 'widthwise[parquet]'"
        ) from None
    chunks: list[str] = []
    for p in paths:
        try:
            table = pq.read_table(p, columns=["text"])
        except Exception as err:  # ArrowInvalid, KeyError for a missing column, OSError
            raise UserError(
                f"wikitext: {p} is not a readable parquet part with a 'text' column "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            ) from None
        chunks.extend(s for s in table.column("text").to_pylist() if s is not None)
    return "".join(chunks).encode("utf-8")


def read_raw(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"wikitext: cannot read {path} ({err.strerror or err})") from None


@STREAMS.register("wikitext", options=WikitextOptions, loss="cross_entropy")
def build_wikitext(seed: int, options: WikitextOptions) -> Stream:
    """Wikitext-103 from local raw files or parquet parts; causal or masked LM."""
    root = require_dir("wikitext", expand(options.path), "Wikitext-103 raw files or parquet parts")
    fmt, found = find_wikitext(root, options.format)
    probe = options.probe_split
    if probe not in found:
        names = WIKITEXT_RAW if fmt == "raw" else WIKITEXT_PARQUET
        raise UserError(f"wikitext: no {names[probe]} under {root} (the probe_split {probe!r})")
    files = {"train": found["train"], probe: found[probe]}

    def reader(k: str) -> Callable[[], bytes]:
        if fmt == "raw":
            return lambda: read_raw(files[k][0])
        return lambda: read_parquet_text(files[k])

    tok = cached_tokenize(
        "wikitext", files, {k: reader(k) for k in files}, options.tokenizer, options.cache_dir
    )
    facts = {
        "format": fmt,
        "files": {k: [str(p) for p in v] for k, v in files.items()},
        "train_sha256": tok.facts["sha256"]["train"],  # type: ignore[index]
        "probe_sha256": tok.facts["sha256"][probe],  # type: ignore[index]
    }
    return TokenStream(
        seed, "wikitext", tok.splits["train"], tok.splits[probe], tok.base_vocab, options, facts
    )
