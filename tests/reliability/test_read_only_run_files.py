"""Permissions that change under a running ``fit`` of a user's own Pyro program: the run
directory made read-only, the checkpoint or the metrics file made read-only (to keep them).

Before, a ``checkpoint.pt`` the user had made read-only was replaced by the next resume
(a rename over a file ignores its mode), after training up to the first checkpoint. Now a
read-only run file is refused by name before any step, and no write replaces one.
"""

from __future__ import annotations

import pytest

from tests.reliability.unprivileged import DRIVER_PAIR, run_unprivileged

# Every case in one child (importing torch and Pyro costs seconds on a busy machine).
_DRIVER = (
    DRIVER_PAIR
    + r"""
def train(run, epochs, at_epoch_2=None):
    steps = []
    def callback(record, m):
        if record["epoch"] == 2 and at_epoch_2 is not None:
            at_epoch_2()
    pyro.clear_param_store()
    try:
        length = {"epochs": epochs} if epochs is not None else {"steps": 0}
        fit(model, X, guide=guide, batch_size=4, progress=False, compile=False, **length,
            checkpoint_dir=run, callbacks=[callback],
            step_callbacks=[lambda step, m: steps.append(step)])
        return {"error": None, "steps": len(steps)}
    except OSError as e:
        return {"error": [e.errno, e.filename, str(e)], "steps": len(steps)}

def state(run):
    epoch = load_checkpoint(run / "checkpoint.pt")["progress"]["epoch"]
    records = (run / "metrics.jsonl").read_text().splitlines()
    return {"epoch": epoch, "records": [json.loads(r)["epoch"] for r in records],
            "names": sorted(p.name for p in run.iterdir())}

root = Path(sys.argv[1])
out = {}
run = root / "directory"
out["directory"] = {**train(run, 3, lambda: run.chmod(0o555)), **state(run)}
run = root / "checkpoint"
train(run, 1)
(run / "checkpoint.pt").chmod(0o444)
before = (run / "checkpoint.pt").read_bytes()
out["checkpoint"] = {**train(run, 3), **state(run)}
out["checkpoint"]["unchanged"] = (run / "checkpoint.pt").read_bytes() == before
run = root / "metrics"
out["metrics"] = {**train(run, 3, lambda: (run / "metrics.jsonl").chmod(0o444)), **state(run)}
run = root / "restore"
train(run, 1)
for name in ("checkpoint.pt", "metrics.jsonl"):
    (run / name).chmod(0o444)
kept = {p.name: p.read_bytes() for p in run.iterdir()}
out["restore"] = train(run, None)  # steps=0: restores, trains and writes nothing
out["restore"]["unchanged"] = {p.name: p.read_bytes() for p in run.iterdir()} == kept
out["restore"]["q_loc"] = pyro.param("q_loc").tolist()
out["restore"]["saved"] = load_checkpoint(run / "checkpoint.pt")["param_store"]["params"][
    "q_loc"].tolist()
print(json.dumps(out))
"""
)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    return run_unprivileged(_DRIVER, tmp_path_factory.mktemp("permissions"))


def test_a_directory_made_read_only_mid_run_keeps_the_last_checkpoint(results):
    case = results["directory"]
    number, filename, message = case["error"]
    assert number == 13 and filename.endswith("directory/checkpoint.pt"), message
    assert case["epoch"] == 1 and case["records"] == [1]
    # the lock file stays (a read-only folder cannot lose it); no temporary file is left
    assert case["names"] == [".pyro-gen.lock", "checkpoint.pt", "metrics.jsonl"]


def test_a_read_only_checkpoint_is_refused_before_any_step(results):
    case = results["checkpoint"]
    number, filename, message = case["error"]
    assert number == 13 and filename.endswith("checkpoint/checkpoint.pt"), message
    assert "read-only" in message, message
    assert case["steps"] == 0 and case["unchanged"] and case["epoch"] == 1


def test_a_metrics_file_made_read_only_mid_run_is_named(results):
    case = results["metrics"]
    number, filename, message = case["error"]
    assert number == 13 and filename.endswith("metrics/metrics.jsonl"), message
    # epoch 2's checkpoint was written before its record's append failed: a rerun, once
    # the file is writable, rewrites the records from the checkpoint
    assert case["epoch"] == 2 and case["records"] == [1]


def test_restoring_only_reads_a_read_only_checkpoint_and_writes_nothing(results):
    """``fit(steps=0)`` restores a run (the way ``pyro_gen.load``'s message advises for a
    ``checkpoint_dir``): its read-only files are read, not refused, and not rewritten."""
    case = results["restore"]
    assert case["error"] is None and case["steps"] == 0
    assert case["unchanged"] and case["q_loc"] == case["saved"]
