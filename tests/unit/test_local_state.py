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


def test_after_a_kill_the_state_written_after_acks_is_kept(tmp_path, caplog):
    datadir = tmp_path / "worker-0"
    local_state.claim(datadir, rows_after_ack=True)
    (datadir / "tables").mkdir()
    (datadir / "tables" / "row").write_text("acked by the broker")
    # no release: the process was killed; its RocksDB is a prefix of the changelogs
    assert local_state.claim(datadir, rows_after_ack=True) is False
    assert (datadir / "tables" / "row").read_text() == "acked by the broker"
    assert local_state.AFTER_ACK in (datadir / local_state.MARKER).read_text()
    assert "its local state is kept" in caplog.text


def test_a_killed_run_that_wrote_rows_at_once_is_dropped_even_by_an_acked_one(tmp_path):
    datadir = tmp_path / "worker-0"
    local_state.claim(datadir)  # Faust's own store: rows before their changelog records
    (datadir / "tables").mkdir()
    assert local_state.claim(datadir, rows_after_ack=True) is True
    assert not (datadir / "tables").exists()
