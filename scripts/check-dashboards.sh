#!/usr/bin/env bash
# Validate dashboards/*.json against Grafana's own TypeScript schema
# (@grafana/schema): each dashboard is embedded as an object literal in a
# generated .ts file as `<json> satisfies Dashboard`, and `tsc --noEmit`
# type-checks it. An object literal (rather than `import x from "./d.json"`)
# keeps string literal types (e.g. threshold `mode`) and makes tsc report
# unknown keys (excess property checks), not only wrong types. String enums of
# the schema are compared by value (JSON cannot hold a TypeScript enum).
#
# The npm packages live outside the repo, in $CUSTOS_TEST_CACHE/grafana-schema
# (default ~/.cache/custos-test/grafana-schema); installed when missing.
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="${CUSTOS_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/custos-test}/grafana-schema"

command -v npm >/dev/null || { echo "check-dashboards: npm not found (apt-get install -y npm)" >&2; exit 1; }
mkdir -p "$CACHE"
if [[ ! -x "$CACHE/node_modules/.bin/tsc" || ! -d "$CACHE/node_modules/@grafana/schema" ]]; then
  [[ -f "$CACHE/package.json" ]] || echo '{"name":"custos-grafana-schema-check","private":true}' >"$CACHE/package.json"
  (cd "$CACHE" && npm install --no-save --no-audit --no-fund @grafana/schema typescript >&2)
fi

gen="$CACHE/check"
rm -rf "$gen"
mkdir -p "$gen"
n=0
for f in "$REPO_ROOT"/dashboards/*.json; do
  n=$((n + 1))
  {
    echo "// generated from ${f#"$REPO_ROOT"/} by scripts/check-dashboards.sh"
    echo 'import type { Dashboard } from "@grafana/schema";'
    # JSON has no TypeScript enums: map every string enum in the schema to
    # the union of its values ("absolute" for ThresholdsMode.Absolute).
    echo 'type Json<T> = T extends string ? `${T}` : T extends number | boolean | null | undefined ? T : T extends Array<infer U> ? Array<Json<U>> : T extends object ? { [K in keyof T]: Json<T[K]> } : T;'
    printf 'export const dashboard%d = (\n' "$n"
    cat "$f"
    echo ') satisfies Json<Dashboard>;'
  } >"$gen/dashboard$n.ts"
done
[[ $n -gt 0 ]] || { echo "check-dashboards: no dashboards/*.json" >&2; exit 1; }
cat >"$gen/tsconfig.json" <<'JSON'
{
  "compilerOptions": {
    "strict": true, "noEmit": true, "target": "es2020", "module": "esnext",
    "moduleResolution": "bundler", "skipLibCheck": true,
    "typeRoots": [], "types": []
  },
  "include": ["*.ts"]
}
JSON
"$CACHE/node_modules/.bin/tsc" -p "$gen/tsconfig.json"
echo "check-dashboards: $n dashboards satisfy @grafana/schema $(node -p "require('$CACHE/node_modules/@grafana/schema/package.json').version")"
