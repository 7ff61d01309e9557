"""Write the DSA study's searched functions to workbench/resources/functions/ of this checkout (the functions the
package ships, read only at run time; selection by validation fitness only).

    .venv/bin/python benchmarks/dsa_study_functions.py runs/study/search-seed0 runs/study/search-seed1 ...
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "workbench" / "resources" / "functions"  # source tree, not an install


def main(folders: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    best = {"evolution": [], "random": []}
    for folder in folders:
        seed = json.loads((Path(folder) / "state.json").read_text())["config"]["seed"]
        records = json.loads((Path(folder) / "best.json").read_text())
        for kind in best:
            rec = records[kind]
            best[kind].append(rec)
            print(f"seed {seed} {kind:9s}: validation ppl {rec['full_fitness']:.3f}  {json.dumps(rec['function'])}")
        evolved = json.dumps(records["evolution"]["function"], indent=1) + "\n"
        (OUT / f"dsa-study-evo-seed{seed}.json").write_text(evolved)
    for kind, name in (("evolution", "dsa-evolved.json"), ("random", "dsa-study-random-best.json")):
        rec = min(best[kind], key=lambda r: r["full_fitness"])
        (OUT / name).write_text(json.dumps(rec["function"], indent=1) + "\n")
        print(f"{name}: validation ppl {rec['full_fitness']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
