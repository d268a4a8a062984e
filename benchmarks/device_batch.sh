#!/usr/bin/env bash
# The prepared batch for a session lent a GPU through the device tool (README, "On a GPU").
#
# Here, on the CPU machine, in the repository root:
#   bash benchmarks/device_batch.sh prepare DATA_DIR NAME...   # wheels -> .whl/, datasets -> .device/data/,
#                                                              # the work -> .device/work.txt (the default work
#                                                              # needs: data tiktok baby sports clothing)
#   bash benchmarks/device_batch.sh lean                       # only if prepare says the tree is too large
# On the device, one `run` call with carry [".whl", ".device"] and timeout_s 600:
#   bash benchmarks/device_batch.sh run
# Back here, with the folder the call's files came back to:
#   bash benchmarks/device_batch.sh restore                    # after `lean` only
#   bash benchmarks/device_batch.sh unpack FILES_AT            # records and journals -> results/
#
# What travels to the device (tracked files, untracked files git does not ignore, the carried .whl/ and
# .device/) must stay under 64 MiB. The committed run records alone outgrow that as the study fills in, and
# the device needs none of them, nor the executed chapters (a search reads its journal under results/tuning/;
# `fitmm reproduce` plans from the data, and needs every dataset the profile names). `lean` takes
# results/runs/ and results/notebooks/ out of git's index and ignores them (.git/info/exclude), touching no
# file and no commit, so they stay here; `restore` puts the index back as HEAD has it. Between the two,
# commit nothing (stop any loop that commits records): a commit would record them as deleted.
#
# `run`, all of it within DEADLINE seconds (default 500) of its start:
#   0. The sync check, beside step 1: tests/test_train.py's `never_waits` test, a few training steps of every
#      model under torch.cuda.set_sync_debug_mode("error"); its output goes to $OUT/sync_check.log.
#   1. GPU timings, before the work: TIMED, one run per line, "DATASET MODEL [KEY=VALUE ...]" (default: FITMM, SSR
#      and LightGCN on sports, the largest; SSR without its contrastive term where the dataset has one modality, as
#      the full profile runs it), TIMED_EPOCHS epochs each (default 2; each run of the work records its own s/epoch
#      too, beside the others); s/epoch, valid-eval s and peak memory from each record, printed and written to
#      $OUT/gpu_timings.tsv with the device's name.
#   2. The heaviest work: WORK, one line per job, all lines at once, each stopped at the deadline; a line is a
#      `fitmm` argument list (its quotes kept), or several joined by ' && ' that run in turn. The default is
#      what `prepare` wrote to .device/work.txt (benchmarks/device_work.py): everything the full profile still
#      lacks here, by run label, since no record travels (`lean`) and the device takes every run there as
#      unfinished: one `reproduce` line for the runs still to train (chapter 05's SSR runs on TikTok's exact
#      bands, 283 s per epoch on a CPU core, and Baby's band counts, 320 s there, are the heaviest), and per
#      unfinished search its `tune`, then its seeds. These plan every chapter: prepare all four datasets (61 MiB
#      travel after `lean`). Stop the jobs training here first (a search must not have workers on two
#      machines); `unpack` never replaces a record here. A stopped run leaves its checkpoint behind (it does
#      not travel), so plan work that finishes; a stopped search trial is freed here by `fitmm tune ...
#      --reclaim`.
#      WORK= (empty) runs none: timings only.
#   3. Every record, trace and search journal written meanwhile -> $OUT/records.tar.gz (no checkpoints); each run's
#      own log (progress bars, s/epoch), its last 20 kB, -> $OUT/run-logs.tar.gz.
# The device tree is a copy of this checkout less what `lean` keeps home: a search goes on where its
# journal stands here.
set -uo pipefail
cd "$(dirname "$0")/.."

prepare() {  # DATA_DIR NAME...: what the device lacks (no internet there): optuna's wheels, the datasets
    local data=$1; shift
    mkdir -p .whl .device/data
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        optuna==5.0.0 alembic==1.20.1 sqlalchemy==2.1.9 colorlog==6.12.0 mako==1.4.3 \
        || exit 2
    for name in "$@"; do
        [ -f "$data/$name/$name.inter" ] || { echo "device_batch: $data/$name/$name.inter not found" >&2; exit 2; }
        rm -rf ".device/data/$name" && cp -rL "$data/$name" .device/data/
    done
    python3 benchmarks/device_work.py --data-dir "$data" > .device/work.txt || exit 2
    sed 's/^/work: /' .device/work.txt | cut -c 1-160
    du -sh .whl .device
    local size
    size=$(travel_bytes)
    echo "device_batch: carry [\".whl\", \".device\"]; $((size / 1048576)) MiB would travel (limit 64 MiB)"
    if [ "$size" -gt "$TRAVEL_LIMIT" ]; then
        echo "device_batch: over the limit; run 'bash $0 lean' now and 'bash $0 restore' after the call" >&2
    fi
}

