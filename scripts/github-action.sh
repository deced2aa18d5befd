#!/usr/bin/env bash
# The GitHub Action's build step (action.yml). Reads INPUT_* variables, writes step outputs
# to $GITHUB_OUTPUT. Kept as a script so a test can run it on a machine without GitHub.
set -euo pipefail
: "${INPUT_MODEL_DIR:?model-dir is required}"
: "${GITHUB_OUTPUT:?GITHUB_OUTPUT must name a file (GitHub sets it)}"
MLBUILD=${MLBUILD:-mlbuild}

args=(image "$INPUT_MODEL_DIR" --json)
[ -n "${INPUT_TAG:-}" ] && args+=(-t "$INPUT_TAG")
[ -n "${INPUT_BASE:-}" ] && args+=(--base "$INPUT_BASE")
args+=(--backend docker)

result=$("$MLBUILD" "${args[@]}")
echo "$result"
image_id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["image_id"])' "$result")
tag=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["tag"])' "$result")
digest=""

if [ "${INPUT_PUSH:-false}" = "true" ]; then
  if [ -n "${INPUT_REGISTRY:-}" ] && [ -n "${INPUT_USERNAME:-}" ]; then
    printf '%s' "${INPUT_PASSWORD:-}" | docker login "$INPUT_REGISTRY" --username "$INPUT_USERNAME" --password-stdin
  fi
  docker push "$tag"
  # RepoDigests holds <repo>@sha256:...; pick the one for the repository we pushed.
  repo=${tag%:*}
  digest=$(docker image inspect "$tag" --format '{{range .RepoDigests}}{{println .}}{{end}}' \
    | awk -F@ -v r="$repo" '$1 == r {print $2; exit}')
  [ -n "$digest" ] || { echo "::error::pushed $tag but the engine reports no digest for it"; exit 1; }
fi

{
  echo "image-id=$image_id"
  echo "digest=$digest"
  echo "tag=$tag"
} >> "$GITHUB_OUTPUT"
