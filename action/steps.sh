#!/usr/bin/env bash
# The shell steps of bnfold's GitHub Action (action.yml), kept here so that they can be run and
# tested outside GitHub: bash action/steps.sh prepare|install|run, configured by environment
# variables (action.yml maps its inputs onto them). Every path is quoted: models, reports and
# the runner's own folders may contain spaces.
set -euo pipefail

python_cmd() {
    command -v python3 || command -v python || { echo "::error title=bnfold::no python3 on PATH (set the python-version input)"; exit 2; }
}

output() {  # output NAME VALUE: a step output (GITHUB_OUTPUT), or stdout outside a runner
    printf '%s=%s\n' "$1" "$2" >> "${GITHUB_OUTPUT:-/dev/stdout}"
}

# prepare: where pip caches downloads, and a cache key that changes with the Python, the
# runner's OS and what is installed (BNFOLD_REQUIREMENT, or this action's ref).
prepare() {
    local py version digest cache
    py="$(python_cmd)"
    version="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    cache="$("$py" -m pip cache dir 2>/dev/null || true)"
    cache="${cache:-$HOME/.cache/pip}"
    digest="$(printf '%s|%s' "${BNFOLD_ACTION_REF:-}" "${BNFOLD_REQUIREMENT:-}" |
        "$py" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')"
    output pip-cache "$cache"
    output cache-key "bnfold-pip-${RUNNER_OS:-local}-py$version-$digest"
}

# install: bnfold in a virtual environment of its own under RUNNER_TEMP, so that the caller's
# Python and its packages stay as they were; the path of its bnfold is the step's output.
install() {
    local py venv bin
    py="$(python_cmd)"
    venv="${RUNNER_TEMP:-${TMPDIR:-/tmp}}/bnfold-venv"
    "$py" -m venv "$venv"
    bin="$venv/bin"
    [ -d "$venv/Scripts" ] && bin="$venv/Scripts"
    "$bin/python" -m pip install --quiet --disable-pip-version-check \
        "${BNFOLD_REQUIREMENT:-${GITHUB_ACTION_PATH:-$(dirname "$0")/..}}"
    output bnfold "$bin/bnfold"
}

# lines TEXT: the non-empty lines of TEXT, trimmed, one per line (CRLF input too)
lines() {
    local line
    while IFS= read -r line || [ -n "$line" ]; do
        line="${line%$'\r'}"
        line="${line#"${line%%[![:space:]]*}"}"
        line="${line%"${line##*[![:space:]]}"}"
        [ -n "$line" ] && printf '%s\n' "$line"
    done <<< "$1"
}

# run: bnfold check (or fold) on every model named in BNFOLD_MODELS (one path per line), the JSON
# report to BNFOLD_REPORT, outputs exit-code and report; the step fails with bnfold's exit code
# unless BNFOLD_FAIL is false. Inside GitHub Actions bnfold itself prints one ::error per failing
# model and appends its table to GITHUB_STEP_SUMMARY.
run() {
    local mode="${BNFOLD_MODE:-check}" bnfold="${BNFOLD_BIN:-bnfold}" report code py
    case "$mode" in
        check | fold) ;;
        *) echo "::error title=bnfold::mode must be check or fold, not '$mode'"; exit 2 ;;
    esac
    local -a models=() args=()
    local arg
    while IFS= read -r arg; do models+=("$arg"); done < <(lines "${BNFOLD_MODELS:-}")
    if [ "${#models[@]}" -eq 0 ]; then
        echo "::error title=bnfold::the models input names no model"
        exit 2
    fi
    if [ -n "${BNFOLD_ARGS:-}" ]; then  # options as a shell would split them, without a shell
        py="$(python_cmd)"
        while IFS= read -r -d '' arg; do args+=("$arg"); done < <(
            "$py" -c 'import shlex, sys; sys.stdout.write("".join(a + "\0" for a in shlex.split(sys.argv[1])))' "$BNFOLD_ARGS"
        )
    fi
    if [ -n "${BNFOLD_JUNIT:-}" ]; then
        args+=(--junit "$BNFOLD_JUNIT")
    fi
    report="${BNFOLD_REPORT:-bnfold-$mode.json}"
    case "$report" in /*) ;; *) report="$PWD/$report" ;; esac
    mkdir -p "$(dirname "$report")"
    set +e
    "$bnfold" "$mode" --json ${args[@]+"${args[@]}"} -- "${models[@]}" > "$report"
    code=$?
    set -e
    output exit-code "$code"
    output report "$report"
    if [ "${BNFOLD_FAIL:-true}" = "false" ]; then
        exit 0
    fi
    exit "$code"
}

case "${1:-}" in
    prepare | install | run) "$1" ;;
    *) echo "usage: steps.sh prepare|install|run" >&2; exit 2 ;;
esac
