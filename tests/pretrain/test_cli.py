"""`cxrbench pretrain` at the command line: the methods listed in --help, --option checked and typed."""

from __future__ import annotations

import pytest

from cxrbench.cli import main
from cxrbench.pretrain import get_method, method_names, method_summaries
from cxrbench.pretrain.simclr import Method as SimCLR


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CXRBENCH_RUN", str(tmp_path / "run"))
    monkeypatch.setenv("CXRBENCH_QUIET", "1")
    monkeypatch.delenv("CXRBENCH_DEBUG", raising=False)


def test_help_lists_every_method_with_its_summary(capsys) -> None:
    try:
        main(["pretrain", "--help"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    text = capsys.readouterr().out
    summaries = method_summaries()
    assert list(summaries) == method_names() and "simclr" in summaries
    for name, summary in summaries.items():
        assert summary, f"{name} has no module docstring"
        assert any(line.split()[:1] == [name] and summary.split()[0] in line for line in text.splitlines()), name
    assert "--option" in text and "--init" in text


def test_options_are_typed_by_the_methods_keywords() -> None:
    assert SimCLR.options({"temperature": "0.2", "projection_dim": "64"}) == {"temperature": 0.2, "projection_dim": 64}
    assert get_method("simclr") is SimCLR


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--option", "tempreature=0.2"], ["unknown option 'tempreature'", "method simclr", "temperature"]),
        (["--option", "temperature=warm"], ["option 'temperature'", "warm", "float"]),
        (["--option", "temperature"], ["expected KEY=VALUE"]),
    ],
)
def test_bad_options_are_one_line_errors(capsys, argv, named) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "simclr", "--dataset", "synthetic", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("cxrbench: error: ")
    for value in named:
        assert value in err
