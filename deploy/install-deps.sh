#!/usr/bin/env bash
# Installs every Debian 12 package nextq needs to build, test and run. Idempotent: packages
# already present are skipped, so a second run does nothing and needs no network.
# Usage: deploy/install-deps.sh [--print]   (--print: only print the apt-get line for what is missing)
set -euo pipefail

PKGS=(
  build-essential pkg-config      # compiler, make, pkg-config for library flags
  libyaml-dev                     # config and job YAML (libyaml: real YAML with line/column marks)
  libjansson-dev                  # JSON: envelopes, manifests, results (see README for why jansson)
  libssl-dev                      # sha256 of every stored object (libcrypto EVP)
  libhiredis-dev redis-server redis-tools  # Redis Streams backend; the server and redis-cli for tests
  librdkafka-dev                  # Kafka backend (and its mock cluster for tests)
  libarchive-dev                  # WebDataset tar shards
  libcriterion-dev                # unit and integration tests
  libopenblas-dev                 # f32 GEMM/GEMV backend
  libdnnl-dev                     # oneDNN matmul (f32/bf16) and convolutions
  zlib1g-dev                      # gzip (CLIP's bpe_simple_vocab_16e6.txt.gz)
  libpcre2-dev libicu-dev         # tokenizer regexes with Unicode classes; Unicode lowercasing
  libjpeg62-turbo-dev libpng-dev libwebp-dev  # image decoding
  libsndfile1-dev                 # WAV/FLAC/OGG decoding and WAV writing
  libavformat-dev libavcodec-dev libavutil-dev libswscale-dev  # video decoding/encoding
  libmicrohttpd-dev               # `nextq api` HTTP server and the --metrics-listen Prometheus endpoint
  libcurl4-openssl-dev            # API integration tests: real HTTP client (and WebDriver calls to chromedriver)
  chromium chromium-driver        # headless browser test of the demo page (the test SKIPs when absent)
  wrk                             # bench/bench_api.sh: HTTP load generator for POST /v1/generate (loopback only)
  clang libclang-rt-dev           # make fuzz: libFuzzer + ASan/UBSan targets (tests/fuzz)
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi
line="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "${1:-}" = "--print" ] || [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing packages; run as root:" >&2
  echo "  apt-get update && $line" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
$line
echo "install-deps: installed ${missing[*]}"
