"""Tests of adapruner_lightning.data: Austen loading (fake and real), text files, windows, `adapruner setup`."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from adapruner_lightning.cli import setup
from adapruner_lightning.data import austen
from adapruner_lightning.data import text as data_text
from adapruner_lightning.errors import AdaPrunerError, ConfigError

FAKE_LINES = {
    "emma": ["EMMA", "", "By Jane Austen", "", "", "CHAPTER I", "", "Emma Woodhouse, handsome,", "  clever, and rich.", ""],
    "mansfieldpark": ["MANSFIELD PARK", "", "About thirty years ago"],
    "prideprejudice": ["PRIDE AND PREJUDICE", "", "It is a truth", "universally acknowledged"],
    "sensesensibility": ["SENSE AND SENSIBILITY", "", "The family of Dashwood"],
    "persuasion": ["Persuasion", "", "Sir Walter Elliot"],
    "northangerabbey": ["NORTHANGER ABBEY", "", "No one who had ever seen Catherine Morland"],
}


def _serialise(obj: object) -> bytes:
    from rdata.conversion import convert_python_to_r_data
    from rdata.unparser import unparse_data

    return unparse_data(convert_python_to_r_data(obj), file_format="xdr", file_type="rds")


def _write_fake_package(root: Path) -> Path:
    """Write an R lazy-load DB like janeaustenr's (gzip'd index, zlib'd entries) under ``root``."""
    package = root / "usr/lib/R/site-library/janeaustenr"
    (package / "data").mkdir(parents=True)
    rdb, index = b"", {}
    for name, lines in FAKE_LINES.items():
        payload = _serialise(np.array(lines))
        entry = struct.pack(">I", len(payload)) + zlib.compress(payload)
        index[name] = np.array([len(rdb), len(entry)], dtype=np.int32)
        rdb += entry
    rdx = {"variables": index, "references": {}, "compressed": np.array([True])}
    (package / "data/Rdata.rdx").write_bytes(gzip.compress(_serialise(rdx)))
    (package / "data/Rdata.rdb").write_bytes(rdb)
    return package


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ADAPRUNER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tokenizer(tiny_llama: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def test_cache_dir_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ADAPRUNER_CACHE", str(tmp_path))
    assert data_text.cache_dir() == tmp_path
    monkeypatch.delenv("ADAPRUNER_CACHE")
    assert data_text.cache_dir() == Path.home() / ".cache" / "adapruner"


def test_split_is_fixed() -> None:
    assert austen.CALIBRATION_BOOKS == ("Emma", "Mansfield Park", "Pride and Prejudice", "Sense and Sensibility")
    assert austen.EVALUATION_BOOKS == ("Persuasion", "Northanger Abbey")
    assert set(austen.R_OBJECTS) == set(austen.CALIBRATION_BOOKS + austen.EVALUATION_BOOKS)


def test_lines_to_paragraphs() -> None:
    lines = ["", "Title", "", "", "first  line", "  wrapped line ", None, "second", "", ""]
    assert austen.lines_to_paragraphs(lines) == "Title\n\nfirst  line wrapped line\n\nsecond"
    assert austen.lines_to_paragraphs([]) == ""


def test_load_fake_package_then_cache(cache: Path) -> None:
    _write_fake_package(cache / "janeaustenr")
    books = austen.load_austen_books()
    assert list(books) == list(austen.CALIBRATION_BOOKS + austen.EVALUATION_BOOKS)
    assert books["Emma"] == "EMMA\n\nBy Jane Austen\n\nCHAPTER I\n\nEmma Woodhouse, handsome, clever, and rich."
    assert books["Pride and Prejudice"].endswith("It is a truth universally acknowledged")
    assert (cache / "austen" / "Northanger Abbey.txt").read_text(encoding="utf-8") == books["Northanger Abbey"]
    os.remove(cache / "janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")
    assert austen.load_austen_books() == books  # second call reads the .txt cache only


def test_fetch_without_apt_get_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(austen.shutil, "which", lambda name: None)
    with pytest.raises(AdaPrunerError, match=r"apt-get install r-cran-janeaustenr.*dpkg-deb -x .*adapruner setup"):
        austen.fetch_austen(tmp_path / "target")


def test_fetch_failing_apt_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"
    fake.write_text("#!/bin/sh\necho 'E: Unable to locate package r-cran-janeaustenr' >&2\nexit 100\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(AdaPrunerError, match=r"failed \(exit 100: E: Unable to locate.*ADAPRUNER_CACHE"):
        austen.fetch_austen(tmp_path / "target")


def test_fetch_accepts_existing_target(tmp_path: Path) -> None:
    package = _write_fake_package(tmp_path / "t")
    assert austen.fetch_austen(tmp_path / "t") == package


def test_read_texts_files_and_dirs(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d/a.txt").write_text("alpha", encoding="utf-8")
    (tmp_path / "d/b.md").write_text("beta", encoding="utf-8")
    (tmp_path / "d/ignored.json").write_text("{}", encoding="utf-8")
    (tmp_path / "c.txt").write_text("gamma", encoding="utf-8")
    assert data_text.read_texts([tmp_path / "d", str(tmp_path / "c.txt")]) == {"a": "alpha", "b": "beta", "c": "gamma"}
    assert data_text.texts_for(str(tmp_path / "c.txt")) == {"c": "gamma"}


def test_read_texts_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"text path=.*nope.*does not exist"):
        data_text.read_texts([tmp_path / "nope"])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ConfigError, match=r"text directory=.*empty_dir.*at least one \.txt or \.md file"):
        data_text.read_texts([tmp_path / "empty_dir"])
    (tmp_path / "blank.txt").write_text(" \n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"text file=.*blank\.txt.*empty"):
        data_text.read_texts([tmp_path / "blank.txt"])
    (tmp_path / "x").mkdir()
    (tmp_path / "x/a.txt").write_text("1", encoding="utf-8")
    (tmp_path / "y").mkdir()
    (tmp_path / "y/a.md").write_text("2", encoding="utf-8")
    with pytest.raises(ConfigError, match="distinct stems"):
        data_text.read_texts([tmp_path / "x", tmp_path / "y"])


def test_texts_for_austen_selectors(cache: Path) -> None:
    (cache / "austen").mkdir(parents=True)
    for title in austen.CALIBRATION_BOOKS + austen.EVALUATION_BOOKS:
        (cache / "austen" / f"{title}.txt").write_text(f"text of {title}", encoding="utf-8")
    assert list(data_text.texts_for("austen:calibration")) == list(austen.CALIBRATION_BOOKS)
    assert list(data_text.texts_for("austen:evaluation")) == list(austen.EVALUATION_BOOKS)
    assert data_text.texts_for(["austen:Emma"]) == {"Emma": "text of Emma"}
    with pytest.raises(ConfigError, match=r"austen:Ulysses.*austen:calibration"):
        data_text.texts_for("austen:Ulysses")


def test_tokenize_windows(tokenizer) -> None:
    text = "It is a truth universally acknowledged. " * 40
    ids = data_text.encode_text(tokenizer, text)
    windows = data_text.tokenize_windows(tokenizer, text, 16)
    assert windows.dtype == torch.long and windows.shape == (len(ids) // 16, 16)
    assert windows.flatten().tolist() == ids[: windows.numel()]
    assert tokenizer.bos_token_id not in windows.flatten().tolist()
    assert data_text.tokenize_windows(tokenizer, text, 16, max_windows=3).shape == (3, 16)


def test_tokenize_windows_does_not_warn_about_length(tokenizer, capfd: pytest.CaptureFixture[str]) -> None:
    tokenizer.model_max_length = 16
    windows = data_text.tokenize_windows(tokenizer, "It is a truth universally acknowledged. " * 40, 32)
    assert windows.shape[0] > 1
    assert "sequence length is longer" not in capfd.readouterr().err


def test_tokenize_windows_too_short(tokenizer) -> None:
    with pytest.raises(ConfigError, match=r"text=.*tokens.*at least seq_len=4096 tokens.*seq_len <="):
        data_text.tokenize_windows(tokenizer, "Too short a text.", 4096)


def test_setup_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        setup.main(["--help"])
    assert exit_info.value.code == 0
    assert "r-cran-janeaustenr" in capsys.readouterr().out


def test_setup_prints_table(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_fake_package(cache / "janeaustenr")
    assert setup.main(["--no-tokens"]) == 0
    out = capsys.readouterr().out
    assert "Northanger Abbey" in out and "evaluation" in out and "tokens" not in out


@pytest.mark.slow
def test_real_austen_books() -> None:
    books = austen.load_austen_books()
    sizes = {title: len(text) for title, text in books.items()}
    assert sizes == {
        "Emma": 882403, "Mansfield Park": 883063, "Pride and Prejudice": 684427,
        "Sense and Sensibility": 672430, "Persuasion": 466758, "Northanger Abbey": 433229,
    }
    assert books["Emma"].startswith("EMMA\n\nBy Jane Austen\n\nVOLUME I\n\nCHAPTER I\n\nEmma Woodhouse, handsome, clever")
    assert "It is a truth universally acknowledged, that a single man" in books["Pride and Prejudice"]
    assert books["Persuasion"].startswith("Persuasion\n\nby\n\nJane Austen")
    assert "\n\n\n" not in books["Mansfield Park"]


@pytest.mark.slow
def test_real_austen_tokens() -> None:
    from adapruner_lightning.data.models import load_model

    _, tokenizer = load_model(None)
    windows = data_text.tokenize_windows(tokenizer, austen.load_austen_books()["Persuasion"], 256)
    assert 400 <= windows.shape[0] <= 430  # 107,748 tokens / 256
    assert tokenizer.decode(windows[0, :4]).startswith("Persuasion")
