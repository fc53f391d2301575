#!/usr/bin/env bash
# Offline preprocessing of a real dataset, as in the paper: annotations + videos -> captions table -> feature store.
#
#   preprocessing/run.sh msvd  "MSR Video Description Corpus.csv" YouTubeClips/        data/msvd [feats/msvd]
#   preprocessing/run.sh lsmdc LSMDC/annotations/                   LSMDC/videos/       data/mvad [feats/mvad]
#
# Both steps are resumable: run the same command again after an interruption and it picks up where it stopped.
# Settings come from the environment (defaults in brackets):
#   GLOBAL [efficientnet_lite0]  LOCAL [none]  GLOBAL_WEIGHTS / LOCAL_WEIGHTS [pretrained]: pretrained|random|PATH
#   FRAMES [26]  GLOBAL_SIZE [the extractor's input px]  DEVICE [cpu]  DEVICES [1]  SOURCE (lsmdc only) [mvad]  VIDCAP [vidcap]
set -euo pipefail
if [ $# -lt 4 ] || { [ "$1" != msvd ] && [ "$1" != lsmdc ]; }; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
dataset=$1 annotations=$2 videos=$3 data=$4 feats=${5:-$4/features}
read -r -a vidcap <<< "${VIDCAP:-vidcap}"

prepare_args=(--annotations "$annotations" --videos "$videos" --out "$data")
if [ "$dataset" = lsmdc ]; then
  prepare_args+=(--source "${SOURCE:-mvad}")
fi
"${vidcap[@]}" prepare "$dataset" "${prepare_args[@]}"

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
