"""``python tests/ddp_slow_eval.py SECONDS FOLDER TRAIN-ARGS...``: ``hiergeo.train`` with
process 0's final evaluation made ``SECONDS`` slower; each process writes
``FOLDER/rank<R>.done`` (the time it left) for the DDP test of the final wait
(tests/test_train.py)."""

import os
import sys
import time
from pathlib import Path

import hiergeo.evaluate

if __name__ == "__main__":
    delay, real = float(sys.argv[1]), hiergeo.evaluate.evaluate_split

    def slow(*args, **kwargs):
        time.sleep(delay)
        return real(*args, **kwargs)

    hiergeo.evaluate.evaluate_split = slow  # the trainer imports it when it gets there
    from hiergeo.cli.train import main

    code = main(sys.argv[3:])
    done = Path(sys.argv[2]) / f"rank{os.environ.get('RANK', '0')}.done"
    done.write_text(repr(time.time()))  # when this process left hiergeo.train
    sys.exit(code)
