"""Token streams: byte/char tokenizers, causal and masked LM (paper A.3.1), the text
stream's corpus and content hash, Wikitext raw files and parquet parts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import widthwise.streams.text as text_mod
from widthwise.errors import UserError
from widthwise.losses import IGNORE_INDEX
from widthwise.streams import STREAMS
from widthwise.streams.text import mask_tokens

CORPUS = (
    "def add(a, b):\n    return a + b\n\n"
    "class Point:\n    x: int = 0\n    y: int = 0\n\n"
    "# naïve café — unicode too\n" * 40
)


def build(name: str, seed: int = 0, **options):
    return STREAMS.get(name)(seed, STREAMS.validate_options(name, options))


@pytest.fixture(autouse=True)
def _fresh_memo():
    text_mod._MEMO.clear()
    yield
    text_mod._MEMO.clear()


def corpus_dir(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text(CORPUS[:2000], encoding="utf-8")
    (root / "pkg" / "sub" / "b.py").write_text(CORPUS[2000:], encoding="utf-8")
    (root / "pkg" / "notes.txt").write_text("ignored by the *.py pattern")
    (root / "pkg" / ".hidden").mkdir()
    (root / "pkg" / ".hidden" / "c.py").write_text("hidden dirs are skipped")
    return root / "pkg"


def test_causal_windows_are_substrings_with_shifted_targets(tmp_path: Path) -> None:
    d = corpus_dir(tmp_path)
    s = build("text", path=str(d), pattern="*.py", seq_len=32, holdout=0.2)
    data = CORPUS.encode()
    cut = int(round(len(data) * 0.8))
    assert s.in_shape == (32,) and s.out_dim == 256 and s.loss == "cross_entropy"
    x, y = s.batch(0, 64)
    assert x.shape == y.shape == (64, 32) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    for row, nxt in zip(x, y):
        window = bytes(row.astype(np.uint8)) + bytes([nxt[-1]])
        assert window in data[:cut]  # training windows stay in the training region
    px, py = s.probe_set(16)
    for row, nxt in zip(px, py):
        assert bytes(row.astype(np.uint8)) + bytes([nxt[-1]]) in data[cut:]
    facts = s.describe()
    assert facts["corpus_files"] == 2 and facts["train_tokens"] == cut


def test_batches_depend_only_on_seed_and_step(tmp_path: Path) -> None:
    d = corpus_dir(tmp_path)
    for objective in ("causal", "masked"):
        a = build("text", 1, path=str(d), pattern="*.py", seq_len=16, objective=objective)
        fwd = [a.batch(t, 8) for t in range(4)]
        text_mod._MEMO.clear()
        b = build("text", 1, path=str(d), pattern="*.py", seq_len=16, objective=objective)
        for t in (3, 0, 2, 1):
            np.testing.assert_array_equal(b.batch(t, 8)[0], fwd[t][0])
            np.testing.assert_array_equal(b.batch(t, 8)[1], fwd[t][1])
        assert not np.array_equal(fwd[0][0], fwd[1][0])
        np.testing.assert_array_equal(a.probe_set(5)[1], b.probe_set(5)[1])


def test_masked_lm_proportions() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=(4000, 100))
    x, y = mask_tokens(np.random.default_rng(1), tokens, 0.15, 256, 256)
    chosen = y != IGNORE_INDEX
    assert (chosen.sum(axis=1) == 15).all()  # 15% of the positions of every sequence
    np.testing.assert_array_equal(y[chosen], tokens[chosen])
    np.testing.assert_array_equal(x[~chosen], tokens[~chosen])
    masked = (x == 256)[chosen].mean()
    kept = (x == tokens)[chosen].mean()
    replaced = ((x != tokens) & (x != 256))[chosen].mean()
    n = chosen.sum()
    se = np.sqrt(0.1 * 0.9 / n)
    assert masked == pytest.approx(0.8, abs=6 * np.sqrt(0.16 / n))
    # a random replacement equals the original with probability 1/256
    assert kept == pytest.approx(0.1 + 0.1 / 256, abs=6 * se)
    assert replaced == pytest.approx(0.1 * 255 / 256, abs=6 * se)
    assert x.max() <= 256 and x.min() >= 0
    assert not (x == 256)[~chosen].any()


def test_masked_objective_in_the_stream(tmp_path: Path) -> None:
    d = corpus_dir(tmp_path)
    s = build("text", path=str(d), pattern="*.py", seq_len=40, objective="masked")
    assert s.out_dim == 257 and s.mask_id == 256
    x, y = s.batch(0, 200)
    chosen = y != IGNORE_INDEX
    assert (chosen.sum(axis=1) == 6).all()  # round(0.15 · 40)
    assert (x[chosen] == 256).mean() == pytest.approx(0.8, abs=0.06)
    assert x.dtype == y.dtype == np.int64 and x.min() >= 0  # -100 only in the targets
    assert set(np.unique(y)) <= set(range(256)) | {IGNORE_INDEX}


def test_char_tokenizer(tmp_path: Path) -> None:
    d = corpus_dir(tmp_path)
    s = build("text", path=str(d), pattern="*.py", seq_len=20, tokenizer="char", holdout=0.1)
    chars = sorted(set(CORPUS))
    assert s.out_dim == len(chars)
    x, y = s.batch(0, 30)
    decoded = ["".join(chars[i] for i in row) + chars[nxt[-1]] for row, nxt in zip(x, y)]
    assert all(w in CORPUS for w in decoded)
    m = build("text", path=str(d), pattern="*.py", seq_len=20, tokenizer="char", objective="masked")
    assert m.out_dim == len(chars) + 1 and m.mask_id == len(chars)


def test_content_hash_is_stable_and_tracks_the_text(tmp_path: Path) -> None:
    d = corpus_dir(tmp_path)
    h1 = build("text", path=str(d), pattern="*.py", seq_len=16).describe()["corpus_sha256"]
    text_mod._MEMO.clear()
    h2 = build("text", path=str(d), pattern="*.py", seq_len=16).describe()["corpus_sha256"]
    assert h1 == h2
    (d / "a.py").write_text(CORPUS[:2000] + "# edited\n", encoding="utf-8")
    h3 = build("text", path=str(d), pattern="*.py", seq_len=16).describe()["corpus_sha256"]
    assert h3 != h1
    # a file list (not only directories) works, in the order given
    one = build("text", path=[str(d / "sub" / "b.py"), str(d / "a.py")], seq_len=16)
    assert one.describe()["corpus_files"] == 2


def test_token_cache_dir(tmp_path: Path) -> None:
    d = corpus_dir(tmp_path)
    cache = tmp_path / "cache"
    a = build(
        "text", path=str(d), pattern="*.py", seq_len=16, tokenizer="char", cache_dir=str(cache)
    )
    assert (
        len(list(cache.glob("tokens-*.npy"))) == 1 and len(list(cache.glob("tokens-*.json"))) == 1
    )
    text_mod._MEMO.clear()
    b = build(
        "text", path=str(d), pattern="*.py", seq_len=16, tokenizer="char", cache_dir=str(cache)
    )
    assert isinstance(b.train, np.memmap)
    assert a.describe() == b.describe()
    np.testing.assert_array_equal(a.batch(3, 4)[0], b.batch(3, 4)[0])


def test_default_corpus_is_the_standard_library() -> None:
    s = build("text", seq_len=64)
    facts = s.describe()
    assert facts["corpus_files"] > 100 and len(str(facts["corpus_sha256"])) == 64
    assert all("site-packages" not in p for p in facts["corpus"])
    text_mod._MEMO.clear()
    assert build("text", seq_len=64).describe()["corpus_sha256"] == facts["corpus_sha256"]
    x, y = s.batch(0, 4)
    assert x.shape == (4, 64) and x.max() < 256


def test_text_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist") as err:
        build("text", path=str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no files matching"):
        build("text", path=str(tmp_path / "empty"))
    (tmp_path / "tiny.txt").write_text("too short")
    with pytest.raises(UserError, match="seq_len 64 needs at least 65"):
        build("text", path=str(tmp_path / "tiny.txt"), seq_len=64)


# -- wikitext ----------------------------------------------------------------------


def wikitext_raw(root: Path) -> Path:
    d = root / "wikitext-103-raw"
    d.mkdir(parents=True)
    (d / "wiki.train.raw").write_text(" = Title = \n" + "Some article text . " * 200)
    (d / "wiki.valid.raw").write_text(" = Valid = \n" + "Held out words here . " * 50)
    (d / "wiki.test.raw").write_text(" = Test = \n" + "Test words only . " * 50)
    return root


def test_wikitext_raw_files(tmp_path: Path) -> None:
    root = wikitext_raw(tmp_path)
    s = build("wikitext", path=str(root), seq_len=24)
    facts = s.describe()
    assert facts["format"] == "raw" and facts["train_tokens"] == len(" = Title = \n") + 20 * 200
    train = (root / "wikitext-103-raw" / "wiki.train.raw").read_bytes()
    valid = (root / "wikitext-103-raw" / "wiki.valid.raw").read_bytes()
    x, _ = s.batch(0, 10)
    assert all(bytes(r.astype(np.uint8)) in train for r in x)
    px, _ = s.probe_set(10)
    assert all(bytes(r.astype(np.uint8)) in valid for r in px)
    t = build("wikitext", path=str(root), seq_len=24, probe_split="test")
    test = (root / "wikitext-103-raw" / "wiki.test.raw").read_bytes()
    assert all(bytes(r.astype(np.uint8)) in test for r in t.probe_set(10)[0])


def test_wikitext_missing_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no wiki.train.raw or train-\\*.parquet under") as err:
        build("wikitext", path=str(tmp_path))
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    root = wikitext_raw(tmp_path)
    (root / "wikitext-103-raw" / "wiki.valid.raw").unlink()
    with pytest.raises(UserError, match="no wiki.valid.raw"):
        build("wikitext", path=str(root))


def test_wikitext_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="pyarrow (widthwise[parquet]) not installed")
    import pyarrow.parquet as pq

    lines = {
        "train": [" = A = \n", "", "words and more words . \n"] * 60,
        "validation": [" = V = \n", "held out text here . \n"] * 20,
    }
    for split, rows in lines.items():
        pq.write_table(pa.table({"text": rows}), tmp_path / f"{split}-00000-of-00001.parquet")
    s = build("wikitext", path=str(tmp_path), seq_len=16)
    assert s.describe()["format"] == "parquet"
    assert s.describe()["train_tokens"] == len("".join(lines["train"]).encode())
    valid = "".join(lines["validation"]).encode()
    assert all(bytes(r.astype(np.uint8)) in valid for r in s.probe_set(8)[0])
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "validation-00000-of-00001.parquet")
    text_mod._MEMO.clear()
    with pytest.raises(UserError, match="not a readable parquet part with a 'text' column"):
        build("wikitext", path=str(tmp_path), seq_len=16)


def test_wikitext_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    for split in ("train", "validation"):
        (tmp_path / f"{split}-00000-of-00001.parquet").write_bytes(b"PAR1")
    with pytest.raises(UserError, match=r"needs pyarrow: pip install 'widthwise\[parquet\]'"):
        build("wikitext", path=str(tmp_path))
