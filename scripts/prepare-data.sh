#!/usr/bin/env bash
# Extracts the default corpus, the King James Bible of Debian's bible-kjv package (the `bible`
# command; scripts/install-deps.sh installs it), to data/kjv.txt in the repository; and, when
# Debian's dataset-fashion-mnist is installed, decompresses its four idx files into
# data/fashion-mnist/ (the image corpus, data/fashion_mnist.h; skipped with a notice otherwise). Idempotent: the
# text is regenerated (about 0.1 s) and the file is replaced only when its bytes differ; the file is
# written to a temporary name and renamed, so a reader never sees a partial one.
#
# Format (plain ASCII, about 4.2 MB, 31,102 verses in 1,189 chapters):
#   Genesis 1
#   <empty line>
#   1 In the beginning God created the heaven and the earth.
#   2 And the earth was without form, and void; ...
#   <empty line>
#   Genesis 2
#   ...
# i.e. `bible`'s own pretty-printed layout with no line wrapping: a chapter heading (full book
# name and chapter number), an empty line, then one verse per line, "<verse number> <text>";
# chapters are separated by one empty line; the file ends with "... be with you all. Amen.\n".
# (`bible` wraps lines at $COLUMNS and indents verses by two spaces; -l 100000 turns the wrapping
# off, and the indent and the leading empty line are removed here. `bible -f` would instead print
# one verse per line prefixed with an abbreviated reference such as "Ge1:1".)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/data/kjv.txt"

if ! command -v bible >/dev/null 2>&1; then
  echo "prepare-data: the 'bible' command is missing; install Debian's bible-kjv package" \
       "(scripts/install-deps.sh, or: sudo apt-get install bible-kjv)" >&2
  exit 1
fi

mkdir -p "$root/data"
tmp="$(mktemp "$root/data/.kjv.txt.XXXXXX")"
trap 'rm -f "$tmp"' EXIT

# stdin from /dev/null: with no tty `bible` must not wait for interactive commands.
bible -l 100000 "Gen1:1-Rev22:21" </dev/null |
  sed -e '1{/^$/d}' -e 's/^  \([0-9][0-9]*\) /\1 /' >"$tmp"

# Sanity checks: the whole text, cleanly converted.
chapters=$(LC_ALL=C grep -c '^[1-3]\{0,1\} \{0,1\}[A-Z][A-Za-z ]*[a-z] [0-9][0-9]*$' "$tmp" || true)
verses=$(( $(LC_ALL=C grep -c . "$tmp" || true) - chapters ))
size=$(wc -c <"$tmp")
first=$(head -n 1 "$tmp")
last=$(tail -n 1 "$tmp")
if [ "$verses" -ne 31102 ] || [ "$chapters" -ne 1189 ] || [ "$first" != "Genesis 1" ] ||
   [ "$last" != "21 The grace of our Lord Jesus Christ be with you all. Amen." ] ||
   grep -q '^ ' "$tmp" || LC_ALL=C grep -q '[^ -~]' "$tmp"; then
  echo "prepare-data: unexpected output from 'bible' ($size bytes, $verses verses, $chapters chapters," \
       "first line '$first'); expected 31102 verses in 1189 chapters of plain ASCII" >&2
  exit 1
fi

if [ -f "$out" ] && cmp -s "$tmp" "$out"; then
  echo "prepare-data: $out is up to date ($size bytes)"
  rm -f "$tmp"
else
  chmod 644 "$tmp"
  mv -f "$tmp" "$out"
  echo "prepare-data: wrote $out ($size bytes, $verses verses, $chapters chapters)"
fi
trap - EXIT

# Fashion-MNIST: gunzip each idx file (written to a temporary name, then renamed) unless present.
fm_src=/usr/share/datasets/fashion-mnist
fm_out="$root/data/fashion-mnist"
if [ ! -f "$fm_src/train-images-idx3-ubyte.gz" ]; then
  echo "prepare-data: $fm_src not found; install Debian's dataset-fashion-mnist (scripts/install-deps.sh)" \
       "for the image corpus (--data fashion-mnist); skipped"
  exit 0
fi
mkdir -p "$fm_out"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  if [ -f "$fm_out/$f" ] && [ "$fm_out/$f" -nt "$fm_src/$f.gz" ]; then continue; fi
  gunzip -c "$fm_src/$f.gz" >"$fm_out/.$f.tmp"
  mv -f "$fm_out/.$f.tmp" "$fm_out/$f"
  echo "prepare-data: wrote $fm_out/$f ($(wc -c <"$fm_out/$f") bytes)"
done
