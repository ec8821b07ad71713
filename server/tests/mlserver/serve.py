"""Starts MLServer for the tests: `python serve.py MODEL_REPOSITORY`.

Runs `mlserver start` in this process, with this folder on the import path
(for `onnx_runtime.OnnxRuntimeModel`), and exits when the process that
started it (the test binary) is gone, so no server outlives a test run.
"""
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


if __name__ == "__main__":
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    sys.path.insert(0, HERE)
    os.environ["PYTHONPATH"] = HERE + os.pathsep + os.environ.get("PYTHONPATH", "")
    from mlserver.cli.main import root

    root(["start", sys.argv[1]])
