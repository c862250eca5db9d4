"""Build the small real calibration table that the torch tests read: tests/data/tiny.h5.

The `tiny` preset (8x8 tile, coarse grids), every surface, solved in ngspice as
`circuitsim calibrate --preset tiny` does (about 10 s on 2 cores). The tests of the surrogate
and training layers read this file instead of running ngspice; `tests/test_test_table.py`
(a SPICE test) fails when the netlists, grids or ngspice version have moved on, with the
advice to run this script again:

    .venv/bin/python scripts/make_test_table.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "tests" / "data" / "tiny.h5"


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from calibration.calibrate import calibrate
    from calibration.store import atomic_write, open_table
    from netlists.config import preset

    with tempfile.TemporaryDirectory(prefix="circuitsim-test-table-") as tmp:
        res = calibrate(preset("tiny"), preset="tiny", out=tmp, workers=2, force=True)
        open_table(res.path, expected_hash=res.content_hash)
        TARGET.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(TARGET, lambda out: shutil.copyfile(res.path, out))
    TARGET.chmod(0o644)
    print(f"{TARGET.relative_to(ROOT)}: content hash {res.content_hash} "
          f"({res.spice_runs} ngspice runs, {res.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
