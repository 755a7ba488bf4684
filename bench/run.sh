#!/usr/bin/env bash
# make bench: install the peers, build a realistic ext4 image and a
# 1%-changed copy, then run the benchmark driver, which prints one table
# and writes bench/results.md. Not part of CI.
#
#   BENCH_DIR   work dir (default: a new dir under /var/tmp), needs ~8 GiB
#   BENCH_REPS  runs per figure; the median is reported (default 3)
#   BENCH_IMAGE_MB  image size (default 2048)
#   BENCH_ONLY  groups to run (default ceilings,store,nbd; make
#               bench-replication runs replication)
#   BENCH_OUT   where the table goes (default bench/results.md)
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
tools="restic:restic qemu-img:qemu-utils nbdcopy:libnbd-bin fio:fio b3sum:b3sum mkfs.ext4:e2fsprogs"
# BENCH_S3=1 (make bench-s3): the object-store backend on a local Ceph
# RADOS Gateway, against the local backend and restic's s3 backend;
# writes bench/results-s3.md.
if [ -n "${BENCH_S3:-}" ]; then
  tools="$tools radosgw:radosgw ceph-mon:ceph-mon ceph-osd:ceph-osd"
fi
for p in $tools; do
  command -v "${p%%:*}" >/dev/null || need+=("${p##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

WORK=${BENCH_DIR:-$(mktemp -d /var/tmp/csbs-bench.XXXXXX)}
SIZE_MB=${BENCH_IMAGE_MB:-2048}
mkdir -p "$WORK"
IMG="$WORK/base.img"
if [ ! -f "$IMG" ]; then
  echo "building a ${SIZE_MB} MiB ext4 image of real files in $WORK ..." >&2
  STAGE="$WORK/stage"
  rm -rf "$STAGE"; mkdir -p "$STAGE"
  # Real files: /usr/share, then libraries until ~60% of the image is used.
  budget=$(( SIZE_MB * 6 / 10 ))
  cp -a /usr/share "$STAGE/share"
  for d in /usr/lib/x86_64-linux-gnu /usr/lib/go* /usr/local/go /usr/lib/gcc /usr/lib/python3*; do
    [ -e "$d" ] || continue
    used=$(du -sm "$STAGE" | cut -f1)
    [ "$used" -lt "$budget" ] || break
    cp -a "$d" "$STAGE/$(basename "$d")-$RANDOM" 2>/dev/null || true
  done
  # Trim to the budget so the file system never fills.
  while [ "$(du -sm "$STAGE" | cut -f1)" -gt "$budget" ]; do
    victims=$( (find "$STAGE" -type f -size +1M || true) | sed -n '1,50p')
    [ -n "$victims" ] || break
    echo "$victims" | xargs -d '\n' rm -f
  done
  mkfs.ext4 -q -F -b 4096 -d "$STAGE" "$IMG" "${SIZE_MB}M"
  rm -rf "$STAGE"
fi

go build -o "$WORK/csbs" ./cmd/csbs
go build -o "$WORK/csbsbench" ./bench/cmd/csbsbench
if [ -n "${BENCH_S3:-}" ]; then
  "$WORK/csbsbench" -s3 -work "$WORK" -image "$IMG" -csbs "$WORK/csbs" -reps "${BENCH_REPS:-3}" -codec "${BENCH_CODEC:-zstd}" -out bench/results-s3.md
else
  "$WORK/csbsbench" -work "$WORK" -image "$IMG" -csbs "$WORK/csbs" -reps "${BENCH_REPS:-3}" -codec "${BENCH_CODEC:-zstd}" \
    -only "${BENCH_ONLY:-ceilings,store,nbd}" -out "${BENCH_OUT:-bench/results.md}"
fi
