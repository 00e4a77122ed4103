"""The Ray executor on a local Ray instance: same rows and tables as the default local run."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import ray

from tests.helpers.tiny_eval import tiny_study


def _rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT r.key, s.sample, s.clean_correct, s.success, s.queries, s.linf, s.l2 FROM samples s "
                         "JOIN runs r USING (run_id) ORDER BY 1, 2").fetchall()


@pytest.mark.slow
def test_ray_executor_matches_local_run(tmp_path: Path, tiny_eval: tuple[Path, Path]) -> None:
    from rfd.eval.results import load_results
    from rfd.eval.runner import run_study
    from rfd.eval.schema import parse_study
    from rfd.eval.tables import build_table, render

    folder, ckpt = tiny_eval
    st = parse_study(tiny_study(ckpt, n=30, defenses=["none", {"family": "feature", "drops": [0.05]}]))
    local = tmp_path / "local.sqlite"
    run_study(st, local, progress=False)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
                                       "OMP_NUM_THREADS": "1"}})
    try:
        remote = tmp_path / "ray.sqlite"
        s = run_study(st, remote, executor="ray", executor_options={"threads": 1}, progress=False)
        assert s.executor == "ray" and s.complete and s.calibrations_run == 1
        again = run_study(st, remote, executor="ray", executor_options={"threads": 1}, progress=False)
        assert again.units_run == 0
    finally:
        ray.shutdown()
    assert _rows(remote) == _rows(local)
    assert render(build_table(load_results(remote), "robust"), "md") == \
        render(build_table(load_results(local), "robust"), "md")
