"""The child process each domain trains in (lora_pipeline.ops.isolation): answers, errors, deaths."""

import os
import signal

import pytest

from lora_pipeline.errors import DataError
from lora_pipeline.ops.isolation import ChildProcessDied, call_in_child_process


def pid_and_sum(a: int, b: int) -> tuple[int, int]:
    return os.getpid(), a + b


def raise_data_error(message: str) -> None:
    raise DataError(message)


def kill_myself(sig: int) -> None:
    os.kill(os.getpid(), sig)


def exit_quietly() -> None:
    os._exit(3)


def test_result_comes_from_another_process():
    pid, total = call_in_child_process(pid_and_sum, 2, 3)
    assert total == 5 and pid != os.getpid()


@pytest.mark.parametrize("fn, args, error, words", [
    (raise_data_error, ("row 7: bad",), DataError, "row 7: bad"),
    (kill_myself, (signal.SIGKILL,), ChildProcessDied, "signal SIGKILL"),
    (kill_myself, (signal.SIGSEGV,), ChildProcessDied, "signal SIGSEGV"),
    (exit_quietly, (), ChildProcessDied, "exit code 3"),
])
def test_failures_reach_the_caller_as_one_error(fn, args, error, words):
    with pytest.raises(error, match=words) as caught:
        call_in_child_process(fn, *args, what="the test child")
    if error is ChildProcessDied:
        assert "the test child" in str(caught.value)
    else:  # the child's traceback travels as a note, for the log
        assert any("raise_data_error" in note for note in caught.value.__notes__)
