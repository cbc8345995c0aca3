"""The command line's contract: bad input gets one clear line and TSM return code 12."""

from __future__ import annotations

import os

import pytest
from cliutil import blockvault, blockvault_as_nobody

from tui.cli import normalize_tsm_args


def assert_one_line_refusal(res, *words: str) -> None:
    text = res.out + res.err
    assert res.rc == 12, text
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) == 1, text
    for w in words:
        assert w in text, text


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="check-volume needs root")


@needs_root
def test_missing_path_is_refused_in_one_line():
    assert_one_line_refusal(blockvault("check-volume", "/nonexistent/bv"), "no such file")


@needs_root
def test_regular_file_is_refused_with_a_hint_to_attach_it(tmp_path):
    f = tmp_path / "disk.img"
    f.write_bytes(b"\0" * 4096)
    assert_one_line_refusal(blockvault("check-volume", str(f)), "regular file", "losetup")


@needs_root
def test_character_device_is_refused():
    assert_one_line_refusal(blockvault("check-volume", "/dev/null"), "character device")


@needs_root
def test_directory_that_is_not_a_mount_point_is_refused(tmp_path):
    assert_one_line_refusal(blockvault("check-volume", str(tmp_path)), "not a mount point")


@needs_root
def test_json_refusal_is_one_document_with_a_blocker(tmp_path):
    res = blockvault("check-volume", str(tmp_path), "--json")
    assert res.rc == 12
    doc = res.json()
    assert doc["device"] is None
    assert doc["findings"][0]["severity"] == "blocker"
    assert doc["findings"][0]["code"] == "TARGET_NOT_MOUNT_POINT"


@pytest.mark.loop
def test_non_root_is_refused_in_one_line():
    res = blockvault_as_nobody("check-volume", "/")
    assert_one_line_refusal(res, "must run as root")


@pytest.mark.loop
def test_devices_works_without_root_and_says_what_it_cannot_know():
    res = blockvault_as_nobody("devices")
    assert res.rc == 0, res.err
    assert "not root" in res.out


def test_unknown_option_is_one_line_and_code_12():
    assert_one_line_refusal(blockvault("devices", "--bogus"), "--bogus")


def test_tsm_single_dash_options_are_accepted_as_aliases():
    assert normalize_tsm_args(["backup", "-imagetype=dynamic", "-incremental", "-x", "/mnt"]) == [
        "backup",
        "--imagetype=dynamic",
        "--incremental",
        "-x",
        "/mnt",
    ]
    res = blockvault("devices", "-json")
    assert res.rc == 0 and "devices" in res.json()


def test_tsm_options_with_a_hyphen_are_taken_too():
    assert normalize_tsm_args(["-snapshot-fallback=dynamic", "-preserve-label", "-no-wait"]) == [
        "--snapshot-fallback=dynamic",
        "--preserve-label",
        "--no-wait",
    ]
    assert normalize_tsm_args(["-5", "-", "--json"]) == ["-5", "-", "--json"]


def test_an_abbreviated_option_is_not_taken_for_another():
    res = blockvault("backup", "image", "/dev/null", "--image", "static")
    assert_one_line_refusal(res, "unrecognized arguments: --image")


@pytest.mark.parametrize(
    "option",
    [["--imagegapsize=-4K"], ["--imagegapsize", "lots"], ["--snapshotcachesize", "-5"],
     ["--snapshotcachesize", "400"]],
)  # fmt: skip
def test_bad_backup_option_values_are_refused_in_one_line(option):
    value = option[-1].rsplit("=", 1)[-1]
    assert_one_line_refusal(blockvault("backup", "image", "/dev/null", *option), value)


def test_pitdate_takes_dsmcs_date_format_too():
    from core.increments.chain import point_in_time

    assert point_in_time("12/02/2026", "10:00:00") == point_in_time("2026-12-02", "10:00:00")


def test_query_image_of_a_path_that_does_not_exist_is_refused(tmp_path):
    from core.repo.repository import Repository

    Repository.init(str(tmp_path / "repo"))
    res = blockvault("query", "image", "/nonexistent/bv", "--repo", str(tmp_path / "repo"))
    assert_one_line_refusal(res, "/nonexistent/bv does not exist")


@pytest.mark.parametrize(
    "command",
    [["backup", "image"], ["restore", "image"], ["query", "image"], ["query", "backup"],
     ["delete", "backup"], ["repo"]],
)  # fmt: skip
def test_each_command_s_help_says_what_it_does_with_examples(command):
    res = blockvault(*command, "--help")
    assert res.rc == 0, res.err
    _usage, _, rest = res.out.partition("\n\n")
    description = rest.split("\n\n", 1)[0]
    assert len(description.split()) >= 15, res.out  # a description, not the options list
    examples = res.out.split("examples:\n", 1)[1].splitlines()
    assert examples and all(e.startswith(f"  blockvault {command[0]}") for e in examples)
