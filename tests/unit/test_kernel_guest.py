"""make test-kernel's choice of accelerator: KVM when it runs the guest, TCG emulation when it cannot.
CI's machines once hung under nested KVM; later ones made qemu abort at once ("failed to set MSR
0x10a"), which ended the run with no test run instead of falling back."""

from tests import kernel_guest


def _qemu_runs(monkeypatch, argv: list[str]) -> None:
    monkeypatch.setattr(kernel_guest, "qemu", lambda img, accel: argv)


def test_qemu_that_aborts_under_kvm_before_the_guest_speaks_falls_back_to_tcg(monkeypatch, tmp_path):
    _qemu_runs(monkeypatch, ["sh", "-c", "echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69'; exit 134"])
    assert kernel_guest.boot(tmp_path, "kvm") is None


def test_a_guest_silent_under_kvm_falls_back_to_tcg(monkeypatch, tmp_path):
    monkeypatch.setattr(kernel_guest, "FIRST_LINE_TIMEOUT", 0.5)
    _qemu_runs(monkeypatch, ["sleep", "30"])
    assert kernel_guest.boot(tmp_path, "kvm") is None


def test_a_guest_that_booted_and_reported_is_judged_not_run_again(monkeypatch, tmp_path):
    _qemu_runs(monkeypatch, ["sh", "-c", "echo '[    0.000000] Linux version 6.1.0'; echo '=== 3 passed in 1.00s ==='; "
                                         f"echo '{kernel_guest.MARK}0'"])
    assert kernel_guest.boot(tmp_path, "kvm") == 0
