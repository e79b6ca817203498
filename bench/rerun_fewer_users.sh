#!/usr/bin/env bash
# `fgjax analyze` twice with one persistent compile cache: on a synthetic log, then on the same shards less
# 10 users. With the state's users padded (fgjax.shapes.user_rows) the second run loads its programs instead
# of compiling them; compare the "compiling" part of each run's `time:` line and the wall times.
#   bash bench/rerun_fewer_users.sh /tmp/rerun     (about 30 s on a 2-core CPU; results in bench/RESULTS.md)
set -euo pipefail
work=${1:?usage: bench/rerun_fewer_users.sh WORK_DIR}
rm -rf "$work" && mkdir -p "$work"
python - "$work" <<'PY'
import pathlib, sys

import pyarrow.compute as pc
import pyarrow.parquet as pq

from fgjax.config import SyntheticConfig
from fgjax.data import synthetic

work = pathlib.Path(sys.argv[1])
paths = synthetic.generate(SyntheticConfig(num_users=5000, num_days=60, users_per_shard=1000, seed=11), work / "full")
gone = pq.read_table(paths.events_dir).column("user_id").unique()[:10]
(work / "fewer").mkdir()
for shard in sorted(paths.events_dir.glob("*.parquet")):
    table = pq.read_table(shard)
    pq.write_table(table.filter(pc.invert(pc.is_in(table["user_id"], gone))), work / "fewer" / shard.name)
PY
export FGJAX_COMPILE_CACHE="$work/xla"
unset JAX_COMPILATION_CACHE_DIR  # JAX's own setting would take precedence over FGJAX_COMPILE_CACHE
for run in full fewer; do
  events="$work/full/events"
  [ "$run" = fewer ] && events="$work/fewer"
  start=$(date +%s.%N)
  fgjax analyze --events "$events" --items "$work/full/items.parquet" --out "$work/out_$run" --no-progress \
    | grep -E "^(pass 1|forgetting|time):"
  echo "$run: wall $(echo "$(date +%s.%N) - $start" | bc) s"
done
