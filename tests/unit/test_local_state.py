"""The marker that keeps a worker's local table state only after a clean stop."""

from __future__ import annotations

from streams import local_state


def test_a_first_start_keeps_what_is_there_and_marks_it(tmp_path):
    datadir = tmp_path / "worker-0"
    assert local_state.claim(datadir) is False
    assert (datadir / local_state.MARKER).read_text().strip().isdigit()


def test_after_a_clean_stop_the_state_is_kept(tmp_path):
    datadir = tmp_path / "worker-0"
    local_state.claim(datadir)
    (datadir / "tables").mkdir()
    (datadir / "tables" / "row").write_text("kept")
    local_state.release(datadir)
    assert local_state.claim(datadir) is False
    assert (datadir / "tables" / "row").read_text() == "kept"


def test_after_a_kill_the_state_is_dropped(tmp_path, caplog):
    datadir = tmp_path / "worker-0"
    local_state.claim(datadir)
    (datadir / "tables").mkdir()
    (datadir / "tables" / "row").write_text("not in the changelog")
    # no release: the process was killed
    assert local_state.claim(datadir) is True
    assert not (datadir / "tables").exists()
    assert (datadir / local_state.MARKER).exists()  # marked again for this run
    assert "did not stop cleanly" in caplog.text


def test_release_without_a_marker_is_harmless(tmp_path):
    local_state.release(tmp_path / "never-started")
