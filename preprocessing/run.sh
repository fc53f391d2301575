#!/usr/bin/env bash
# Offline preprocessing of a dataset, as in the paper: annotations + videos -> captions table -> feature store.
#
#   preprocessing/run.sh DATASET --out DATA [the options of `vidcap prepare DATASET`...]
#   preprocessing/run.sh msvd  --annotations "MSR Video Description Corpus.csv" --videos YouTubeClips --out data/msvd
#   preprocessing/run.sh lsmdc --annotations LSMDC/annotations --videos LSMDC/videos --source mvad --out data/mvad
#
# DATASET is any dataset `vidcap prepare --help` lists; every option after it goes to `vidcap prepare DATASET`.
# Both steps are resumable: run the same command again after an interruption and it picks up where it stopped.
# Extraction settings come from the environment (defaults in brackets):
#   FEATS [DATA/features]  GLOBAL [efficientnet_lite0]  LOCAL [none]  GLOBAL_WEIGHTS / LOCAL_WEIGHTS [pretrained]
#   FRAMES [26]  GLOBAL_SIZE [the extractor's input px]  DEVICE [cpu]  DEVICES [1]  VIDCAP [vidcap]
set -euo pipefail
usage() { sed -n '2,12p' "$0" >&2; exit 2; }
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || usage
dataset=$1
shift
data=
args=("$@")
for i in "${!args[@]}"; do
  case ${args[$i]} in
    --out) data=${args[$((i + 1))]:-} ;;
    --out=*) data=${args[$i]#--out=} ;;
  esac
done
[ -n "$data" ] || usage
feats=${FEATS:-$data/features}
read -r -a vidcap <<< "${VIDCAP:-vidcap}"

"${vidcap[@]}" prepare "$dataset" "$@"
if [ "$dataset" = youtube2text-arctic ]; then
  # The authors' features come with the dataset: prepare wrote them to its --features store; nothing to extract.
  echo "next: ${vidcap[*]} fit --config configs/experiment/paper.yaml --data.data_dir $data --data.features_dir FEATS"
  exit 0
fi

extract_args=(--data "$data" --out "$feats" --frames "${FRAMES:-26}" --device "${DEVICE:-cpu}" --devices "${DEVICES:-1}"
              --global "${GLOBAL:-efficientnet_lite0}" --global-weights "${GLOBAL_WEIGHTS:-pretrained}")
if [ -n "${LOCAL:-}" ]; then
  extract_args+=(--local "$LOCAL" --local-weights "${LOCAL_WEIGHTS:-pretrained}")
fi
if [ -n "${GLOBAL_SIZE:-}" ]; then
  extract_args+=(--global-size "$GLOBAL_SIZE")
fi
"${vidcap[@]}" extract "${extract_args[@]}"
echo "next: ${vidcap[*]} fit --config configs/data/$dataset.yaml --config configs/model/local_global.yaml" \
     "--data.data_dir $data --data.features_dir $feats"