TRAVEL_LIMIT=$(( 64 * 1048576 ))
LEAN_MARK=.git/device_batch.lean
EXCLUDE=.git/info/exclude
HOME_ONLY="results/runs results/notebooks"  # what `lean` keeps home: the records, the executed chapters

travel_bytes() {  # bytes of what a device call sends: tracked and untracked-not-ignored files, .whl/, .device/
    local files carried
    files=$({ git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r stat -c %s -- 2>/dev/null \
        | awk '{s += $1} END {print s + 0}')
    carried=$(du -sbc .whl .device 2>/dev/null | tail -n 1 | cut -f1)
    echo $(( files + ${carried:-0} ))
}

lean() {  # $HOME_ONLY out of the index and ignored: they do not travel; files and commits untouched
    [ ! -e "$LEAN_MARK" ] || { echo "device_batch: already lean; 'bash $0 restore' first" >&2; exit 2; }
    git diff --cached --quiet || { echo "device_batch: the index has staged changes; commit or unstage them first" >&2; exit 2; }
    mkdir -p "$(dirname "$EXCLUDE")"
    local path
    for path in $HOME_ONLY; do
        git rm -r -q --cached "$path" || exit 2
        echo "/$path/" >> "$EXCLUDE"
    done
    touch "$LEAN_MARK"
    echo "device_batch: $HOME_ONLY will not travel; $(( $(travel_bytes) / 1048576 )) MiB would travel now." \
         "Commit nothing until 'bash $0 restore'."
}

restore() {  # the index as HEAD has it for $HOME_ONLY, and their ignore lines gone
    [ -e "$LEAN_MARK" ] || { echo "device_batch: not lean (no $LEAN_MARK); nothing to restore" >&2; exit 2; }
    local path
    for path in $HOME_ONLY; do
        git reset -q -- "$path"
        grep -vxF "/$path/" "$EXCLUDE" > "$EXCLUDE.tmp"; mv "$EXCLUDE.tmp" "$EXCLUDE"
    done
    rm -f "$LEAN_MARK"
    # shellcheck disable=SC2086  # the paths
    git status --short $HOME_ONLY | head -n 5
    echo "device_batch: restored; $HOME_ONLY are tracked again"
}

run() {
    : "${OUT:?run on the device machine, where OUT is set}"
    local deadline=$(( $(date +%s) + ${DEADLINE:-500} )) data=.device/data stamp=/tmp/device_batch.stamp
    touch "$stamp"
    if ! python3 -c "import optuna, pytest" 2>/dev/null; then  # the device image lacks them: install the carried wheels
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 FITMM_CACHE=/tmp/fitmm-cache
    python3 -c "import torch; print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
    # the sync check runs beside the timings (a few steps on the synthetic set); its verdict is printed at the end
    timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_train.py -k never_waits > "$OUT/sync_check.log" 2>&1 &
    local sync_pid=$!

    local timing=/tmp/device_batch.timing
    rm -rf "$timing"  # this run's timings only
    local dataset model overrides
    while IFS=' ' read -r dataset model overrides; do
        [ -n "$model" ] || continue
        [ -d "$data/$dataset" ] || { echo "timing: no $data/$dataset, skipped"; continue; }
        local left=$(( deadline - $(date +%s) )) sets=()
        [ "$left" -gt 30 ] || { echo "timing: deadline reached"; break; }
        for kv in $overrides; do sets+=(--set "$kv"); done
        # SSR's contrastive term needs two item modalities; the full profile drops it where a dataset has one
        if [ "$model" = ssr ] && [ "$(find "$data/$dataset" -name '*_feat.npy' | wc -l)" -lt 2 ]; then
            sets+=(--set contrastive=false)
        fi
        echo "timing: $dataset $model ${sets[*]}"
        timeout "$left" python3 -m fitmm train --model "$model" --dataset "$dataset" --data-dir "$data" --quiet \
            --set epochs="${TIMED_EPOCHS:-2}" --set patience=1000 "${sets[@]}" --results-dir "$timing"
    done <<< "${TIMED:-$'sports fitmm\nsports ssr\nsports lightgcn'}"
    python3 - "$timing" "$OUT/gpu_timings.tsv" <<'EOF'
import json, sys
from pathlib import Path
import torch
device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
rows = ["device\tdataset\tmodel\tepochs\ts_per_epoch\teval_s\tpeak_memory_mb"]
for path in sorted(Path(sys.argv[1]).glob("runs/*/*/*/record.json")):
    r = json.loads(path.read_text())
    rows.append(f"{device}\t{r['dataset']['name']}\t{r['model']}\t{r['epochs']}\t{r['seconds_per_epoch']:.3f}\t"
                f"{r['eval_seconds']:.3f}\t{r['peak_memory_mb']:.0f}")
Path(sys.argv[2]).write_text("\n".join(rows) + "\n")
print("\n".join(rows))
EOF

    local work=${WORK-$(cat .device/work.txt 2> /dev/null)}  # WORK= (empty): timings only
    local left=$(( deadline - $(date +%s) )) i=0
    if [ "$left" -gt 30 ]; then
        while IFS= read -r line; do
            [ -n "$line" ] || continue
            i=$((i + 1))
            work_line "$line" "$deadline" "$data" > "$OUT/work-$i.log" 2>&1 &
        done <<< "$work"
        wait
        for log in "$OUT"/work-*.log; do  # progress bars can fill a log past what a file back may hold
            [ -f "$log" ] || continue  # no line, no log
            tail -c 2000000 "$log" > "$log.tail" && mv "$log.tail" "$log"
        done
        echo "work: $i line(s) ended; their logs (the last 2 MB each) are work-*.log"
    else
        echo "work: deadline reached before it started"
    fi
    # each run's own log (its progress, s/epoch), the last 20 kB, in one archive: a call returns at most 8 files
    local logs
    logs=$(mktemp -d)
    for log in results/logs/*.log; do
        [ -f "$log" ] && [ "$log" -nt "$stamp" ] && tail -c 20000 "$log" | tr '\r' '\n' > "$logs/${log##*/}"
    done
    tar czf "$OUT/run-logs.tar.gz" -C "$logs" . && rm -rf "$logs"
    wait "$sync_pid" 2> /dev/null  # reaped already where the work waited for it
    tail -n 1 "$OUT/sync_check.log" | sed 's/^/sync check: /'
    mkdir -p results/runs results/tuning  # none yet where nothing was trained
    find results/runs results/tuning -type f -newer "$stamp" ! -path '*/checkpoints/*' ! -name '*.lock' \
        ! -name '.lock*' ! -path '*/logs/*' -print0 | tar czf "$OUT/records.tar.gz" --null -T -
    echo "records back: $(tar tzf "$OUT/records.tar.gz" | grep -c 'record\.json$')"
}

