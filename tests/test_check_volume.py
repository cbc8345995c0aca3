"""check-volume on situations the tests create for real: each finding, its code, the exit code."""

from __future__ import annotations

import pytest
from children import holder
from cliutil import blockvault

from core.devices import scan
from core.findings import Severity
from core.preflight import check_volume

pytestmark = pytest.mark.loop


def codes(result) -> dict[str, Severity]:
    return {f.code: f.severity for f in result.findings}


def test_clean_mounted_volume_has_only_info_and_exit_code_0(loopkit):
    vol = loopkit.volume("32M", "ext4")
    res = blockvault("check-volume", vol.device, "--json")
    assert res.rc == 0, res.out + res.err
    doc = res.json()
    assert [f["code"] for f in doc["findings"]] == ["FS_MOUNTED"]
    assert doc["device"]["path"] == vol.device


def test_process_writing_a_file_is_named_with_pid(loopkit):
    vol = loopkit.volume("32M", "ext4")
    target = vol.mount_point / "busy.log"
    with holder(f"f = open({str(target)!r}, 'w')") as p:
        res = blockvault("check-volume", str(vol.mount_point), "--json")
    assert res.rc == 8
    finding = next(f for f in res.json()["findings"] if f["code"] == "PROCESS_WRITING")
    assert finding["severity"] == "warning"
    procs = {(u["pid"], u["how"], u["path"]) for u in finding["details"]["processes"]}
    assert (p.pid, "write", str(target)) in procs
    assert all(u["name"].startswith("python") for u in finding["details"]["processes"])
    assert f"pid {p.pid}" in finding["message"]


def test_process_reading_a_file_is_not_reported(loopkit):
    vol = loopkit.volume("32M", "ext4")
    (vol.mount_point / "r.txt").write_text("x")
    with holder(f"f = open({str(vol.mount_point / 'r.txt')!r})"):
        result = check_volume(vol.device)
    assert "PROCESS_WRITING" not in codes(result)


def test_process_with_cwd_inside_is_reported(loopkit):
    vol = loopkit.volume("32M", "ext4")
    with holder("pass", cwd=vol.mount_point) as p:
        result = check_volume(vol.device)
    assert codes(result)["PROCESS_CWD"] is Severity.WARNING
    assert any(f"pid {p.pid}" in f.message for f in result.findings)


def test_process_holding_the_raw_device_open_is_reported(loopkit):
    vol = loopkit.volume("16M", None)
    with holder(f"f = open({vol.device!r}, 'rb')") as p:
        result = check_volume(vol.device)
    assert codes(result)["DEVICE_OPEN"] is Severity.WARNING
    assert any(f"pid {p.pid}" in f.message for f in result.findings)


def test_nested_mount_is_a_warning_naming_it(loopkit):
    outer = loopkit.volume("32M", "ext4")
    inner = loopkit.volume("32M", "ext4", mount=False)
    nested_at = outer.mount_point / "nested"
    loopkit.mount(inner.device, nested_at)
    result = check_volume(str(outer.mount_point))
    assert codes(result)["MOUNT_NESTED"] is Severity.WARNING
    assert str(nested_at) in next(f.message for f in result.findings if f.code == "MOUNT_NESTED")
    # The inner volume itself has nothing nested.
    assert "MOUNT_NESTED" not in codes(check_volume(inner.device))


def test_bind_mount_of_a_subdirectory_is_a_warning(loopkit):
    vol = loopkit.volume("32M", "ext4")
    (vol.mount_point / "sub").mkdir()
    bound = loopkit.bind(vol.mount_point / "sub")
    result = check_volume(str(bound))
    assert result.volume is not None and result.volume.device.path == vol.device
    assert codes(result)["MOUNT_BIND"] is Severity.WARNING


def test_unmounted_file_system_not_in_fstab_is_warned(loopkit, tmp_path, monkeypatch):
    fstab = tmp_path / "fstab"
    fstab.write_text("# empty\n")
    monkeypatch.setenv("BLOCKVAULT_FSTAB", str(fstab))
    vol = loopkit.volume("32M", "ext4", mount=False)
    res = blockvault("check-volume", vol.device)
    assert res.rc == 8
    assert "FS_NO_MOUNT_POINT" in res.out


def test_unmounted_file_system_in_fstab_is_info(loopkit, tmp_path, monkeypatch):
    vol = loopkit.volume("32M", "ext4", mount=False)
    uuid = scan().by_path(vol.device).uuid
    fstab = tmp_path / "fstab"
    fstab.write_text(f"UUID={uuid} /srv/bv-test-data ext4 defaults 0 2\n")
    monkeypatch.setenv("BLOCKVAULT_FSTAB", str(fstab))
    result = check_volume(vol.device)
    assert codes(result) == {"FS_NOT_MOUNTED": Severity.INFO}
    assert result.return_code == 0


def test_mount_point_given_for_the_wrong_device_is_a_warning(loopkit, tmp_path, monkeypatch):
    expected = loopkit.volume("32M", "ext4", mount=False)
    intruder = loopkit.volume("32M", "ext4", mount=False)
    mp = loopkit.mount(intruder.device)
    uuid = scan().by_path(expected.device).uuid
    fstab = tmp_path / "fstab"
    fstab.write_text(f"UUID={uuid} {mp} ext4 defaults 0 2\n")
    monkeypatch.setenv("BLOCKVAULT_FSTAB", str(fstab))
    by_mount = check_volume(str(mp))
    assert codes(by_mount)["MOUNT_POINT_OTHER_DEVICE"] is Severity.WARNING
    assert expected.device in next(
        f.message for f in by_mount.findings if f.code == "MOUNT_POINT_OTHER_DEVICE"
    )
    by_device = check_volume(expected.device)
    assert codes(by_device)["MOUNT_POINT_OTHER_DEVICE"] is Severity.WARNING


def test_read_only_device_is_reported(loopkit):
    image = loopkit.image("8M")
    dev = loopkit.attach(image, read_only=True)
    assert codes(check_volume(dev))["DEVICE_READ_ONLY"] is Severity.INFO


def test_root_file_system_cannot_go_offline():
    result = check_volume("/")
    assert codes(result)["ROOT_FILESYSTEM"] is Severity.WARNING
    assert "MOUNT_NESTED" not in codes(result)


def test_directory_that_is_not_a_mount_point_is_refused(loopkit):
    vol = loopkit.volume("32M", "ext4")
    (vol.mount_point / "dir").mkdir()
    res = blockvault("check-volume", str(vol.mount_point / "dir"))
    assert res.rc == 12
    assert res.out.count("\n") == 1, res.out
    assert "TARGET_NOT_MOUNT_POINT" in res.out and str(vol.mount_point) in res.out
