#!/usr/bin/env bash
# Build this bundle's TensorRT engine on the target with trtexec (TensorRT 8.x, 10.x or 11.x). Written by edgeres.
#
#   ./build_engine.sh [ENGINE] [--precision fp32|fp16|int8] [--min-batch N] [--opt-batch N] [--max-batch N]
#                     [--workspace-mb N] [--no-fp16-fallback] [--strongly-typed] [--onnx FILE]
#                     [--frame-sizes MIN_HxW,OPT_HxW,MAX_HxW] [--tensorrt-version X.Y] [--dry-run]
#   TRTEXEC=/path/to/trtexec ./build_engine.sh    (default: trtexec on PATH, else /usr/src/tensorrt/bin/trtexec)
#
# --dry-run prints the trtexec command instead of running it. The TensorRT version comes from the banner trtexec
# prints ("[TensorRT v8502]" is 8.5.2, "[TensorRT v100300]" is 10.3.0) unless --tensorrt-version or TRT_VERSION
# gives it. trtexec's flags by version (NVIDIA's 8.x->10.x and 10.x->11.x trtexec migration guides):
#   8.4      --memPoolSize=workspace:MiB replaces --workspace=MiB (removed in 10.0; JetPack 4.6's 8.2 needs it)
#   8.x-10.x --fp16 / --int8 allow those precisions (weak typing); INT8 scales come from the QDQ ONNX: no --calib
#   10.x     --stronglyTyped: precisions come from the ONNX's own types (asked for with --strongly-typed)
#   11.x     --fp16, --int8 and --best are removed: every network is strongly typed. int8 comes from the QDQ ONNX;
#            fp16 needs an ONNX converted first (python -m modelopt.onnx.autocast), then --strongly-typed
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# edgeres: DEFAULTS begin
ONNX=model.onnx
ENGINE=model.engine
PRECISION=fp16
MIN_BATCH=1
OPT_BATCH=1
MAX_BATCH=8
WORKSPACE_MB=1024
FP16_FALLBACK=1
TIMING_CACHE=timing.cache
META=
INPUT_NAME=input
INPUT_DIMS=3x224x224
FRAME_SIZES=
# edgeres: DEFAULTS end
# The defaults name files in the bundle; paths given as arguments are taken as given.
ONNX="$HERE/$ONNX"; ENGINE="$HERE/$ENGINE"
TIMING_CACHE="${TIMING_CACHE:+$HERE/$TIMING_CACHE}"; META="${META:+$HERE/$META}"

fail() { echo "error: $*" >&2; exit 2; }
DRY_RUN=0
STRONG=0
TRT_VERSION="${TRT_VERSION:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --precision) PRECISION="${2:?$1 needs a value}"; shift 2 ;;
    --onnx) ONNX="${2:?$1 needs a value}"; shift 2 ;;
    --engine) ENGINE="${2:?$1 needs a value}"; shift 2 ;;
    --min-batch) MIN_BATCH="${2:?$1 needs a value}"; shift 2 ;;
    --opt-batch) OPT_BATCH="${2:?$1 needs a value}"; shift 2 ;;
    --max-batch) MAX_BATCH="${2:?$1 needs a value}"; shift 2 ;;
    --workspace-mb) WORKSPACE_MB="${2:?$1 needs a value}"; shift 2 ;;
    --frame-sizes) FRAME_SIZES="${2:?$1 needs a value}"; shift 2 ;;
    --tensorrt-version) TRT_VERSION="${2:?$1 needs a value}"; shift 2 ;;
    --no-fp16-fallback) FP16_FALLBACK=0; shift ;;
    --strongly-typed) STRONG=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) fail "unknown option $1 (see --help)" ;;
    *) ENGINE="$1"; shift ;;
  esac
done

case "$PRECISION" in fp32|fp16|int8) ;; *) fail "--precision is fp32, fp16 or int8, got '$PRECISION'" ;; esac
for n in "$MIN_BATCH" "$OPT_BATCH" "$MAX_BATCH" "$WORKSPACE_MB"; do
  case "$n" in ''|*[!0-9]*) fail "batch sizes and --workspace-mb are positive integers, got '$n'" ;; esac
done
[ "$MIN_BATCH" -ge 1 ] && [ "$MIN_BATCH" -le "$OPT_BATCH" ] && [ "$OPT_BATCH" -le "$MAX_BATCH" ] \
  || fail "need 1 <= min batch <= opt batch <= max batch, got $MIN_BATCH, $OPT_BATCH, $MAX_BATCH"
[ "$DRY_RUN" = 1 ] || [ -f "$ONNX" ] || fail "$ONNX: no such ONNX file"

TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"
if [ -z "$TRT_VERSION" ] && [ -x "$TRTEXEC" ]; then
  code="$("$TRTEXEC" --help 2>&1 | sed -n 's/.*TensorRT v\([0-9][0-9]*\).*/\1/p' | head -n 1 || true)"
  if [ -n "$code" ]; then  # 8.x encodes MAJOR*1000+MINOR*100+PATCH, 10.x on MAJOR*10000+MINOR*100+PATCH
    if [ "$code" -ge 100000 ]; then TRT_VERSION="$((code / 10000)).$((code / 100 % 100))"
    else TRT_VERSION="$((code / 1000)).$((code / 100 % 10))"; fi
  fi
fi
if [ -z "$TRT_VERSION" ]; then
  [ "$DRY_RUN" = 1 ] || [ -x "$TRTEXEC" ] || fail "trtexec not found; set TRTEXEC=/path/to/trtexec"
  echo "note: cannot tell the TensorRT version from $TRTEXEC; using the 8.4-10.x flags (--tensorrt-version sets it)" >&2
  TRT_VERSION=10.0
fi
MAJOR="${TRT_VERSION%%.*}"; MINOR="${TRT_VERSION#*.}"; MINOR="${MINOR%%.*}"
case "$MAJOR$MINOR" in ''|*[!0-9]*) fail "--tensorrt-version is MAJOR.MINOR such as 8.5 or 10.3, got '$TRT_VERSION'" ;; esac

cmd=("$TRTEXEC" "--onnx=$ONNX" "--saveEngine=$ENGINE")
if [ "$MAJOR" -ge 11 ] || [ "$STRONG" = 1 ]; then
  [ "$MAJOR" -ge 10 ] || fail "--strongly-typed needs TensorRT 10 or later; this is $TRT_VERSION"
  if [ "$PRECISION" = fp16 ] && [ "$STRONG" = 0 ]; then
    fail "TensorRT $TRT_VERSION has no --fp16: it builds the ONNX in its own types. Convert it first" \
         "(python -m modelopt.onnx.autocast --onnx_path MODEL.onnx --output_path MODEL.fp16.onnx), then" \
         "./build_engine.sh --onnx MODEL.fp16.onnx --strongly-typed; or build --precision fp32"
  fi
  [ "$MAJOR" -ge 11 ] || cmd+=(--stronglyTyped)  # always on from 11.0, where the flag is no longer needed
else
  if [ "$PRECISION" = fp16 ] || { [ "$PRECISION" = int8 ] && [ "$FP16_FALLBACK" = 1 ]; }; then cmd+=(--fp16); fi
  if [ "$PRECISION" = int8 ]; then cmd+=(--int8); fi
fi
if [ -n "$INPUT_DIMS" ]; then  # a dynamic batch (and frame size): one optimization profile
  sizes=(); IFS=, read -r -a sizes <<< "$FRAME_SIZES"
  case "$INPUT_DIMS" in *H*|*W*) [ "${#sizes[@]}" = 3 ] || fail "the input takes frames of any size: give" \
                                   "--frame-sizes MIN_HxW,OPT_HxW,MAX_HxW" ;; esac
  k=0
  for pair in "min:$MIN_BATCH" "opt:$OPT_BATCH" "max:$MAX_BATCH"; do
    dims="$INPUT_DIMS"
    if [ "${#sizes[@]}" = 3 ]; then
      frame="${sizes[$k]}"; dims="${dims/H/${frame%x*}}"; dims="${dims/W/${frame#*x}}"
    fi
    cmd+=("--${pair%%:*}Shapes=$INPUT_NAME:${pair#*:}x$dims"); k=$((k + 1))
  done
fi
if [ "$MAJOR" -lt 8 ] || { [ "$MAJOR" = 8 ] && [ "$MINOR" -lt 4 ]; }; then
  cmd+=("--workspace=$WORKSPACE_MB")
else
  cmd+=("--memPoolSize=workspace:$WORKSPACE_MB")  # MiB
fi
[ -z "$TIMING_CACHE" ] || cmd+=("--timingCacheFile=$TIMING_CACHE")

if [ "$DRY_RUN" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
command -v "$TRTEXEC" >/dev/null || fail "trtexec not found at $TRTEXEC; set TRTEXEC=/path/to/trtexec"
"${cmd[@]}"
# An engine file cannot hold edgeres metadata: edgeres's TensorRT runner reads it from ENGINE.json.
if [ -n "$META" ] && [ -f "$META" ]; then cp "$META" "$ENGINE.json"; fi
echo "wrote $ENGINE (TensorRT $TRT_VERSION, $PRECISION)"
