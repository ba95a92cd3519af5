"""Issue 26: every loader (photo, table, store, model folder) fed a few hundred mutated
inputs answers correctly or refuses clearly: never a hang, an unexpected traceback or more
than a bounded amount of memory (tests/fuzz_loaders.py says how each outcome is judged)."""

import json
import resource
import subprocess
import sys
from pathlib import Path

#: The fuzzing process's address-space limit: far above what a 64 x 48 photo, a 20-row
#: table, a 30-row store or the smoke model need, far below what the unbounded cases took
#: (6-22 GB).
MEMORY_LIMIT = 6 << 30


def test_mutated_inputs_give_answers_or_clear_errors(smoke_run, tmp_path):
    from hiergeo import export

    model = export.write(export.from_run(smoke_run[0]), tmp_path / "model")
    work = tmp_path / "work"
    work.mkdir()

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    driver = Path(__file__).with_name("fuzz_loaders.py")
    p = subprocess.run([sys.executable, str(driver), str(work), str(model), "120"],
                       capture_output=True, text=True, timeout=900, preexec_fn=limit)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    print(json.dumps(report["counts"]))  # pytest -s shows what the mutations did
    counts = report["counts"]
    assert set(counts) == {"photo", "table", "store", "model"}
    assert sum(sum(c.values()) for c in counts.values()) >= 360
    for loader, c in counts.items():
        assert c["clear"] > 0, (loader, c)  # the mutations did damage something
    assert not report["unexpected"], json.dumps(report, indent=1)
