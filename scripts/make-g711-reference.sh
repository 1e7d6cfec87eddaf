#!/usr/bin/env bash
# Regenerates the G.711 reference tables used by the unit tests in src/media/g711.rs.
#
# Encode tables: all 65,536 signed 16-bit inputs, in the order of their bit pattern
# 0x0000, 0x0001, ..., 0xFFFF (i.e. index i holds the code for `i as u16 as i16`),
# run through sox to μ-law and A-law: 65,536 bytes each.
# Decode tables: all 256 codes 0x00..=0xFF run through sox back to 16-bit linear,
# little-endian: 512 bytes each.
#
# `-D` switches sox's automatic dither off; without it the encode tables would be noisy.
set -euo pipefail

out_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/data/g711"
mkdir -p "$out_dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

perl -e 'print pack("v", $_) for 0 .. 65535' > "$tmp/all-s16le.raw"
perl -e 'print chr($_) for 0 .. 255' > "$tmp/all-codes.raw"

raw16=(-t raw -r 8000 -c 1 -e signed-integer -b 16 -L)
sox -D "${raw16[@]}" "$tmp/all-s16le.raw" -t ul -r 8000 -c 1 "$out_dir/ulaw_encode.bin"
sox -D "${raw16[@]}" "$tmp/all-s16le.raw" -t al -r 8000 -c 1 "$out_dir/alaw_encode.bin"
sox -D -t ul -r 8000 -c 1 "$tmp/all-codes.raw" "${raw16[@]}" "$out_dir/ulaw_decode.s16le"
sox -D -t al -r 8000 -c 1 "$tmp/all-codes.raw" "${raw16[@]}" "$out_dir/alaw_decode.s16le"

for f in ulaw_encode.bin alaw_encode.bin ulaw_decode.s16le alaw_decode.s16le; do
    printf '%s %s bytes\n' "$f" "$(wc -c < "$out_dir/$f")"
done
sox --version
