"""``python tests/ddp_slow_eval.py SECONDS TRAIN-ARGS...``: ``hiergeo.train`` with process 0's
final evaluation made ``SECONDS`` slower, for the DDP test that no process waits on it
(tests/test_train.py)."""

import sys
import time

import hiergeo.evaluate

if __name__ == "__main__":
    delay, real = float(sys.argv[1]), hiergeo.evaluate.evaluate_split

    def slow(*args, **kwargs):
        time.sleep(delay)
        return real(*args, **kwargs)

    hiergeo.evaluate.evaluate_split = slow  # the trainer imports it when it gets there
    from hiergeo.train import main

    sys.exit(main(sys.argv[2:]))