work_line() {  # LINE DEADLINE DATA: one WORK line, its fitmm commands (separated by ' && ') in turn, to the deadline
    local rest=$1 deadline=$2 data=$3 cmd left
    while [ -n "$rest" ]; do
        cmd=${rest%% && *}
        if [ "$cmd" = "$rest" ]; then rest=; else rest=${rest#* && }; fi
        left=$(( deadline - $(date +%s) ))
        [ "$left" -gt 30 ] || { echo "work: deadline reached before: fitmm $cmd"; return; }
        echo "work: fitmm $cmd"
        # each command is a fitmm argument list, its quotes kept (a --runs-matching label has spaces)
        eval "OMP_NUM_THREADS=2 timeout $left python3 -m fitmm $cmd --data-dir $data --results-dir results" || return
    done
}

unpack() {  # FILES_AT: the folder the device call's files came back to
    local from=$1
    [ -f "$from/records.tar.gz" ] || { echo "device_batch: $from/records.tar.gz not found" >&2; exit 2; }
    # a record here stays as it is (the device rebuilt a run whose record stayed home); journals are replaced
    tar xzf "$from/records.tar.gz" --skip-old-files --wildcards 'results/runs/*' 2> /dev/null
    tar xzf "$from/records.tar.gz" --wildcards 'results/tuning/*' 2> /dev/null
    [ -f "$from/gpu_timings.tsv" ] && mkdir -p results/benchmarks && cp "$from/gpu_timings.tsv" results/benchmarks/
    git status --short results | head -n 40
    echo "device_batch: commit these; resume a search that had trials running there with fitmm tune ... --reclaim"
}

case "${1:-}" in
    prepare) shift; [ $# -ge 2 ] || { echo "usage: $0 prepare DATA_DIR NAME..." >&2; exit 2; }; prepare "$@" ;;
    lean) lean ;;
    restore) restore ;;
    run) run ;;
    unpack) [ $# -eq 2 ] || { echo "usage: $0 unpack FILES_AT" >&2; exit 2; }; unpack "$2" ;;
    *) echo "usage: $0 prepare DATA_DIR NAME... | lean | run | restore | unpack FILES_AT" >&2; exit 2 ;;
esac
