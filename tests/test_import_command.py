"""``rankstream import``: folders of activity files uploaded through the HTTP API."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from services.import_command import ImportPathError, activity_files, run_import
from shared.settings import Settings
from tests.helpers import ingest_client, new_key
from tests.test_activity_decoding import DATA
from tests.test_activity_upload import ALL_TIME_BOARDS


def test_activity_files_walks_folders(tmp_path: Path) -> None:
    """Folders yield their .fit, .gpx and .tcx files sorted; named files are kept; a missing path raises."""
    nested = tmp_path / "2017"
    nested.mkdir()
    (tmp_path / "b.GPX").write_text("<gpx/>")
    (nested / "a.fit").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an activity")
    assert activity_files([tmp_path]) == [nested / "a.fit", tmp_path / "b.GPX"]
    assert activity_files([tmp_path / "notes.txt"]) == [tmp_path / "notes.txt"]
    with pytest.raises(ImportPathError) as caught:
        activity_files([tmp_path / "missing"])
    assert str(caught.value) == f"{tmp_path / 'missing'} does not exist; name activity files or folders that contain them"


async def test_import_counts_events_and_failures(settings: Settings, redis_client, tmp_path: Path) -> None:
    """An import uploads every file, counts the event outcomes and lists the bad files; a second run is duplicate."""
    for name in ("garmin-fenix-5-run.fit", "garmin-fenix-5-walk.fit", "Settings.fit"):
        shutil.copy(DATA / name, tmp_path / name)
    run_metrics = ("run_moving_time_s", "run_elapsed_time_s", "run_ascent_m", "run_calories_kcal")
    walk_metrics = ("walk_distance_m", "walk_moving_time_s", "walk_elapsed_time_s", "walk_ascent_m", "walk_calories_kcal")
    accepting = replace(settings, allowed_metrics=run_metrics + walk_metrics)
    key = await new_key(accepting)
    async with ingest_client(accepting) as http:
        base_url = str(http.make_url("/"))
        files = activity_files([tmp_path])
        first = await run_import(files, base_url, key, "ada", progress=False)
        second = await run_import(files, base_url, key, "ada", progress=False)

    assert first.files == 3
    assert first.events == {"accepted": 10, "duplicate": 0, "rejected": 0, "conflict": 0}
    assert first.failures == [
        (tmp_path / "Settings.fit", "HTTP 422: the FIT file is a settings file, not an activity; upload an activity recording"),
    ]
    assert second.events == {"accepted": 0, "duplicate": 10, "rejected": 0, "conflict": 0}
    assert await redis_client.xlen(f"{settings.namespace}:{{events}}:stream") == 10


async def test_import_command_line(settings: Settings, redis_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``rankstream import`` prints the summary and exits 0; without a key it exits 2 and prints how to pass one."""
    from services.cli import main

    monkeypatch.delenv("RANKSTREAM_API_KEY", raising=False)
    monkeypatch.setenv("RANKSTREAM_LOG_LEVEL", "warning")
    boards_file = tmp_path / "boards.toml"
    boards_file.write_text(ALL_TIME_BOARDS, encoding="utf-8")
    all_time = replace(settings, boards_file=boards_file)
    key = await new_key(all_time)
    async with ingest_client(all_time) as http:
        base_url = str(http.make_url("/"))
        with pytest.raises(SystemExit) as imported:
            # main() runs its own event loop, so it needs a thread of its own here.
            await asyncio.to_thread(main, ["import", str(DATA / "garmin-fenix-5-run.fit"), "--url", base_url, "--key", key, "--user", "ada"])
        with pytest.raises(SystemExit) as keyless:
            main(["import", str(DATA / "garmin-fenix-5-run.fit")])

    output = capsys.readouterr()
    assert imported.value.code == 0
    # The rules accept only board metrics by default, so four of the five run metrics are rejected.
    assert "imported 1 of 1 files: 1 events accepted, 0 duplicate, 4 rejected, 0 conflicting\n" in output.out
    assert keyless.value.code == 2
    assert "rankstream: no API key; pass --key or set RANKSTREAM_API_KEY\n" in output.err
