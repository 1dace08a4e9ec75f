"""xmppd/files.py: a file is replaced whole, with its permissions, or left as it was."""

import os
import stat

import pytest

from xmppd.files import replaced_atomically


def test_the_new_file_replaces_the_old_one_with_its_mode(tmp_path):
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    with replaced_atomically(str(path), 0o600) as out:
        out.write(b"new")
        assert path.read_bytes() == b"old"   # not visible before the block is done
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["key.pem"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "export.xml"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with replaced_atomically(str(path), 0o600) as out:
            out.write(b"half")
            raise RuntimeError("the export failed")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["export.xml"]
