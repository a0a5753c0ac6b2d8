"""File service faults: kill -9 during uploads, and a full disk (a file-size rlimit)."""

import hashlib
import io
import os
import random
import resource
import threading

import pytest

from msgsrv.services.files.client import FileClient
from msgsrv.wire.errors import MsgsrvError, ServerError
from msgsrv.services.files.sandbox import is_temp_name
from tests.conftest import DaemonProcess
from tests.hostile import campaign
from tests.hostile.targets import KEY_NAME, SECRET, render_config, write_keys_file

pytestmark = pytest.mark.timeout(campaign.timeout(90))

NAMES = ["a.bin", "sub/b.bin", "c.bin", "d.bin"]
ROUNDS = campaign.pick(10, 300)


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _file_config(tmp_path):
    keys = write_keys_file(tmp_path / "hostile.keys")
    config = tmp_path / "file.ini"
    config.write_text(render_config(["file"], keys))
    return config, tmp_path / "files"


def _start(config):
    process = DaemonProcess(config)
    try:
        return process, process.wait_listening(1, timeout=20)["file"]
    except BaseException:
        process.stop()
        raise


def _client(address):
    return FileClient(address[0], address[1], KEY_NAME, SECRET, timeout=10)


def _temp_files(root):
    return [os.path.join(where, name) for where, dirs, files in os.walk(root)
            for name in dirs + files if is_temp_name(name)]


class Uploader(threading.Thread):
    """Overwrites one name again and again until the connection dies.

    ``acked`` is the SHA-256 of the last upload the server acknowledged,
    ``in_flight`` the one being sent when the daemon was killed (None: none).
    """

    def __init__(self, address, name, acked, rng):
        super().__init__(daemon=True)
        self.address, self.name, self.acked, self.rng = address, name, acked, rng
        self.in_flight = None
        self.uploads = 0

    def run(self):
        try:
            with _client(self.address) as client:
                while True:
                    data = os.urandom(self.rng.choice((0, 1, 4096, 200_000, 1_500_000)))
                    self.in_flight = _sha(data)
                    client.put(io.BytesIO(data), self.name, overwrite=True)
                    self.acked, self.in_flight = _sha(data), None
                    self.uploads += 1
        except (MsgsrvError, OSError):
            pass  # the daemon was killed


def _check_root(root, state):
    """Each name's current SHA-256, after checking that it is the acknowledged content or
    the whole in-flight one (a torn file fails the test); no temp file may be left."""
    assert _temp_files(root) == [], "partial uploads survived a restart"
    current = {}
    for name, (acked, in_flight) in state.items():
        path = root / name
        current[name] = _sha(path.read_bytes()) if path.exists() else None
        assert current[name] in {acked, in_flight}, (name, current[name], acked, in_flight)
    return current


def test_kill_9_during_uploads_loses_nothing_and_tears_nothing(tmp_path):
    config, root = _file_config(tmp_path)
    (root / "sub").mkdir(parents=True)
    rng = random.Random(os.environ.get("MSGSRV_SEED", 8))
    state = {name: (None, None) for name in NAMES}
    acked_total = killed_in_flight = landed = 0
    for _ in range(ROUNDS):
        process, address = _start(config)
        try:
            # What the kill left is the baseline of this round (an upload in flight at the
            # kill may or may not have landed: now we know).
            current = _check_root(root, state)
            landed += sum(current[n] == f != a for n, (a, f) in state.items())
            uploaders = [Uploader(address, name, current[name], rng) for name in NAMES]
            for uploader in uploaders:
                uploader.start()
            threading.Event().wait(rng.uniform(0.05, 0.6))  # a random point in the uploads
        finally:
            process.proc.kill()
            process.proc.wait(10)
        for uploader in uploaders:
            uploader.join(15)
            assert not uploader.is_alive()
            state[uploader.name] = (uploader.acked, uploader.in_flight)
            acked_total += uploader.uploads
            killed_in_flight += uploader.in_flight is not None
        process.stop()
    process, address = _start(config)
    try:
        current = _check_root(root, state)
        with _client(address) as client:  # and the service still works on what it recovered
            for name, digest in current.items():
                if digest is not None:
                    assert client.stat(name, sha256=True).sha256 == digest
    finally:
        process.stop()
    assert acked_total > ROUNDS, "too few uploads completed to test anything"
    campaign.record("kill-9-uploads", rounds=ROUNDS, acknowledged=acked_total,
                    killed_mid_upload=killed_in_flight, landed_unacknowledged=landed, torn=0)


def test_disk_full_during_an_upload_is_a_clear_error_and_the_service_recovers(tmp_path):
    config, root = _file_config(tmp_path)
    process, address = _start(config)
    try:
        # Soft limit only: lowering the hard one could not be undone without CAP_SYS_RESOURCE.
        # (Python ignores SIGXFSZ, so write() fails with EFBIG instead of killing the daemon.)
        _, hard = resource.prlimit(process.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(process.proc.pid, resource.RLIMIT_FSIZE, (256 << 10, hard))
        big = os.urandom(1 << 20)
        with _client(address) as client:
            with pytest.raises(ServerError) as refused:
                client.put(io.BytesIO(big), "big.bin")
        assert refused.value.code == "disk-full", refused.value
        print("disk full:", refused.value)
        assert process.proc.poll() is None, "the daemon died of the file-size limit"
        assert not (root / "big.bin").exists()
        assert _temp_files(root) == []
        with _client(address) as client:  # the service continues: small files still fit
            client.put(io.BytesIO(b"small"), "small.bin")
            resource.prlimit(process.proc.pid, resource.RLIMIT_FSIZE,
                             (hard, hard))
        with _client(address) as client:  # and recovers once there is room
            assert client.put(io.BytesIO(big), "big.bin").sha256 == _sha(big)
        assert (root / "big.bin").read_bytes() == big
        assert "Traceback" not in process.log
    finally:
        process.stop()
