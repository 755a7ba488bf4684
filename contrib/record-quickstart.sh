#!/usr/bin/env bash
# Records the README's Quick start in a real terminal (tmux) and writes
#
#   docs/quickstart.txt   the terminal as text: commands and their output,
#                         a progress bar caught mid-run, csbs status
#   docs/quickstart.png   the same, rendered (ImageMagick, DejaVu Sans Mono)
#
# Run as root from anywhere (the Quick start's mount steps are left out;
# nothing needs root but the image build's mkfs). Installs tmux and
# ImageMagick with apt-get when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# ImageMagick's convert, wherever it is (another convert may come first
# in PATH).
imagemagick() {
  for c in convert /usr/bin/convert convert-im6.q16; do
    if "$c" -version 2>/dev/null | grep -q "^Version: ImageMagick"; then echo "$c"; return; fi
  done
}
need=()
command -v tmux >/dev/null || need+=(tmux)
[ -n "$(imagemagick)" ] || need+=(imagemagick)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf ] || need+=(fonts-dejavu-core)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
CONVERT=$(imagemagick)

WORK=$(mktemp -d /tmp/csbs-record.XXXXXX)
SESSION=csbs-record-$$
cleanup() {
  tmux kill-session -t "$SESSION" 2>/dev/null || true
  if [ -n "${DAEMON:-}" ]; then kill "$DAEMON" 2>/dev/null || true; wait "$DAEMON" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
go build -o "$WORK/csbs" ./cmd/csbs
cd "$WORK"
./csbs serve >daemon.log 2>&1 &
DAEMON=$!
for _ in $(seq 100); do ./csbs status >/dev/null 2>&1 && break; sleep 0.1; done

COLS=120 ROWS=56
# The shell touches .prompt each time it shows its prompt: run() waits for
# that, so the recording shows the commands exactly as typed.
tmux new-session -d -s "$SESSION" -x "$COLS" -y "$ROWS" -c "$WORK" \
  "env PS1='$ ' PROMPT_COMMAND='touch .prompt' TERM=xterm-256color bash --norc --noprofile -i"
for _ in $(seq 100); do [ -e .prompt ] && break; sleep 0.1; done
run() {
  rm -f .prompt
  tmux send-keys -t "$SESSION" -l "$1"
  tmux send-keys -t "$SESSION" Enter
  for _ in $(seq 1200); do [ -e .prompt ] && return; sleep 0.1; done
  echo "record: '$1' did not finish" >&2
  exit 1
}
# snap is the visible screen, without its trailing empty lines.
snap() { tmux capture-pane -p -t "$SESSION" | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}'; }

run "mkdir -p demo/root/etc demo/root/var/www && echo web1 > demo/root/etc/hostname"
run "head -c 3000000 /dev/urandom > demo/root/var/www/site.tar"
run "mkfs.ext4 -q -F -d demo/root demo/web1-vda.img 64M"
run "clear"
run "./csbs server add --name web1 --disk vda=demo/web1-vda.img"
run "./csbs policy create --name daily --time 02:00 --every-days 1 --max-backups 2 --quiet"
run "./csbs policy bind daily web1"
run "./csbs backup create web1 --full --enable-instant-restore --name golden --wait"
# A slow instant restore, so that its progress bar is caught mid-run.
rm -f .prompt
tmux send-keys -t "$SESSION" -l "./csbs restore start golden --instant --disk vda=demo/instant.img --rate 1MiB/s --wait"
tmux send-keys -t "$SESSION" Enter
for _ in $(seq 100); do snap | grep -q 'hydrate job-.*%' && break; sleep 0.1; done
sleep 1.5
BAR=$(snap)
for _ in $(seq 1200); do [ -e .prompt ] && break; sleep 0.1; done
run "clear"
run "./csbs gc && ./csbs scrub"
run "./csbs status"
STATUS=$(snap)

{
  echo "$BAR"
  echo
  echo "$STATUS"
} | sed 's/[[:space:]]*$//' >"$REPO/docs/quickstart.txt"

# -annotate reads % and \ as escapes; the canvas fits the text.
out=$REPO/docs/quickstart.txt
text=$(sed -e 's/\\/\\\\/g' -e 's/%/%%/g' "$out")
lines=$(wc -l <"$out")
cols=$(awk '{ if (length($0) > m) m = length($0) } END { print m }' "$out")
"$CONVERT" -size "$((cols * 8 + 32))x$((lines * 17 + 40))" xc:'#1d1f21' \
  -font /usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf -pointsize 13 -fill '#e0e0e0' \
  -annotate +16+24 "$text" "$REPO/docs/quickstart.png"
echo "wrote docs/quickstart.txt and docs/quickstart.png" >&2
