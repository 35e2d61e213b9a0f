"""`python -m tasks.corpora`: clear messages and exit codes for the expected failures."""

from tasks.corpora.__main__ import main


def test_status_when_not_prepared(tmp_path, capsys):
  assert main(["status", "--data_dir", str(tmp_path)]) == 1
  assert "python -m tasks.corpora prepare" in capsys.readouterr().out


def test_prepare_without_clients_prints_one_error(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
  assert main(["prepare", "--data_dir", str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.count("error: ") == 1 and "Traceback" not in err
  assert "`apt-get` is not on PATH" in err
  assert str(tmp_path / "downloads" / "gnome-user-docs_43.0-2_all.deb") in err
