"""Reading files that libraries load with code allowed, as data only."""

import enum
from pathlib import Path

import pytest
import torch

from grpo.core.integrity import DamagedFile, data_only_loads, refuse_code


class Touch:
    """Unpickled with code allowed, creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


class Scaler:
    """A plain class whose pickle sets attributes (as DeepSpeed's loss scalers do)."""

    def __init__(self, scale):
        self.cur_scale = scale


class Stage(int, enum.Enum):
    two = 2


def test_a_library_asking_for_code_gets_data_only(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "state.pt"
    torch.save({"w": torch.ones(2), "x": Touch(marker)}, path)
    with data_only_loads(), pytest.raises(DamagedFile, match="state.pt.*not loaded"):
        torch.load(path, weights_only=False)  # what DeepSpeed's readers ask for
    assert not marker.exists()
    with pytest.raises(DamagedFile, match=r"state\.pt names Python code .*Path"):
        refuse_code([path])
    assert not marker.exists()
    torch.load(path, weights_only=False)  # after the block torch's own load is back: the payload is real
    assert marker.exists()


def test_allowed_types_are_read_and_nothing_else_is(tmp_path):
    path = tmp_path / "optim.pt"
    torch.save({"scaler": Scaler(128.0), "stage": Stage.two, "t": torch.arange(3)}, path)
    with pytest.raises(DamagedFile, match="Scaler"):
        refuse_code([path], allowed=[Stage])
    refuse_code([path], allowed=[Scaler, Stage])
    with data_only_loads([Scaler, Stage]):
        state = torch.load(path, weights_only=False)
    assert state["scaler"].cur_scale == 128.0 and state["stage"] is Stage.two
    assert torch.equal(state["t"], torch.arange(3))
    with data_only_loads([Stage]), pytest.raises(DamagedFile):
        torch.load(path)


def test_a_truncated_file_is_named_before_anything_reads_it(tmp_path):
    path = tmp_path / "optim.pt"
    torch.save({"t": torch.arange(300)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DamagedFile, match="optim.pt is truncated"):
        refuse_code([path])
