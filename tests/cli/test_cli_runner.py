"""The shared in-process CLI helper reports what a shell would see."""

from __future__ import annotations

from cli_runner import farzictl


def test_usage_error_is_one_line(tmp_path) -> None:
    line = farzictl("prepare", home=tmp_path).one_error_line()
    assert "NAME" in line or "name" in line


def test_library_error_is_one_line(tmp_path) -> None:
    line = farzictl("prepare", "no-such-dataset", home=tmp_path).one_error_line()
    assert "unknown dataset 'no-such-dataset'" in line


def test_success_and_json(tmp_path) -> None:
    out = farzictl("prepare", "synthetic-rec", "--synthetic-sequences", "20", "--json", home=tmp_path).ok()
    assert '"task": "rec"' in out.stdout
    assert out.stderr == ""
