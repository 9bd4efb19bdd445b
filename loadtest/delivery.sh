#!/usr/bin/env bash
# Upstream-token → client-delta latency through confab on loopback (release build).
# Usage: bash loadtest/delivery.sh [TOKENS] [CLIENTS]   (see loadtest/scenarios.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENS="${1:-2000}" CLIENTS="${2:-2}" exec bash loadtest/scenarios.sh delivery
